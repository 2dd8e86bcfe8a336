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
        out.human(|| match v["state"].as_str().unwrap_or("?") {
            "killing" => println!(
                "{id}: killing (running tasks get SIGTERM, then SIGKILL after their grace period)"
            ),
            "killed" => println!("{id}: killed"),
            state => println!("{id} had already finished ({state})"),
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

/// `gaffer hold` (`hold`) and `gaffer release`.
pub fn hold(c: &Client, out: Output, a: JobsList, hold: bool) -> Result<i32> {
    let verb = if hold { "hold" } else { "release" };
    let mut answers = Vec::new();
    for j in &a.jobs {
        let id = job_id(j)?;
        let v: serde_json::Value =
            c.post_idempotent(&format!("/v1/jobs/{id}/{verb}"), &serde_json::json!({}))?;
        out.human(|| {
            let state = v["state"].as_str().unwrap_or("?");
            if hold {
                println!("{id}: held ({state}; tasks that have not started wait for `gaffer release {id}`)");
            } else {
                println!("{id}: released ({state})");
            }
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
