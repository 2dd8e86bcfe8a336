//! What the API returns: jobs, tasks, attempts, events, nodes and pages of them.

use crate::ids::JobId;
use crate::spec::{FieldError, JobSpec};
use crate::state::{JobState, TaskCounts, TaskState};
use crate::UnixMs;
use serde::{Deserialize, Serialize};

/// A job as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    /// Id, e.g. `j-000042`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "j-000042"))]
    pub id: JobId,
    /// Name shown in listings.
    pub name: String,
    /// Derived state.
    pub state: JobState,
    /// Task counts by state.
    pub tasks: TaskCounts,
    /// Submission time (Unix ms).
    pub created_at: UnixMs,
    /// When the last task ended (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<UnixMs>,
    /// A kill was requested.
    #[serde(default)]
    pub kill_requested: bool,
    /// On hold: no task starts until `gaffer release`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// Why pending tasks are not placed, e.g. "no node has 64GiB free memory".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// The submitted spec.
    pub spec: JobSpec,
}

/// One page of jobs; pass `next` as `before` to get the following page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobPage {
    /// Jobs, newest first.
    pub jobs: Vec<JobView>,
    /// Cursor for the next page, absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub next: Option<JobId>,
}

/// A job with (a page of) its tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobDetail {
    /// The job.
    #[serde(flatten)]
    pub job: JobView,
    /// Tasks from index `tasks_from` (default 0), at most `tasks_limit` (default 1000).
    pub task_list: Vec<TaskView>,
}

/// One task of a job with its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskView {
    /// Array index.
    pub index: u32,
    /// Current state.
    pub state: TaskState,
    /// Attempts so far, oldest first.
    pub attempts: Vec<AttemptView>,
    /// When a pending retry becomes eligible (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<UnixMs>,
}

/// One try of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptView {
    /// 1-based attempt number.
    pub attempt: u32,
    /// Node it ran on.
    pub node: String,
    /// State of this attempt (`assigned`, `running` or how it ended).
    pub state: TaskState,
    /// When its process started (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<UnixMs>,
    /// When it ended (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<UnixMs>,
    /// Exit status, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that ended it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why it ended, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Peak resident memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rss_bytes: Option<u64>,
    /// CPU time used, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_secs: Option<f64>,
    /// Output files kept (paths relative to the working directory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// Its address on the bridge network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Its mapped ports (host port on its node → container port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::ports::PortMapping>,
    /// A replica's readiness (`ready_cmd`): set while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

/// A state transition, as stored and streamed by `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventView {
    /// Increasing id; resume a stream with `?after=ID`.
    pub id: u64,
    /// Unix ms.
    pub time: UnixMs,
    /// The job.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub job: JobId,
    /// Task index, absent for job-level events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<u32>,
    /// Attempt number, when the event is about an attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Previous state (task or job state name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// New state, or a job-level event name (`submitted`, `kill_requested`, `removed`).
    pub to: String,
    /// Detail, e.g. the exit code or why a task was lost.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A worker node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// `ready`, `draining` (no new tasks) or `down` (not connected).
    pub state: String,
    /// Address the agent connected from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Its subnet of the cluster CIDR, where it runs the bridge network (e.g. `10.88.0.0/24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Container images the node has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Of those, the ones fetched from the server's image catalog: name → archive digest.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub image_digests: std::collections::BTreeMap<String, String>,
    /// CPUs it offers.
    pub cpus_total: f64,
    /// CPUs reserved by running tasks.
    pub cpus_allocated: f64,
    /// Memory it offers, bytes.
    pub memory_total: u64,
    /// Memory reserved by running tasks, bytes.
    pub memory_allocated: u64,
    /// Memory gaffer can still give tasks there: what it offers minus what is reserved.
    #[serde(default)]
    pub memory_available: u64,
    /// The host's free memory as its agent last measured it (not what gaffer can give:
    /// see `memory_available`), bytes.
    pub memory_free: u64,
    /// Tasks running there.
    pub running_tasks: u32,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
}

/// An image of the cluster: one in the server's catalog (`gaffer image import`), or one that
/// only some nodes hold (imported or pulled on the node itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageView {
    /// Image name, as tasks give it with `--image`.
    pub name: String,
    /// `sha256:<hex>` of the archive in the catalog; `None` for a node-only image.
    #[serde(default)]
    pub digest: Option<String>,
    /// Archive size, bytes (catalog images).
    #[serde(default)]
    pub size: Option<u64>,
    /// `rootfs-tar`, `docker-save` or `oci-layout` (catalog images).
    #[serde(default)]
    pub format: Option<String>,
    /// When it was imported into the catalog (Unix ms).
    #[serde(default)]
    pub imported_at: Option<crate::UnixMs>,
    /// Nodes that hold it: for a catalog image, those whose copy has its digest.
    pub nodes: Vec<String>,
    /// Nodes whose image of this name is another one (imported locally, or an older
    /// version); they fetch the catalog's when a task needs it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_nodes: Vec<String>,
}

/// Answer to a successful submit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubmitResponse {
    /// Ids of the created jobs, in the order submitted.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub ids: Vec<JobId>,
}

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong, in one line.
    pub error: String,
    /// Per-field problems of a rejected spec or batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

/// A file a task left in its outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputFile {
    /// Task index.
    pub task: u32,
    /// Attempt it came from.
    pub attempt: u32,
    /// Path relative to the working directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// One gaffer server of an HA cluster (`GET /v1/servers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerView {
    /// Member id (its advertised `host:port`).
    pub id: String,
    /// URL other servers, agents and clients reach it at (`--advertise`).
    pub url: String,
    /// True for the current leader.
    pub leader: bool,
    /// When it joined (Unix ms).
    pub since: UnixMs,
}

/// The servers of an HA cluster and its leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServersView {
    /// Live members (their etcd lease is current), leader first.
    pub servers: Vec<ServerView>,
    /// Id of the leader, if one is elected.
    pub leader: Option<String>,
    /// Leadership term: grows with every election (the leader key's etcd create revision).
    pub term: Option<i64>,
    /// Id of the server that answered.
    pub answered_by: String,
}

/// One row of accounting (`GET /v1/history`, `gaffer history`): a job, or one task of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRow {
    /// The job.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub job: JobId,
    /// The task, in a per-task listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<u32>,
    /// The job's name.
    pub name: String,
    /// The job's (or task's) state.
    pub state: String,
    /// Tasks (1 for a task row).
    pub tasks: u32,
    /// Attempts made, retries included.
    pub attempts: u32,
    /// Submitted at (Unix ms).
    pub submitted_at: UnixMs,
    /// The first attempt's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<UnixMs>,
    /// The end of the last attempt (of the job: when it finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<UnixMs>,
    /// From submit to the first start, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// From the first start to the end, ms (retries and back-offs included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ms: Option<u64>,
    /// CPU time of every attempt, seconds.
    pub cpu_secs: f64,
    /// The highest peak resident memory of any attempt, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rss_bytes: Option<u64>,
    /// The last attempt's exit code (of a job: the first task's that is not 0, else 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Nodes its attempts ran on, comma-separated.
    pub nodes: String,
}

/// A page of accounting rows, newest job first; pass `next` as `before` for the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryPage {
    /// Rows.
    pub rows: Vec<UsageRow>,
    /// Cursor for the next page, absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub next: Option<JobId>,
}
