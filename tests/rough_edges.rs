//! Regression tests for the rough edges a new user meets in the first hour (issue 16): what
//! `gaffer nodes` calls free memory, what a kill answers, and `gaffer logs` on an array.

mod util;

use serde_json::Value;
use std::time::Duration;
use util::*;

/// A column of `gaffer nodes`' table, by header, for the first node.
fn column(table: &str, header: &str) -> String {
    let mut lines = table.lines();
    let head = lines.next().unwrap_or_default();
    let at = head
        .find(header)
        .unwrap_or_else(|| panic!("no {header} in {table}"));
    let row = lines.next().unwrap_or_default();
    row[at..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn free_memory_is_what_gaffer_can_still_give_and_host_memory_is_labelled_apart() {
    let dev = Dev::start_with(&["--memory", "1G", "--cpus", "2"]);
    let gate = dev.root().join("go");
    let id = dev.submit_cli(&[
        "--memory",
        "256M",
        "--shell",
        &format!("while [ ! -e {} ]; do sleep 0.02; done", gate.display()),
    ]);
    dev.wait_job(&id, "running", |j| j["state"] == "running");
    let nodes: Value =
        serde_json::from_str(&dev.gaffer(&["nodes", "-o", "json"]).ok().stdout).unwrap();
    assert_eq!(nodes[0]["memory_available"], 768 << 20, "{nodes}");
    let table = dev.gaffer(&["nodes"]).ok().stdout;
    assert_eq!(column(&table, "FREE MEM"), "768MiB", "{table}");
    let host = column(&table, "HOST FREE");
    assert!(host.ends_with("iB") && host != "768MiB", "{table}");

    // A kill of a running job answers that it is being killed, not "running".
    let (code, body) = dev.post(&format!("/v1/jobs/{id}/kill"), &serde_json::json!({}));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "killing", "{body}");
    let j = dev.wait_final(&id, Duration::from_secs(60));
    assert_eq!(j["state"], "killed");
    let out = dev.gaffer(&["kill", &id]).ok();
    assert_eq!(out.stdout.trim(), format!("{id}: killed"));
}

#[test]
fn logs_of_an_array_print_every_task_with_its_index() {
    let dev = Dev::start_with(&["--cpus", "4"]);
    let id = dev.submit_cli(&[
        "--array",
        "3",
        "--shell",
        "echo one $GAFFER_TASK_INDEX; echo two $GAFFER_TASK_INDEX",
    ]);
    let j = dev.wait_final(&id, Duration::from_secs(60));
    assert_eq!(j["state"], "succeeded", "{j}");
    let out = dev.gaffer(&["logs", &id]).ok();
    assert_eq!(
        out.stdout,
        "[0] one 0\n[0] two 0\n[1] one 1\n[1] two 1\n[2] one 2\n[2] two 2\n"
    );
    let one = dev.gaffer(&["logs", &id, "--task", "2"]).ok();
    assert_eq!(one.stdout, "one 2\ntwo 2\n");
    let follow = dev.gaffer(&["logs", "-f", &id]);
    assert_ne!(follow.code, 0);
    assert!(follow.stderr.contains("--task"), "{follow:?}");
}

#[test]
fn help_lists_the_client_flags_only_where_they_apply() {
    let help = |args: &[&str]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(args);
        run_cmd(cmd, Duration::from_secs(30)).ok().stdout
    };
    for sub in ["dev", "server", "agent", "completions"] {
        let text = help(&[sub, "--help"]);
        for flag in ["--addr <", "--token <", "--format <"] {
            assert!(
                !text.contains(flag),
                "gaffer {sub} --help lists {flag}:\n{text}"
            );
        }
    }
    assert!(!help(&["dev", "--help"]).contains("--ca <"));
    assert!(
        help(&["server", "--help"]).contains("--ca <"),
        "the server's own --ca"
    );
    assert!(
        help(&["agent", "--help"]).contains("--ca <"),
        "the agent's own --ca"
    );
    for sub in ["jobs", "submit", "status"] {
        let text = help(&[sub, "--help"]);
        for flag in ["--addr <", "--token <", "--format <"] {
            assert!(text.contains(flag), "gaffer {sub} --help lacks {flag}");
        }
    }
    // Still global: before or after the subcommand.
    let dev = Dev::start();
    for args in [
        vec!["--addr", dev.addr.as_str(), "jobs"],
        vec!["jobs", "--addr", dev.addr.as_str()],
    ] {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(&args).env_remove("GAFFER_ADDR");
        run_cmd(cmd, Duration::from_secs(30)).ok();
    }
}

#[test]
fn status_shows_times_cpu_retries_holds_and_the_stored_script() {
    let dev = Dev::start();
    let id = dev.submit_cli(&[
        "--retries",
        "1",
        "--retry-backoff",
        "5m",
        "--shell",
        "exit 4",
    ]);
    let j = dev.wait_job(&id, "waiting out its back-off", |j| {
        j["task_list"][0]["not_before"].is_u64()
    });
    assert_eq!(
        j["state"], "pending",
        "a job whose only task waits to retry: {j}"
    );
    let out = dev.gaffer(&["status", &id]).ok().stdout;
    assert!(out.contains("state    pending (retrying in 4m"), "{out}");
    assert!(out.contains("failed (retry in 4m"), "{out}");
    let header = out.lines().find(|l| l.starts_with("TASK")).unwrap();
    for col in ["STARTED", "DURATION", "CPU", "MAX RSS"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(out.contains("cpu time "), "{out}");

    let held = dev.submit_cli(&["--hold", "--", "true"]);
    let out = dev.gaffer(&["status", &held]).ok().stdout;
    assert!(
        out.contains(&format!("state    pending (held: gaffer release {held})")),
        "{out}"
    );

    let script = dev.root().join("job.sh");
    std::fs::write(&script, "#!/bin/sh\n#GAFFER --name scripted\necho hi\n").unwrap();
    let path = script.display().to_string();
    let sid = dev.submit_cli(&[&path, "arg"]);
    let out = dev.gaffer(&["status", &sid]).ok().stdout;
    assert!(out.contains("command  script job.sh arg (3 lines"), "{out}");
    let body = dev.gaffer(&["status", "--script", &sid]).ok().stdout;
    assert_eq!(body, "#!/bin/sh\n#GAFFER --name scripted\necho hi\n");
    let out = dev.gaffer(&["status", "--script", &held]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("not submitted from a script"),
        "{out:?}"
    );
}

#[test]
fn wait_exit_statuses_tell_the_outcomes_apart() {
    let dev = Dev::start();
    let ok = dev.submit_cli(&["--", "true"]);
    let bad = dev.submit_cli(&["--shell", "exit 7"]);
    let slow = dev.submit_cli(&["--", "sleep", "30"]);
    assert_eq!(dev.gaffer(&["wait", &ok]).code, 0);
    assert_eq!(dev.gaffer(&["wait", &bad]).code, 1);
    assert_eq!(dev.gaffer(&["wait", &ok, &bad]).code, 1);
    assert_eq!(dev.gaffer(&["wait", "--timeout", "200ms", &slow]).code, 124);
    let missing = dev.gaffer(&["wait", "j-009999"]);
    assert_eq!(missing.code, 3, "{missing:?}");
    let help = dev.gaffer(&["wait", "--help"]).ok().stdout;
    assert!(
        help.contains("Exit status:") && help.contains("124"),
        "{help}"
    );
    dev.gaffer(&["kill", &slow]).ok();
}
