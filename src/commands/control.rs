//! `gaffer kill`, `gaffer retry` and `gaffer rm`: one request per job named.

use super::util::job_id;
use crate::cli::{JobsList, RmArgs};
use crate::client::Client;
use crate::output::Output;
use anyhow::Result;

/// `gaffer kill`.
pub fn kill(c: &Client, out: Output, a: JobsList) -> Result<i32> {
    let mut answers = Vec::new();
    for j in &a.jobs {
        let id = job_id(j)?;
        let v: serde_json::Value =
            c.post_idempotent(&format!("/v1/jobs/{id}/kill"), &serde_json::json!({}))?;
        out.human(|| {
            let state = v["state"].as_str().unwrap_or("?");
            if matches!(state, "succeeded" | "failed") {
                println!("{id} had already finished ({state})");
            } else {
                println!("{id}: kill requested (running tasks get SIGTERM, then SIGKILL after their grace period)");
            }
        });
        answers.push(v);
    }
    out.json(&answers)?;
    Ok(0)
}

/// `gaffer retry`.
pub fn retry(c: &Client, out: Output, a: JobsList) -> Result<i32> {
    let mut answers = Vec::new();
    for j in &a.jobs {
        let id = job_id(j)?;
        let v: serde_json::Value =
            c.post(&format!("/v1/jobs/{id}/retry"), &serde_json::json!({}), &[])?;
        out.human(|| match v["retried"].as_u64().unwrap_or(0) {
            0 => println!("{id}: no failed task to retry"),
            n => println!("{id}: {n} task(s) queued again"),
        });
        answers.push(v);
    }
    out.json(&answers)?;
    Ok(0)
}

/// `gaffer rm`.
pub fn rm(c: &Client, a: RmArgs) -> Result<i32> {
    for j in &a.jobs {
        let id = job_id(j)?;
        c.delete(&format!(
            "/v1/jobs/{id}{}",
            if a.force { "?force=true" } else { "" }
        ))?;
        println!("removed {id}");
    }
    Ok(0)
}
