//! Multi-host tests: a real `gaffer server` and three real `gaffer agent` processes, each
//! agent in its own network namespace (see `cluster_util`). Placement, node loss, agent
//! restarts, cut links, remote logs and outputs, tokens and draining.

mod cluster_util;
mod util;

use cluster_util::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LOSS_TIMEOUT: Duration = Duration::from_secs(60);

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Waits until the latest attempt of task `index` of `job` has a node; returns it.
fn wait_placed(c: &Cluster, job: &str, index: usize) -> String {
    wait_until(&format!("{job}.{index} to be placed"), JOB_TIMEOUT, || {
        node_of(&c.job(job), index)
    })
}

/// Waits until every task of `job` is running; returns the job.
fn wait_all_running(c: &Cluster, job: &str) -> Value {
    c.wait_job(job, "every task running", JOB_TIMEOUT, |j| {
        let t = tasks(j);
        !t.is_empty() && t.iter().all(|t| t["state"] == "running")
    })
}

/// Waits until no node has memory or cpus allocated.
fn wait_idle(c: &Cluster) {
    wait_until("every node to be idle", JOB_TIMEOUT, || {
        c.nodes()
            .iter()
            .all(|n| n["memory_allocated"] == 0 && n["running_tasks"] == 0)
            .then_some(())
    });
}

fn kill_job(c: &Cluster, id: &str) {
    c.gaffer(&["kill", id]).ok();
    c.wait_final(id, JOB_TIMEOUT);
}

/// Nodes each task of a job ran on (its latest attempt), counted per node.
fn per_node(job: &Value) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks(job) {
        if let Some(a) = t["attempts"].as_array().and_then(|a| a.last()) {
            *m.entry(s(&a["node"]).to_string()).or_insert(0) += 1;
        }
    }
    m
}

// ---- 1. placement ------------------------------------------------------------------------

#[test]
fn most_free_memory_places_on_the_node_with_the_most_unreserved_memory() {
    let c = Cluster::start(ClusterOpts::new(vec![
        AgentSpec::new("n1", 8.0, "2G"),
        AgentSpec::new("n2", 8.0, "4G"),
        AgentSpec::new("n3", 8.0, "8G"),
    ]));
    // The server sees each agent at its own address.
    for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
        let v = c.node(n).expect("node listed");
        assert_eq!(v["address"], c.agent_ip(i).as_str(), "{v}");
    }
    let first = c.submit(&["--memory", "1G", "--", "true"]);
    let j = c.wait_final(&first, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(node_of(&j, 0).as_deref(), Some("n3"), "{j}");

    // Free (unreserved) memory: n1 2G, n2 4G, n3 8G. Each job holds its memory while it
    // sleeps, so each placement sees the previous ones.
    let steps = [
        ("3G", "n3"), // 2 / 4 / 5
        ("3G", "n3"), // 2 / 4 / 2
        ("1G", "n2"), // 2 / 3 / 2
        ("1G", "n2"), // 2 / 2 / 2
    ];
    let mut ids = Vec::new();
    for (mem, want) in steps {
        let id = c.submit(&["--memory", mem, "--cpus", "0.5", "--", "sleep", "600"]);
        let node = wait_placed(&c, &id, 0);
        assert_eq!(node, want, "job with --memory {mem}: {}", c.job(&id));
        ids.push(id);
    }
    // Now 2G free everywhere: a 3G job fits nowhere and says so.
    let big = c.submit(&["--memory", "3G", "--cpus", "0.5", "--", "true"]);
    let j = c.wait_job(&big, "a pending reason", JOB_TIMEOUT, |j| {
        j["pending_reason"].is_string()
    });
    assert_eq!(j["state"], "pending", "{j}");
    assert!(
        s(&j["pending_reason"]).contains("3GiB"),
        "pending_reason should name the memory asked for: {j}"
    );
    let nodes = c.nodes();
    let alloc: Vec<(String, u64)> = nodes
        .iter()
        .map(|n| {
            (
                s(&n["name"]).to_string(),
                n["memory_allocated"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        alloc,
        vec![
            ("n1".to_string(), 0),
            ("n2".to_string(), 2 << 30),
            ("n3".to_string(), 6 << 30)
        ],
        "{nodes:?}"
    );
    // Freeing n3's first 3G job makes room: the waiting job goes there.
    kill_job(&c, &ids[0]);
    let node = wait_placed(&c, &big, 0);
    assert_eq!(node, "n3");
    for id in ids.iter().skip(1) {
        kill_job(&c, id);
    }
}

#[test]
fn binpack_fills_the_fullest_node_that_fits() {
    let c = Cluster::start(ClusterOpts::new(vec![
        AgentSpec::new("n1", 8.0, "2G"),
        AgentSpec::new("n2", 8.0, "4G"),
        AgentSpec::new("n3", 8.0, "8G"),
    ]));
    // 3G fits on n2 and n3: n2 is the fuller. Then n2 (1G left) beats n1 (2G); then n2 is
    // full and n1 is the fullest that fits.
    let steps = [("3G", "n2"), ("1G", "n2"), ("1G", "n1"), ("1G", "n1")];
    let mut ids = Vec::new();
    for (mem, want) in steps {
        let id = c.submit(&[
            "--strategy",
            "binpack",
            "--memory",
            mem,
            "--cpus",
            "0.5",
            "--",
            "sleep",
            "600",
        ]);
        let node = wait_placed(&c, &id, 0);
        assert_eq!(node, want, "binpack --memory {mem}: {}", c.job(&id));
        ids.push(id);
    }
    // n1 and n2 are full now; the next one goes to n3.
    let id = c.submit(&[
        "--strategy",
        "binpack",
        "--memory",
        "1G",
        "--cpus",
        "0.5",
        "--",
        "true",
    ]);
    let j = c.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(node_of(&j, 0).as_deref(), Some("n3"), "{j}");
    for id in &ids {
        kill_job(&c, id);
    }
    wait_idle(&c);
}

#[test]
fn spread_balances_task_counts_and_constraints_select_labelled_nodes() {
    let c = Cluster::start(ClusterOpts::three(4.0, "4G"));
    let spread = c.submit(&[
        "--array",
        "6",
        "--cpus",
        "0.1",
        "--strategy",
        "spread",
        "--",
        "sleep",
        "600",
    ]);
    let j = wait_all_running(&c, &spread);
    let counts = per_node(&j);
    assert_eq!(
        counts,
        BTreeMap::from([
            ("n1".to_string(), 2),
            ("n2".to_string(), 2),
            ("n3".to_string(), 2)
        ]),
        "{j}"
    );
    kill_job(&c, &spread);

    let zb = c.submit(&[
        "--array",
        "5",
        "--cpus",
        "0.1",
        "--constraint",
        "zone=b",
        "--shell",
        "echo $GAFFER_TASK_INDEX",
    ]);
    let j = c.wait_final(&zb, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(
        per_node(&j),
        BTreeMap::from([("n2".to_string(), 5)]),
        "--constraint zone=b must place only on n2: {j}"
    );

    let nowhere = c.submit(&[
        "--allow-unplaceable",
        "--constraint",
        "zone=z",
        "--",
        "true",
    ]);
    let j = c.wait_job(&nowhere, "a pending reason", JOB_TIMEOUT, |j| {
        j["pending_reason"].is_string()
    });
    assert_eq!(j["state"], "pending", "{j}");
    assert!(s(&j["pending_reason"]).contains("zone=z"), "{j}");
    assert!(attempts(&j, 0).is_empty(), "{j}");
    kill_job(&c, &nowhere);
}

#[test]
fn a_job_no_node_can_hold_stays_pending_and_says_why() {
    let c = Cluster::start(ClusterOpts::three(2.0, "4G"));
    // Refused at submit, naming the field and the largest node's figure...
    let out = c.gaffer(&["submit", "--memory", "64G", "--", "true"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("resources.memory: 64GiB: the largest node offers 4GiB"),
        "{out:?}"
    );
    // ...unless the submit means to wait for a node that large.
    let id = c.submit(&["--allow-unplaceable", "--memory", "64G", "--", "true"]);
    let j = c.wait_job(&id, "a pending reason", JOB_TIMEOUT, |j| {
        j["pending_reason"].is_string()
    });
    let reason = s(&j["pending_reason"]).to_string();
    assert!(
        reason.starts_with("no node has") && reason.contains("64GiB"),
        "{reason:?}"
    );
    // Still pending a few scheduling rounds later (observed, not slept on: the server's
    // heartbeat ages prove rounds went by).
    let before = now_ms();
    wait_until("two heartbeats", Duration::from_secs(30), || {
        c.nodes()
            .iter()
            .all(|n| now_ms() - before > 2500 && n["heartbeat_age_ms"].as_u64() < Some(2500))
            .then_some(())
    });
    let j = c.job(&id);
    assert_eq!(j["state"], "pending", "{j}");
    assert!(attempts(&j, 0).is_empty(), "{j}");
    let st = c.gaffer(&["status", &id]).ok();
    assert!(
        st.stdout.contains(&reason),
        "gaffer status should show {reason:?}: {}",
        st.stdout
    );
    kill_job(&c, &id);
}

#[test]
fn a_higher_priority_job_submitted_later_starts_first() {
    let c = Cluster::start(ClusterOpts::three(1.0, "4G"));
    // Only n1 has zone=a: capacity for one task at a time.
    let blocker = c.submit(&[
        "--constraint",
        "zone=a",
        "--cpus",
        "1",
        "--",
        "sleep",
        "600",
    ]);
    c.wait_job(&blocker, "running", JOB_TIMEOUT, |j| {
        j["state"] == "running"
    });
    let task = [
        "--constraint",
        "zone=a",
        "--cpus",
        "1",
        "--",
        "sleep",
        "0.5",
    ];
    let mut low1 = vec!["--priority", "0"];
    low1.extend_from_slice(&task);
    let l1 = c.submit(&low1);
    let l2 = c.submit(&low1);
    let mut high = vec!["--priority", "5"];
    high.extend_from_slice(&task);
    let h = c.submit(&high);
    for id in [&l1, &l2, &h] {
        let j = c.wait_job(id, "a pending reason", JOB_TIMEOUT, |j| {
            j["pending_reason"].is_string()
        });
        assert_eq!(j["state"], "pending", "{j}");
    }
    kill_job(&c, &blocker);
    let mut spans = Vec::new();
    for id in [&h, &l1, &l2] {
        let j = c.wait_final(id, JOB_TIMEOUT);
        assert_eq!(j["state"], "succeeded", "{j}");
        let a = &attempts(&j, 0)[0];
        assert_eq!(a["node"], "n1", "{j}");
        spans.push((
            a["started_at"].as_u64().expect("started_at"),
            a["ended_at"].as_u64().expect("ended_at"),
            id.clone(),
        ));
    }
    // Started in order high, low1, low2, one after the other.
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "{} (ended {}) must end before {} starts ({}): {spans:?}",
            w[0].2,
            w[0].1,
            w[1].2,
            w[1].0
        );
    }
}

#[test]
fn after_waits_for_success_and_fails_with_its_dependency() {
    let c = Cluster::start(ClusterOpts::three(2.0, "4G"));
    let a = c.submit(&["--", "sleep", "2"]);
    let b = c.submit(&["--after", &a, "--", "true"]);
    let j = c.wait_job(&b, "a pending reason", JOB_TIMEOUT, |j| {
        j["pending_reason"].is_string()
    });
    assert!(s(&j["pending_reason"]).contains(&a), "{j}");
    let ja = c.wait_final(&a, JOB_TIMEOUT);
    let jb = c.wait_final(&b, JOB_TIMEOUT);
    assert_eq!(ja["state"], "succeeded", "{ja}");
    assert_eq!(jb["state"], "succeeded", "{jb}");
    let a_end = attempts(&ja, 0)[0]["ended_at"].as_u64().expect("ended_at");
    let b_start = attempts(&jb, 0)[0]["started_at"]
        .as_u64()
        .expect("started_at");
    assert!(
        b_start >= a_end,
        "B started at {b_start} before A ended at {a_end}"
    );

    let f = c.submit(&["--shell", "sleep 1; exit 3"]);
    let g = c.submit(&["--array", "2", "--after", &f, "--", "true"]);
    let jf = c.wait_final(&f, JOB_TIMEOUT);
    assert_eq!(jf["state"], "failed", "{jf}");
    let jg = c.wait_final(&g, JOB_TIMEOUT);
    assert_eq!(jg["state"], "failed", "{jg}");
    for t in tasks(&jg) {
        assert_eq!(t["state"], "dependency_failed", "{jg}");
        assert!(
            attempts(&jg, t["index"].as_u64().unwrap_or(0) as usize).is_empty(),
            "{jg}"
        );
    }
    // Submitted after its dependency already failed: fails at once.
    let late = c.submit(&["--after", &f, "--", "true"]);
    let jl = c.wait_final(&late, JOB_TIMEOUT);
    assert_eq!(jl["state"], "failed", "{jl}");
    assert_eq!(jl["task_list"][0]["state"], "dependency_failed", "{jl}");
}

// ---- 2. many tasks -----------------------------------------------------------------------

#[test]
fn three_hundred_tasks_run_on_every_agent_and_all_succeed() {
    let c = Cluster::start(ClusterOpts::three(2.0, "4G"));
    let id = c.submit(&[
        "--array",
        "300",
        "--cpus",
        "0.1",
        "--shell",
        "echo task $GAFFER_TASK_INDEX",
    ]);
    let j = c.wait_final(&id, Duration::from_secs(400));
    assert_eq!(j["state"], "succeeded", "{}", j["tasks"]);
    assert_eq!(j["tasks"]["succeeded"], 300, "{}", j["tasks"]);
    let all = tasks(&j);
    assert_eq!(all.len(), 300);
    for t in &all {
        assert_eq!(t["state"], "succeeded", "{t}");
    }
    let counts = per_node(&j);
    for n in ["n1", "n2", "n3"] {
        assert!(
            counts.get(n).copied().unwrap_or(0) > 0,
            "{n} ran no task: {counts:?}"
        );
    }
    assert_eq!(counts.values().sum::<usize>(), 300, "{counts:?}");
    // Logs of a task on each node are readable through the server.
    for n in ["n1", "n2", "n3"] {
        let t = all
            .iter()
            .find(|t| t["attempts"][0]["node"] == n)
            .expect("a task on the node");
        let idx = t["index"].as_u64().expect("index").to_string();
        let out = c.gaffer(&["logs", &id, "--task", &idx]).ok();
        assert_eq!(out.stdout, format!("task {idx}\n"));
    }
}

// ---- 3./4./5. node loss, agent restart, cut links ----------------------------------------

/// A shell loop that appends a millisecond timestamp to `<dir>/<task>.<attempt>` every
/// 0.2 s, `n` times, then prints `done`.
fn beating_task(dir: &std::path::Path, n: u32) -> String {
    format!(
        "i=0; while [ $i -lt {n} ]; do date +%s%3N >> {}/$GAFFER_TASK_INDEX.$GAFFER_ATTEMPT; sleep 0.2; i=$((i+1)); done; echo done",
        dir.display()
    )
}

/// Last timestamp a beating task's attempt wrote.
fn last_beat(dir: &std::path::Path, task: u64, attempt: u64) -> Option<u64> {
    std::fs::read_to_string(dir.join(format!("{task}.{attempt}")))
        .ok()?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .max()
}

#[test]
fn killed_agent_tasks_are_lost_rerun_elsewhere_and_killed_when_it_returns() {
    let mut c = Cluster::start(ClusterOpts::three(4.0, "4G").heartbeat("3s"));
    let beats = c.root().join("beats");
    std::fs::create_dir_all(&beats).expect("beats dir");
    let script = beating_task(&beats, 75);
    let id = c.submit(&[
        "--array",
        "6",
        "--strategy",
        "spread",
        "--kill-grace",
        "1s",
        "--shell",
        &script,
    ]);
    let j = wait_all_running(&c, &id);
    let on_n1: Vec<u64> = tasks(&j)
        .iter()
        .filter(|t| t["attempts"][0]["node"] == "n1")
        .map(|t| t["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(on_n1.len(), 2, "spread puts 2 of 6 on n1: {j}");

    let n1 = c.agent_index("n1");
    c.kill9_agent(n1);
    // Lost after the heartbeat timeout, then re-run elsewhere.
    let j = c.wait_job(&id, "n1's tasks re-run elsewhere", LOSS_TIMEOUT, |j| {
        on_n1.iter().all(|&i| {
            let a = attempts(j, i as usize);
            a.len() == 2 && a[0]["state"] == "lost" && a[1]["state"] == "running"
        })
    });
    for &i in &on_n1 {
        let a = attempts(&j, i as usize);
        assert_eq!(a[0]["node"], "n1", "{j}");
        assert_ne!(a[1]["node"], "n1", "{j}");
        assert!(s(&a[0]["message"]).contains("n1"), "{j}");
    }
    assert_eq!(c.node("n1").expect("n1")["state"], "down");
    // The supervisors survived the agent: the first attempts still run on the lost node.
    for &i in &on_n1 {
        assert!(
            !c.attempt_pids(&id, i as u32, 1).is_empty(),
            "attempt 1 of task {i} should still run on n1 (its supervisor outlives the agent)"
        );
    }

    c.start_agent(n1);
    c.wait_node_state("n1", "ready", READY_TIMEOUT);
    let reconnected = now_ms();
    // The stale attempts on n1 are killed once it is back.
    wait_until(
        "the stale attempts on n1 to be gone",
        Duration::from_secs(30),
        || {
            on_n1
                .iter()
                .all(|&i| c.attempt_pids(&id, i as u32, 1).is_empty())
                .then_some(())
        },
    );
    let j = c.wait_final(&id, Duration::from_secs(120));
    assert_eq!(j["state"], "succeeded", "{j}");
    for t in tasks(&j) {
        let i = t["index"].as_u64().expect("index");
        let a = attempts(&j, i as usize);
        if on_n1.contains(&i) {
            assert_eq!(a.len(), 2, "{t}");
            assert_eq!(a[0]["state"], "lost", "attempt 1 stays lost: {t}");
            assert_eq!(a[1]["state"], "succeeded", "{t}");
            let stale = last_beat(&beats, i, 1).expect("attempt 1 beat");
            let fresh_end = last_beat(&beats, i, 2).expect("attempt 2 beat");
            assert!(
                stale <= reconnected + 3000,
                "task {i}: attempt 1 still ran {} ms after n1 reconnected",
                stale.saturating_sub(reconnected)
            );
            assert!(
                fresh_end > reconnected + 3000,
                "task {i}: attempt 2 should outlive the reconnect (the check above is moot otherwise)"
            );
        } else {
            assert_eq!(a.len(), 1, "{t}");
            assert_eq!(a[0]["state"], "succeeded", "{t}");
            assert!(last_beat(&beats, i, 2).is_none(), "{t}");
        }
    }
}

#[test]
fn restarted_agent_keeps_its_running_task() {
    let mut c = Cluster::start(ClusterOpts::three(2.0, "4G").heartbeat("6s"));
    let id = c.submit(&["--constraint", "zone=a", "--shell", "sleep 3; echo kept"]);
    c.wait_job(&id, "running", JOB_TIMEOUT, |j| {
        j["task_list"][0]["state"] == "running"
    });
    let n1 = c.agent_index("n1");
    // The last heartbeat is at most 2 s old (plus a round): the restart has 6 s - 3 s to spare.
    // "running" is reported as the supervisor starts the task: its process may still be
    // between fork and exec, without the task's environment, for a moment on a busy machine.
    util::wait_until("the task's process", Duration::from_secs(2), || {
        (!c.attempt_pids(&id, 0, 1).is_empty()).then_some(())
    });
    c.kill9_agent(n1);
    c.start_agent(n1);
    c.wait_node_state("n1", "ready", READY_TIMEOUT);
    let j = c.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    let a = attempts(&j, 0);
    assert_eq!(a.len(), 1, "exactly one attempt: {j}");
    assert_eq!(a[0]["node"], "n1");
    let logs = c.gaffer(&["logs", &id]).ok();
    assert_eq!(logs.stdout, "kept\n");
}

/// Cuts n1's link while it runs a task; returns (cluster, job, index on n1, beats dir), or
/// None (after saying why) without network namespaces.
fn cut_n1_while_it_runs(script_len: u32) -> Option<(Cluster, String, u64, std::path::PathBuf)> {
    let c = Cluster::start(ClusterOpts::three(2.0, "4G").heartbeat("3s"));
    if !c.has_netns() {
        eprintln!(
            "SKIPPED: cannot cut a link without network namespaces: {}",
            c.no_netns_reason.clone().unwrap_or_default()
        );
        return None;
    }
    let beats = c.root().join("beats");
    std::fs::create_dir_all(&beats).expect("beats dir");
    let script = beating_task(&beats, script_len);
    let id = c.submit(&[
        "--array",
        "3",
        "--strategy",
        "spread",
        "--kill-grace",
        "1s",
        "--shell",
        &script,
    ]);
    let j = wait_all_running(&c, &id);
    let idx = tasks(&j)
        .iter()
        .find(|t| t["attempts"][0]["node"] == "n1")
        .map(|t| t["index"].as_u64().expect("index"))
        .expect("spread puts one task on n1");
    c.link_down(c.agent_index("n1"));
    Some((c, id, idx, beats))
}

#[test]
fn cut_link_makes_the_node_down_its_task_rerun_elsewhere_and_it_comes_back() {
    let Some((c, id, idx, beats)) = cut_n1_while_it_runs(25) else {
        return;
    };
    let n1 = c.agent_index("n1");
    c.wait_node_state("n1", "down", LOSS_TIMEOUT);
    let j = c.wait_final(&id, Duration::from_secs(120));
    assert_eq!(j["state"], "succeeded", "{j}");
    let a = attempts(&j, idx as usize);
    assert_eq!(a.len(), 2, "{j}");
    assert_eq!(a[0]["state"], "lost", "{j}");
    assert_eq!(a[0]["node"], "n1", "{j}");
    assert!(s(&a[0]["message"]).contains("stopped responding"), "{j}");
    assert_eq!(a[1]["state"], "succeeded", "{j}");
    assert_ne!(a[1]["node"], "n1", "{j}");
    // The agent notices the silence itself before the link comes back, so it must reconnect.
    wait_until(
        "n1's agent to notice the server is silent",
        Duration::from_secs(60),
        || c.agent_stderr(n1).contains("silent").then_some(()),
    );
    c.link_up(n1);
    c.wait_node_state("n1", "ready", Duration::from_secs(60));
    // Attempt 1 stays lost whatever the agent reports about it now.
    let j = c.job(&id);
    let a = attempts(&j, idx as usize);
    assert_eq!(a[0]["state"], "lost", "{j}");
    assert!(c.attempt_pids(&id, idx as u32, 1).is_empty());
    assert!(last_beat(&beats, idx, 1).is_some());
    // New work reaches n1 again.
    let z = c.submit(&["--constraint", "zone=a", "--", "true"]);
    let jz = c.wait_final(&z, JOB_TIMEOUT);
    assert_eq!(jz["state"], "succeeded", "{jz}");
}

#[test]
fn short_link_cut_node_comes_back_and_stale_attempt_is_killed() {
    let Some((c, id, idx, beats)) = cut_n1_while_it_runs(300) else {
        return;
    };
    let n1 = c.agent_index("n1");
    c.wait_node_state("n1", "down", LOSS_TIMEOUT);
    c.wait_job(&id, "n1's task re-run elsewhere", LOSS_TIMEOUT, |j| {
        let a = attempts(j, idx as usize);
        a.len() == 2 && a[0]["state"] == "lost" && a[1]["state"] == "running"
    });
    // Back before the agent gives up on its connection (it waits for 10 s of silence).
    c.link_up(n1);
    let up_at = now_ms();
    let ready = wait_until_opt(Duration::from_secs(30), || {
        c.node("n1").filter(|n| n["state"] == "ready")
    });
    // Evidence gathered before asserting, so a failure shows all of it.
    let node = c.node("n1");
    let stale = c.attempt_pids(&id, idx as u32, 1);
    let stale_beat = last_beat(&beats, idx, 1).unwrap_or(0);
    let fresh_beat = last_beat(&beats, idx, 2).unwrap_or(0);
    let evidence = format!(
        "n1 now: {node:?}; attempt 1 pids: {stale:?}; attempt 1 last ran {} ms after the link came \
         back, attempt 2 {} ms after; agent log:\n{}",
        stale_beat as i64 - up_at as i64,
        fresh_beat as i64 - up_at as i64,
        c.agent_stderr(n1)
    );
    assert!(
        ready.is_some(),
        "n1 never became ready again within 30 s of its link coming back. {evidence}"
    );
    wait_until(
        "the stale attempt to be gone",
        Duration::from_secs(30),
        || c.attempt_pids(&id, idx as u32, 1).is_empty().then_some(()),
    );
    let stale_beat = last_beat(&beats, idx, 1).unwrap_or(0);
    assert!(
        stale_beat < up_at + 20_000,
        "attempt 1 kept running next to attempt 2. {evidence}"
    );
}

fn wait_until_opt<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- 6. remote logs and outputs ----------------------------------------------------------

#[test]
fn logs_follow_streams_from_a_remote_agent_and_exits_when_the_task_ends() {
    let c = Cluster::start(ClusterOpts::three(2.0, "4G"));
    let id = c.submit(&[
        "--constraint",
        "zone=b",
        "--shell",
        "for i in 1 2 3 4 5; do echo line $i; sleep 1; done",
    ]);
    c.wait_job(&id, "running", JOB_TIMEOUT, |j| {
        j["task_list"][0]["state"] == "running"
    });
    let mut child = Command::new(BIN)
        .args(["logs", "-f", &id])
        .env("GAFFER_ADDR", &c.addr)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = line else { break };
            if tx.send((Instant::now(), l)).is_err() {
                break;
            }
        }
    });
    let status = wait_child(&mut child, Duration::from_secs(60));
    let exited = Instant::now();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = reader.join();
    let lines: Vec<(Instant, String)> = rx.try_iter().collect();
    let status = status.expect("gaffer logs -f should exit when the task ends");
    assert!(status.success(), "{status}");
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(text, ["line 1", "line 2", "line 3", "line 4", "line 5"]);
    let j = c.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    // Not all at the end: the first line came at least 2 s before the command exited.
    let first = lines[0].0;
    assert!(
        exited.duration_since(first) >= Duration::from_secs(2),
        "lines were not streamed as printed: first came {:?} before exit",
        exited.duration_since(first)
    );
    // And the whole log, afterwards.
    let all = c.gaffer(&["logs", &id]).ok();
    assert_eq!(all.stdout, "line 1\nline 2\nline 3\nline 4\nline 5\n");
}

#[test]
fn outputs_of_a_remote_task_download_also_after_its_agent_is_gone() {
    let mut c = Cluster::start(ClusterOpts::three(2.0, "4G"));
    let id = c.submit(&[
        "--constraint",
        "zone=c",
        "--output",
        "res/*.txt",
        "--shell",
        "mkdir res; echo payload-$GAFFER_JOB_ID > res/a.txt; echo not-kept > b.txt",
    ]);
    let j = c.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(node_of(&j, 0).as_deref(), Some("n3"));
    let want = format!("payload-{id}\n");
    let d1 = c.root().join("dl1");
    c.gaffer(&["output", &id, "--dest", d1.to_str().expect("utf8")])
        .ok();
    assert_eq!(
        std::fs::read_to_string(d1.join("res/a.txt")).expect("downloaded"),
        want
    );
    assert!(!d1.join("b.txt").exists());

    // Stop the agent and remove its data: only the server's copy is left.
    let n3 = c.agent_index("n3");
    c.stop_agent(n3);
    c.wait_node_state("n3", "down", Duration::from_secs(60));
    std::fs::remove_dir_all(c.agent_dir(n3)).expect("remove n3's data");
    let d2 = c.root().join("dl2");
    let out = c.gaffer(&["output", &id, "--dest", d2.to_str().expect("utf8")]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(d2.join("res/a.txt")).expect("downloaded"),
        want
    );
}

// ---- 7. tokens ---------------------------------------------------------------------------

#[test]
fn api_and_join_tokens_are_enforced() {
    let mut opts = ClusterOpts::new(vec![
        AgentSpec::new("n1", 2.0, "4G"),
        AgentSpec::new("nojoin", 2.0, "4G").join_token(JoinToken::Missing),
        AgentSpec::new("badjoin", 2.0, "4G").join_token(JoinToken::Custom("wrong".into())),
    ]);
    opts.api_token = Some("api-secret-1".into());
    opts.join_token = Some("join-secret-1".into());
    let mut c = Cluster::start(opts);

    let (code, body) = c.get_anon("/healthz");
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.get_anon("/v1/jobs");
    assert_eq!(code, 401, "{body}");
    // A refused call with a body still gets its answer: the server reads the body before it
    // answers, instead of closing a connection the client is still writing to.
    let big = format!(
        r#"{{"command": ["true"], "name": "{}"}}"#,
        "x".repeat(512 << 10)
    );
    for _ in 0..10 {
        let r = ureq::post(&format!("{}/v1/jobs", c.addr)).send_string(&big);
        assert!(
            matches!(r, Err(ureq::Error::Status(401, _))),
            "POST without a token: {r:?}"
        );
    }

    let out = c.gaffer_with_token(&["submit", "--", "true"], None);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.to_lowercase().contains("token"), "{out:?}");
    let out = c.gaffer_with_token(&["submit", "--", "true"], Some("nope"));
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.to_lowercase().contains("token"), "{out:?}");
    let out = c.gaffer_with_token(&["nodes"], None);
    assert_ne!(out.code, 0, "{out:?}");
    let jobs = c.get_json("/v1/jobs")["jobs"]
        .as_array()
        .cloned()
        .expect("jobs");
    assert!(
        jobs.is_empty(),
        "nothing may be created without a token: {jobs:?}"
    );

    let id = c.submit(&["--", "true"]);
    let j = c.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");

    // The agents without the right join token were refused (and keep trying).
    for name in ["nojoin", "badjoin"] {
        let i = c.agent_index(name);
        wait_until(
            &format!("{name} to be refused twice"),
            Duration::from_secs(60),
            || (c.agent_stderr(i).matches("refused").count() >= 2).then_some(()),
        );
        assert!(c.agent_alive(i), "{name} should keep retrying");
    }
    let out = c.gaffer(&["nodes", "-o", "json"]).ok();
    let nodes: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let names: BTreeSet<&str> = nodes
        .as_array()
        .expect("list")
        .iter()
        .map(|n| s(&n["name"]))
        .collect();
    assert_eq!(names, BTreeSet::from(["n1"]), "{nodes}");
}

// ---- 8. drain ----------------------------------------------------------------------------

#[test]
fn drain_avoids_the_node_migrate_moves_its_tasks_and_enable_restores_it() {
    let c = Cluster::start(ClusterOpts::three(2.0, "4G"));
    let out = c.gaffer(&["node", "drain", "nosuch"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("nosuch"), "{out:?}");
    c.gaffer(&["node", "drain", "n1"]).ok();
    c.wait_node_state("n1", "draining", Duration::from_secs(10));
    let out = c.gaffer(&["nodes"]).ok();
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("n1 "))
        .unwrap_or_default()
        .to_string();
    assert!(row.contains("draining"), "{}", out.stdout);
    let id = c.submit(&[
        "--array",
        "9",
        "--cpus",
        "0.1",
        "--strategy",
        "spread",
        "--",
        "true",
    ]);
    let j = c.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    let counts = per_node(&j);
    assert!(
        !counts.contains_key("n1"),
        "drained n1 got tasks: {counts:?}"
    );
    c.gaffer(&["node", "enable", "n1"]).ok();
    c.wait_node_state("n1", "ready", Duration::from_secs(10));

    // Migrate: the running task on n1 is killed and re-run elsewhere.
    let id = c.submit(&[
        "--array",
        "3",
        "--strategy",
        "spread",
        "--kill-grace",
        "1s",
        "--",
        "sleep",
        "4",
    ]);
    let j = wait_all_running(&c, &id);
    let idx = tasks(&j)
        .iter()
        .find(|t| t["attempts"][0]["node"] == "n1")
        .map(|t| t["index"].as_u64().expect("index"))
        .expect("spread puts one task on n1");
    c.gaffer(&["node", "drain", "n1", "--migrate"]).ok();
    let j = c.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    let a = attempts(&j, idx as usize);
    assert_eq!(a.len(), 2, "{j}");
    assert_eq!(a[0]["state"], "lost", "{j}");
    assert!(s(&a[0]["message"]).contains("draining"), "{j}");
    assert_eq!(a[1]["state"], "succeeded", "{j}");
    assert_ne!(a[1]["node"], "n1", "{j}");
    assert!(c.attempt_pids(&id, idx as u32, 1).is_empty());
    assert_eq!(c.node("n1").expect("n1")["state"], "draining");
    c.gaffer(&["node", "enable", "n1"]).ok();
    c.wait_node_state("n1", "ready", Duration::from_secs(10));
    let z = c.submit(&["--constraint", "zone=a", "--", "true"]);
    let jz = c.wait_final(&z, JOB_TIMEOUT);
    assert_eq!(jz["state"], "succeeded", "{jz}");
    assert_eq!(node_of(&jz, 0).as_deref(), Some("n1"));
}
