//! `gaffer jobs`.

use super::util::{ago, job_id, short_duration, table};
use crate::cli::JobsArgs;
use crate::client::{enc, Client};
use crate::output::Output;
use anyhow::Result;
use gaffer_api::views::{JobPage, JobView};

fn job_row(j: &JobView) -> Vec<String> {
    let t = &j.tasks;
    let done = t.succeeded + t.failed + t.killed;
    let duration = match j.finished_at {
        Some(f) => short_duration(f.saturating_sub(j.created_at)),
        None => "-".into(),
    };
    vec![
        j.id.to_string(),
        j.name.chars().take(30).collect(),
        j.state.to_string(),
        format!("{done}/{}", t.total),
        if t.failed > 0 {
            t.failed.to_string()
        } else {
            String::new()
        },
        ago(j.created_at),
        duration,
    ]
}

/// `gaffer jobs`.
pub fn jobs(c: &Client, out: Output, a: JobsArgs) -> Result<i32> {
    let mut q = format!("/v1/jobs?limit={}", a.limit);
    if let Some(s) = &a.state {
        q.push_str(&format!("&state={}", enc(s)));
    }
    if let Some(n) = &a.name {
        q.push_str(&format!("&name={}", enc(n)));
    }
    if let Some(b) = &a.before {
        q.push_str(&format!("&before={}", job_id(b)?));
    }
    let page: JobPage = c.get(&q)?;
    out.print(&page, || print_jobs(&page))?;
    Ok(0)
}

/// The human rendering of `gaffer jobs`.
fn print_jobs(page: &JobPage) {
    if page.jobs.is_empty() {
        println!("no jobs");
        return;
    }
    let rows: Vec<Vec<String>> = page.jobs.iter().map(job_row).collect();
    table(
        &[
            "ID",
            "NAME",
            "STATE",
            "DONE",
            "FAILED",
            "SUBMITTED",
            "DURATION",
        ],
        &rows,
    );
    if let Some(n) = page.next {
        println!("(more: gaffer jobs --before {n})");
    }
}
