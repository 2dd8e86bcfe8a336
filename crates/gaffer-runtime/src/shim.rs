//! The shim: a per-attempt supervisor process (`gaffer shim <dir>`). It
//! starts the task through a [`Driver`], waits for it while handling the
//! timeout and stop requests, makes sure no process of the task's tree
//! survives, collects outputs and writes `status.json`.
//!
//! Without `container` in the spec the task is a host process
//! ([`HostDriver`]); with it, a container ([`ContainerDriver`]), whose
//! cgroup supplies the usage figures and the OOM verdict
//! ([`EndReason::OomKilled`]) and whose resources are released before the
//! status is written.
//!
//! The shim is single-threaded and synchronous: signals arrive through a
//! signalfd and timers are poll(2) timeouts, all in one loop. It must be
//! called before the hosting binary starts any threads or async runtime. It
//! does not talk to the agent other than through files in the attempt
//! directory and its exit.

use gaffer_api::now_ms;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::container::ContainerDriver;
use crate::driver::{Driver, HostDriver, Launch, Task};
use crate::fsutil::{self, PID_FILE, SPEC_FILE, STATUS_FILE};
use crate::logfiles;
use crate::outputs;
use crate::procfs;
use crate::spec::{AttemptStatus, EndReason, LaunchSpec};

/// Format a millisecond duration as seconds without useless decimals:
/// 2000 -> "2s", 300 -> "0.3s", 1250 -> "1.25s".
fn fmt_secs(ms: u64) -> String {
    let frac = ms % 1000;
    if frac == 0 {
        format!("{}s", ms / 1000)
    } else {
        let s = format!("{}.{frac:03}", ms / 1000);
        format!("{}s", s.trim_end_matches('0'))
    }
}

fn append_message(message: &mut Option<String>, more: String) {
    match message {
        Some(m) => {
            m.push_str("; ");
            m.push_str(&more);
        }
        None => *message = Some(more),
    }
}

/// The body of `gaffer shim <dir>`. Returns the process exit code: 0 if
/// `status.json` was written, 1 otherwise (details go to stderr, which
/// [`crate::shim_command`] inherits from the agent).
pub fn shim_main(dir: &Path) -> i32 {
    // A new session: terminal signals and hang-ups of the agent never reach the
    // shim. (It is not a process group leader, so this cannot fail with EPERM.)
    let _ = nix::unistd::setsid();
    let status = run(dir);
    let data = match serde_json::to_vec(&status) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("gaffer shim: cannot encode status: {e}");
            return 1;
        }
    };
    // Atomic (rename) but not fsync'ed: the agent reads it right after the shim exits and the
    // server makes the result durable. After a host crash an unflushed status reads as a lost
    // attempt, which the retry rules handle; an fsync per task would cap throughput instead.
    //
    // A plain single write, not tmp + rename: readers only parse it once the shim
    // has exited ([`crate::probe`] checks it before the pid), and two fewer inode
    // operations per task matter on small tasks.
    match fsutil::write_plain(dir, STATUS_FILE, &data) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "gaffer shim: cannot write {}: {e}",
                dir.join(STATUS_FILE).display()
            );
            1
        }
    }
}

fn spawn_failed(message: String) -> AttemptStatus {
    let now = now_ms();
    AttemptStatus {
        reason: EndReason::SpawnFailed,
        exit_code: Some(127),
        signal: None,
        started_at_ms: now,
        ended_at_ms: now,
        max_rss_bytes: None,
        cpu_secs: None,
        outputs: Vec::new(),
        message: Some(message),
    }
}

/// Everything up to (not including) writing the status.
fn run(dir: &Path) -> AttemptStatus {
    let spec_path = fsutil::join(dir, SPEC_FILE);
    let spec: LaunchSpec = match fs::read(&spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => return spawn_failed(format!("cannot read {}: {e}", spec_path.display())),
    };

    // Block the signals we handle before anything else, so that once
    // shim.pid is visible a SIGTERM from kill_shim is always handled here
    // instead of killing the shim outright.
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(sig);
    }
    if let Err(e) = mask.thread_set_mask() {
        return spawn_failed(format!("shim: cannot block signals: {e}"));
    }
    let sfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => return spawn_failed(format!("shim: cannot create signalfd: {e}")),
    };

    let me = match procfs::stat("self") {
        Ok(info) => info,
        Err(e) => return spawn_failed(format!("shim: cannot read /proc/self/stat: {e}")),
    };
    let pid_line = format!("{} {}\n", std::process::id(), me.starttime);
    // One small write (not fsync'ed: after a host crash the shim is gone anyway).
    // A reader that races it sees an empty or partial file and treats it as
    // "no live shim recorded".
    if let Err(e) = fsutil::write_plain(dir, PID_FILE, pid_line.as_bytes()) {
        return spawn_failed(format!(
            "shim: cannot write {}: {e}",
            dir.join(PID_FILE).display()
        ));
    }

    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        return spawn_failed(format!("shim: cannot become child subreaper: {e}"));
    }

    let open = |p: PathBuf| {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .map_err(|e| format!("cannot open {}: {e}", p.display()))
    };
    let (stdout, stderr) = match (open(crate::stdout_path(dir)), open(crate::stderr_path(dir))) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(m), _) | (_, Err(m)) => return spawn_failed(m),
    };
    let names = (crate::stdout_path(dir), crate::stderr_path(dir));
    let (stdout, stderr, copies) =
        match logfiles::attach(&spec.log_files, (&names.0, &names.1), (stdout, stderr)) {
            Ok(t) => t,
            Err(m) => return spawn_failed(m),
        };

    let mut status = match spec.container.clone() {
        None => {
            let cwd: PathBuf = spec.cwd.clone().unwrap_or_else(|| crate::work_dir(dir));
            execute(
                dir,
                HostDriver,
                &spec,
                &sfd,
                (cwd.clone(), cwd),
                (stdout, stderr),
            )
        }
        Some(c) => {
            // Inside the container: the given cwd or /work; outputs always
            // come from the workspace, which is /work inside.
            let cwd = spec.cwd.clone().unwrap_or_else(|| PathBuf::from("/work"));
            let driver = ContainerDriver::new(dir, c);
            execute(
                dir,
                driver,
                &spec,
                &sfd,
                (cwd, crate::work_dir(dir)),
                (stdout, stderr),
            )
        }
    };
    if let Some(e) = logfiles::finish(copies) {
        append_message(&mut status.message, e);
    }
    status
}

/// Start the task through `driver`, supervise it, clean up and build the status.
fn execute<D: Driver>(
    dir: &Path,
    mut driver: D,
    spec: &LaunchSpec,
    sfd: &SignalFd,
    (cwd, outputs_from): (PathBuf, PathBuf),
    (stdout, stderr): (File, File),
) -> AttemptStatus {
    let started_at_ms = now_ms();
    let started = Instant::now();
    let task = match driver.start(Launch {
        spec,
        cwd: &cwd,
        stdout,
        stderr,
    }) {
        Ok(t) => t,
        Err(e) => {
            let fin = driver.finish();
            let mut st = spawn_failed(e.to_string());
            if let Some(e) = fin.error {
                append_message(&mut st.message, e);
            }
            return st;
        }
    };

    let mut sup = Supervisor {
        driver: &driver,
        task,
        grace: Duration::from_millis(spec.kill_grace_ms),
        main_status: None,
        ended_at_ms: 0,
        reason: EndReason::Exited,
        message: None,
        stopping: false,
        timeout_at: spec
            .timeout_ms
            .map(|ms| started + Duration::from_millis(ms)),
        timeout_ms: spec.timeout_ms.unwrap_or(0),
        kill_at: None,
    };
    sup.supervise(sfd);
    sup.kill_everything();
    let Supervisor {
        main_status,
        ended_at_ms,
        mut reason,
        mut message,
        ..
    } = sup;
    let main_status = main_status.map(|ws| driver.task_status(&task, ws));

    let fin = driver.finish();
    if let Some(oom) = fin.oom {
        if reason == EndReason::Exited {
            reason = EndReason::OomKilled;
            message = Some(oom);
        } else {
            append_message(&mut message, oom);
        }
    }
    if let Some(e) = fin.error {
        append_message(&mut message, e);
    }

    let collected = outputs::collect(&outputs_from, &crate::outputs_dir(dir), &spec.outputs);
    if let Some(err) = collected.error {
        append_message(&mut message, err);
    }

    let (max_rss_bytes, cpu_secs) = match fin.usage {
        Some(u) => u,
        None => match getrusage(UsageWho::RUSAGE_CHILDREN) {
            Ok(u) => {
                let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
                (
                    Some((u.max_rss().max(0) as u64).saturating_mul(1024)),
                    Some(tv(u.user_time()) + tv(u.system_time())),
                )
            }
            Err(_) => (None, None),
        },
    };

    let (exit_code, signal) = match main_status {
        Some(WaitStatus::Exited(_, code)) => (Some(code), None),
        Some(WaitStatus::Signaled(_, sig, _)) => (None, Some(sig as i32)),
        _ => (None, None),
    };
    AttemptStatus {
        reason,
        exit_code,
        signal,
        started_at_ms,
        ended_at_ms,
        max_rss_bytes,
        cpu_secs,
        outputs: collected.files,
        message,
    }
}

/// State of the supervision loop for one running task.
struct Supervisor<'a, D: Driver> {
    driver: &'a D,
    task: Task,
    grace: Duration,
    /// Exit status of the main process once reaped.
    main_status: Option<WaitStatus>,
    ended_at_ms: u64,
    reason: EndReason,
    message: Option<String>,
    /// A stop (timeout or request) is in progress.
    stopping: bool,
    timeout_at: Option<Instant>,
    timeout_ms: u64,
    /// When to escalate from SIGTERM to SIGKILL.
    kill_at: Option<Instant>,
}

impl<D: Driver> Supervisor<'_, D> {
    /// Run until the main process has been reaped.
    fn supervise(&mut self, sfd: &SignalFd) {
        while self.main_status.is_none() {
            let now = Instant::now();
            if self.timeout_at.is_some_and(|t| now >= t) {
                self.timeout_at = None;
                let msg = format!("timed out after {}", fmt_secs(self.timeout_ms));
                self.begin_stop(EndReason::TimedOut, Some(msg), now);
            }
            if self.kill_at.is_some_and(|t| now >= t) {
                self.kill_at = None;
                self.driver.signal(&self.task, Signal::SIGKILL);
                kill_descendants(Signal::SIGKILL);
            }
            let deadline = match (self.timeout_at, self.kill_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let ms = d
                        .saturating_duration_since(now)
                        .as_nanos()
                        .div_ceil(1_000_000);
                    PollTimeout::try_from(ms.min(i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    // Should never happen; fall back to a blocking reap so
                    // the attempt still ends.
                    eprintln!("gaffer shim: poll failed: {e}");
                    self.reap(false);
                    continue;
                }
            }
            while let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {
                        self.reap(true);
                    }
                    Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP) => {
                        self.begin_stop(EndReason::Killed, None, Instant::now());
                    }
                    _ => {}
                }
            }
        }
    }

    /// SIGTERM the task and arm the SIGKILL escalation; the first reason wins.
    fn begin_stop(&mut self, reason: EndReason, message: Option<String>, now: Instant) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.reason = reason;
        self.message = message;
        self.timeout_at = None;
        self.driver.signal(&self.task, Signal::SIGTERM);
        // Wake stopped processes so they can act on the SIGTERM.
        self.driver.signal(&self.task, Signal::SIGCONT);
        self.kill_at = Some(now + self.grace);
    }

    /// Reap every child that has exited (orphans included), remembering the
    /// main process's status. Returns false once there are no children left.
    fn reap(&mut self, nohang: bool) -> bool {
        let flags = nohang.then_some(WaitPidFlag::WNOHANG);
        loop {
            match waitpid(Pid::from_raw(-1), flags) {
                Ok(WaitStatus::StillAlive) => return true,
                Ok(ws @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _))) => {
                    if pid == self.task.pid {
                        self.main_status = Some(ws);
                        self.ended_at_ms = now_ms();
                    }
                    if !nohang {
                        return true;
                    }
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return false, // ECHILD
            }
        }
    }

    /// After the main process ended: SIGKILL its group, then every remaining
    /// descendant, and reap until no child is left.
    fn kill_everything(&mut self) {
        if !self.reap(true) {
            return;
        }
        self.driver.signal(&self.task, Signal::SIGKILL);
        loop {
            if !self.reap(true) {
                return;
            }
            kill_descendants(Signal::SIGKILL);
            // Block until something exits; reparented orphans are picked up
            // by the next descendant scan.
            if !self.reap(false) {
                return;
            }
        }
    }
}

/// Send `sig` to every descendant of the shim.
fn kill_descendants(sig: Signal) {
    for pid in procfs::descendants(std::process::id() as i32) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_secs;

    #[test]
    fn formats_seconds() {
        assert_eq!(fmt_secs(2000), "2s");
        assert_eq!(fmt_secs(300), "0.3s");
        assert_eq!(fmt_secs(1250), "1.25s");
        assert_eq!(fmt_secs(0), "0s");
    }
}
