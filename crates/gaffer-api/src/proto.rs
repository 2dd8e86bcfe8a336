//! Messages between an agent and the server. One bidirectional stream per agent carries
//! [`AgentMsg`] up and [`ServerMsg`] down. In `gaffer dev` the stream is an in-process channel;
//! between hosts the same messages travel as JSON.

use crate::ids::AttemptKey;
use crate::UnixMs;
use serde::{Deserialize, Serialize};

/// What an agent tells the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMsg {
    /// First message on a stream: who the agent is and what it is running.
    Register {
        /// The node's identity and capacity.
        node: NodeInfo,
        /// Attempts the agent knows of and has not yet been told to forget.
        attempts: Vec<AttemptReport>,
    },
    /// Periodic liveness and measured resources.
    Heartbeat {
        /// Free memory measured on the node, bytes.
        memory_free: u64,
        /// Images the node has now.
        #[serde(default)]
        images: Vec<String>,
        /// Of those, the ones fetched from the server's catalog: name → archive digest.
        #[serde(default)]
        image_digests: std::collections::BTreeMap<String, String>,
    },
    /// The attempt's supervisor started.
    Started {
        /// Which attempt.
        key: AttemptKey,
        /// When (Unix ms).
        at: UnixMs,
        /// Its address on the bridge network.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<String>,
    },
    /// A replica's attempt is ready to start and has its address; it waits for
    /// [`ServerMsg::Peers`] (the start barrier of a cluster job).
    Prepared {
        /// Which attempt.
        key: AttemptKey,
        /// Its address on the bridge network.
        ip: String,
    },
    /// A running replica's readiness changed (its `ready_cmd` began or stopped exiting 0).
    Ready {
        /// Which attempt.
        key: AttemptKey,
        /// Ready now.
        ready: bool,
    },
    /// The attempt ended.
    Ended {
        /// Which attempt.
        key: AttemptKey,
        /// How.
        result: AttemptResult,
    },
    /// Output of a command started by [`ServerMsg::ExecStart`].
    ExecOutput {
        /// The exec session.
        session: u64,
        /// 1 standard output (or the terminal), 2 standard error.
        stream: u8,
        /// Bytes, base64 (standard alphabet).
        data: String,
    },
    /// The command of an exec session ended (or could not start: `error`).
    ExecExit {
        /// The exec session.
        session: u64,
        /// Its exit status (128 + the signal that ended it).
        code: Option<i32>,
        /// Why it could not run.
        error: Option<String>,
    },
    /// Answer to [`ServerMsg::ReadFile`].
    FileData {
        /// The request's id.
        req: u64,
        /// Bytes read, base64 (standard alphabet).
        data: String,
        /// The attempt has ended (its logs will not grow).
        ended: bool,
        /// Why nothing could be read (no such attempt or file).
        error: Option<String>,
    },
    /// Read part of an image archive of the server's catalog; answered by
    /// [`ServerMsg::BlobData`].
    ReadBlob {
        /// Request id, echoed in the answer.
        req: u64,
        /// `sha256:<hex>` of the archive.
        digest: String,
        /// Byte offset to start at.
        offset: u64,
        /// At most this many bytes.
        max: u32,
    },
}

/// A node's identity and capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique node name.
    pub name: String,
    /// CPUs offered to tasks.
    pub cpus: f64,
    /// Memory offered to tasks, bytes.
    pub memory: u64,
    /// Whether tasks without an image may run as host processes.
    pub allow_host_tasks: bool,
    /// Labels that task constraints match against.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Container images the node has.
    #[serde(default)]
    pub images: Vec<String>,
    /// Of those, the ones fetched from the server's catalog: name → archive digest.
    #[serde(default)]
    pub image_digests: std::collections::BTreeMap<String, String>,
    /// Whether the node can run containers at all.
    #[serde(default)]
    pub containers: bool,
    /// Whether the node runs the `bridge` container network (and so wants a subnet).
    #[serde(default)]
    pub bridge: bool,
    /// Whether its attempts live on storage the nodes share (`gaffer agent --storage-dir`),
    /// so a cluster job's shared directory is the same on every such node.
    #[serde(default)]
    pub shared_storage: bool,
    /// Host directories (and what is under them) its agent lets tasks mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_mounts: Vec<String>,
}

/// An attempt the agent found, e.g. after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AttemptReport {
    /// Its supervisor is alive.
    Running {
        /// Which attempt.
        key: AttemptKey,
    },
    /// A replica waiting at the start barrier, prepared at `ip` (empty: a host replica).
    Prepared {
        /// Which attempt.
        key: AttemptKey,
        /// Its address.
        ip: String,
    },
    /// It ended (or vanished) while the server was not told.
    Ended {
        /// Which attempt.
        key: AttemptKey,
        /// How.
        result: AttemptResult,
    },
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndKind {
    /// The main process exited or was killed by a signal not sent by gaffer.
    Exited,
    /// gaffer stopped it at its timeout.
    TimedOut,
    /// gaffer killed it on request.
    Killed,
    /// It could not be started (e.g. program not found).
    SpawnFailed,
    /// The memory limit killed it.
    OomKilled,
    /// Its supervisor vanished without a result.
    Lost,
}

/// Result of an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptResult {
    /// How it ended.
    pub kind: EndKind,
    /// Exit status, if it exited.
    pub exit_code: Option<i32>,
    /// Terminating signal, if any.
    pub signal: Option<i32>,
    /// Start (Unix ms), if it started.
    pub started_at: Option<UnixMs>,
    /// End (Unix ms).
    pub ended_at: UnixMs,
    /// Peak RSS, bytes.
    pub max_rss_bytes: Option<u64>,
    /// CPU seconds.
    pub cpu_secs: Option<f64>,
    /// Output files kept.
    pub outputs: Vec<String>,
    /// Detail in words.
    pub message: Option<String>,
}

/// What the server tells an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Start this attempt.
    Start(Box<TaskLaunch>),
    /// Kill this attempt (SIGTERM, then SIGKILL after its grace).
    Kill {
        /// Which attempt.
        key: AttemptKey,
    },
    /// The server has durably recorded the attempt's end; the agent may stop reporting it.
    Forget {
        /// Which attempt.
        key: AttemptKey,
    },
    /// Run a command inside a running attempt's container (`gaffer exec`); its output comes
    /// back as [`AgentMsg::ExecOutput`], its end as [`AgentMsg::ExecExit`].
    ExecStart {
        /// The exec session (chosen by the server).
        session: u64,
        /// Which attempt.
        key: AttemptKey,
        /// Program and arguments.
        argv: Vec<String>,
        /// On a terminal (a pty of this many columns and rows), else on pipes.
        tty: Option<(u16, u16)>,
    },
    /// Standard input for an exec session (base64); empty: end of input.
    ExecInput {
        /// The exec session.
        session: u64,
        /// Bytes, base64 (standard alphabet).
        data: String,
    },
    /// Stop an exec session's command (its client went away).
    ExecKill {
        /// The exec session.
        session: u64,
    },
    /// Read part of one of an attempt's files: `stdout`, `stderr` or `outputs/<path>`.
    ReadFile {
        /// Request id, echoed in [`AgentMsg::FileData`].
        req: u64,
        /// Which attempt.
        key: AttemptKey,
        /// Relative path inside the attempt directory.
        path: String,
        /// Byte offset to start at.
        offset: u64,
        /// At most this many bytes.
        max: u32,
    },
    /// Pull an image from a registry into the node's image store.
    PullImage {
        /// `[REGISTRY/]REPOSITORY[:TAG|@DIGEST]`.
        reference: String,
        /// Name to store it as.
        name: String,
        /// Plain HTTP to the registry.
        insecure: bool,
    },
    /// Send `Register` again on this stream: the server declared the node down while the
    /// stream stayed open (a short network cut), and must reconcile its attempts.
    Reregister,
    /// The job was deleted: remove its attempt directories (logs, outputs).
    Purge {
        /// The job.
        job: crate::JobId,
    },
    /// Answer to [`AgentMsg::ReadBlob`].
    BlobData {
        /// The request's id.
        req: u64,
        /// Bytes read, base64 (standard alphabet); empty at the end of the archive.
        data: String,
        /// Why nothing could be read (no such archive).
        error: Option<String>,
    },
    /// Fetch this image of the server's catalog now, unless the node has it
    /// (`gaffer image import --all-nodes`).
    FetchImage {
        /// Image name.
        name: String,
        /// `sha256:<hex>` of its archive.
        digest: String,
        /// Archive size, bytes.
        size: u64,
    },
    /// The node's container network: its subnet of the cluster CIDR, and the other nodes'
    /// subnets to route via their addresses. Sent when the agent registers and whenever a
    /// node's subnet or address changes or a node comes or goes.
    Network {
        /// This node's subnet, e.g. `10.88.3.0/24`.
        subnet: String,
        /// The whole cluster CIDR (traffic leaving it is masqueraded).
        cluster_cidr: String,
        /// (subnet, node address) of every other node with a subnet.
        routes: Vec<(String, String)>,
    },
    /// The hostnames and addresses of every replica of a cluster job, in replica order. A
    /// replica waiting at the start barrier starts; a running one gets its `/etc/hosts`
    /// rewritten (a peer came back with a new address).
    Peers {
        /// The replica's attempt.
        key: AttemptKey,
        /// (hostname, address) of every replica.
        peers: Vec<(String, String)>,
    },
    /// A cluster job's front door: listen on `host` and forward TCP connections to one of
    /// `backends` (`ip:port` of its ready replicas). With `open` false, stop listening.
    Service {
        /// The job.
        job: crate::JobId,
        /// The port to listen on.
        host: u16,
        /// Where connections go, in order of preference.
        backends: Vec<String>,
        /// Whether the front door stays open (false once the job ended).
        open: bool,
    },
    /// The image was removed from the catalog: remove the node's copy if it is that one.
    RemoveImage {
        /// Image name.
        name: String,
        /// `sha256:<hex>` of the archive that was removed.
        digest: String,
    },
}

/// Everything an agent needs to run one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLaunch {
    /// Which attempt.
    pub key: AttemptKey,
    /// Job name (for hostnames and logs).
    pub name: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment added to the agent's base environment (spec env and `GAFFER_*`).
    pub env: Vec<(String, String)>,
    /// Working directory, if the spec gave one.
    pub workdir: Option<String>,
    /// Container image, if any.
    pub image: Option<String>,
    /// The image's archive in the server's catalog (`sha256:<hex>`) and its size: the agent
    /// fetches it unless it holds that image already. `None`: use the node's own image.
    #[serde(default)]
    pub image_archive: Option<(String, u64)>,
    /// Timeout, ms.
    pub timeout_ms: Option<u64>,
    /// SIGTERM → SIGKILL grace, ms.
    pub kill_grace_ms: u64,
    /// Output globs.
    pub outputs: Vec<String>,
    /// CPUs reserved.
    pub cpus: f64,
    /// Memory limit, bytes.
    pub memory: Option<u64>,
    /// Process limit.
    pub pids: Option<u32>,
    /// `UID[:GID]` to run as in a container.
    #[serde(default)]
    pub user: Option<String>,
    /// Container network: `none`, `host` or `bridge`.
    #[serde(default)]
    pub network: Option<crate::spec::Network>,
    /// Ports to map (host ports chosen by the server).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::ports::PortMapping>,
    /// A replica of a cluster job of this many: it waits, once prepared, for
    /// [`ServerMsg::Peers`] before its command starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// A replica's readiness check, run by `/bin/sh -c` inside it every second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
    /// Where the job's shared directory is mounted inside (a cluster job's `shared_dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_dir: Option<String>,
    /// Host directories to bind into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<crate::mounts::MountSpec>,
    /// A batch script: the agent writes it out and runs it with `argv` as its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<crate::batch::Script>,
    /// Host paths (patterns expanded) that receive the task's stdout and stderr as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_file: Option<String>,
    /// See `stdout_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_file: Option<String>,
}
