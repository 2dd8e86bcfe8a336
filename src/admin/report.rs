//! What `admin` tells while it works and when it is done: progress on stderr, the closing summary.

use crate::output::Output;
use anyhow::Result;
use gaffer_api::JobState;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// Progress is reported every this many jobs...
const PROGRESS_JOBS: u64 = 10_000;

/// ... and every this many events.
const PROGRESS_EVENTS: u64 = 100_000;

pub(super) struct Progress {
    what: &'static str,
    t0: Instant,
    total_jobs: u64,
    jobs_shown: u64,
    events_shown: u64,
}

impl Progress {
    pub(super) fn new(what: &'static str, total_jobs: u64) -> Self {
        Progress {
            what,
            t0: Instant::now(),
            total_jobs,
            jobs_shown: 0,
            events_shown: 0,
        }
    }

    pub(super) fn jobs(&mut self, n: u64) {
        if n / PROGRESS_JOBS > self.jobs_shown / PROGRESS_JOBS {
            eprintln!(
                "{}: {n}/{} jobs ({:.1} s)",
                self.what,
                self.total_jobs,
                self.t0.elapsed().as_secs_f64()
            );
        }
        self.jobs_shown = n;
    }

    pub(super) fn events(&mut self, n: u64) {
        if n / PROGRESS_EVENTS > self.events_shown / PROGRESS_EVENTS {
            eprintln!(
                "{}: {n} events ({:.1} s)",
                self.what,
                self.t0.elapsed().as_secs_f64()
            );
        }
        self.events_shown = n;
    }
}

/// The closing line (human or JSON); on stderr when stdout carries the snapshot.
#[derive(Serialize)]
pub(super) struct Summary {
    pub(super) command: &'static str,
    pub(super) file: String,
    pub(super) store: String,
    pub(super) jobs: u64,
    pub(super) tasks: u64,
    pub(super) attempts: u64,
    pub(super) events: u64,
    pub(super) idempotency_keys: u64,
    pub(super) next_job_id: u64,
    pub(super) next_event_id: u64,
    pub(super) bytes: u64,
    pub(super) seconds: f64,
}

pub(super) fn print_summary(
    out: Output,
    s: &Summary,
    human: String,
    to_stderr: bool,
) -> Result<()> {
    let line = out.line(s, || human)?;
    if to_stderr {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(())
}

pub(super) fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

pub(super) fn job_states(counts: &[(JobState, u64)]) -> BTreeMap<&'static str, u64> {
    counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (s.as_str(), *n))
        .collect()
}
