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
    /// Peak resident set size of the largest reaped process, in bytes.
    pub max_rss_bytes: Option<u64>,
    /// User + system CPU time of all reaped processes, in seconds.
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
