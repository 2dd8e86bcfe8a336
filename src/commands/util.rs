//! Helpers the subcommands share: job ids from the command line, durations, times and tables.

use anyhow::{anyhow, Result};
use gaffer_api::now_ms;
use gaffer_api::JobId;
use std::time::{Duration, UNIX_EPOCH};

pub(super) fn job_id(s: &str) -> Result<JobId> {
    s.parse()
        .map_err(|e: gaffer_api::ids::BadJobId| anyhow!("{e}"))
}

/// "3s", "2m10s", "1h5m".
pub(crate) fn short_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    if s < 3600 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{}h", s / 86_400, (s % 86_400) / 3600)
    }
}

pub(crate) fn ago(t: u64) -> String {
    format!("{} ago", short_duration(now_ms().saturating_sub(t)))
}

pub(super) fn timestamp(t: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(t)).to_string()
}

/// Prints a table with columns padded to their widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
