//! `gaffer history` against a real `gaffer dev`: accounting per job and per task, time
//! ranges, chosen columns, JSON and CSV.

mod util;

use serde_json::Value;
use std::time::Duration;
use util::*;

const FINAL: Duration = Duration::from_secs(60);

fn json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

#[test]
fn history_reports_wait_run_cpu_memory_exit_and_node() {
    let dev = Dev::start_with(&["--cpus", "2"]);
    let busy = dev.submit_cli(&[
        "--name",
        "busy",
        "--shell",
        "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done",
    ]);
    let sweep = dev.submit_cli(&[
        "--name",
        "sweep",
        "--array",
        "2",
        "--retries",
        "1",
        "--retry-backoff",
        "100ms",
        "--shell",
        "[ $GAFFER_TASK_INDEX = 0 ] || exit 5",
    ]);
    let b = dev.wait_final(&busy, FINAL);
    let s = dev.wait_final(&sweep, FINAL);
    assert_eq!(s["state"], "failed", "{s}");

    let rows = json(&dev.gaffer(&["history", "-o", "json"]).ok());
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (r_sweep, r_busy) = (&rows[0], &rows[1]);
    assert_eq!(r_sweep["job"], sweep.as_str(), "newest first");
    assert_eq!(r_busy["name"], "busy");
    assert_eq!(r_busy["state"], "succeeded");
    assert_eq!(r_busy["exit_code"], 0);
    assert!(r_busy["cpu_secs"].as_f64().unwrap() > 0.0, "{r_busy}");
    assert!(r_busy["max_rss_bytes"].as_u64().unwrap() > 0, "{r_busy}");
    let attempt = &b["task_list"][0]["attempts"][0];
    let started = attempt["started_at"].as_u64().unwrap();
    assert_eq!(
        r_busy["wait_ms"].as_u64().unwrap(),
        started - b["created_at"].as_u64().unwrap()
    );
    assert_eq!(
        r_busy["run_ms"].as_u64().unwrap(),
        b["finished_at"].as_u64().unwrap() - started
    );
    assert_eq!(r_busy["nodes"], attempt["node"]);
    assert_eq!(
        r_sweep["exit_code"], 5,
        "the failed task's exit code: {r_sweep}"
    );
    assert_eq!(r_sweep["attempts"], 3, "one for task 0, two for task 1");
    assert_eq!(r_sweep["tasks"], 2);

    // Per task, and only the chosen columns.
    let tasks = json(
        &dev.gaffer(&["history", "--tasks", "-o", "json", &sweep])
            .ok(),
    );
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    assert_eq!(tasks[1]["task"], 1);
    assert_eq!(tasks[1]["state"], "failed");
    assert_eq!(tasks[1]["attempts"], 2);
    assert_eq!(tasks[0]["exit_code"], 0);
    let table = dev
        .gaffer(&[
            "history",
            "--tasks",
            "--columns",
            "job,task,exit,attempts",
            &sweep,
        ])
        .ok()
        .stdout;
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["JOB", "TASK", "EXIT", "ATTEMPTS"]);
    assert_eq!(lines[2], [sweep.as_str(), "1", "5", "2"]);

    // CSV for spreadsheets: a header, plain units, RFC 3339 times.
    let csv = dev
        .gaffer(&[
            "history",
            "-o",
            "csv",
            "--columns",
            "job,name,exit,maxrss,started",
            &busy,
        ])
        .ok()
        .stdout;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "job,name,exit,maxrss,started");
    let cells: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(cells[..3], [busy.as_str(), "busy", "0"]);
    assert_eq!(cells[3], r_busy["max_rss_bytes"].to_string());
    assert!(cells[4].ends_with('Z') && cells[4].contains('T'), "{csv}");
    let out = dev.gaffer(&["jobs", "-o", "csv"]);
    assert_ne!(out.code, 0, "only history prints CSV: {out:?}");

    // A window that holds nothing; a bad column.
    let later = json(
        &dev.gaffer(&["history", "--since", "2099-01-01", "-o", "json"])
            .ok(),
    );
    assert_eq!(later, serde_json::json!([]));
    let out = dev.gaffer(&["history", "--columns", "job,color"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("unknown column `color`"), "{out:?}");
}
