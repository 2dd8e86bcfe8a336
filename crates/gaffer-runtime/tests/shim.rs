//! End-to-end tests of the shim with real processes: each test prepares an
//! attempt directory, spawns the `gaffer-test-shim` binary through
//! `shim_command`, and checks `status.json`, captured output and that no
//! process of the task survives.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gaffer_runtime::{
    kill_shim, prepare, probe, read_status, shim_command, stderr_path, stdout_path, work_dir,
    AttemptStatus, EndReason, LaunchSpec, Probe,
};

const SHIM: &str = env!("CARGO_BIN_EXE_gaffer-test-shim");
const MARKER_VAR: &str = "GAFFER_RT_TEST_MARKER";

fn unique_marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "m{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

struct Attempt {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    marker: String,
    spec: LaunchSpec,
}

impl Attempt {
    fn new(argv: &[&str]) -> Attempt {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("attempt");
        let marker = unique_marker();
        let spec = LaunchSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                (MARKER_VAR.into(), marker.clone()),
                (
                    "READY".into(),
                    tmp.path().join("ready").to_string_lossy().into_owned(),
                ),
            ],
            cwd: None,
            timeout_ms: None,
            kill_grace_ms: 5_000,
            outputs: vec![],
            container: None,
            log_files: Default::default(),
        };
        Attempt {
            _tmp: tmp,
            dir,
            marker,
            spec,
        }
    }

    fn sh(script: &str) -> Attempt {
        Attempt::new(&["sh", "-c", script])
    }

    fn ready_fifo(&self) -> PathBuf {
        self._tmp.path().join("ready")
    }

    fn start(&self) -> Child {
        prepare(&self.dir, &self.spec).unwrap();
        shim_command(Path::new(SHIM), &self.dir).spawn().unwrap()
    }

    /// Create the readiness FIFO, start the shim, and block until the task
    /// has written a line to `$READY`.
    fn start_and_wait_ready(&self) -> Child {
        nix::unistd::mkfifo(&self.ready_fifo(), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let child = self.start();
        wait_fifo(&self.ready_fifo(), Duration::from_secs(30));
        child
    }

    fn finish(&self, mut child: Child) -> AttemptStatus {
        let code = child.wait().unwrap();
        assert!(code.success(), "shim exited with {code:?}");
        read_status(&self.dir)
            .unwrap()
            .expect("status.json missing")
    }

    fn run(&self) -> (AttemptStatus, Duration) {
        let t0 = Instant::now();
        let child = self.start();
        let st = self.finish(child);
        (st, t0.elapsed())
    }

    fn stdout(&self) -> String {
        fs::read_to_string(stdout_path(&self.dir)).unwrap()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(stderr_path(&self.dir)).unwrap()
    }

    /// Pids of every process on the host whose environment carries this
    /// attempt's marker.
    fn survivors(&self) -> Vec<i32> {
        let needle = format!("{MARKER_VAR}={}\0", self.marker).into_bytes();
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if let Ok(env) = fs::read(format!("/proc/{pid}/environ")) {
                if env.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    found.push(pid);
                }
            }
        }
        found
    }
}

/// Block until a writer opens `fifo` and closes it (the task signalling
/// readiness); panics after `timeout`.
fn wait_fifo(fifo: &Path, timeout: Duration) {
    let (tx, rx) = mpsc::channel();
    let path = fifo.to_path_buf();
    std::thread::spawn(move || {
        let mut f = fs::File::open(&path).unwrap();
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        let _ = tx.send(());
    });
    rx.recv_timeout(timeout)
        .expect("task did not signal readiness in time");
}

#[test]
fn exit_zero_captures_output_and_writes_valid_status_json() {
    let a = Attempt::sh("echo out; echo err >&2");
    let (st, _) = a.run();
    assert_eq!(st.reason, EndReason::Exited);
    assert_eq!(st.exit_code, Some(0));
    assert_eq!(st.signal, None);
    assert_eq!(st.message, None);
    assert!(st.started_at_ms <= st.ended_at_ms);
    assert!(st.max_rss_bytes.unwrap() > 0);
    assert!(st.cpu_secs.unwrap() >= 0.0);
    assert_eq!(a.stdout(), "out\n");
    assert_eq!(a.stderr(), "err\n");

    let raw = fs::read_to_string(a.dir.join("status.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(value["reason"], "exited");
    assert_eq!(value["exit_code"], 0);
    let parsed: AttemptStatus = serde_json::from_str(&raw).unwrap();
    assert_eq!(parsed, st);
    // Only the final files remain: no temporary file left behind.
    let mut names: Vec<String> = fs::read_dir(&a.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "shim.pid",
            "spec.json",
            "status.json",
            "stderr",
            "stdout",
            "work"
        ]
    );
}

#[test]
fn exit_three_is_reported() {
    let a = Attempt::sh("echo partial; echo oops >&2; exit 3");
    let (st, _) = a.run();
    assert_eq!(st.reason, EndReason::Exited);
    assert_eq!(st.exit_code, Some(3));
    assert_eq!(st.signal, None);
    assert_eq!(a.stdout(), "partial\n");
    assert_eq!(a.stderr(), "oops\n");
}

#[test]
fn command_not_found_is_spawn_failed() {
    let a = Attempt::new(&["nosuchcmd-gaffer-xyz", "arg"]);
    let (st, _) = a.run();
    assert_eq!(st.reason, EndReason::SpawnFailed);
    assert_eq!(st.exit_code, Some(127));
    assert_eq!(st.signal, None);
    let msg = st.message.unwrap();
    assert!(
        msg.contains("failed to start `nosuchcmd-gaffer-xyz`")
            && msg.contains("No such file or directory"),
        "{msg}"
    );
}

#[test]
fn env_is_complete_and_cwd_honoured() {
    let mut a = Attempt::sh("echo \"$FOO\"; echo \"${HOME-unset}\"; pwd");
    let cwd = a._tmp.path().join("elsewhere");
    fs::create_dir(&cwd).unwrap();
    a.spec.env.push(("FOO".into(), "bar baz".into()));
    a.spec.cwd = Some(cwd.clone());
    let (st, _) = a.run();
    assert_eq!(st.exit_code, Some(0), "{st:?}");
    assert_eq!(a.stdout(), format!("bar baz\nunset\n{}\n", cwd.display()));
}

#[test]
fn default_cwd_is_work_dir_and_path_comes_from_env() {
    let mut a = Attempt::new(&["my-gaffer-tool", "x"]);
    let bin = a._tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let tool = bin.join("my-gaffer-tool");
    fs::write(&tool, "#!/bin/sh\necho \"tool $1\"; pwd\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    a.spec.env[0].1 = format!("{}:/usr/bin:/bin", bin.display());
    let (st, _) = a.run();
    assert_eq!(st.exit_code, Some(0), "{st:?}");
    assert_eq!(
        a.stdout(),
        format!("tool x\n{}\n", work_dir(&a.dir).display())
    );
}

#[test]
fn task_does_not_inherit_blocked_signals() {
    let a = Attempt::new(&["cat", "/proc/self/status"]);
    let (st, _) = a.run();
    assert_eq!(st.exit_code, Some(0));
    let out = a.stdout();
    let blk = out
        .lines()
        .find(|l| l.starts_with("SigBlk:"))
        .expect("no SigBlk line");
    let mask = u64::from_str_radix(blk["SigBlk:".len()..].trim(), 16).unwrap();
    assert_eq!(mask, 0, "{blk}");
}

#[test]
fn timeout_terminates_task() {
    let mut a = Attempt::new(&["sleep", "30"]);
    a.spec.timeout_ms = Some(300);
    a.spec.kill_grace_ms = 200;
    let (st, elapsed) = a.run();
    assert_eq!(st.reason, EndReason::TimedOut);
    assert_eq!(st.signal, Some(libc::SIGTERM), "task must die from SIGTERM");
    assert_eq!(st.exit_code, None);
    assert_eq!(st.message.as_deref(), Some("timed out after 0.3s"));
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(st.ended_at_ms - st.started_at_ms >= 300);
}

#[test]
fn task_ignoring_sigterm_is_killed_after_grace() {
    let mut a = Attempt::sh("trap '' TERM; sleep 30");
    a.spec.timeout_ms = Some(300);
    a.spec.kill_grace_ms = 200;
    let (st, elapsed) = a.run();
    assert_eq!(st.reason, EndReason::TimedOut);
    assert_eq!(st.signal, Some(libc::SIGKILL));
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    assert!(a.survivors().is_empty());
}

#[test]
fn kill_shim_stops_whole_tree() {
    let a = Attempt::sh("sleep 100 & sleep 100 & echo ready > \"$READY\"; wait");
    let child = a.start_and_wait_ready();
    assert!(
        a.survivors().len() >= 3,
        "expected sh and two sleeps: {:?}",
        a.survivors()
    );
    let t0 = Instant::now();
    assert!(kill_shim(&a.dir).unwrap());
    let st = a.finish(child);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(st.reason, EndReason::Killed);
    assert_eq!(st.signal, Some(libc::SIGTERM));
    assert_eq!(a.survivors(), Vec::<i32>::new());
    assert!(!kill_shim(&a.dir).unwrap());
}

#[test]
fn kill_lets_task_exit_gracefully() {
    let a = Attempt::sh("trap 'echo bye; exit 7' TERM; echo ready > \"$READY\"; sleep 100 & wait");
    let child = a.start_and_wait_ready();
    assert!(kill_shim(&a.dir).unwrap());
    let st = a.finish(child);
    assert_eq!(st.reason, EndReason::Killed);
    assert_eq!(st.exit_code, Some(7));
    assert_eq!(a.stdout(), "bye\n");
    assert!(a.survivors().is_empty());
}

#[test]
fn background_process_left_by_exited_task_is_killed() {
    let a = Attempt::sh("setsid sleep 100 & sleep 100 & exit 0");
    let (st, elapsed) = a.run();
    assert_eq!(st.reason, EndReason::Exited);
    assert_eq!(st.exit_code, Some(0));
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(a.survivors(), Vec::<i32>::new());
}

#[test]
fn daemonized_grandchild_is_killed() {
    // Double fork + setsid: the grandchild is reparented to the shim.
    let a = Attempt::sh("(setsid sh -c 'sleep 100' &) ; exit 0");
    let (st, _) = a.run();
    assert_eq!(st.exit_code, Some(0));
    assert_eq!(a.survivors(), Vec::<i32>::new());
}

#[test]
fn outputs_are_copied_and_symlink_escapes_refused() {
    let mut a = Attempt::sh(
        "mkdir -p results/deep && echo a,b > results/x.csv && echo c,d > results/y.csv \
         && echo no > results/z.txt && ln -s /etc/passwd results/evil.csv \
         && ln -s /etc results/etc && echo q > results/deep/q.csv && ln -s x.csv results/alias.csv",
    );
    a.spec.outputs = vec!["results/*.csv".into(), "results/etc/*".into()];
    let (st, _) = a.run();
    assert_eq!(st.reason, EndReason::Exited);
    assert_eq!(st.exit_code, Some(0));
    assert_eq!(st.message, None);
    let mut outs = st.outputs.clone();
    outs.sort();
    assert_eq!(
        outs,
        ["results/alias.csv", "results/x.csv", "results/y.csv"]
    );
    let od = gaffer_runtime::outputs_dir(&a.dir);
    assert_eq!(
        fs::read_to_string(od.join("results/x.csv")).unwrap(),
        "a,b\n"
    );
    assert_eq!(
        fs::read_to_string(od.join("results/y.csv")).unwrap(),
        "c,d\n"
    );
    assert_eq!(
        fs::read_to_string(od.join("results/alias.csv")).unwrap(),
        "a,b\n"
    );
    assert!(!od.join("results/evil.csv").exists());
    assert!(!od.join("results/z.txt").exists());
    assert!(!od.join("results/etc").exists());
}

#[test]
fn probe_running_then_ended() {
    let a = Attempt::sh("echo ready > \"$READY\"; exec sleep 100");
    assert_eq!(probe(&a.dir), Probe::Gone);
    let child = a.start_and_wait_ready();
    let shim_pid = child.id() as i32;
    assert_eq!(probe(&a.dir), Probe::Running { pid: shim_pid });
    assert!(kill_shim(&a.dir).unwrap());
    let st = a.finish(child);
    assert_eq!(probe(&a.dir), Probe::Ended(st));
}

#[test]
fn probe_gone_for_dead_or_reused_pid() {
    let a = Attempt::new(&["true"]);
    prepare(&a.dir, &a.spec).unwrap();
    // A pid that no longer exists.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    fs::write(a.dir.join("shim.pid"), format!("{dead_pid} 12345\n")).unwrap();
    assert_eq!(probe(&a.dir), Probe::Gone);
    assert!(!kill_shim(&a.dir).unwrap());
    // A live pid (this test process) with a different start time: reused pid.
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_ascii_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let me = std::process::id();
    fs::write(a.dir.join("shim.pid"), format!("{me} {}\n", start + 1)).unwrap();
    assert_eq!(probe(&a.dir), Probe::Gone);
    assert!(!kill_shim(&a.dir).unwrap());
    // Sanity check of the format: the correct start time is recognised.
    fs::write(a.dir.join("shim.pid"), format!("{me} {start}\n")).unwrap();
    assert_eq!(probe(&a.dir), Probe::Running { pid: me as i32 });
    // Garbage is an error for kill_shim and Gone for probe.
    fs::write(a.dir.join("shim.pid"), "garbage").unwrap();
    assert_eq!(probe(&a.dir), Probe::Gone);
    assert!(matches!(
        kill_shim(&a.dir),
        Err(gaffer_runtime::Error::BadPidFile { .. })
    ));
}

#[test]
fn shim_runs_in_its_own_session() {
    let a = Attempt::sh("echo ready > \"$READY\"; exec sleep 100");
    let child = a.start_and_wait_ready();
    let pid = child.id();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_ascii_whitespace()
        .collect();
    // fields[3] is field 6, the session id.
    assert_eq!(fields[3], pid.to_string(), "shim is not a session leader");
    assert!(kill_shim(&a.dir).unwrap());
    a.finish(child);
}

#[test]
fn prepare_rejects_empty_argv_and_read_status_is_none_before_run() {
    let a = Attempt::new(&[]);
    assert!(matches!(
        prepare(&a.dir, &a.spec),
        Err(gaffer_runtime::Error::EmptyArgv { .. })
    ));
    let b = Attempt::new(&["true"]);
    prepare(&b.dir, &b.spec).unwrap();
    assert_eq!(read_status(&b.dir).unwrap(), None);
    assert!(work_dir(&b.dir).is_dir());
    // outputs/ appears only when the shim keeps something.
    assert!(!gaffer_runtime::outputs_dir(&b.dir).exists());
}

#[test]
fn many_short_tasks_smoke() {
    // Not a benchmark: just checks that back-to-back attempts on two
    // threads all succeed, and prints the rate for information.
    const PER_THREAD: usize = 100;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..PER_THREAD {
                    let a = Attempt::new(&["true"]);
                    let (st, _) = a.run();
                    assert_eq!(st.reason, EndReason::Exited);
                    assert_eq!(st.exit_code, Some(0));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let el = t0.elapsed();
    eprintln!(
        "{} attempts in {el:?} ({:.0}/s)",
        2 * PER_THREAD,
        (2 * PER_THREAD) as f64 / el.as_secs_f64()
    );
}
