//! `gaffer history`: accounting like Slurm's `sacct` — per job or per task, wait, run and CPU
//! time, peak memory, exit code and nodes, for a time range, in chosen columns.

use super::util::{job_id, short_duration, table, timestamp};
use crate::cli::HistoryArgs;
use crate::client::{enc, Client};
use crate::output::Output;
use anyhow::{anyhow, bail, Result};
use gaffer_api::views::{HistoryPage, UsageRow};
use gaffer_api::{now_ms, ByteSize, UnixMs};

/// The columns `--columns` may name, in their default order.
pub const COLUMNS: &[&str] = &[
    "job",
    "task",
    "name",
    "state",
    "tasks",
    "attempts",
    "submitted",
    "started",
    "ended",
    "wait",
    "run",
    "cpu",
    "maxrss",
    "exit",
    "nodes",
];

/// Columns shown without `--columns` (per job; `task` is added with --tasks).
const DEFAULT: &[&str] = &[
    "job",
    "name",
    "state",
    "tasks",
    "submitted",
    "wait",
    "run",
    "cpu",
    "maxrss",
    "exit",
    "nodes",
];

/// `gaffer history`.
/// `csv`: `-o csv` (the one command that prints it; `out` stands for the other formats).
pub fn history(c: &Client, out: Output, a: HistoryArgs, csv: bool) -> Result<i32> {
    let columns = columns(&a)?;
    let rows = if a.jobs.is_empty() {
        let since = a.since.as_deref().map(parse_time).transpose()?;
        let until = a.until.as_deref().map(parse_time).transpose()?;
        let since = since.unwrap_or_else(|| now_ms().saturating_sub(24 * 3600 * 1000));
        let mut q = format!(
            "/v1/history?since={since}&tasks={}&limit={}",
            a.tasks,
            a.limit.min(1000)
        );
        if let Some(u) = until {
            q.push_str(&format!("&until={u}"));
        }
        if let Some(s) = &a.state {
            q.push_str(&format!("&state={}", enc(s)));
        }
        if let Some(n) = &a.name {
            q.push_str(&format!("&name={}", enc(n)));
        }
        // The server gives at most 1,000 jobs a page: follow `next` up to --limit.
        let mut rows = Vec::new();
        let mut jobs = 0u32;
        let mut before: Option<String> = None;
        loop {
            let mut path = q.clone();
            if let Some(b) = &before {
                path.push_str(&format!("&before={b}"));
            }
            let page: HistoryPage = c.get(&path)?;
            let mut seen: Vec<gaffer_api::JobId> = page.rows.iter().map(|r| r.job).collect();
            seen.dedup();
            jobs += seen.len() as u32;
            rows.extend(page.rows);
            match page.next {
                Some(n) if jobs < a.limit => before = Some(n.to_string()),
                _ => break,
            }
        }
        rows
    } else {
        let mut rows = Vec::new();
        for j in &a.jobs {
            let id = job_id(j)?;
            // The newest job below id + 1 is the job itself, if it exists.
            let q = format!(
                "/v1/history?before=j-{}&limit=1&tasks={}",
                id.0 + 1,
                a.tasks
            );
            let page: HistoryPage = c.get(&q)?;
            let found: Vec<UsageRow> = page.rows.into_iter().filter(|r| r.job == id).collect();
            if found.is_empty() {
                bail!("job {id} not found");
            }
            rows.extend(found);
        }
        rows
    };
    if csv {
        print!("{}", to_csv(&rows, &columns));
        return Ok(0);
    }
    out.print(&rows, || {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| columns.iter().map(|c| cell(r, c, false)).collect())
            .collect();
        let header: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        table(&header, &cells);
    })?;
    Ok(0)
}

/// The columns to show, checked against [`COLUMNS`].
fn columns(a: &HistoryArgs) -> Result<Vec<&'static str>> {
    if a.columns.is_empty() {
        let mut cols = DEFAULT.to_vec();
        if a.tasks {
            cols.insert(1, "task");
        }
        return Ok(cols);
    }
    a.columns
        .iter()
        .map(|c| {
            COLUMNS
                .iter()
                .find(|k| k.eq_ignore_ascii_case(c))
                .copied()
                .ok_or_else(|| anyhow!("unknown column `{c}`: choose from {}", COLUMNS.join(", ")))
        })
        .collect()
}

/// One cell: for people (`raw` false) durations and sizes are rounded and units added; for
/// CSV, times are RFC 3339, durations and CPU in seconds and memory in bytes.
fn cell(r: &UsageRow, col: &str, raw: bool) -> String {
    let dash = || if raw { String::new() } else { "-".into() };
    let time = |t: Option<UnixMs>| t.map(timestamp).unwrap_or_else(dash);
    let span = |ms: Option<u64>| match ms {
        Some(ms) if raw => format!("{:.3}", ms as f64 / 1000.0),
        Some(ms) => short_duration(ms),
        None => dash(),
    };
    match col {
        "job" => r.job.to_string(),
        "task" => r.task.map(|t| t.to_string()).unwrap_or_else(dash),
        "name" => r.name.clone(),
        "state" => r.state.clone(),
        "tasks" => r.tasks.to_string(),
        "attempts" => r.attempts.to_string(),
        "submitted" => timestamp(r.submitted_at),
        "started" => time(r.started_at),
        "ended" => time(r.ended_at),
        "wait" => span(r.wait_ms),
        "run" => span(r.run_ms),
        "cpu" if raw => format!("{:.3}", r.cpu_secs),
        "cpu" => short_duration((r.cpu_secs * 1000.0).round() as u64),
        "maxrss" => match r.max_rss_bytes {
            Some(b) if raw => b.to_string(),
            Some(b) => ByteSize(b).to_string(),
            None => dash(),
        },
        "exit" => r.exit_code.map(|c| c.to_string()).unwrap_or_else(dash),
        "nodes" => r.nodes.clone(),
        _ => dash(),
    }
}

/// The rows as CSV with a header line (RFC 4180 quoting).
fn to_csv(rows: &[UsageRow], columns: &[&str]) -> String {
    let quote = |s: String| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let mut out = columns.join(",") + "\n";
    for r in rows {
        let line: Vec<String> = columns.iter().map(|c| quote(cell(r, c, true))).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// `1h`, `30m`, `2d` (that long ago), `2026-12-01` or `2026-12-01T10:00:00[Z]` (UTC).
fn parse_time(s: &str) -> Result<UnixMs> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms().saturating_sub(d.as_millis() as u64));
    }
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    humantime::parse_rfc3339_weak(full.trim_end_matches('Z'))
        .map_err(|_| {
            anyhow!("`{s}` is not a time: give a duration ago (1h, 2d) or a date (2026-12-01, 2026-12-01T10:00:00)")
        })
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .map_err(|_| anyhow!("`{s}` is before 1970"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_ago_and_dates() {
        assert_eq!(parse_time("2026-12-01").unwrap(), 1_796_083_200_000);
        assert_eq!(
            parse_time("2026-12-01T01:00:00").unwrap(),
            1_796_083_200_000 + 3_600_000
        );
        let hour_ago = parse_time("1h").unwrap();
        assert!(now_ms() - hour_ago >= 3_600_000);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn csv_quotes_and_uses_plain_units() {
        let r = UsageRow {
            job: gaffer_api::JobId(7),
            task: None,
            name: "a,\"b\"".into(),
            state: "succeeded".into(),
            tasks: 1,
            attempts: 1,
            submitted_at: 0,
            started_at: Some(1500),
            ended_at: None,
            wait_ms: Some(1500),
            run_ms: None,
            cpu_secs: 0.25,
            max_rss_bytes: Some(2048),
            exit_code: Some(0),
            nodes: "n1".into(),
        };
        let text = to_csv(
            &[r],
            &["job", "name", "wait", "run", "cpu", "maxrss", "exit"],
        );
        assert_eq!(
            text,
            "job,name,wait,run,cpu,maxrss,exit\nj-000007,\"a,\"\"b\"\"\",1.500,,0.250,2048,0\n"
        );
    }
}
