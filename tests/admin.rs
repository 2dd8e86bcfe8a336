//! `gaffer admin snapshot` / `gaffer admin restore` with real processes and real stores: a real
//! `gaffer dev` fills a SQLite store, the state goes SQLite → file → etcd (a real `etcd` started
//! here) → file → SQLite, and a new `gaffer dev` on the result must show every job, task,
//! attempt and event as the first one did, and hand out the next ids. Then the refusals: a
//! non-empty destination, a data directory in use, an etcd cluster with a leader, and damaged
//! snapshot files, each with a message that names the problem (and never a panic).
//!
//! Everything started here listens on 127.0.0.1 ports 40000-40999 and is killed on drop.

mod util;

use gaffer_api::state::TaskCounts;
use gaffer_api::views::{AttemptView, EventView};
use gaffer_api::{JobId, JobSpec, JobState, TaskState};
use gaffer_store::etcd::EtcdStore;
use gaffer_store::sqlite::SqliteStore;
use gaffer_store::{ActiveState, Batch, JobRow, Store, TaskRow};
use serde_json::{json, Value};
use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use util::{http_result, kill_leftovers, run_cmd, wait_child, wait_until, Out, BIN};

const CMD_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- ports, etcd, gaffer dev

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A port in 40000-40999 that is free right now (spread by pid, so that test binaries running
/// side by side rarely try the same ones).
fn port() -> u16 {
    let base = std::process::id() % 1000;
    for _ in 0..1000 {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        // 7 and 1000 are coprime: every port of the range comes up once per 1000 calls.
        let p = 40_000 + ((base + n * 7) % 1000) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port in 40000-40999");
}

fn http() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .build()
}

/// A real single-member etcd on free ports with its own data directory; killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Etcd {
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("gaffer-admin-etcd-")
                .tempdir()
                .expect("tempdir");
            let (cp, pp) = (port(), port());
            let client = format!("http://127.0.0.1:{cp}");
            let peer = format!("http://127.0.0.1:{pp}");
            let log = dir.path().join("etcd.log");
            let mut child = Command::new("etcd")
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("default={peer}")])
                .stdout(Stdio::null())
                .stderr(File::create(&log).expect("etcd log"))
                .spawn()
                .expect("start etcd (the etcd-server package provides /usr/bin/etcd)");
            let deadline = Instant::now() + Duration::from_secs(30);
            let agent = http();
            while Instant::now() < deadline {
                let healthy = agent
                    .get(&format!("{client}/health"))
                    .call()
                    .ok()
                    .and_then(|r| r.into_string().ok())
                    .is_some_and(|b| b.contains("\"health\":\"true\""));
                if healthy {
                    return Etcd {
                        child,
                        endpoint: client,
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // most likely a port was taken meanwhile: try others
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            last = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("etcd did not become healthy: {last}");
    }

    /// Puts a key through etcd's JSON gateway.
    fn put(&self, key: &str, value: &str) {
        let body = json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())});
        let (code, text) = http_result(
            http()
                .post(&format!("{}/v3/kv/put", self.endpoint))
                .send_string(&body.to_string()),
        );
        assert_eq!(code, 200, "etcd put {key}: {text}");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A `gaffer dev` on a given data directory; killed (with every task it started) on drop.
struct Dev {
    child: Option<Child>,
    addr: String,
    root: PathBuf,
    launches: u32,
}

impl Dev {
    fn start(root: &Path, data: &Path) -> Dev {
        let mut dev = Dev {
            child: None,
            addr: String::new(),
            root: root.to_path_buf(),
            launches: 0,
        };
        let mut last = String::new();
        for _ in 0..5 {
            dev.launches += 1;
            let p = port();
            let err = root.join(format!("dev-{}.err", dev.launches));
            let mut child = Command::new(BIN)
                .arg("dev")
                .arg("--no-bridge")
                .arg("--data-dir")
                .arg(data)
                .arg("--listen")
                .arg(format!("127.0.0.1:{p}"))
                .current_dir(root)
                .stdin(Stdio::null())
                .stdout(File::create(root.join(format!("dev-{}.out", dev.launches))).expect("log"))
                .stderr(File::create(&err).expect("log"))
                .spawn()
                .expect("spawn gaffer dev");
            let url = format!("http://127.0.0.1:{p}/healthz");
            let deadline = Instant::now() + Duration::from_secs(20);
            let agent = http();
            loop {
                if let Some(st) = child.try_wait().expect("try_wait") {
                    last = format!(
                        "gaffer dev exited with {st}: {}",
                        std::fs::read_to_string(&err).unwrap_or_default()
                    );
                    break;
                }
                if agent.get(&url).call().is_ok_and(|r| r.status() == 200) {
                    dev.addr = format!("http://127.0.0.1:{p}");
                    dev.child = Some(child);
                    return dev;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "gaffer dev did not become ready: {}",
                        std::fs::read_to_string(&err).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !last.contains("cannot listen") {
                break;
            }
        }
        panic!("could not start gaffer dev: {last}");
    }

    /// SIGTERM, and wait for the exit (the store is closed after that).
    fn stop(&mut self) {
        let mut c = self.child.take().expect("dev is running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM gaffer dev");
        if wait_child(&mut c, Duration::from_secs(30)).is_none() {
            let _ = c.kill();
            let _ = c.wait();
            panic!("gaffer dev did not exit within 30 s of SIGTERM");
        }
    }

    fn get(&self, path: &str) -> Value {
        let (code, body) = http_result(http().get(&format!("{}{path}", self.addr)).call());
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    fn post(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = http()
            .post(&format!("{}{path}", self.addr))
            .set("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let (code, text) = http_result(req.send_string(&body.to_string()));
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn submit(&self, spec: Value) -> String {
        self.submit_with(spec, &[])
    }

    fn submit_with(&self, spec: Value, headers: &[(&str, &str)]) -> String {
        // Some of its jobs are never placed on purpose.
        let (code, v) = self.post("/v1/jobs?allow_unplaceable=true", &spec, headers);
        assert_eq!(code, 201, "submit {spec}: {v}");
        v["ids"][0].as_str().expect("an id").to_string()
    }

    fn wait_state(&self, id: &str, pred: impl Fn(&str) -> bool) -> Value {
        wait_until(&format!("job {id}"), Duration::from_secs(60), || {
            let j = self.get(&format!("/v1/jobs/{id}"));
            pred(j["state"].as_str().unwrap_or("")).then_some(j)
        })
    }

    fn wait_final(&self, id: &str) -> Value {
        self.wait_state(id, |s| matches!(s, "succeeded" | "failed" | "killed"))
    }

    /// Every job (with all its tasks and attempts), oldest first, and every event.
    fn everything(&self) -> (Vec<Value>, Vec<Value>) {
        let list = self.get("/v1/jobs?limit=10000");
        let mut jobs: Vec<Value> = list["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .map(|j| {
                let id = j["id"].as_str().expect("id");
                self.get(&format!("/v1/jobs/{id}?tasks_limit=100000"))
            })
            .collect();
        jobs.reverse();
        (jobs, self.events_after(0))
    }

    fn events_after(&self, after: u64) -> Vec<Value> {
        let mut cmd = Command::new(BIN);
        cmd.args(["events", "-o", "json", "--after", &after.to_string()])
            .env("GAFFER_ADDR", &self.addr);
        let out = run_cmd(cmd, CMD_TIMEOUT).ok();
        out.stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("an event per line"))
            .collect()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_leftovers(&self.root);
    }
}

// ---------------------------------------------------------------- the CLI

/// `gaffer ARGS` (no server involved).
fn gaffer(args: &[&str]) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("GAFFER_ETCD_ENDPOINTS");
    run_cmd(cmd, CMD_TIMEOUT)
}

/// `gaffer ARGS` with `input` on standard input.
fn gaffer_stdin(args: &[&str], input: &[u8]) -> Out {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("GAFFER_ETCD_ENDPOINTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gaffer");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let deadline = Instant::now() + CMD_TIMEOUT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gaffer {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().expect("stdin writer");
    let out = child.wait_with_output().expect("output");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A refusal: exit status 1 (not a panic's 101), a message holding every one of `needles`.
fn refused(out: &Out, needles: &[&str]) {
    assert_eq!(out.code, 1, "expected a clean refusal: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "the message should mention `{n}`: {}",
            out.stderr
        );
    }
}

fn etcd_args<'a>(etcd: &'a Etcd, prefix: &'a str) -> [&'a str; 6] {
    [
        "--store",
        "etcd",
        "--etcd-endpoints",
        &etcd.endpoint,
        "--etcd-prefix",
        prefix,
    ]
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Every line of a snapshot but the header (which names the source and the time).
fn body(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("read snapshot");
    assert!(text.starts_with("{\"gaffer_snapshot\":1,"), "{file:?}");
    text.lines().skip(1).map(str::to_string).collect()
}

/// The `end` record of a snapshot.
fn end_record(file: &Path) -> Value {
    let text = std::fs::read_to_string(file).expect("read snapshot");
    let last = text.lines().last().expect("a line");
    serde_json::from_str::<Value>(last).expect("JSON")["end"].clone()
}

/// `load_active`, in a comparable shape.
fn active(s: &dyn Store) -> (Vec<JobRow>, Vec<TaskRow>, u64, u64) {
    let ActiveState {
        mut jobs,
        mut tasks,
        next_job_id,
        next_event_id,
        // Not in a snapshot: a restored cluster hands node subnets out anew.
        node_subnets: _,
    } = s.load_active().expect("load_active");
    jobs.sort_by_key(|j| j.id);
    tasks.sort_by_key(|t| (t.job, t.index));
    (jobs, tasks, next_job_id, next_event_id)
}

// ---------------------------------------------------------------- the round trip

#[test]
fn sqlite_to_etcd_to_sqlite_keeps_every_job_task_attempt_and_event() {
    let tmp = tempfile::Builder::new()
        .prefix("gaffer-admin-")
        .tempdir()
        .expect("tempdir");
    let root = tmp.path();
    let (data_a, data_b) = (root.join("a"), root.join("b"));
    let (snap1, snap2, snap3) = (
        root.join("one.snap"),
        root.join("two.snap"),
        root.join("three.snap"),
    );

    // 1. A real gaffer dev leaves jobs in every kind of state.
    let mut dev = Dev::start(root, &data_a);
    let ok = dev.submit(json!({"name": "ok", "command": ["/bin/sh", "-c", "echo ok"]}));
    let flaky = dev.submit(json!({
        "name": "flaky", "shell": "echo try >&2; exit 3", "retries": 2, "retry_backoff": "100ms"
    }));
    let array = dev.submit(json!({
        "name": "array", "shell": "echo task $GAFFER_TASK_INDEX", "array": 3,
        "resources": {"cpus": 0.1}, "env": {"A": "1"}
    }));
    let killed = dev.submit(json!({"name": "killed", "command": ["sleep", "60"]}));
    dev.wait_state(&killed, |s| s == "running");
    let (code, v) = dev.post(&format!("/v1/jobs/{killed}/kill"), &json!({}), &[]);
    assert!(code < 300, "kill: {v}");
    // Never placed (no node that large), with a lazy array of 4 tasks; and one held behind it.
    let huge = dev.submit(json!({
        "name": "huge", "command": ["true"], "array": 4, "resources": {"cpus": 4096}
    }));
    let held = dev.submit(json!({"name": "held", "command": ["true"], "depends_on": [huge]}));
    let idem = dev.submit_with(
        json!({"name": "idem", "command": ["true"]}),
        &[("Idempotency-Key", "admin-test-key")],
    );
    let after_flaky = dev.submit(json!({
        "name": "after-flaky", "command": ["true"], "depends_on": [flaky]
    }));
    for id in [&ok, &flaky, &array, &killed, &idem, &after_flaky] {
        dev.wait_final(id);
    }
    // The newest job is deleted: the job counter must survive it (no id is handed out twice).
    let gone = dev.submit(json!({"name": "gone", "command": ["true"]}));
    dev.wait_final(&gone);
    let (code, text) = http_result(
        http()
            .delete(&format!("{}/v1/jobs/{gone}", dev.addr))
            .call(),
    );
    assert!(code < 300, "rm {gone}: {text}");

    let (jobs_before, events_before) = dev.everything();
    assert_eq!(jobs_before.len(), 8, "{jobs_before:#?}");
    let by_name = |name: &str| -> &Value {
        jobs_before
            .iter()
            .find(|j| j["name"] == name)
            .unwrap_or_else(|| panic!("job {name}"))
    };
    assert_eq!(by_name("flaky")["state"], "failed");
    assert_eq!(
        by_name("flaky")["task_list"][0]["attempts"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_eq!(by_name("killed")["state"], "killed");
    assert_eq!(by_name("huge")["state"], "pending");
    assert_eq!(by_name("held")["state"], "pending");
    assert_eq!(by_name("after-flaky")["state"], "failed");
    assert_eq!(by_name("array")["tasks"]["succeeded"], 3);
    dev.stop();

    // 2. SQLite → file.
    let out = gaffer(&[
        "admin",
        "snapshot",
        "--data-dir",
        path(&data_a),
        path(&snap1),
    ])
    .ok();
    assert!(
        out.stdout.starts_with("snapshot: 8 jobs,") && out.stdout.contains(path(&snap1)),
        "{out:?}"
    );
    let end = end_record(&snap1);
    assert_eq!(end["jobs"], 8, "{end}");
    assert_eq!(
        end["next_job_id"].as_u64(),
        Some(10),
        "j-000009 was the last id handed out: {end}"
    );
    assert_eq!(end["idempotency_keys"], 1, "{end}");
    let next_event_id = end["next_event_id"].as_u64().expect("next_event_id");
    let last_event = events_before.last().expect("events")["id"]
        .as_u64()
        .expect("id");
    assert!(
        next_event_id > last_event + 1,
        "the deleted job's events were the newest ones: {next_event_id} vs {last_event}"
    );
    // No temporary file is left next to the snapshot.
    let names: Vec<String> = std::fs::read_dir(root)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");

    // 3. File → etcd → file.
    let etcd = Etcd::start();
    let e = etcd_args(&etcd, "/restored");
    let mut args = vec!["admin", "restore"];
    args.extend_from_slice(&e);
    args.push(path(&snap1));
    let out = gaffer(&args).ok();
    assert!(
        out.stdout.starts_with("restore: 8 jobs,")
            && out.stdout.contains("etcd")
            && out.stdout.contains("next job id j-000010"),
        "{out:?}"
    );
    let mut args = vec!["-o", "json", "admin", "snapshot"];
    args.extend_from_slice(&e);
    args.push(path(&snap2));
    let out = gaffer(&args).ok();
    let summary: Value = serde_json::from_str(out.stdout.trim()).expect("JSON summary");
    assert_eq!(summary["command"], "snapshot");
    assert_eq!(summary["jobs"], 8);
    assert_eq!(summary["next_job_id"], 10);
    assert_eq!(
        body(&snap1),
        body(&snap2),
        "SQLite and etcd snapshots of the same state must be identical past the header"
    );

    // 4. File → a fresh SQLite directory; its snapshot is the same again.
    gaffer(&[
        "admin",
        "restore",
        "--data-dir",
        path(&data_b),
        path(&snap2),
    ])
    .ok();
    gaffer(&[
        "admin",
        "snapshot",
        "--data-dir",
        path(&data_b),
        path(&snap3),
    ])
    .ok();
    assert_eq!(body(&snap1), body(&snap3));

    // 5. The three stores load the same active state (what a server starts from).
    {
        let a = SqliteStore::open(&data_a.join("state.db")).expect("open a");
        let b = SqliteStore::open(&data_b.join("state.db")).expect("open b");
        let et =
            EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "/restored").expect("connect");
        let want = active(&a);
        assert_eq!(want.0.len(), 2, "huge and held are active: {:?}", want.0);
        assert_eq!(want.2, 10);
        assert_eq!(active(&et), want);
        assert_eq!(active(&b), want);
    }

    // 6. A gaffer dev on the restored directory shows exactly the same history.
    let mut dev = Dev::start(root, &data_b);
    let (jobs_after, events_after) = dev.everything();
    assert_eq!(jobs_after, jobs_before);
    assert_eq!(events_after, events_before);
    // Ids continue from the snapshot's counters, and the idempotency key still holds.
    let new = dev.submit(json!({"name": "new", "command": ["true"]}));
    assert_eq!(new, "j-000010");
    dev.wait_final(&new);
    let fresh = dev.events_after(last_event);
    assert_eq!(fresh[0]["id"].as_u64(), Some(next_event_id), "{fresh:?}");
    assert_eq!(fresh[0]["job"], "j-000010");
    assert_eq!(fresh[0]["to"], "submitted");
    assert!(fresh.iter().all(|e| e["job"] == "j-000010"), "{fresh:?}");
    let again = dev.submit_with(
        json!({"name": "idem", "command": ["true"]}),
        &[("Idempotency-Key", "admin-test-key")],
    );
    assert_eq!(
        again, idem,
        "the idempotency key must survive the round trip"
    );
    assert_eq!(
        dev.get("/v1/jobs?limit=100")["jobs"]
            .as_array()
            .map(Vec::len),
        Some(9)
    );
    // The held job still waits for the huge one.
    assert_eq!(dev.get(&format!("/v1/jobs/{held}"))["state"], "pending");
    dev.stop();
}

// ---------------------------------------------------------------- refusals

/// A small state written straight into a SQLite store.
fn fill(dir: &Path, jobs: u64) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let s = SqliteStore::open(&dir.join("state.db")).expect("open");
    let mut b = Batch::default();
    let mut event = 1;
    for id in 1..=jobs {
        let done = id % 2 == 0;
        b.insert_jobs.push(JobRow {
            id: JobId(id),
            name: format!("job-{id}"),
            spec: JobSpec {
                command: vec!["true".into()],
                array: Some(2),
                ..Default::default()
            },
            state: if done {
                JobState::Succeeded
            } else {
                JobState::Pending
            },
            counts: TaskCounts {
                total: 2,
                pending: if done { 0 } else { 2 },
                succeeded: if done { 2 } else { 0 },
                started: if done { 2 } else { 0 },
                ..Default::default()
            },
            created_at: 1_000 + id,
            finished_at: done.then_some(2_000 + id),
            kill_requested: false,
            held: false,
            next_fresh: if done { 2 } else { 0 },
        });
        if done {
            for index in 0..2 {
                b.tasks.push(TaskRow {
                    job: JobId(id),
                    index,
                    state: TaskState::Succeeded,
                    attempts: 1,
                    lost: 0,
                    node: Some("n1".into()),
                    not_before: None,
                });
                b.attempts.push((
                    JobId(id),
                    index,
                    AttemptView {
                        attempt: 1,
                        node: "n1".into(),
                        state: TaskState::Succeeded,
                        started_at: Some(1_500),
                        ended_at: Some(1_600),
                        exit_code: Some(0),
                        signal: None,
                        message: Some("exit code 0".into()),
                        max_rss_bytes: Some(1 << 20),
                        // Not exactly representable in few digits: must come back bit for bit.
                        cpu_secs: Some(0.1 + 0.2),
                        outputs: vec!["out/a.csv".into()],
                        ip: None,
                        ports: Vec::new(),
                        ready: None,
                    },
                ));
            }
        }
        b.events.push(EventView {
            id: event,
            time: 1_000 + id,
            job: JobId(id),
            task: None,
            attempt: None,
            from: None,
            to: "submitted".into(),
            detail: "2 task(s)".into(),
        });
        event += 1;
    }
    b.idempotency.push(("key-1".into(), vec![JobId(1)]));
    b.next_job_id = Some(jobs + 1);
    b.next_event_id = Some(event);
    s.commit(&b).expect("commit");
}

#[test]
fn restore_refuses_a_non_empty_store_a_data_dir_in_use_and_an_etcd_cluster_with_a_leader() {
    let tmp = tempfile::Builder::new()
        .prefix("gaffer-admin-")
        .tempdir()
        .expect("tempdir");
    let root = tmp.path();
    let src = root.join("src");
    fill(&src, 6);
    let snap = root.join("state.snap");
    gaffer(&["admin", "snapshot", "--data-dir", path(&src), path(&snap)]).ok();

    // Into the store it came from: not empty, never merged.
    let out = gaffer(&["admin", "restore", "--data-dir", path(&src), path(&snap)]);
    refused(
        &out,
        &["is not empty", "6 job(s)", "never merges", "--data-dir"],
    );

    // A snapshot needs an existing state database.
    let out = gaffer(&[
        "admin",
        "snapshot",
        "--data-dir",
        path(&root.join("nowhere")),
        path(&root.join("x.snap")),
    ]);
    refused(&out, &["there is no state database", "--data-dir"]);
    assert!(!root.join("x.snap").exists());

    // A data directory a gaffer dev runs on: both refuse, and name the reason.
    let live = root.join("live");
    let mut dev = Dev::start(root, &live);
    let out = gaffer(&["admin", "restore", "--data-dir", path(&live), path(&snap)]);
    refused(
        &out,
        &["cannot restore", "in use by another gaffer process"],
    );
    let out = gaffer(&[
        "admin",
        "snapshot",
        "--data-dir",
        path(&live),
        path(&root.join("live.snap")),
    ]);
    refused(
        &out,
        &["cannot snapshot", "in use by another gaffer process"],
    );
    assert!(!root.join("live.snap").exists());
    dev.stop();
    // Once it stopped, the directory (a store that never had a job) takes the restore.
    gaffer(&["admin", "restore", "--data-dir", path(&live), path(&snap)]).ok();

    // Standard output and standard input work as files do.
    let out = gaffer(&["admin", "snapshot", "--data-dir", path(&src), "-"]).ok();
    assert!(out.stdout.starts_with("{\"gaffer_snapshot\":1,"));
    assert!(out.stderr.contains("snapshot: 6 jobs"), "{out:?}");
    let piped = root.join("piped");
    let r = gaffer_stdin(
        &[
            "-o",
            "json",
            "admin",
            "restore",
            "--data-dir",
            path(&piped),
            "-",
        ],
        out.stdout.as_bytes(),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let summary: Value = serde_json::from_str(r.stdout.trim()).expect("JSON summary");
    assert_eq!(summary["jobs"], 6);
    assert_eq!(summary["file"], "standard input");
    gaffer(&[
        "admin",
        "snapshot",
        "--data-dir",
        path(&piped),
        path(&root.join("piped.snap")),
    ])
    .ok();
    assert_eq!(body(&snap), body(&root.join("piped.snap")));

    // etcd: a second restore into the same prefix is refused; another prefix is fine.
    let etcd = Etcd::start();
    let mut args = vec!["admin", "restore"];
    args.extend_from_slice(&etcd_args(&etcd, "one"));
    args.push(path(&snap));
    gaffer(&args).ok();
    let out = gaffer(&args);
    refused(&out, &["is not empty", "prefix one", "--etcd-prefix"]);

    // A prefix whose cluster has a leader: every write is fenced, nothing is written.
    etcd.put("two/leader", "{\"id\":\"s1:6464\"}");
    let mut args = vec!["admin", "restore"];
    args.extend_from_slice(&etcd_args(&etcd, "two"));
    args.push(path(&snap));
    let out = gaffer(&args);
    refused(&out, &["is leader", "two/leader", "stop every server"]);
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "two").expect("connect");
    assert_eq!(
        store
            .count_jobs()
            .expect("count")
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>(),
        0,
        "a refused restore writes nothing"
    );
    // A snapshot is refused too while a server leads, unless forced; an empty prefix warns.
    let two_snap = root.join("two.snap");
    let mut args = vec!["admin", "snapshot"];
    args.extend_from_slice(&etcd_args(&etcd, "two"));
    args.push(path(&two_snap));
    refused(
        &gaffer(&args),
        &["leads the cluster", "prefix two", "--force"],
    );
    assert!(!two_snap.exists());
    args.push("--force");
    let out = gaffer(&args).ok();
    assert!(
        out.stderr.contains("holds no gaffer state") && out.stderr.contains("--etcd-prefix two"),
        "{out:?}"
    );
    assert!(two_snap.exists());

    // Missing endpoints, and an unreachable etcd.
    let out = gaffer(&[
        "admin",
        "snapshot",
        "--store",
        "etcd",
        path(&root.join("e.snap")),
    ]);
    refused(&out, &["--etcd-endpoints"]);
    let dead = format!("http://127.0.0.1:{}", port());
    let out = gaffer(&[
        "admin",
        "snapshot",
        "--store",
        "etcd",
        "--etcd-endpoints",
        &dead,
        path(&root.join("e.snap")),
    ]);
    refused(&out, &["cannot open the store", &dead]);
}

// ---------------------------------------------------------------- damaged files

#[test]
fn damaged_snapshots_are_refused_with_the_line_and_nothing_is_written() {
    let tmp = tempfile::Builder::new()
        .prefix("gaffer-admin-")
        .tempdir()
        .expect("tempdir");
    let root = tmp.path();
    let src = root.join("src");
    fill(&src, 4);
    let snap = root.join("good.snap");
    gaffer(&["admin", "snapshot", "--data-dir", path(&src), path(&snap)]).ok();
    let good = std::fs::read(&snap).expect("read");
    let text = String::from_utf8(good.clone()).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    assert!(n > 10, "{text}");
    let with_line = |i: usize, new: &str| -> Vec<u8> {
        let mut l = lines.clone();
        l[i] = new;
        (l.join("\n") + "\n").into_bytes()
    };
    let attempt_line = lines
        .iter()
        .position(|l| l.starts_with("{\"attempt\":"))
        .expect("an attempt line");
    let mut reordered = lines.clone();
    let first_event = lines
        .iter()
        .position(|l| l.starts_with("{\"event\":"))
        .expect("an event line");
    reordered.swap(first_event, first_event + 1);

    let cases: Vec<(&str, Vec<u8>, Vec<String>)> = vec![
        (
            "cut in the middle of a line",
            good[..good.len() / 2].to_vec(),
            vec!["line".into(), "cut off".into(), "truncated".into()],
        ),
        (
            "cut at a line end, without the end record",
            (lines[..n - 1].join("\n") + "\n").into_bytes(),
            vec![format!("ends at line {}", n - 1), "truncated".into()],
        ),
        (
            "a garbled record",
            with_line(2, "{\"job\":{\"id\":\"j-000009\",\"name\":"),
            vec!["line 3".into(), "cut off".into()],
        ),
        (
            "an unknown record",
            with_line(2, "{\"jobb\":{}}"),
            vec!["line 3".into(), "unknown variant `jobb`".into()],
        ),
        (
            "a field of the wrong type",
            with_line(
                attempt_line,
                &lines[attempt_line].replace("\"attempt\":1", "\"attempt\":\"one\""),
            ),
            vec![format!("line {}", attempt_line + 1), "invalid type".into()],
        ),
        (
            "a changed value (valid JSON)",
            with_line(
                attempt_line,
                &lines[attempt_line].replace("exit code 0", "exit code 1"),
            ),
            vec![
                format!("line {n}"),
                "checksum mismatch".into(),
                "damaged".into(),
            ],
        ),
        (
            "events out of order",
            (reordered.join("\n") + "\n").into_bytes(),
            vec![
                format!("line {}", first_event + 2),
                "increasing id order".into(),
            ],
        ),
        (
            "data after the end record",
            [good.clone(), b"{\"job\":{}}\n".to_vec()].concat(),
            vec![format!("line {}", n + 1), "after the end record".into()],
        ),
        (
            "not a snapshot",
            b"hello world\n".to_vec(),
            vec!["line 1".into(), "not a gaffer snapshot".into()],
        ),
        (
            "a newer format",
            with_line(0, "{\"gaffer_snapshot\":2}"),
            vec!["line 1".into(), "version 2 is not supported".into()],
        ),
        ("an empty file", Vec::new(), vec!["is empty".into()]),
        (
            "bytes that are not UTF-8",
            [
                lines[..3].join("\n").into_bytes(),
                b"\n\xff\xfe\x00garbage\n".to_vec(),
            ]
            .concat(),
            vec!["line 4".into()],
        ),
    ];
    let dest = root.join("dest");
    for (what, bytes, needles) in &cases {
        let file = root.join("bad.snap");
        std::fs::write(&file, bytes).expect("write");
        let out = gaffer(&["admin", "restore", "--data-dir", path(&dest), path(&file)]);
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        assert_eq!(out.code, 1, "{what}: {out:?}");
        refused(&out, &needles);
        assert!(
            out.stderr.contains(path(&file)),
            "{what}: the message names the file: {}",
            out.stderr
        );
        // Checked before the destination is even opened.
        assert!(!dest.exists(), "{what}: the destination was touched");
    }
    // From standard input, the message says so.
    let out = gaffer_stdin(
        &["admin", "restore", "--data-dir", path(&dest), "-"],
        &good[..good.len() - 20],
    );
    refused(&out, &["standard input line", "cut off"]);
    assert!(!dest.exists());
    // The good file still restores.
    gaffer(&["admin", "restore", "--data-dir", path(&dest), path(&snap)]).ok();
}
