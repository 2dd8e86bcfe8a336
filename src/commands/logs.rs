//! `gaffer logs`.

use super::resume::Resume;
use super::util::job_id;
use crate::cli::LogsArgs;
use crate::client::Client;
use anyhow::{anyhow, bail, Result};
use gaffer_api::JobId;
use std::io::Read as _;
use std::io::Write;

/// `gaffer logs`.
pub fn logs(c: &Client, a: LogsArgs) -> Result<i32> {
    // `JOB.TASK` (the form of GAFFER_TASK_ID) names the task too.
    let (id, task) = match a.job.rsplit_once('.') {
        Some((job, index)) if !job.is_empty() => {
            let index: u32 = index.parse().map_err(|_| {
                anyhow!("`{}` is not a job id or JOB.TASK (like j-000003.2)", a.job)
            })?;
            if a.task.is_some_and(|t| t != index) {
                bail!(
                    "`{}` names task {index}, but --task says {}",
                    a.job,
                    a.task.unwrap_or_default()
                );
            }
            (job_id(job)?, index)
        }
        _ => {
            let id = job_id(&a.job)?;
            match a.task {
                Some(t) => (id, t),
                None => {
                    let job: serde_json::Value = c.get(&format!("/v1/jobs/{id}?tasks_limit=1"))?;
                    let total = job["tasks"]["total"].as_u64().unwrap_or(1);
                    if total <= 1 {
                        (id, 0)
                    } else if a.follow {
                        bail!(
                            "{id} has {total} tasks and -f follows one: give --task N (0 to {})",
                            total - 1
                        );
                    } else {
                        return every_task(c, id, a.stderr, a.attempt);
                    }
                }
            }
        }
    };
    stream(c, id, task, a)
}

/// Prints the output of every task of job `id` that has an attempt, each line prefixed with
/// `[TASK] `, in task order.
fn every_task(c: &Client, id: JobId, stderr: bool, attempt: Option<u32>) -> Result<i32> {
    let mut out = std::io::stdout().lock();
    let mut from = 0u32;
    loop {
        let page: serde_json::Value =
            c.get(&format!("/v1/jobs/{id}?tasks_from={from}&tasks_limit=1000"))?;
        let tasks = page["task_list"].as_array().cloned().unwrap_or_default();
        if tasks.is_empty() {
            return Ok(0);
        }
        for t in &tasks {
            let index = t["index"].as_u64().unwrap_or_default();
            from = index as u32 + 1;
            let made = t["attempts"].as_array().map_or(0, |a| a.len() as u32);
            // Tasks that never ran, or (with --attempt N) have fewer attempts.
            if made == 0 || attempt.is_some_and(|n| n > made) {
                continue;
            }
            let mut path = format!(
                "/v1/jobs/{id}/logs?task={index}&stream={}",
                if stderr { "stderr" } else { "stdout" }
            );
            if let Some(n) = attempt {
                path.push_str(&format!("&attempt={n}"));
            }
            let reader = std::io::BufReader::new(c.get_stream(&path)?.into_reader());
            for line in std::io::BufRead::split(reader, b'\n') {
                let line = line.map_err(|e| anyhow!("cannot read the log of task {index}: {e}"))?;
                let shown = out
                    .write_all(format!("[{index}] ").as_bytes())
                    .and_then(|()| out.write_all(&line))
                    .and_then(|()| out.write_all(b"\n"));
                if shown.is_err() {
                    return Ok(0); // stdout closed (e.g. piped into head)
                }
            }
        }
    }
}

/// Prints (and with -f follows) the log of one task.
fn stream(c: &Client, id: JobId, task: u32, a: LogsArgs) -> Result<i32> {
    let q = format!(
        "/v1/jobs/{id}/logs?task={}&stream={}&follow={}",
        task,
        if a.stderr { "stderr" } else { "stdout" },
        a.follow
    );
    // A stream that breaks (the server or its leader died) is resumed at the byte it broke
    // at, on the same attempt, through whichever server answers next.
    let mut attempt = a.attempt;
    let mut sent = 0u64;
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    let mut resume = Resume::default();
    loop {
        let mut path = format!("{q}&offset={sent}");
        if let Some(n) = attempt {
            path.push_str(&format!("&attempt={n}"));
        }
        let resp = match c.get_stream(&path) {
            Ok(r) => r,
            Err(e) if resume.resuming() => {
                return Err(e.context("the log stream broke and could not be resumed"))
            }
            Err(e) => return Err(e),
        };
        if attempt.is_none() {
            attempt = resp
                .header(gaffer_server::api::ATTEMPT_HEADER)
                .and_then(|v| v.parse().ok());
        }
        let mut r = resp.into_reader();
        let broke = loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(0),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break e,
            };
            if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                return Ok(0); // stdout closed (e.g. piped into head)
            }
            sent += n as u64;
            resume.progressed();
        };
        if !a.follow {
            return Err(anyhow!("the log stream broke: {broke}"));
        }
        resume.broke("log", &broke, || format!("resuming at byte {sent}"))?;
    }
}
