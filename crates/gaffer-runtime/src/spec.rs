//! The data exchanged between the agent and the shim through the attempt
//! directory: the launch spec (`spec.json`, written by the agent) and the
//! final attempt status (`status.json`, written by the shim).
//!
//! These are plain serde types; this module performs no I/O and does no
//! validation beyond what serde does (output globs, for instance, are assumed
//! to have been validated by the caller).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the shim needs to run one attempt; written as `<dir>/spec.json`
/// by [`crate::prepare`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LaunchSpec {
    /// Program and arguments. `argv[0]` is looked up in the `PATH` found in
    /// `env` (or the shim's own `PATH` if `env` has none) unless it contains a `/`.
    pub argv: Vec<String>,
    /// The complete environment of the task: the shim clears its own
    /// environment before setting exactly these variables.
    pub env: Vec<(String, String)>,
    /// Working directory; `None` means `<dir>/work` (created by `prepare`).
    pub cwd: Option<PathBuf>,
    /// Wall-clock limit counted from the task's start.
    pub timeout_ms: Option<u64>,
    /// Delay between SIGTERM and SIGKILL when the task is stopped.
    pub kill_grace_ms: u64,
    /// Glob patterns relative to the working directory whose matching regular
    /// files are copied into `<dir>/outputs/` after the task ends. Already
    /// validated by the caller: no absolute paths, no `..`.
    pub outputs: Vec<String>,
    /// Run the task in a container instead of as a host process. With a
    /// container, `argv[0]` is looked up in the container's filesystem, `cwd`
    /// is a path *inside* the container (default `/work`, the bind-mounted
    /// `<dir>/work`), and `outputs` are collected from `<dir>/work`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
    /// Files on the host that receive the task's logs as well (see [`LogFiles`]).
    #[serde(default, skip_serializing_if = "LogFiles::is_empty")]
    pub log_files: LogFiles,
}

/// Host paths where a task's standard output and error appear too, besides the attempt's
/// own `stdout` and `stderr`. With `stdout` alone, standard error goes there as well.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LogFiles {
    /// Standard output (and standard error, unless `stderr` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<PathBuf>,
    /// Standard error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<PathBuf>,
}

impl LogFiles {
    /// No extra files.
    pub fn is_empty(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }
}

/// How to run a task in a container (see [`crate::container`]).
///
/// The caller merges the image configuration into the [`LaunchSpec`] before
/// writing it: `env` must already hold the image's environment overlaid with
/// the task's (see [`crate::ImageConfig::merged_env`]), `cwd` the image's
/// working directory if the task has none, and `uid`/`gid` the image's user
/// (see [`crate::ImageConfig::resolve_user`]) or 65534 when it has none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerSpec {
    /// The image's root filesystem directory (`<images>/<name>/rootfs`); used
    /// read-only as the lower layer of an overlayfs.
    pub rootfs: PathBuf,
    /// Host name inside the container's UTS namespace.
    pub hostname: String,
    /// User id the task runs as.
    pub uid: u32,
    /// Group id the task runs as (also its only supplementary group).
    pub gid: u32,
    /// Network namespace.
    #[serde(default)]
    pub network: Network,
    /// With [`Network::Join`]: the network namespace to join (a bind-mounted namespace file,
    /// like those of `ip netns`), prepared by the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Host files bound read-only over paths inside the container, e.g. the attempt's own
    /// `/etc/hosts` and `/etc/resolv.conf`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<(PathBuf, PathBuf)>,
    /// Host directories bound into the container (a cluster job's shared directory,
    /// `--mount`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<BindMount>,
    /// CPU limit in cores (quota = cpus x period); `None` = unlimited.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Hard memory limit in bytes (swap included); `None` = unlimited.
    #[serde(default)]
    pub memory: Option<u64>,
    /// Maximum number of processes/threads; `None` = unlimited.
    #[serde(default)]
    pub pids: Option<u32>,
}

/// Network mode of a container.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// A private network namespace with only the loopback interface (up).
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// The network namespace at [`ContainerSpec::netns`] (the agent's bridge network).
    Join,
}

/// Why an attempt ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The main process exited (normally or from a signal it was not sent by us).
    Exited,
    /// The wall-clock limit expired and the shim stopped the task.
    TimedOut,
    /// The shim was asked to stop (SIGTERM/SIGINT/SIGHUP) and stopped the task.
    Killed,
    /// The task could not be started at all.
    SpawnFailed,
    /// A process of the container was killed by the kernel because the
    /// container exceeded its memory limit.
    OomKilled,
}

/// Written atomically as `<dir>/status.json` by the shim right before it exits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptStatus {
    /// Why the attempt ended.
    pub reason: EndReason,
    /// Exit code when the main process exited normally; 127 for `SpawnFailed`.
    pub exit_code: Option<i32>,
    /// Signal number when the main process was killed by a signal.
    pub signal: Option<i32>,
    /// When the task was started, in unix milliseconds.
    pub started_at_ms: u64,
    /// When the main process ended, in unix milliseconds.
    pub ended_at_ms: u64,
    /// Peak resident set size of the largest reaped process, in bytes. For a
    /// container: the cgroup's peak memory usage (page cache included).
    pub max_rss_bytes: Option<u64>,
    /// User + system CPU time of all reaped processes, in seconds. For a
    /// container: the cgroup's CPU usage.
    pub cpu_secs: Option<f64>,
    /// Paths (relative to the working directory) of the files copied into
    /// `<dir>/outputs/`.
    pub outputs: Vec<String>,
    /// Human-readable detail, e.g. why the spawn failed or that it timed out.
    pub message: Option<String>,
}

/// What [`crate::probe`] found in an attempt directory.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// The shim recorded in `shim.pid` is still alive.
    Running {
        /// Pid of the shim (not of the task).
        pid: i32,
    },
    /// The shim finished and wrote this status.
    Ended(AttemptStatus),
    /// Neither a status nor a live shim: the attempt was lost (e.g. host reboot).
    Gone,
}

/// A host directory bound at a path inside a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// The host directory.
    pub source: PathBuf,
    /// Where it appears inside (absolute).
    pub target: PathBuf,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}
