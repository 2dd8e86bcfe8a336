//! The container's init: PID 1 of every container, between the shim and the
//! task (what `docker run --init` and tini do).
//!
//! A PID namespace's init gets no signal it has not installed a handler for,
//! and it inherits every orphan of the namespace. A task that is PID 1
//! itself therefore ignores the SIGTERM of a timeout or a kill unless it
//! traps it (so only the SIGKILL after `kill_grace` stops it), and leaves
//! zombies behind when it does not reap what it did not start. So the
//! container's first process does not exec the task: it forks it and stays
//! as the init, which
//!
//! - catches the signals of [`FORWARDED`] and sends each one, once, to every
//!   other process of the namespace (`kill(-1, sig)`), as the shim does with
//!   the process group of a host task;
//! - reaps every child, orphans included;
//! - when the task's main process ends, writes its raw wait status to the
//!   status pipe and exits with its code (128 + the signal for a signal).
//!   The kernel then kills whatever is left in the namespace.
//!
//! A PID 1 cannot die of a signal it sends itself, so the exact outcome (an
//! exit code or a signal) travels through the pipe; the shim reads it with
//! [`read_task_status`] and reports it as it reports a host task's. Without
//! a status in the pipe (the init was SIGKILLed along with the rest of the
//! cgroup) the init's own wait status stands: killed by SIGKILL.
//!
//! The init is a fork of the shim and runs no other program: the task's image
//! needs nothing of gaffer in it. It runs with the task's user and
//! capabilities, so it can do nothing the task could not.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::error::DriverError;

/// Signals the init passes on to the task. SIGKILL and SIGSTOP cannot be
/// caught; the shim sends SIGKILL to the whole cgroup instead.
pub(crate) const FORWARDED: [libc::c_int; 8] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
];

/// What the init needs to start the task.
pub(crate) struct Program<'a> {
    /// The program's path in the container, found along the task's `PATH`.
    pub path: &'a CString,
    /// The task's argv, `argv[0]` included.
    pub argv: &'a [CString],
    /// The task's environment, `KEY=value` each.
    pub env: &'a [CString],
    /// Shown in error messages: the name the user gave.
    pub name: &'a str,
}

/// Signal handler of the init: does nothing. Installing one is what makes
/// the kernel deliver these signals to a namespace's PID 1 at all; they are
/// then taken with sigwait(2), so it never actually runs.
extern "C" fn ignore_signal(_: libc::c_int) {}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: both calls get a pointer to `set`, which lives on this stack frame and is large
    // enough for a sigset_t. sigemptyset(3) fully initialises it (it cannot fail on a valid
    // pointer), so sigaddset(3) works on an initialised set and `assume_init` reads an
    // initialised value; sigaddset only rejects an invalid signal number (EINVAL, the set
    // unchanged), and the callers pass constants of libc.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &s in signals {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    }
}

/// Become the init: start the task and supervise it. Called in the
/// container's first process, inside every namespace, after `pivot_root`
/// and the switch to the task's user. Returns only if the task could not be
/// forked (the caller reports that through `setup_err`); an exec failure is
/// written to `setup_err` by the task's process. Once the task is forked
/// this never returns, and the init's copy of `setup_err` is closed here.
pub(crate) fn run(
    program: &Program<'_>,
    status_pipe: OwnedFd,
    setup_err: &OwnedFd,
) -> Result<Infallible, DriverError> {
    let mut waited: Vec<libc::c_int> = FORWARDED.to_vec();
    waited.push(libc::SIGCHLD);
    let wait_set = sigset(&waited);
    // SAFETY: sigprocmask(2) gets a pointer to the initialised `wait_set` and a null old-set
    // pointer, which it allows. An all-zero `libc::sigaction` is a valid value (integers, a
    // handler field of SIG_DFL = 0, an empty mask); the handler set in it is an `extern "C"`
    // function that does nothing, so it is async-signal-safe, and it stays valid for the whole
    // life of the process. sigaction(2) reads `act` during the call only and gets a null
    // old-action pointer. The process has one thread, so nothing races with the mask change.
    unsafe {
        libc::sigprocmask(libc::SIG_BLOCK, &wait_set, std::ptr::null_mut());
        for &sig in &FORWARDED {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
                return Err(DriverError::InitSignal {
                    signal: sig,
                    source: Errno::last(),
                });
            }
        }
    }

    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from its second
    // argument: `c"init"` is a static C string of 5 bytes, valid for the call. PR_SET_DUMPABLE
    // takes integers only. Neither touches memory of this process otherwise.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"init".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        // The init is a fork of the shim: its memory and /proc/1/environ hold the agent's
        // environment. Not dumpable, its /proc files are closed to the task even when the task
        // runs as root (reading them needs CAP_SYS_PTRACE, which containers do not have). The
        // task's own exec resets this for the task. Both are set before the task is forked, so
        // that the task never sees the init under its old name.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }

    // SAFETY: fork(2) is unsafe because the child of a multi-threaded process may only make
    // async-signal-safe calls (another thread may have held the allocator's or any other lock).
    // This process has one thread (a fork of the single-threaded shim), so the child is a
    // consistent copy in which allocating is fine. The child never returns from this function:
    // it runs `exec_task`, which ends in execve(2), then `_exit`.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(DriverError::last_os(
            "fork",
            "container init: cannot fork the task",
        ));
    }
    if child == 0 {
        drop(status_pipe);
        let err = match exec_task(program) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        let _ = nix::unistd::write(setup_err, err.to_string().as_bytes());
        // SAFETY: _exit(2) takes an integer and never returns, so it has no precondition to
        // break. Skipping destructors and atexit handlers is the point: this forked child must
        // not flush or free what is the init's.
        unsafe { libc::_exit(127) }
    }
    // The shim reads setup errors until every write end is closed: ours now,
    // the task's at its exec. The caller's OwnedFd is never dropped, because
    // this function does not return from here on.
    let _ = nix::unistd::close(setup_err.as_raw_fd());
    supervise(child, &wait_set, status_pipe)
}

/// The task's side of the fork: default signal handling, then exec.
fn exec_task(p: &Program<'_>) -> Result<Infallible, DriverError> {
    // SAFETY: signal(2) gets valid signal numbers and SIG_DFL, which installs no handler code;
    // sigprocmask(2) gets a pointer to `empty`, initialised by `sigset`, and a null old-set
    // pointer. The process has one thread (a fork of the init), so nothing races with the
    // changes. Dispositions are reset before the mask is cleared, so a signal the init
    // forwarded before the exec acts on the task (default action) instead of running the
    // init's no-op handler.
    unsafe {
        for &sig in &FORWARDED {
            libc::signal(sig, libc::SIG_DFL);
        }
        // Rust ignores SIGPIPE in main(), and an ignored signal stays ignored
        // across exec: the task expects the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let empty = sigset(&[]);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    let e = nix::unistd::execve(p.path, p.argv, p.env).unwrap_err();
    Err(DriverError::Exec {
        program: p.name.to_string(),
        source: io::Error::from(e),
    })
}

/// The init's loop: forward signals, reap children, and end with the task.
fn supervise(task: libc::pid_t, wait_set: &libc::sigset_t, status_pipe: OwnedFd) -> ! {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait(3) reads the set behind `wait_set`, a reference to an initialised
        // sigset_t, and writes one c_int through `&mut sig`, a live local.
        if unsafe { libc::sigwait(wait_set, &mut sig) } != 0 {
            continue;
        }
        if sig != libc::SIGCHLD {
            // Every process of the namespace but the init itself.
            // SAFETY: kill(2) takes integers and touches no memory of this process; the init
            // itself is exempt from kill(-1, ..), so this cannot end it.
            unsafe { libc::kill(-1, sig) };
            continue;
        }
        loop {
            let mut raw: libc::c_int = 0;
            // SAFETY: waitpid(2) writes one c_int through `&mut raw`, a live local.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == task {
                let mut pipe = File::from(status_pipe);
                let _ = pipe.write_all(&raw.to_ne_bytes());
                drop(pipe);
                let code = if libc::WIFEXITED(raw) {
                    libc::WEXITSTATUS(raw)
                } else {
                    128 + libc::WTERMSIG(raw)
                };
                // SAFETY: _exit(2) takes an integer and never returns. Skipping destructors is
                // intended: the status is written and the pipe closed above, and nothing else
                // needs flushing. The kernel then kills the rest of the namespace.
                unsafe { libc::_exit(code) }
            }
        }
    }
}

/// The shim's side of the status pipe: the task's own wait status, if the
/// init wrote one before it exited. `init_pid` is the init's pid as the shim
/// sees it, kept in the returned status.
pub(crate) fn read_task_status(status_pipe: &OwnedFd, init_pid: Pid) -> Option<WaitStatus> {
    // Non-blocking: a killed init wrote nothing, and a descendant that is
    // still being torn down must not hold the shim here.
    // SAFETY: fcntl(2) with F_GETFL/F_SETFL takes integers only; `fd` is open for the whole
    // block because `status_pipe` (an `OwnedFd`) is borrowed across it, and only its status
    // flags change, not its ownership.
    unsafe {
        let fd = status_pipe.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut buf = [0u8; 4];
    let mut file = File::from(status_pipe.try_clone().ok()?);
    file.read_exact(&mut buf).ok()?;
    WaitStatus::from_raw(init_pid, i32::from_ne_bytes(buf)).ok()
}
