//! The seam between the shim's supervision loop and the mechanism that
//! actually starts a task. The host-process driver (here) starts the task as
//! a direct child of the shim in its own process group; the container driver
//! lives in [`crate::container`].
//!
//! A driver starts a task, delivers signals to it and, once every process is
//! gone, reports what only it can measure and releases its resources
//! ([`Driver::finish`]). Reaping, timers, killing leftover descendants,
//! output collection and status writing stay in the shim.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::error::DriverError;
use crate::spec::LaunchSpec;

/// What a driver needs to start one task.
pub(crate) struct Launch<'a> {
    /// The attempt's launch spec.
    pub spec: &'a LaunchSpec,
    /// The task's working directory (inside the container for a container task).
    pub cwd: &'a Path,
    /// The attempt's `stdout` file, the task's standard output.
    pub stdout: File,
    /// The attempt's `stderr` file, the task's standard error.
    pub stderr: File,
}

/// A started task, as seen by the supervision loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Task {
    /// The main process, a direct child of the shim; its exit ends the attempt.
    pub pid: Pid,
    /// The process group holding the task's processes.
    pub pgid: Pid,
}

/// What a driver reports after the task's processes are all gone.
#[derive(Debug, Default)]
pub(crate) struct Finish {
    /// `(max memory bytes, cpu seconds)` measured by the driver; `None`
    /// means the shim uses its own rusage of reaped children.
    pub usage: Option<(Option<u64>, Option<f64>)>,
    /// Set when the task was OOM-killed: the message for the status.
    pub oom: Option<String>,
    /// A cleanup problem to append to the status message.
    pub error: Option<String>,
}

/// Starts tasks and signals them.
pub(crate) trait Driver {
    /// Start the task. The error's text is the message recorded in the
    /// status (the reason becomes `SpawnFailed`). [`Driver::finish`] is
    /// called afterwards in every case.
    fn start(&mut self, launch: Launch<'_>) -> Result<Task, DriverError>;

    /// Deliver `sig` to the task's processes. Errors (typically ESRCH once
    /// they are gone) are ignored.
    fn signal(&self, task: &Task, sig: Signal);

    /// The task's outcome, given the wait status of its main process (a
    /// container's init, whose status pipe carries the task's own status).
    fn task_status(&mut self, _task: &Task, main_status: WaitStatus) -> WaitStatus {
        main_status
    }

    /// Called once, after every process of the task has been reaped (or the
    /// start failed): measure and release driver resources.
    fn finish(&mut self) -> Finish {
        Finish::default()
    }
}

/// Runs the task as a plain host process.
pub(crate) struct HostDriver;

impl Driver for HostDriver {
    fn start(&mut self, launch: Launch<'_>) -> Result<Task, DriverError> {
        let spec = launch.spec;
        let Some(argv0) = spec.argv.first() else {
            return Err(DriverError::EmptyArgv);
        };
        let program =
            resolve_program(argv0, &spec.env, launch.cwd).map_err(|source| DriverError::Spawn {
                program: argv0.clone(),
                source,
            })?;
        let mut cmd = Command::new(&program);
        // The shim blocks the signals it reads through its signalfd, and a
        // blocked mask survives exec: clear it in the child so the task can
        // be terminated normally. (std resets SIGPIPE itself.)
        // SAFETY: `pre_exec` is unsafe because the hook runs in the forked child, where only
        // async-signal-safe work is allowed. This one calls sigemptyset(3) on a stack variable
        // (which initialises it before `as_ptr` is read) and pthread_sigmask(3) with it and a
        // null old-set pointer, both async-signal-safe; it allocates nothing and takes no locks
        // (the error path builds an io::Error from an integer, no allocation).
        unsafe {
            cmd.pre_exec(|| {
                let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
                libc::sigemptyset(empty.as_mut_ptr());
                let rc =
                    libc::pthread_sigmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
                if rc != 0 {
                    return Err(io::Error::from_raw_os_error(rc));
                }
                Ok(())
            });
        }
        cmd.arg0(argv0)
            .args(&spec.argv[1..])
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(launch.cwd)
            .stdin(Stdio::null())
            .stdout(launch.stdout)
            .stderr(launch.stderr)
            .process_group(0);
        match cmd.spawn() {
            Ok(child) => {
                let pid = Pid::from_raw(child.id() as i32);
                // The Child handle is dropped without waiting: the shim reaps
                // with waitpid(-1) itself.
                drop(child);
                Ok(Task { pid, pgid: pid })
            }
            Err(e) => {
                if let Err(cwd_err) = std::fs::metadata(launch.cwd) {
                    Err(DriverError::SpawnCwd {
                        program: argv0.clone(),
                        cwd: launch.cwd.to_path_buf(),
                        source: cwd_err,
                    })
                } else {
                    Err(DriverError::Spawn {
                        program: argv0.clone(),
                        source: e,
                    })
                }
            }
        }
    }

    fn signal(&self, task: &Task, sig: Signal) {
        let _ = killpg(task.pgid, sig);
    }
}

/// Find the executable for `argv0` the way execvp(3) would, but using the
/// `PATH` of the task's environment (falling back to the shim's own `PATH`,
/// then to a conventional default). Names containing `/` are used as given,
/// relative ones being taken relative to the task's working directory.
pub(crate) fn resolve_program(
    argv0: &str,
    env: &[(String, String)],
    cwd: &Path,
) -> io::Result<PathBuf> {
    if argv0.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if argv0.contains('/') {
        let p = Path::new(argv0);
        return Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        });
    }
    let path_var: OsString = match env.iter().rev().find(|(k, _)| k == "PATH") {
        Some((_, v)) => v.into(),
        None => std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
    };
    let mut saw_eacces = false;
    for entry in path_var.as_bytes().split(|&b| b == b':') {
        // An empty PATH entry means the current directory.
        let base = if entry.is_empty() {
            cwd.to_path_buf()
        } else {
            let dir = Path::new(std::ffi::OsStr::from_bytes(entry));
            if dir.is_absolute() {
                dir.to_path_buf()
            } else {
                cwd.join(dir)
            }
        };
        let candidate = base.join(argv0);
        match std::fs::metadata(&candidate) {
            Ok(meta) if meta.is_file() => {
                if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
                    return Ok(candidate);
                }
                saw_eacces = true;
            }
            _ => {}
        }
    }
    Err(io::Error::from_raw_os_error(if saw_eacces {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_via_env_path() {
        let env = vec![("PATH".to_string(), "/nonexistent:/bin:/usr/bin".to_string())];
        let p = resolve_program("sh", &env, Path::new("/")).unwrap();
        assert!(p.ends_with("sh"), "{p:?}");
        let err = resolve_program("no-such-cmd-gaffer", &env, Path::new("/")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn relative_names_with_slash_use_cwd() {
        let p = resolve_program("./x/y", &[], Path::new("/tmp/w")).unwrap();
        assert_eq!(p, Path::new("/tmp/w/./x/y"));
    }
}
