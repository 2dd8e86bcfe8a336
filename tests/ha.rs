//! HA on etcd, end to end: a 3-member etcd cluster, three `gaffer server --store etcd`
//! processes and agents, each server and agent in its own network namespace (see
//! tests/ha_util). Real processes, real etcd, real kills and a real network cut.

mod cluster_util;
mod ha_util;
mod util;

use ha_util::Ha;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn job_json(v: &Value) -> (String, String) {
    (
        v["id"].as_str().unwrap_or_default().to_string(),
        v["state"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn followers_answer_forward_and_send_agents_to_the_leader() {
    if !Ha::possible() {
        return;
    }
    let mut ha = Ha::start_with_token(3, 1, Some("s3cret-ha"));
    let v: Value = serde_json::from_str(&ha.gaffer(&["servers", "-o", "json"]).ok().stdout)
        .expect("servers json");
    let servers = v["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 3, "{v}");
    assert_eq!(
        servers.iter().filter(|s| s["leader"] == true).count(),
        1,
        "{v}"
    );
    let term = v["term"].as_i64().expect("term");
    let (leader, _) = ha.leader_seen_by(0).expect("leader");
    let follower = (leader + 1) % 3;
    let human = ha.gaffer(&["servers"]).ok().stdout;
    assert!(
        human.contains("leader") && human.contains(&format!("term {term}")),
        "{human}"
    );

    // Everything through one follower only: submit (forwarded), status and jobs (answered from
    // etcd), logs (forwarded to the leader, which reads them over the agent's stream).
    let only = ha.url(follower);
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(cluster_util::BIN);
        cmd.env("GAFFER_ADDR", &only)
            .env("GAFFER_TOKEN", "s3cret-ha")
            .args(args);
        util::run_cmd(cmd, Duration::from_secs(60))
    };
    let id = cli(&["submit", "-q", "--shell", "echo via-follower"])
        .ok()
        .stdout
        .trim()
        .to_string();
    cli(&["wait", &id]).ok();
    let logs = cli(&["logs", &id]).ok().stdout;
    assert_eq!(logs.trim(), "via-follower");
    let jobs = cli(&["jobs", "-o", "json"]).ok().stdout;
    assert!(jobs.contains(&id) && jobs.contains("succeeded"), "{jobs}");
    // Image uploads stream through the follower to the leader's catalog; a repeated import
    // (an empty body, which the follower forwards without a Content-Length) only names it.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("rootfs/etc")).unwrap();
    std::fs::write(scratch.path().join("rootfs/etc/motd"), "hi\n").unwrap();
    let tarball = scratch.path().join("tiny.tar");
    util::tar_dir(&scratch.path().join("rootfs"), &tarball);
    let first = cli(&["image", "import", "tiny", tarball.to_str().unwrap()]).ok();
    assert!(first.stdout.contains("imported"), "{first:?}");
    let again = cli(&["image", "import", "tiny2", tarball.to_str().unwrap()]).ok();
    assert!(again.stdout.contains("already had"), "{again:?}");
    let images = cli(&["image", "ls", "-o", "json"]).ok().stdout;
    assert!(
        images.contains("\"tiny\"") && images.contains("\"tiny2\""),
        "{images}"
    );
    let nodes = cli(&["nodes", "-o", "json"]).ok().stdout;
    assert!(nodes.contains("\"a0\""), "{nodes}");
    // Why a job waits is known to the leader's scheduler only: a follower asks it for the
    // status of one job, so the reason shows through a follower too.
    let big = cli(&[
        "submit",
        "-q",
        "--allow-unplaceable",
        "--cpus",
        "4096",
        "--",
        "true",
    ])
    .ok()
    .stdout
    .trim()
    .to_string();
    let reason = util::wait_until(
        "the pending reason through a follower",
        Duration::from_secs(20),
        || {
            let (code, body) = ha.get(follower, &format!("/v1/jobs/{big}"))?;
            let v: Value = serde_json::from_str(&body).ok()?;
            assert_eq!(code, 200, "{body}");
            v["pending_reason"].as_str().map(String::from)
        },
    );
    assert!(reason.contains("4096"), "{reason}");
    let status = cli(&["status", &big]).ok().stdout;
    assert!(status.contains(&reason), "{status}");
    cli(&["kill", &big]).ok();
    // The web UI is served by a follower too (its API calls are same-origin, so they take the
    // same paths as the CLI's).
    let (code, page) = ha.get(follower, "/").expect("follower answers");
    assert!(code == 200 && page.contains("<html"), "{code} {page}");
    // Tokens hold on every path: a follower's own reads, and calls it would forward.
    let anon = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    for (method, path) in [
        ("GET", "/v1/servers"),
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
    ] {
        let r = anon
            .request(method, &format!("{only}{path}"))
            .send_string(r#"{"command": ["true"]}"#);
        match r {
            Err(ureq::Error::Status(401, _)) => {}
            other => panic!("{method} {path} without a token: {other:?}"),
        }
    }

    // A second server advertising a live member's URL is refused once the old registration
    // outlives a lease TTL (it could have been a previous run of the same server), and the
    // member keeps its registration.
    let dup_dir = tempfile::tempdir().expect("tempdir");
    let mut dup = std::process::Command::new(cluster_util::BIN);
    dup.args(["server", "--store", "etcd", "--etcd-prefix", "gaffer-test"])
        .args(["--etcd-endpoints", &ha.etcd_endpoints().join(",")])
        .args(["--listen", "127.0.0.1:0", "--lease-ttl", "2s"])
        .args(["--advertise", &ha.url(leader)])
        .arg("--data-dir")
        .arg(dup_dir.path());
    let out = util::run_cmd(dup, Duration::from_secs(30));
    assert!(
        out.code != 0 && out.stderr.contains("each server needs its own --advertise"),
        "{out:?}"
    );
    let v = ha.get_json("/v1/servers").expect("servers");
    let ids: Vec<&str> = v["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["url"].as_str())
        .collect();
    assert!(ids.contains(&ha.url(leader).as_str()), "{v}");
    // --lease-ttl counts whole seconds.
    let mut bad = std::process::Command::new(cluster_util::BIN);
    bad.args([
        "server",
        "--store",
        "etcd",
        "--etcd-endpoints",
        "http://127.0.0.1:9",
    ])
    .args(["--advertise", "http://127.0.0.1:1", "--lease-ttl", "500ms"])
    .arg("--data-dir")
    .arg(dup_dir.path());
    let out = util::run_cmd(bad, Duration::from_secs(30));
    assert!(
        out.code != 0 && out.stderr.contains("whole number of seconds"),
        "{out:?}"
    );

    // The agent was given every server; it is connected to the leader, whichever that is.
    let (code, _) = ha.get(leader, "/v1/nodes").expect("leader answers");
    assert_eq!(code, 200);

    // SIGTERM of the leader: it revokes its lease, so another is elected at once.
    let t0 = Instant::now();
    let status = ha.stop_server(leader);
    assert!(status.success(), "leader stops cleanly: {status}");
    let (new_leader, new_term) = ha.wait_leader(Some(leader), Duration::from_secs(20));
    let took = t0.elapsed();
    eprintln!("graceful stop of the leader: new leader after {took:?} (term {term} → {new_term})");
    assert!(new_term > term, "terms grow: {term} → {new_term}");
    assert_ne!(new_leader, leader);
    ha.wait_node_ready("a0", Duration::from_secs(30));
    let id2 = ha
        .gaffer(&["submit", "-q", "--", "echo", "after"])
        .ok()
        .stdout
        .trim()
        .to_string();
    ha.gaffer(&["wait", &id2]).ok();
    let v: Value = serde_json::from_str(&ha.gaffer(&["servers", "-o", "json"]).ok().stdout)
        .expect("servers json");
    assert_eq!(v["servers"].as_array().map(Vec::len), Some(2), "{v}");
}

/// The command of every job of the fail-over test: it records its start and end (also when it
/// is killed) in one shared file, so that overlapping attempts of one job can be found.
fn recorded_task(file: &std::path::Path) -> String {
    let f = file.display();
    format!(
        "trap 'echo \"end $GAFFER_JOB_ID $$\" >> {f}; exit 143' TERM; \
         echo \"start $GAFFER_JOB_ID $$\" >> {f}; sleep 0.3 & wait $!; \
         echo \"end $GAFFER_JOB_ID $$\" >> {f}"
    )
}

/// Submits job `n` until a server answers 201, rotating over the servers on connection errors
/// and 5xx; every try carries the same `Idempotency-Key`. Returns the id and when the try that
/// was accepted was sent.
fn submit_until_accepted(
    http: &ureq::Agent,
    urls: &[String],
    n: usize,
    shell: &str,
) -> (String, Instant) {
    let body = json!({"name": format!("ha-{n}"), "shell": shell,
                      "resources": {"cpus": 0.1, "memory": "32MiB"}});
    let key = format!("ha-test-{n}");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut k = n;
    loop {
        let url = format!("{}/v1/jobs", urls[k % urls.len()]);
        let sent = Instant::now();
        match http
            .post(&url)
            .set("Idempotency-Key", &key)
            .send_json(&body)
        {
            Ok(r) => {
                let v: Value = r.into_json().expect("submit answer");
                return (v["ids"][0].as_str().expect("id").to_string(), sent);
            }
            Err(ureq::Error::Status(code, r)) if code >= 500 => {
                let _ = r.into_string();
            }
            Err(ureq::Error::Status(code, r)) => {
                panic!("submit {n}: {code} {}", r.into_string().unwrap_or_default())
            }
            Err(ureq::Error::Transport(_)) => {}
        }
        assert!(Instant::now() < deadline, "submit {n} not accepted in 90 s");
        k += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn continuous_submits_survive_two_leader_kills_and_a_network_cut() {
    if !Ha::possible() {
        return;
    }
    const JOBS: usize = 1000;
    let mut ha = Ha::start(3, 2);
    let runs = ha.root().join("runs.log");
    let shell = recorded_task(&runs);
    let urls: Vec<String> = (0..3).map(|i| ha.url(i)).collect();
    let done = Arc::new(AtomicUsize::new(0));
    let accepted: Arc<Mutex<Vec<(usize, String, Instant)>>> = Arc::default();
    let client = {
        let (done, accepted, urls, shell) =
            (done.clone(), accepted.clone(), urls.clone(), shell.clone());
        std::thread::spawn(move || {
            let http = ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(1))
                .timeout(Duration::from_secs(3))
                .build();
            for n in 0..JOBS {
                let (id, sent) = submit_until_accepted(&http, &urls, n, &shell);
                accepted.lock().expect("lock").push((n, id, sent));
                done.store(n + 1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    let wait_done = |n: usize| {
        util::wait_until("submits to progress", Duration::from_secs(180), || {
            (done.load(Ordering::SeqCst) >= n).then_some(())
        })
    };
    // How long after `t` the first submit that was accepted was sent.
    let first_write_after = |t: Instant| {
        util::wait_until(
            "a submit accepted after the fault",
            Duration::from_secs(60),
            || {
                accepted
                    .lock()
                    .expect("lock")
                    .iter()
                    .find(|(_, _, at)| *at > t)
                    .map(|(_, _, at)| at.duration_since(t))
            },
        )
    };

    let mut report = Vec::new();
    for (round, at) in [(1, 150), (2, 400)] {
        wait_done(at);
        let (leader, term) = ha.wait_leader(None, Duration::from_secs(30));
        let t = Instant::now();
        ha.kill9_server(leader);
        let (l2, term2) = ha.wait_leader(Some(leader), Duration::from_secs(30));
        let elected = t.elapsed();
        let write = first_write_after(t);
        assert!(term2 > term);
        report.push(format!(
            "kill -9 #{round} of server {leader}: server {l2} leader after {elected:?}, first accepted submit after {write:?}"
        ));
        // As systemd would: the killed server comes back, as a follower.
        ha.start_server(leader);
    }

    wait_done(650);
    let (leader, term) = ha.wait_leader(None, Duration::from_secs(30));
    let t = Instant::now();
    ha.link(leader, false);
    let (l3, term3) = ha.wait_leader(Some(leader), Duration::from_secs(30));
    let elected = t.elapsed();
    let write = first_write_after(t);
    assert!(term3 > term);
    report.push(format!(
        "network cut of server {leader}: server {l3} leader after {elected:?}, first accepted submit after {write:?}"
    ));
    // The cut leader cannot renew its lease: it must step down on its own.
    let log = ha
        .root()
        .join(format!("server-{leader}-{}.err", ha.launches(leader)));
    util::wait_until("the cut leader steps down", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stepping down")
            .then_some(())
    });
    ha.link(leader, true);

    client.join().expect("client thread");
    for r in &report {
        eprintln!("fail-over: {r}");
    }

    // Every acknowledged job exists exactly once and succeeds.
    let accepted = accepted.lock().expect("lock").clone();
    assert_eq!(accepted.len(), JOBS);
    let ids: HashSet<&str> = accepted.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), JOBS, "two submits got the same id");
    let final_jobs = util::wait_until("every job final", Duration::from_secs(240), || {
        let page = ha.get_json("/v1/jobs?limit=10000")?;
        let jobs: Vec<(String, String)> = page["jobs"].as_array()?.iter().map(job_json).collect();
        jobs.iter()
            .all(|(_, s)| !matches!(s.as_str(), "pending" | "running"))
            .then_some(jobs)
    });
    assert_eq!(
        final_jobs.len(),
        JOBS,
        "every job exists once: no retried submit created a duplicate"
    );
    let states: HashMap<&str, &str> = final_jobs
        .iter()
        .map(|(id, s)| (id.as_str(), s.as_str()))
        .collect();
    let mut bad = Vec::new();
    for (n, id, _) in &accepted {
        match states.get(id.as_str()) {
            Some(&"succeeded") => {}
            other => bad.push(format!("ha-{n} {id}: {other:?}")),
        }
    }
    assert!(bad.is_empty(), "jobs not succeeded: {bad:?}");

    // No two attempts of one task ran at the same time: per job, starts and ends alternate.
    let text = std::fs::read_to_string(&runs).expect("runs log");
    let mut open: BTreeMap<String, u32> = BTreeMap::new();
    let mut runs_per_job: BTreeMap<String, u32> = BTreeMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(what), Some(job)) = (w.next(), w.next()) else {
            continue;
        };
        let c = open.entry(job.to_string()).or_default();
        match what {
            "start" => {
                assert_eq!(
                    *c, 0,
                    "job {job} started while another attempt ran:\n{line}"
                );
                *c = 1;
                *runs_per_job.entry(job.to_string()).or_default() += 1;
            }
            "end" => *c = 0,
            _ => {}
        }
    }
    assert_eq!(runs_per_job.len(), JOBS, "every job ran");
    let reruns = runs_per_job.values().filter(|&&r| r > 1).count();
    eprintln!("{reruns} of {JOBS} jobs ran more than once (attempts lost in a fail-over, never concurrently)");

    // The cut server is back as a follower once its link is up.
    let v = util::wait_until("three servers again", Duration::from_secs(60), || {
        let v = ha.get_json("/v1/servers")?;
        (v["servers"].as_array()?.len() == 3).then_some(v)
    });
    assert_eq!(
        v["term"].as_i64(),
        Some(term3),
        "no election after the cut: {v}"
    );
}

#[test]
fn a_frozen_leader_writes_nothing_after_it_is_replaced() {
    if !Ha::possible() {
        return;
    }
    let mut ha = Ha::start(3, 1);
    let (old, term) = ha.wait_leader(None, Duration::from_secs(30));
    let before = ha.get_json("/v1/jobs?limit=100").expect("jobs")["jobs"]
        .as_array()
        .map(Vec::len);
    // Freeze the leader past its lease: it cannot notice that it lost its role.
    let pid = nix::unistd::Pid::from_raw(ha.server_pid(old));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let (new, term2) = ha.wait_leader(Some(old), Duration::from_secs(30));
    assert!(term2 > term && new != old);
    // A submit sent straight to the deposed leader, which wakes up still believing it leads:
    // the write it attempts is refused by the fence and the job must not exist.
    let url = format!("{}/v1/jobs", ha.url(old));
    let sender = std::thread::spawn(move || {
        let http = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(15))
            .build();
        match http
            .post(&url)
            .send_json(json!({"name": "from-the-deposed", "command": ["true"]}))
        {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    let (code, body) = sender.join().expect("sender");
    eprintln!("submit to the deposed leader: {code} {body}");
    assert_ne!(code, 201, "a deposed leader accepted a write: {body}");
    // It steps down and comes back as a follower of the new leader.
    let log = ha
        .root()
        .join(format!("server-{old}-{}.err", ha.launches(old)));
    util::wait_until(
        "the deposed leader steps down",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("stepping down")
                .then_some(())
        },
    );
    let v = util::wait_until("three servers again", Duration::from_secs(30), || {
        let v = ha.get_json("/v1/servers")?;
        (v["servers"].as_array()?.len() == 3).then_some(v)
    });
    assert!(v["term"].as_i64() >= Some(term2), "{v}");
    let jobs = ha.get_json("/v1/jobs?limit=100").expect("jobs");
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), before, "{jobs}");
    assert!(!jobs.to_string().contains("from-the-deposed"));
    // The same submit through the cluster works.
    let id = ha
        .gaffer(&["submit", "-q", "--name", "after-freeze", "--", "true"])
        .ok()
        .stdout;
    ha.gaffer(&["wait", id.trim()]).ok();
}

/// Reads a child's stdout line by line into a channel.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `want`; returns every line up to it.
fn until_line(
    rx: &std::sync::mpsc::Receiver<String>,
    want: &str,
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = l.contains(want);
                seen.push(l);
                if done {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {want:?} within {timeout:?}; got {seen:?}");
}

#[test]
fn log_and_event_streams_resume_across_a_leader_kill() {
    if !Ha::possible() {
        return;
    }
    let mut ha = Ha::start(3, 1);
    let (leader, _) = ha.wait_leader(None, Duration::from_secs(30));
    ha.wait_node_ready("a0", Duration::from_secs(30));
    // 60 lines over about 12 s: the job outlives the fail-over.
    let id = ha
        .gaffer(&[
            "submit",
            "-q",
            "--shell",
            "for i in $(seq 1 60); do echo line-$i; sleep 0.2; done",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let spawn = |args: &[&str]| {
        let mut cmd = std::process::Command::new(cluster_util::BIN);
        cmd.env("GAFFER_ADDR", ha.all_urls())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("spawn gaffer")
    };
    let mut logs = spawn(&["logs", "-f", &id]);
    let mut events = spawn(&["events", "-f", "--after", "0", "--job", &id, "-o", "json"]);
    let log_rx = lines_of(&mut logs);
    let ev_rx = lines_of(&mut events);
    let mut got = until_line(&log_rx, "line-3", Duration::from_secs(30));
    let mut evs = until_line(&ev_rx, "\"to\":\"running\"", Duration::from_secs(30));
    let v = ha.get_json(&format!("/v1/jobs/{id}")).expect("status");
    assert_eq!(v["state"], "running", "the job outlives the kill: {v}");

    let sleeper = ha
        .gaffer(&["submit", "-q", "--", "sleep", "600"])
        .ok()
        .stdout
        .trim()
        .to_string();

    ha.kill9_server(leader);
    let t0 = Instant::now();
    // A kill sent during the election is retried (it is idempotent) until a leader takes it.
    ha.gaffer(&["kill", &sleeper]).ok();
    let v = util::wait_until("the killed job to end", Duration::from_secs(60), || {
        let v = ha.get_json(&format!("/v1/jobs/{sleeper}"))?;
        (v["state"] != "pending" && v["state"] != "running").then_some(v)
    });
    assert_eq!(v["state"], "killed", "{v}");
    // `logs -f` resumes on the same attempt at the byte it broke at and ends with the job.
    let status = util::wait_child(&mut logs, Duration::from_secs(90)).expect("logs -f ends");
    got.extend(log_rx.try_iter());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut logs.stderr.take().expect("stderr"), &mut err).ok();
    eprintln!("logs -f ended {:?} after the kill: {err}", t0.elapsed());
    assert!(status.success(), "logs -f: {status}; stderr: {err}");
    let want: Vec<String> = (1..=60).map(|i| format!("line-{i}")).collect();
    assert_eq!(got, want, "stderr: {err}");
    // `events -f` resumes after its last event: the end of the job arrives, nothing twice.
    evs.extend(until_line(&ev_rx, "\"succeeded\"", Duration::from_secs(60)));
    let _ = events.kill();
    let _ = events.wait();
    let ids: Vec<u64> = evs
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("event JSON");
            v["id"].as_u64().expect("event id")
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let v = ha.get_json(&format!("/v1/jobs/{id}")).expect("status");
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(
        v["task_list"][0]["attempts"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
}
