//! `gaffer events`.

use super::resume::Resume;
use super::util::{job_id, timestamp};
use crate::cli::EventsArgs;
use crate::client::Client;
use crate::output::Output;
use anyhow::{anyhow, Context, Result};
use gaffer_api::views::EventView;
use std::io::{BufRead, BufReader};
use std::time::Duration;

fn print_event(e: &EventView, out: Output) -> Result<()> {
    println!("{}", out.line(e, || event_line(e))?);
    Ok(())
}

/// An event as a line for people.
fn event_line(e: &EventView) -> String {
    let what = match (e.task, e.attempt) {
        (Some(t), Some(a)) => format!("{}.{t}#{a}", e.job),
        (Some(t), None) => format!("{}.{t}", e.job),
        _ => e.job.to_string(),
    };
    let from = e
        .from
        .as_deref()
        .map(|f| format!("{f} -> "))
        .unwrap_or_default();
    format!("{} {what} {from}{} {}", timestamp(e.time), e.to, e.detail)
}

/// `gaffer events`.
pub fn events(c: &Client, out: Output, a: EventsArgs) -> Result<i32> {
    let job = a.job.as_deref().map(job_id).transpose()?;
    let mut after = match (a.after, a.follow) {
        (Some(n), _) => Some(n),
        (None, false) => Some(0),
        (None, true) => None,
    };
    let idle = !a.follow;
    let mut resume = Resume::default();
    loop {
        let mut q = String::from("/v1/events?");
        if let Some(n) = after {
            q.push_str(&format!("after={n}&"));
        }
        if let Some(j) = job {
            q.push_str(&format!("job={j}"));
        }
        let r = c.get_reader(&q)?;
        let reader = BufReader::new(r);
        // Without -f we stop once the replay is done: the server then only sends keep-alives.
        // Lines, then `None` at a clean end of the stream (or an error).
        let (tx, rx) = std::sync::mpsc::channel::<Option<Result<String, String>>>();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let end = line.is_err();
                if tx.send(Some(line.map_err(|e| e.to_string()))).is_err() || end {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        let broke = loop {
            let line = if idle {
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(l) => l,
                    Err(_) => return Ok(0),
                }
            } else {
                rx.recv().unwrap_or(None)
            };
            let line = match line {
                Some(Ok(l)) => l,
                None if idle => return Ok(0),
                None => break "the server ended the stream".to_string(),
                Some(Err(e)) if idle => return Err(anyhow!("the event stream broke: {e}")),
                Some(Err(e)) => break e,
            };
            if let Some(data) = line.strip_prefix("data:") {
                let e: EventView =
                    serde_json::from_str(data.trim()).context("bad event from the server")?;
                print_event(&e, out)?;
                after = Some(e.id);
                resume.progressed();
            }
        };
        // -f: the stream only ends when its server goes away; resume after the last event
        // through whichever server answers next.
        resume.broke("event", &broke, || {
            format!(
                "resuming after event {}",
                after.map_or("(none yet)".to_string(), |n| n.to_string())
            )
        })?;
    }
}
