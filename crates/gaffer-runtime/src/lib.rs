//! Runs one task attempt on this host through a per-attempt supervisor
//! process, the *shim*.
//!
//! The agent never forks tasks itself. For each attempt it calls [`prepare`]
//! to create the attempt directory and write the launch spec, spawns the
//! command returned by [`shim_command`] (which ends up in [`shim_main`]),
//! and reads the outcome with [`read_status`] once the shim exits. It stops
//! an attempt with [`kill_shim`] and, after an agent restart, rediscovers
//! attempts with [`probe`].
//!
//! This crate does not schedule, retry, or report anything to the server, and
//! it has no async code: the shim is a small synchronous process and the
//! helpers here are plain blocking file operations meant to be cheap.
//!
//! Attempt directory layout:
//!
//! | file            | written by | content                                   |
//! |-----------------|------------|-------------------------------------------|
//! | `spec.json`     | `prepare`  | [`LaunchSpec`]                            |
//! | `work/`         | `prepare`  | default working directory of the task     |
//! | `outputs/`      | shim       | collected output files (only if any)      |
//! | `shim.pid`      | shim       | `<pid> <starttime>` of the shim           |
//! | `stdout`,`stderr` | shim     | the task's output                         |
//! | `status.json`   | shim       | [`AttemptStatus`], written last           |
//! | `ctr/`          | shim       | container only: overlay mount point, upper and work dirs; removed at the end |
//!
//! Containers ([`LaunchSpec::container`], [`container`]) run on images kept
//! by an [`ImageStore`] ([`image`], registry pulls in [`pull`]); [`cleanup_attempt`] removes what a
//! container attempt whose shim died left behind (its cgroup and `ctr/`).

pub mod archive;
mod caps;
mod cgroup;
mod config;
pub mod container;
mod driver;
mod error;
pub mod exec;
mod fsutil;
pub mod image;
mod init;
mod layers;
mod logfiles;
mod outputs;
mod procfs;
pub mod pull;
mod rootfs;
mod shim;
mod spec;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use container::{cleanup_attempt, container_id};
pub use error::{DriverError, Error, LayerError, Result};
pub use image::{Image, ImageConfig, ImageStore};
pub use pull::{default_image_name, PullProgress};
pub use shim::shim_main;
pub use spec::{
    AttemptStatus, BindMount, ContainerSpec, EndReason, LaunchSpec, LogFiles, Network, Probe,
};

use fsutil::{PID_FILE, SPEC_FILE, STATUS_FILE};

/// `<dir>/stdout`: the task's standard output.
pub fn stdout_path(dir: &Path) -> PathBuf {
    dir.join("stdout")
}

/// `<dir>/stderr`: the task's standard error.
pub fn stderr_path(dir: &Path) -> PathBuf {
    dir.join("stderr")
}

/// `<dir>/outputs`: where collected output files are copied.
pub fn outputs_dir(dir: &Path) -> PathBuf {
    dir.join("outputs")
}

/// `<dir>/work`: the task's working directory when the spec has no `cwd`.
pub fn work_dir(dir: &Path) -> PathBuf {
    dir.join("work")
}

/// `<dir>/spec.json`.
pub fn spec_path(dir: &Path) -> PathBuf {
    dir.join(SPEC_FILE)
}

/// `<dir>/status.json`.
pub fn status_path(dir: &Path) -> PathBuf {
    dir.join(STATUS_FILE)
}

/// Create `dir` and `dir/work` (with parents) and write `dir/spec.json`.
/// `dir/outputs` is created by the shim only when there is something to keep:
/// every inode created here costs throughput on small tasks.
pub fn prepare(dir: &Path, spec: &LaunchSpec) -> Result<()> {
    if spec.argv.is_empty() {
        return Err(Error::EmptyArgv {
            dir: dir.to_path_buf(),
        });
    }
    let work = work_dir(dir);
    fs::create_dir_all(&work).map_err(|e| Error::io("create directory", work, e))?;
    let data = serde_json::to_vec(spec).map_err(|e| Error::Json {
        path: spec_path(dir),
        source: e,
    })?;
    fs::write(spec_path(dir), data).map_err(|e| Error::io("write", spec_path(dir), e))
}

/// The command that runs the shim for the attempt in `dir`: `exe shim <dir>`,
/// with stdin and stdout from/to /dev/null and stderr inherited (the shim's own
/// rare diagnostics land in the agent's log). The shim moves itself into a new
/// session first thing, so the agent's terminal signals never reach it and it
/// outlives the agent.
///
/// No `pre_exec` hook is used so that std can spawn through `posix_spawn`
/// (vfork-like): forking a large multi-threaded agent costs far more.
///
/// `exe` must be a binary whose `shim <dir>` subcommand calls [`shim_main`]
/// before starting any thread.
pub fn shim_command(exe: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("shim")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Read `<dir>/status.json`; `Ok(None)` if the shim has not written it yet.
pub fn read_status(dir: &Path) -> Result<Option<AttemptStatus>> {
    let path = status_path(dir);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| Error::Json { path, source: e })
}

/// `(pid, starttime)` from `<dir>/shim.pid`; `Ok(None)` if the file does not exist.
fn read_pid_file(dir: &Path) -> Result<Option<(i32, u64)>> {
    let path = dir.join(PID_FILE);
    let content = match fs::read_to_string(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let mut it = content.split_ascii_whitespace();
    match (
        it.next().and_then(|p| p.parse::<i32>().ok()),
        it.next().and_then(|s| s.parse::<u64>().ok()),
    ) {
        (Some(pid), Some(start)) if pid > 0 => Ok(Some((pid, start))),
        _ => Err(Error::BadPidFile {
            path,
            content: content.chars().take(100).collect(),
        }),
    }
}

/// The pid of the shim recorded in `dir` if that very process is still alive.
fn live_shim(dir: &Path) -> Result<Option<i32>> {
    Ok(read_pid_file(dir)?.and_then(|(pid, start)| procfs::is_alive(pid, start).then_some(pid)))
}

/// What became of the attempt in `dir`, e.g. after an agent restart:
/// [`Probe::Ended`] if `status.json` exists, [`Probe::Running`] if the shim
/// recorded in `shim.pid` is alive (same pid *and* start time, not a zombie),
/// otherwise [`Probe::Gone`] (also when the files are unreadable).
pub fn probe(dir: &Path) -> Probe {
    if let Ok(Some(status)) = read_status(dir) {
        return Probe::Ended(status);
    }
    if let Ok(Some(pid)) = live_shim(dir) {
        return Probe::Running { pid };
    }
    // The shim may have written its status and exited between the two checks.
    match read_status(dir) {
        Ok(Some(status)) => Probe::Ended(status),
        _ => Probe::Gone,
    }
}

/// Ask the live shim of `dir` to stop its task (SIGTERM; the shim then
/// terminates the task gracefully and writes `status.json` with reason
/// `Killed`). Returns `Ok(false)` if no live shim is recorded, including when
/// the shim has not written `shim.pid` yet.
pub fn kill_shim(dir: &Path) -> Result<bool> {
    let Some(pid) = live_shim(dir)? else {
        return Ok(false);
    };
    match kill(Pid::from_raw(pid), Signal::SIGTERM) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(Error::Signal {
            pid,
            path: dir.join(PID_FILE),
            source: e,
        }),
    }
}
