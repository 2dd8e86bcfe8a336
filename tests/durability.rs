//! Crash and restart behaviour of `gaffer dev`: acknowledged submits survive `kill -9`, running
//! tasks are re-attached after a restart, tasks whose supervisor died are `lost` and retried,
//! and the process lifecycle (address banner, SIGTERM, data-dir lock).

mod util;

use serde_json::json;
use std::time::Duration;
use util::*;

/// Waits until attempt 1 of task 0 runs and its shim has written its pid file.
fn wait_running_with_shim(dev: &Dev, id: &str) -> i32 {
    dev.wait_job(id, "task running", |j| {
        j["task_list"][0]["state"] == "running"
    });
    let pid_file = dev.attempt_dir(id, 0, 1).join("shim.pid");
    wait_until("shim.pid", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&pid_file).ok()?;
        text.split_whitespace().next()?.parse::<i32>().ok()
    })
}

#[test]
fn acknowledged_submits_survive_sigkill_of_the_server() {
    let mut dev = Dev::start();
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = dev.submit(json!({
            "name": format!("d{i}"),
            "shell": "echo $GAFFER_JOB_ID",
            "resources": {"cpus": 0.1}
        }));
        ids.push(id);
    }
    dev.kill9();
    dev.launch();
    let listed = dev.get_json("/v1/jobs?limit=100");
    let mut listed: Vec<String> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    listed.reverse();
    assert_eq!(
        listed, ids,
        "every acknowledged job must exist after kill -9"
    );
    for (i, id) in ids.iter().enumerate() {
        let j = dev.wait_final(id, Duration::from_secs(90));
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["name"], format!("d{i}"));
        let (_, out) = dev.get(&format!("/v1/jobs/{id}/logs"));
        assert_eq!(out, format!("{id}\n"));
    }
}

#[test]
fn running_task_survives_sigkill_of_the_server_and_is_reconciled() {
    let mut dev = Dev::start();
    let id = dev.submit(json!({"shell": "sleep 2; echo survived"}));
    let shim = wait_running_with_shim(&dev, &id);
    dev.kill9();
    assert!(
        !is_zombie_or_gone(shim),
        "the supervisor must outlive the server"
    );
    dev.launch();
    let j = dev.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    let a = attempts(&j, 0);
    assert_eq!(a.len(), 1, "no second attempt: {j}");
    assert_eq!(a[0]["exit_code"], 0, "{j}");
    assert_eq!(dev.gaffer(&["logs", &id]).ok().stdout, "survived\n");
}

#[test]
fn task_whose_supervisor_died_while_the_server_was_down_is_lost_and_retried() {
    let mut dev = Dev::start();
    let mark = unique("mark");
    let entry = format!("MARK={mark}");
    let id = dev.submit(json!({
        "shell": "if [ \"$GAFFER_ATTEMPT\" = 1 ]; then sleep 30; fi",
        "env": {"MARK": mark},
        "retries": 1,
        "retry_backoff": "100ms"
    }));
    let shim = wait_running_with_shim(&dev, &id);
    let tasks = wait_until("the task process", Duration::from_secs(30), || {
        let p = pids_with_env(&entry);
        (!p.is_empty()).then_some(p)
    });
    dev.kill9();
    // Kill the supervisor, then the task's process group.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    );
    for p in tasks {
        if let Some(g) = pgid_of(p) {
            killpg9(g);
        }
    }
    wait_until("shim and task to be dead", Duration::from_secs(30), || {
        (is_zombie_or_gone(shim) && pids_with_env(&entry).is_empty()).then_some(())
    });
    dev.launch();
    let j = dev.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    let a = attempts(&j, 0);
    assert_eq!(a.len(), 2, "{j}");
    assert_eq!(a[0]["state"], "lost", "{j}");
    assert!(a[0]["message"].is_string(), "a lost attempt says why: {j}");
    assert_eq!(a[1]["state"], "succeeded", "{j}");
    assert_eq!(a[1]["exit_code"], 0, "{j}");
}

/// A lost attempt is not the task's fault: up to three of them are retried without using the
/// retry budget (`MAX_FREE_LOST` in the core), so even `retries: 0` gets a second attempt.
#[test]
fn lost_attempt_is_retried_without_using_the_retry_budget() {
    let mut dev = Dev::start();
    let mark = unique("mark");
    let entry = format!("MARK={mark}");
    let id = dev.submit(json!({
        "shell": "if [ \"$GAFFER_ATTEMPT\" = 1 ]; then sleep 30; else exit 7; fi",
        "env": {"MARK": mark}
    }));
    let shim = wait_running_with_shim(&dev, &id);
    let tasks = wait_until("the task process", Duration::from_secs(30), || {
        let p = pids_with_env(&entry);
        (!p.is_empty()).then_some(p)
    });
    dev.kill9();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    );
    for p in tasks {
        if let Some(g) = pgid_of(p) {
            killpg9(g);
        }
    }
    wait_until("shim and task to be dead", Duration::from_secs(30), || {
        (is_zombie_or_gone(shim) && pids_with_env(&entry).is_empty()).then_some(())
    });
    dev.launch();
    let j = dev.wait_final(&id, JOB_TIMEOUT);
    // The free retry ran; its failure used the (empty) budget, so the job failed for good.
    assert_eq!(j["state"], "failed", "{j}");
    let a = attempts(&j, 0);
    assert_eq!(a.len(), 2, "{j}");
    assert_eq!(a[0]["state"], "lost", "{j}");
    assert_eq!(a[1]["state"], "failed", "{j}");
    assert_eq!(a[1]["exit_code"], 7, "{j}");
}

#[test]
fn running_task_is_picked_up_again_after_a_clean_restart() {
    let mut dev = Dev::start();
    let id = dev.submit(json!({"shell": "sleep 2; echo still-here"}));
    wait_running_with_shim(&dev, &id);
    let status = dev.sigterm(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    dev.launch();
    let j = dev.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(attempts(&j, 0).len(), 1, "{j}");
    assert_eq!(dev.gaffer(&["logs", &id]).ok().stdout, "still-here\n");
}

#[test]
fn dev_prints_its_address_and_exits_zero_on_sigterm() {
    let mut dev = Dev::start();
    let banner = dev.dev_stdout();
    let want = format!("http://127.0.0.1:{}", dev.port);
    assert!(banner.contains(&want), "{banner}");
    assert!(banner.contains(&format!("GAFFER_ADDR={want}")), "{banner}");
    let status = dev.sigterm(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{status}: {}", dev.dev_stderr());
    assert!(
        !dev.dev_stderr().contains("panicked"),
        "{}",
        dev.dev_stderr()
    );
}

#[test]
fn second_dev_on_the_same_data_dir_fails_with_a_clear_message() {
    let dev = Dev::start();
    let out = run_cmd(dev.dev_command(free_port()), Duration::from_secs(20));
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("in use by another gaffer process"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    // The first one is unharmed.
    assert_eq!(dev.get("/healthz").0, 200);
    let id = dev.submit(json!({"command": ["true"]}));
    assert_eq!(dev.wait_final(&id, JOB_TIMEOUT)["state"], "succeeded");
}
