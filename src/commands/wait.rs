//! `gaffer wait`, and waiting for jobs after `gaffer submit --wait`.

use super::util::{job_id, short_duration};
use crate::cli::WaitArgs;
use crate::client::Client;
use crate::output::Output;
use anyhow::Result;
use gaffer_api::views::EventView;
use gaffer_api::views::JobDetail;
use gaffer_api::JobId;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, IsTerminal};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Longest wait between two looks at a job: the fallback when no event arrives (a server
/// without the event stream, or a stream that broke), and the progress bar's refresh.
const POLL_CAP: Duration = Duration::from_millis(500);

/// Wake-ups for the jobs `ids`: a message on every job-level event of one of them, from the
/// server's event stream (`GET /v1/events`, live), read on a thread of its own. The caller
/// looks at the jobs once more after opening it, so no end falls between. `None` when the
/// stream cannot be opened: waiting then polls.
fn wake_ups(c: &Client, ids: &[JobId]) -> Option<Receiver<()>> {
    let reader = c.get_reader("/v1/events").ok()?;
    let want: HashSet<JobId> = ids.iter().copied().collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { return };
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Ok(e) = serde_json::from_str::<EventView>(data.trim()) else {
                continue;
            };
            if e.task.is_none() && want.contains(&e.job) && tx.send(()).is_err() {
                return;
            }
        }
    });
    Some(rx)
}

/// `gaffer wait`.
pub fn wait(c: &Client, out: Output, a: WaitArgs) -> Result<i32> {
    let ids = a
        .jobs
        .iter()
        .map(|j| job_id(j))
        .collect::<Result<Vec<_>>>()?;
    let code = wait_ids(c, &ids, a.timeout.map(|t| t.as_std()), out.is_human())?;
    out.json_with(|| {
        let mut views = Vec::new();
        for id in &ids {
            let d: JobDetail = c.get(&format!("/v1/jobs/{id}?tasks_limit=0"))?;
            views.push(d.job);
        }
        Ok(views)
    })?;
    Ok(code)
}

pub(super) fn wait_ids(
    c: &Client,
    ids: &[JobId],
    timeout: Option<Duration>,
    human: bool,
) -> Result<i32> {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal() && human;
    // Opened at the first job that is not over: waiting on finished jobs costs no stream.
    let mut wake: Option<Option<Receiver<()>>> = None;
    let mut all_ok = true;
    for id in ids {
        let mut bar: Option<indicatif::ProgressBar> = None;
        let mut delay = Duration::from_millis(50);
        let job = loop {
            let d: JobDetail = c.get(&format!("/v1/jobs/{id}?tasks_limit=0"))?;
            let j = d.job;
            let t = j.tasks;
            if tty && t.total > 1 {
                let b = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::new(t.total as u64);
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    b.set_prefix(id.to_string());
                    b
                });
                b.set_position((t.succeeded + t.failed + t.killed) as u64);
                b.set_message(format!("{} running, {} failed", t.running, t.failed));
            }
            if j.state.is_final() {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                break j;
            }
            if timeout.is_some_and(|to| start.elapsed() >= to) {
                if let Some(b) = bar.take() {
                    b.abandon();
                }
                eprintln!("gaffer wait: timed out; {id} is still {}", j.state);
                return Ok(124);
            }
            // A job-level event (it started, it ended) wakes us at once; else look again
            // after `delay`.
            let Some(w) = &wake else {
                // Look once more now that the stream is open: the end may have come between.
                wake = Some(wake_ups(c, ids));
                continue;
            };
            match w {
                Some(rx) => match rx.recv_timeout(delay) {
                    Ok(()) => while rx.try_recv().is_ok() {},
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(delay),
                },
                None => std::thread::sleep(delay),
            }
            delay = (delay * 2).min(POLL_CAP);
        };
        let ok = job.state == gaffer_api::JobState::Succeeded;
        all_ok &= ok;
        if human {
            let t = job.tasks;
            let took = job
                .finished_at
                .map(|f| short_duration(f.saturating_sub(job.created_at)))
                .unwrap_or_default();
            if t.total > 1 {
                println!(
                    "{id} {}: {} succeeded, {} failed, {} killed of {} ({took})",
                    job.state, t.succeeded, t.failed, t.killed, t.total
                );
            } else {
                println!("{id} {} ({took})", job.state);
            }
        }
    }
    Ok(if all_ok { 0 } else { 1 })
}
