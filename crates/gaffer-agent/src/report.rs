//! How an attempt's end is told to the server.

use gaffer_api::now_ms;
use gaffer_api::proto::{AttemptResult, EndKind};
use gaffer_runtime::{AttemptStatus, EndReason};

/// Converts the shim's status into the wire result.
pub fn result_from_status(s: &AttemptStatus) -> AttemptResult {
    AttemptResult {
        kind: match s.reason {
            EndReason::Exited => EndKind::Exited,
            EndReason::TimedOut => EndKind::TimedOut,
            EndReason::Killed => EndKind::Killed,
            EndReason::SpawnFailed => EndKind::SpawnFailed,
            EndReason::OomKilled => EndKind::OomKilled,
        },
        exit_code: s.exit_code,
        signal: s.signal,
        started_at: Some(s.started_at_ms),
        ended_at: s.ended_at_ms,
        max_rss_bytes: s.max_rss_bytes,
        cpu_secs: s.cpu_secs,
        outputs: s.outputs.clone(),
        message: s.message.clone(),
    }
}

pub(crate) fn lost(message: String) -> AttemptResult {
    AttemptResult {
        kind: EndKind::Lost,
        exit_code: None,
        signal: None,
        started_at: None,
        ended_at: now_ms(),
        max_rss_bytes: None,
        cpu_secs: None,
        outputs: Vec::new(),
        message: Some(message),
    }
}
