//! Harness for the black-box tests: starts a real `gaffer dev` in its own temporary directory on
//! a free port, runs the real CLI against it, talks to its REST API with ureq, and cleans up every
//! process it started (the server, the shims and the tasks) when dropped.

#![allow(dead_code)]

pub mod net;

use serde_json::Value;
use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_gaffer");

/// How long to wait for the server to answer /healthz.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Default deadline for a job to reach a final state.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Polls `f` until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A finished CLI run.
#[derive(Debug)]
pub struct Out {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    /// Panics with everything printed unless the exit code is 0.
    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }
}

/// Runs `cmd` to completion with piped output, killing it and panicking after `timeout`.
pub fn run_cmd(mut cmd: Command, timeout: Duration) -> Out {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn command");
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t1 = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let status = wait_child(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {timeout:?}");
    });
    let stdout = String::from_utf8_lossy(&t1.join().expect("stdout reader")).into_owned();
    let stderr = String::from_utf8_lossy(&t2.join().expect("stderr reader")).into_owned();
    Out {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

/// Waits for a child to exit, at most `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Status code and body of an HTTP exchange; panics on transport errors.
pub fn http_result(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(resp) => {
            let code = resp.status();
            (code, resp.into_string().expect("read body"))
        }
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
        Err(e) => panic!("HTTP transport error: {e}"),
    }
}

/// An HTTP agent with bounded timeouts.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(Duration::from_secs(30))
        .timeout_write(Duration::from_secs(30))
        .build()
}

/// A running `gaffer dev`, its temporary directory and everything it started.
pub struct Dev {
    /// The temporary directory holding the data dir, logs and scratch files.
    pub tmp: tempfile::TempDir,
    /// `--data-dir`.
    pub data: PathBuf,
    /// Current port.
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    extra: Vec<String>,
    child: Option<Child>,
    launches: u32,
    http: ureq::Agent,
}

impl Dev {
    /// Starts `gaffer dev` with default options.
    pub fn start() -> Dev {
        Dev::start_with(&[])
    }

    /// Starts `gaffer dev` with extra arguments (e.g. `--cpus 2`) and `--no-bridge`: the tests
    /// share this machine's network namespace, and two agents offering the bridge network in
    /// one would share its bridge and nftables table. Tests of the bridge use
    /// [`Dev::start_bridged`] in a namespace of their own.
    pub fn start_with(extra: &[&str]) -> Dev {
        let mut args = vec!["--no-bridge"];
        args.extend_from_slice(extra);
        Dev::launched(&args)
    }

    /// Starts `gaffer dev` offering the bridge network (the default for its containers). Only
    /// for a test in a network namespace of its own (see `util::net::isolated`).
    pub fn start_bridged() -> Dev {
        Dev::launched(&[])
    }

    fn launched(extra: &[&str]) -> Dev {
        let tmp = tempfile::Builder::new()
            .prefix("gaffer-it-")
            .tempdir()
            .expect("tempdir");
        let data = tmp.path().join("data");
        let mut dev = Dev {
            data,
            port: 0,
            addr: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            launches: 0,
            http: agent(),
            tmp,
        };
        dev.launch();
        dev
    }

    /// Path of the temporary directory.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// Files the dev process's stdout and stderr of launch `n` (1-based) go to.
    pub fn log_files(&self, n: u32) -> (PathBuf, PathBuf) {
        (
            self.root().join(format!("dev-{n}.out")),
            self.root().join(format!("dev-{n}.err")),
        )
    }

    /// The dev process's stdout of the current launch.
    pub fn dev_stdout(&self) -> String {
        std::fs::read_to_string(self.log_files(self.launches).0).unwrap_or_default()
    }

    /// The dev process's stderr of the current launch.
    pub fn dev_stderr(&self) -> String {
        std::fs::read_to_string(self.log_files(self.launches).1).unwrap_or_default()
    }

    /// Pid of the dev process.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("dev is running").id() as i32
    }

    /// A `gaffer dev` command on this data dir and `port`.
    pub fn dev_command(&self, port: u16) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("dev")
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(&self.extra)
            .current_dir(self.root())
            .env("GAFFER_LOG", "info");
        cmd
    }

    /// (Re)starts the dev process on the data dir, on a fresh port, and waits for /healthz.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "dev is already running");
        let mut last_err = String::new();
        for _ in 0..5 {
            self.launches += 1;
            let port = free_port();
            let (out, err) = self.log_files(self.launches);
            let mut cmd = self.dev_command(port);
            cmd.stdin(Stdio::null())
                .stdout(File::create(&out).expect("dev stdout file"))
                .stderr(File::create(&err).expect("dev stderr file"));
            let mut child = cmd.spawn().expect("spawn gaffer dev");
            let url = format!("http://127.0.0.1:{port}/healthz");
            let deadline = Instant::now() + READY_TIMEOUT;
            let quick = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(2))
                .build();
            loop {
                if let Some(status) = child.try_wait().expect("try_wait dev") {
                    last_err = format!(
                        "gaffer dev exited with {status}: {}",
                        std::fs::read_to_string(&err).unwrap_or_default()
                    );
                    break;
                }
                if let Ok(r) = quick.get(&url).call() {
                    if r.status() == 200 {
                        self.port = port;
                        self.addr = format!("http://127.0.0.1:{port}");
                        self.child = Some(child);
                        return;
                    }
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "gaffer dev did not become ready within {READY_TIMEOUT:?}: {}",
                        std::fs::read_to_string(&err).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Most likely the port was taken between picking and binding: try another one.
            if !last_err.contains("cannot listen") {
                break;
            }
        }
        panic!("could not start gaffer dev: {last_err}");
    }

    /// SIGKILLs the dev process (its shims and tasks keep running) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM to the dev process and waits for it to exit.
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("dev is running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM dev");
        match wait_child(&mut c, timeout) {
            Some(s) => s,
            None => {
                let _ = c.kill();
                let _ = c.wait();
                panic!("gaffer dev did not exit within {timeout:?} of SIGTERM");
            }
        }
    }

    /// Runs the CLI against this server (GAFFER_ADDR set, cwd = the temporary directory).
    pub fn gaffer(&self, args: &[&str]) -> Out {
        self.gaffer_timeout(args, Duration::from_secs(90))
    }

    /// Like [`Dev::gaffer`] with a deadline.
    pub fn gaffer_timeout(&self, args: &[&str], timeout: Duration) -> Out {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("GAFFER_ADDR", &self.addr)
            .current_dir(self.root());
        run_cmd(cmd, timeout)
    }

    /// `gaffer submit -q ARGS`: the id of the one job created.
    pub fn submit_cli(&self, args: &[&str]) -> String {
        let mut all = vec!["submit", "-q"];
        all.extend_from_slice(args);
        let out = self.gaffer(&all).ok();
        let id = out.stdout.trim().to_string();
        assert!(
            id.starts_with("j-") && !id.contains('\n'),
            "unexpected submit output: {out:?}"
        );
        id
    }

    /// Full URL of an API path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// GET: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_result(self.http.get(&self.url(path)).call())
    }

    /// GET, expecting 200 and JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// POST a JSON value: status and body.
    pub fn post(&self, path: &str, body: &Value) -> (u16, String) {
        self.post_raw(path, body.to_string().as_bytes(), &[])
    }

    /// POST raw bytes as application/json with extra headers: status and body.
    pub fn post_raw(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
        let mut req = self
            .http
            .post(&self.url(path))
            .set("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.set(k, v);
        }
        http_result(req.send_bytes(body))
    }

    /// DELETE: status and body.
    pub fn delete(&self, path: &str) -> (u16, String) {
        http_result(self.http.delete(&self.url(path)).call())
    }

    /// Submits specs through the API, expecting 201; returns the ids.
    pub fn submit_json(&self, body: &Value) -> Vec<String> {
        let (code, text) = self.post("/v1/jobs", body);
        assert_eq!(code, 201, "submit {body}: {text}");
        let v: Value = serde_json::from_str(&text).expect("submit answer is JSON");
        v["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|i| i.as_str().expect("id string").to_string())
            .collect()
    }

    /// Submits one spec through the API; returns its id.
    pub fn submit(&self, spec: Value) -> String {
        let ids = self.submit_json(&spec);
        assert_eq!(ids.len(), 1, "{ids:?}");
        ids[0].clone()
    }

    /// GET /v1/jobs/{id}.
    pub fn job(&self, id: &str) -> Value {
        self.get_json(&format!("/v1/jobs/{id}"))
    }

    /// Polls a job until its state is final (succeeded, failed or killed).
    pub fn wait_final(&self, id: &str, timeout: Duration) -> Value {
        wait_until(&format!("job {id} to finish"), timeout, || {
            let j = self.job(id);
            matches!(j["state"].as_str(), Some("succeeded" | "failed" | "killed")).then_some(j)
        })
    }

    /// Polls a job until `pred` holds.
    pub fn wait_job(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_until(&format!("job {id}: {what}"), JOB_TIMEOUT, || {
            let j = self.job(id);
            pred(&j).then_some(j)
        })
    }

    /// Number of jobs the server lists.
    pub fn job_count(&self) -> usize {
        self.get_json("/v1/jobs?limit=10000")["jobs"]
            .as_array()
            .expect("jobs")
            .len()
    }

    /// `<data>/agent/attempts/<job>/<task>/<attempt>`.
    pub fn attempt_dir(&self, job: &str, task: u32, attempt: u32) -> PathBuf {
        self.data
            .join("agent")
            .join("attempts")
            .join(job)
            .join(task.to_string())
            .join(attempt.to_string())
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.kill9();
        kill_leftovers(self.tmp.path());
        unmount_under(self.tmp.path());
    }
}

/// Lazily unmounts whatever is mounted under `root` (the network namespace files of bridge
/// attempts an agent had no chance to remove), so that the directory can go.
pub fn unmount_under(root: &Path) {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let Some(target) = line.split(' ').nth(1) else {
            continue;
        };
        if Path::new(target).starts_with(&root) {
            let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Every live pid on the machine.
pub fn all_pids() -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// The NUL-separated entries of a /proc file (cmdline, environ).
pub fn proc_entries(pid: i32, file: &str) -> Vec<String> {
    match std::fs::read(format!("/proc/{pid}/{file}")) {
        Ok(b) => b
            .split(|c| *c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Whether a pid is a zombie (or gone).
pub fn is_zombie_or_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => true,
    }
}

/// Live (non-zombie) processes whose environment has the exact entry `entry` (`NAME=VALUE`).
pub fn pids_with_env(entry: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|&p| proc_entries(p, "environ").iter().any(|e| e == entry))
        .filter(|&p| !is_zombie_or_gone(p))
        .collect()
}

fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// SIGKILLs a whole process group, unless it is ours.
pub fn killpg9(pgid: i32) {
    let ours = nix::unistd::getpgrp().as_raw();
    if pgid > 1 && pgid != ours {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Process group of a pid.
pub fn pgid_of(pid: i32) -> Option<i32> {
    nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
        .ok()
        .map(|p| p.as_raw())
}

/// Kills every process started under `root`: shims (whose arguments name a path inside it) and
/// tasks (which have GAFFER_JOB_ID in their environment and their cwd inside it), with their
/// process groups.
pub fn kill_leftovers(root: &Path) {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let root_s = root.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    for _ in 0..3 {
        let mut found = false;
        for pid in all_pids() {
            if pid == me || is_zombie_or_gone(pid) {
                continue;
            }
            let by_args = proc_entries(pid, "cmdline")
                .iter()
                .any(|a| a.starts_with(&root_s));
            let by_task = proc_entries(pid, "environ")
                .iter()
                .any(|e| e.starts_with("GAFFER_JOB_ID="))
                && std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .map(|c| c.to_string_lossy().starts_with(&root_s))
                    .unwrap_or(false);
            if by_args || by_task {
                found = true;
                if by_task {
                    if let Some(g) = pgid_of(pid) {
                        killpg9(g);
                    }
                }
                sigkill(pid);
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The attempts of task `index` of a job detail.
pub fn attempts(job: &Value, index: usize) -> Vec<Value> {
    job["task_list"][index]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A value unique to this test run, for environment markers.
pub fn unique(tag: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{tag}-{}-{t}", std::process::id())
}

/// Packs the directory `src` into the tarball `dest` with the system `tar` (gzipped when `dest`
/// ends in `.gz`), as a user would make an image to import.
pub fn tar_dir(src: &Path, dest: &Path) {
    let z = if dest.extension().is_some_and(|e| e == "gz") {
        "-czf"
    } else {
        "-cf"
    };
    let st = Command::new("tar")
        .arg("-C")
        .arg(src)
        .arg(z)
        .arg(dest)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(st.success(), "tar of {} failed", src.display());
}
