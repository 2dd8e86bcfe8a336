//! `gaffer wait`, and waiting for jobs after `gaffer submit --wait`.

use super::util::{job_id, short_duration};
use crate::cli::WaitArgs;
use crate::client::Client;
use crate::output::Output;
use anyhow::Result;
use gaffer_api::views::JobDetail;
use gaffer_api::JobId;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

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
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(500));
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
