//! The job specification a user submits, and its validation.
//!
//! Parsing (serde, unknown fields refused) and validation ([`JobSpec::validate`]) are separate:
//! parsing checks shapes and units, validation checks meaning (a command is given, the array size
//! is in range, output globs stay inside the workspace, ...). Both produce errors that name the
//! field, so a batch of specs can be rejected with every problem listed at once.

use crate::units::{ByteSize, DurationSpec};
use crate::MAX_ARRAY;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Default SIGTERM → SIGKILL grace period.
pub const DEFAULT_KILL_GRACE: DurationSpec = DurationSpec(5_000);
/// Default delay before the first retry; it doubles on each further retry.
pub const DEFAULT_RETRY_BACKOFF: DurationSpec = DurationSpec(1_000);
/// Cap on the retry back-off.
pub const MAX_RETRY_BACKOFF: DurationSpec = DurationSpec(600_000);
/// CPUs reserved by a task that does not ask.
pub const DEFAULT_CPUS: f64 = 1.0;

/// What to run, where, with which limits. `command` or `shell` must be given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A human name; defaults to the command's first word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The program and its arguments (argv), run without a shell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// A command line run by `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; defaults to the attempt's private workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Container image; absent means a host process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory the task reserves.
    #[serde(default)]
    pub resources: Resources,
    /// Wall-clock limit per attempt, e.g. "30s", "2h".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "30s"))]
    pub timeout: Option<DurationSpec>,
    /// Time between SIGTERM and SIGKILL when a task is killed or times out (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "5s"))]
    pub kill_grace: Option<DurationSpec>,
    /// How many times a failed or timed-out task is tried again.
    #[serde(default)]
    pub retries: u32,
    /// Delay before the first retry (default 1s); doubles on each further retry, capped at 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "1s"))]
    pub retry_backoff: Option<DurationSpec>,
    /// Glob patterns, relative to the working directory, of files kept after the task ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// Number of tasks (1 to 1,000,000); each gets its index in `GAFFER_TASK_INDEX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<u32>,
    /// Higher runs first; FIFO within a priority.
    #[serde(default)]
    pub priority: i32,
    /// Node labels the task needs, e.g. `{"zone": "a"}`: placed only on nodes with all of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub constraints: BTreeMap<String, String>,
    /// Placement strategy for this job; default: the server's (most free memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Placement>,
    /// In a container: run as `UID[:GID]` (default: the image's user, else 65534).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Container network: `bridge` (the node's container network: an address of its own,
    /// reachable from other nodes' containers), `host` or `none` (loopback only). Unset: the
    /// bridge on nodes that offer one, else the host's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Ports of a bridge container reachable on its node's addresses (and 127.0.0.1 there),
    /// e.g. `{"host": 18080, "container": 80}`; without `host` the server picks one. Implies
    /// the bridge network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::ports::PortSpec>,
    /// Jobs that must succeed before this one starts; if one fails, this job fails as
    /// `dependency_failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub depends_on: Vec<crate::JobId>,
    /// Jobs that must end, however they end, before this one starts (Slurm's `afterany`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub after_any: Vec<crate::JobId>,
    /// Jobs that must end without success before this one starts (`afternotok`); if one
    /// succeeds, this job fails as `dependency_failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub after_not_ok: Vec<crate::JobId>,
    /// Start only once every earlier job of the same name has ended (Slurm's `singleton`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub singleton: bool,
    /// At most this many of its tasks run at once (`--array 100%10`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Submitted on hold: no task starts until the job is released (`gaffer release`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
    /// A batch script stored with the job; it runs with `command` as its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<crate::batch::Script>,
    /// The directory the job was submitted from (`SLURM_SUBMIT_DIR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_dir: Option<String>,
    /// Also write each task's standard output to this file on its node (absolute; `%j` job
    /// number, `%a` array id, `%x` job name). Without `stderr_file`, standard error goes there
    /// too, as with Slurm's `--output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_file: Option<String>,
    /// Also write each task's standard error to this file (patterns as in `stdout_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_file: Option<String>,
    /// Slurm compatibility (a script with `#SBATCH` directives): `SLURM_*` variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<crate::batch::SlurmCompat>,
    /// A cluster job of this many replicas (2 to 1,024): placed together or not at all, each
    /// started once all have their addresses, and known to each other as `NAME-0` ...
    /// `NAME-(N-1)` (`GAFFER_REPLICA`, `GAFFER_PEERS`, `GAFFER_HOSTFILE`, `/etc/hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// What a failed replica restarts: `group` (default: every replica, together), `replica`
    /// (it alone; its peers keep running) or `never` (the job fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<crate::cluster::Restart>,
    /// A front door to the replicas: every node forwards TCP connections on `host` to `port`
    /// of a ready replica, e.g. `{"host": 2379, "port": 2379}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::cluster::Service>,
    /// A command line run by `/bin/sh -c` inside each running replica every second: the
    /// replica is ready while it exits 0 (default: every running replica is ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
    /// A directory of the job's own, mounted read-write at this path in every replica; it
    /// outlives replica restarts (on one node, unless the nodes share `--storage-dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_dir: Option<String>,
    /// Host directories bound into the container, e.g.
    /// `{"host": "/srv/data", "container": "/data", "read_only": true}`; a node binds only
    /// what its agent allows (`--allow-mount`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<crate::mounts::MountSpec>,
}

/// A container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// The host's network.
    Host,
    /// A private network namespace with only loopback.
    None,
    /// A private network namespace on the node's bridge: an address of the node's subnet,
    /// reachable from other nodes' containers, with mapped ports.
    Bridge,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Network::Host),
            "none" => Ok(Network::None),
            "bridge" => Ok(Network::Bridge),
            _ => Err(format!(
                "unknown network `{s}` (expected host, none or bridge)"
            )),
        }
    }
}

/// Parses `UID[:GID]`.
pub fn parse_user(s: &str) -> Result<(u32, Option<u32>), String> {
    let bad = || format!("`{s}` must be UID or UID:GID (numbers)");
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = u.parse().map_err(|_| bad())?;
    let gid = g.map(|g| g.parse().map_err(|_| bad())).transpose()?;
    Ok((uid, gid))
}

/// How to choose among the nodes a task fits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// The node with the most unreserved memory.
    MostFreeMemory,
    /// The fullest node that fits (keeps big holes free).
    Binpack,
    /// The node with the fewest tasks.
    Spread,
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "most_free_memory" | "most-free-memory" | "default" => Ok(Placement::MostFreeMemory),
            "binpack" => Ok(Placement::Binpack),
            "spread" => Ok(Placement::Spread),
            _ => Err(format!(
                "unknown strategy `{s}` (expected binpack, spread or most_free_memory)"
            )),
        }
    }
}

/// Resources a task reserves on its node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPUs (fractions allowed); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory, e.g. "256M" or a number of bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "256M"))]
    pub memory: Option<ByteSize>,
    /// Maximum number of processes (enforced in containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

/// A problem with one field of a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    /// Position of the spec in a submitted list, if it was a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Dotted path of the field, e.g. `resources.memory`.
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(i) = self.index {
            write!(f, "job {i}: ")?;
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            index: None,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl JobSpec {
    /// Checks meaning; returns every problem found, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut err = |f: &str, m: String| errs.push(FieldError::new(f, m));
        // A script's `command` is its arguments (any, or none).
        let has_command = !self.command.is_empty();
        match (&self.shell, has_command, self.script.is_some()) {
            (Some(_), true, false) => err(
                "command",
                "give either `command` or `shell`, not both".into(),
            ),
            (None, false, false) => err(
                "command",
                "is empty: give a program and its arguments, or a `shell` command line".into(),
            ),
            (Some(s), false, _) if s.trim().is_empty() => err("shell", "is empty".into()),
            _ => {}
        }
        if self.script.is_none() && self.command.first().is_some_and(|c| c.is_empty()) {
            err("command", "the program name (first word) is empty".into());
        }
        if self
            .command
            .iter()
            .chain(self.shell.iter())
            .any(|a| a.contains('\0'))
        {
            err("command", "contains a NUL byte".into());
        }
        if let Some(n) = &self.name {
            if n.is_empty() || n.len() > 200 || n.chars().any(|c| c.is_control()) {
                err("name", "must be 1 to 200 printable characters".into());
            }
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                err(
                    &format!("env.{k}"),
                    "names must be non-empty without `=`; no NUL bytes".into(),
                );
            }
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                err("workdir", format!("`{w}` must be an absolute path"));
            }
        }
        if let Some(c) = self.resources.cpus {
            if !(c.is_finite() && c > 0.0 && c <= 4096.0) {
                err(
                    "resources.cpus",
                    format!("{c} is out of range: expected a number > 0, e.g. 0.5 or 2"),
                );
            }
        }
        if self.resources.memory.is_some_and(|m| m.0 == 0) {
            err("resources.memory", "must be greater than zero".into());
        }
        if self.resources.pids == Some(0) {
            err("resources.pids", "must be greater than zero".into());
        }
        if self.timeout.is_some_and(|t| t.0 == 0) {
            err("timeout", "must be greater than zero".into());
        }
        if self.retries > 1000 {
            err(
                "retries",
                format!("{} is too many (at most 1000)", self.retries),
            );
        }
        for e in crate::mounts::check(&self.mounts, self.image.is_some()) {
            err(&e.field, e.message);
        }
        for e in crate::cluster::check(self) {
            err(&e.field, e.message);
        }
        if let Some(a) = self.array {
            if a == 0 || a > MAX_ARRAY {
                err(
                    "array",
                    format!("{a} is out of range: expected 1 to {MAX_ARRAY}"),
                );
            }
        }
        for (i, g) in self.outputs.iter().enumerate() {
            if let Err(m) = check_output_glob(g) {
                err(&format!("outputs[{i}]"), m);
            }
        }
        for (k, v) in &self.constraints {
            if !valid_label(k) || v.len() > 200 || v.contains(['\0', ',', '=']) {
                err(
                    &format!("constraints.{k}"),
                    "label names are letters, digits, `-`, `_`, `.`, `/`; values have no `,` or `=`".into(),
                );
            }
        }
        if let Some(u) = &self.user {
            if let Err(m) = parse_user(u) {
                err("user", m);
            }
            if self.image.is_none() {
                err(
                    "user",
                    "only applies to container tasks (give an image)".into(),
                );
            }
        }
        for e in crate::ports::check(&self.ports, self.network, self.image.is_some()) {
            err(&e.field, e.message);
        }
        if self.network.is_some() && self.image.is_none() {
            err(
                "network",
                "only applies to container tasks (give an image)".into(),
            );
        }
        if let Some(i) = &self.image {
            if !valid_image_name(i) {
                err("image", format!("`{i}` is not an image name (letters, digits, `.`, `_`, `-`, `/`, `:`; at most 128)"));
            }
        }
        if self.pids_without_image() {
            err(
                "resources.pids",
                "only applies to container tasks (give an image)".into(),
            );
        }
        for e in crate::batch::check(self) {
            err(&e.field, e.message);
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// The container network the task gets: `network`, or `bridge` when it names none but
    /// has `ports` or `replicas`.
    pub fn net(&self) -> Option<Network> {
        match self.network {
            None if self.image.is_some() && (!self.ports.is_empty() || self.replicas.is_some()) => {
                Some(Network::Bridge)
            }
            n => n,
        }
    }

    /// Number of tasks.
    pub fn task_count(&self) -> u32 {
        self.replicas.or(self.array).unwrap_or(1)
    }

    /// The argv a task runs: `command`, or `/bin/sh -c shell`.
    /// (A script's argv is its arguments: its agent puts the script's path in front.)
    pub fn argv(&self) -> Vec<String> {
        match &self.shell {
            Some(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            None => self.command.clone(),
        }
    }

    /// The name shown for the job: `name`, else the program's base name.
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        if let Some(s) = &self.script {
            return s.name.clone();
        }
        match (&self.shell, self.command.first()) {
            (Some(_), _) => "sh".into(),
            (None, Some(c)) => c.rsplit('/').next().unwrap_or(c).to_string(),
            (None, None) => String::new(),
        }
    }

    fn pids_without_image(&self) -> bool {
        self.resources.pids.is_some() && self.image.is_none()
    }

    /// CPUs reserved (default 1).
    pub fn cpus(&self) -> f64 {
        self.resources.cpus.unwrap_or(DEFAULT_CPUS)
    }
}

/// An image name as stored on nodes.
pub fn valid_image_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.starts_with(['.', '-', '/'])
        && !n.contains("..")
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
}

/// A node label name: 1 to 63 of letters, digits, `-`, `_`, `.`, `/`.
pub fn valid_label(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 63
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

/// An output glob must be relative and must not climb out of the workspace.
fn check_output_glob(g: &str) -> Result<(), String> {
    if g.trim().is_empty() {
        return Err("is empty".into());
    }
    if g.starts_with('/') {
        return Err(format!(
            "`{g}` is absolute: outputs are relative to the task's working directory"
        ));
    }
    if g.split('/').any(|part| part == "..") {
        return Err(format!(
            "`{g}` escapes the working directory (`..` is not allowed)"
        ));
    }
    if g.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    Ok(())
}

pub use crate::spec_parse::{parse_specs_json, specs_from_value};

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
