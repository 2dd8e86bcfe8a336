//! Regression tests named after what broke (found in review, fixed since).

mod util;

use serde_json::json;
use std::time::Duration;
use util::Dev;

/// A kill that reached the agent before the attempt's supervisor existed was dropped, and the
/// task ran to completion (the job could even end `succeeded`).
#[test]
fn kill_right_after_submit_never_lets_the_task_run_to_the_end() {
    let dev = Dev::start_with(&["--cpus", "64"]);
    let mut ids = Vec::new();
    for _ in 0..25 {
        let id = dev.submit(json!({"command": ["sleep", "20"], "resources": {"cpus": 0.1}}));
        let (code, body) = dev.post(&format!("/v1/jobs/{id}/kill"), &json!({}));
        assert_eq!(code, 200, "{body}");
        ids.push(id);
    }
    for id in &ids {
        let job = dev.wait_final(id, Duration::from_secs(30));
        assert_eq!(job["state"], "killed", "{id}: {job}");
    }
}

/// A dependent submitted in the same core round in which its dependency ended read the
/// dependency's stale row from the store and failed as `dependency_failed`.
#[test]
fn after_a_job_that_is_just_finishing_waits_for_its_real_outcome() {
    let dev = Dev::start();
    let a = dev.submit(json!({"shell": "sleep 0.5"}));
    let mut dependents = Vec::new();
    // Submit dependents continuously across the moment `a` ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        dependents.push(dev.submit(json!({"command": ["true"], "depends_on": [a]})));
    }
    assert_eq!(
        dev.wait_final(&a, Duration::from_secs(30))["state"],
        "succeeded"
    );
    for d in &dependents {
        let job = dev.wait_final(d, Duration::from_secs(60));
        assert_eq!(job["state"], "succeeded", "{d}: {job}");
    }
}

/// `rm --force` of a running job left the jobs waiting on it pending forever.
#[test]
fn removing_a_running_dependency_fails_its_dependents() {
    let dev = Dev::start();
    let a = dev.submit_cli(&["--", "sleep", "30"]);
    dev.wait_job(&a, "running", |j| j["state"] == "running");
    let b = dev.submit_cli(&["--after", &a, "--", "echo", "never"]);
    dev.gaffer(&["rm", "--force", &a]).ok();
    let job = dev.wait_final(&b, Duration::from_secs(30));
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["task_list"][0]["state"], "dependency_failed");
}

/// Fractional CPUs were summed in floating point: after tasks of 0.1 CPU ended, a node showed
/// 0.0000000000000004 CPUs allocated, and a task asking for every CPU no longer fitted.
#[test]
fn fractional_cpus_are_released_exactly() {
    let dev = Dev::start_with(&["--cpus", "2"]);
    let id = dev.submit(json!({"command": ["true"], "array": 7, "resources": {"cpus": 0.1}}));
    assert_eq!(
        dev.wait_final(&id, Duration::from_secs(30))["state"],
        "succeeded"
    );
    let nodes = dev.get_json("/v1/nodes");
    assert_eq!(nodes[0]["cpus_allocated"], json!(0.0), "{nodes}");
    let all = dev.submit(json!({"command": ["true"], "resources": {"cpus": 2}}));
    assert_eq!(
        dev.wait_final(&all, Duration::from_secs(30))["state"],
        "succeeded"
    );
}

/// Daemon logs written to a file were full of terminal colour codes.
#[test]
fn logs_written_to_a_file_have_no_colour_codes() {
    let dev = Dev::start();
    let log = util::wait_until(
        "the agent's registration in the log",
        Duration::from_secs(20),
        || {
            let s = dev.dev_stderr();
            s.contains("agent registered").then_some(s)
        },
    );
    assert!(!log.contains('\u{1b}'), "{log:?}");
}
