//! Durable state of a gaffer cluster.
//!
//! The [`Store`] trait is what the server's core needs: load the *active* state at start-up
//! ([`Store::load_active`]), apply one [`Batch`] of changes atomically per scheduling round
//! ([`Store::commit`]), and answer paginated reads for the API. Finished history stays in the
//! store and is never loaded into memory. [`sqlite::SqliteStore`] is the single-node backend
//! (WAL, `synchronous=FULL`: a committed batch survives power loss); `etcd::EtcdStore` (cargo
//! feature `etcd`, on by default) is the backend for HA and implements the same trait, with
//! writes fenced on the leader key.
//!
//! Tasks of an array are stored lazily: a job records `next_fresh`, and every task with an index
//! at or above it that has no row is pending and has never run. A 1,000,000-task array costs one
//! row until its tasks start.
//!
//! [`record`] holds the job, task and attempt records as they are kept on disk: the etcd
//! backend's values and the lines of a `gaffer admin snapshot` file.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod record;
pub mod sqlite;

use gaffer_api::state::TaskCounts;
use gaffer_api::views::{AttemptView, EventView, JobPage, TaskView};
use gaffer_api::{JobId, JobSpec, JobState, TaskState, UnixMs};

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error at {path}: {source}")]
    Sqlite {
        /// Database file.
        path: String,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// An etcd request failed (unreachable cluster, timeout, request too large, ...).
    #[cfg(feature = "etcd")]
    #[error(
        "etcd at {endpoints}: {op} failed: {source} (check that etcd runs and that the endpoints \
         are reachable from this host)"
    )]
    Etcd {
        /// The endpoints the store was given, comma-separated.
        endpoints: String,
        /// What the store was doing.
        op: String,
        /// Cause.
        #[source]
        source: Box<etcd_client::Error>,
    },
    /// A write was refused because this server no longer holds the leadership its fence names;
    /// nothing of the refused transaction was written.
    #[error(
        "write refused: leadership fence on etcd key {key} does not hold ({detail}); another \
         server is leader now, this one must stop writing"
    )]
    Fenced {
        /// The leader key compared by every write.
        key: String,
        /// What no longer holds.
        detail: String,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// Why.
        detail: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A job record as the core keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// Id.
    pub id: JobId,
    /// Display name.
    pub name: String,
    /// The spec as submitted (validated).
    pub spec: JobSpec,
    /// Derived state.
    pub state: JobState,
    /// Counts by state.
    pub counts: TaskCounts,
    /// Submitted at.
    pub created_at: UnixMs,
    /// Finished at.
    pub finished_at: Option<UnixMs>,
    /// Kill requested.
    pub kill_requested: bool,
    /// On hold: none of its tasks starts until it is released.
    pub held: bool,
    /// Every task index below this has a task row.
    pub next_fresh: u32,
}

/// A task record (only for tasks that have been touched).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// Job.
    pub job: JobId,
    /// Array index.
    pub index: u32,
    /// State.
    pub state: TaskState,
    /// Attempts made so far (the current or last one's number).
    pub attempts: u32,
    /// Retries consumed by `lost` attempts.
    pub lost: u32,
    /// Node of the current or last attempt.
    pub node: Option<String>,
    /// Earliest start of a pending retry.
    pub not_before: Option<UnixMs>,
}

/// One atomic change set, committed in one transaction.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// New jobs.
    pub insert_jobs: Vec<JobRow>,
    /// Jobs whose state, counts, flags or `next_fresh` changed (spec is not rewritten).
    pub update_jobs: Vec<JobRow>,
    /// Task rows to insert or replace.
    pub tasks: Vec<TaskRow>,
    /// Attempt records to insert or replace.
    pub attempts: Vec<(JobId, u32, AttemptView)>,
    /// Events to append (ids are assigned by the caller, increasing).
    pub events: Vec<EventView>,
    /// Jobs to delete with their tasks, attempts and events.
    pub delete_jobs: Vec<JobId>,
    /// Idempotency keys of submitted batches.
    pub idempotency: Vec<(String, Vec<JobId>)>,
    /// New value of the job id counter.
    pub next_job_id: Option<u64>,
    /// New value of the event id counter (kept when deletes remove the newest events, so that
    /// ids are never handed out twice).
    pub next_event_id: Option<u64>,
    /// Container subnets given to nodes: (node, CIDR). A node keeps its subnet for good.
    pub node_subnets: Vec<(String, String)>,
}

impl Batch {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.insert_jobs.is_empty()
            && self.update_jobs.is_empty()
            && self.tasks.is_empty()
            && self.attempts.is_empty()
            && self.events.is_empty()
            && self.delete_jobs.is_empty()
            && self.idempotency.is_empty()
            && self.next_job_id.is_none()
            && self.next_event_id.is_none()
            && self.node_subnets.is_empty()
    }
}

/// What the core needs in memory after a restart.
#[derive(Debug, Default, Clone)]
pub struct ActiveState {
    /// Jobs not yet final.
    pub jobs: Vec<JobRow>,
    /// Task rows of those jobs in pending, assigned or running state.
    pub tasks: Vec<TaskRow>,
    /// Next job id to hand out.
    pub next_job_id: u64,
    /// Next event id.
    pub next_event_id: u64,
    /// Every node's container subnet: (node, CIDR), by node name.
    pub node_subnets: Vec<(String, String)>,
}

/// Filter and page of a job listing.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs whose name contains this.
    pub name: Option<String>,
    /// Only jobs with a smaller id (the previous page's `next`).
    pub before: Option<JobId>,
    /// Page size.
    pub limit: u32,
}

/// Durable state behind the server.
pub trait Store: Send + Sync {
    /// Loads everything that is not final.
    fn load_active(&self) -> Result<ActiveState>;
    /// Applies a batch atomically and durably.
    fn commit(&self, batch: &Batch) -> Result<()>;
    /// Lists jobs, newest first.
    fn list_jobs(&self, q: &JobQuery) -> Result<JobPage>;
    /// One job.
    fn get_job(&self, id: JobId) -> Result<Option<JobRow>>;
    /// Tasks `from..from+limit` of a job (untouched ones as pending with no attempts).
    fn list_tasks(&self, job: &JobRow, from: u32, limit: u32) -> Result<Vec<TaskView>>;
    /// Attempts of one task.
    fn attempts(&self, job: JobId, index: u32) -> Result<Vec<AttemptView>>;
    /// Events with id > `after`, oldest first, optionally of one job.
    fn events(&self, after: u64, job: Option<JobId>, limit: u32) -> Result<Vec<EventView>>;
    /// Number of jobs in each state.
    fn count_jobs(&self) -> Result<Vec<(JobState, u64)>>;
    /// Task rows of a job in any of `states`.
    fn tasks_in_states(&self, job: JobId, states: &[TaskState]) -> Result<Vec<TaskRow>>;
    /// Jobs created by an earlier submit with this idempotency key.
    fn idempotent_ids(&self, key: &str) -> Result<Option<Vec<JobId>>>;
    /// Every idempotency key greater than `after` (from the first with `None`) in byte order,
    /// at most `limit` of them, each with the jobs its submit created. The core only looks keys
    /// up; this listing is for `gaffer admin snapshot`.
    fn idempotency_keys(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<JobId>)>>;
    /// Task attempts that ended at or after `since` (Unix ms), counted per minute:
    /// `(minute start, succeeded, failed)`, where failed covers `failed`, `timed_out`,
    /// `oom_killed` and `lost`. Minutes without any are left out; oldest first.
    fn ended_per_minute(&self, since: UnixMs) -> Result<Vec<(UnixMs, u64, u64)>>;
    /// Jobs `ids` with every stored task row and attempt, in the order of `ids` (`None` for a
    /// job that does not exist): the whole record of each, for `gaffer admin snapshot`. Read
    /// with range reads over the ids' span rather than a few reads per job, so callers should
    /// pass ids that lie close together (a page of the job list).
    fn job_histories(&self, ids: &[JobId]) -> Result<Vec<Option<JobHistory>>>;
}

/// A job with everything stored about it except its events.
#[derive(Debug, Clone, PartialEq)]
pub struct JobHistory {
    /// The job.
    pub job: JobRow,
    /// Its task rows (tasks that never ran have none), by index.
    pub tasks: Vec<TaskRow>,
    /// Its attempts as `(task index, attempt)`, by index, then attempt number.
    pub attempts: Vec<(u32, AttemptView)>,
}

impl JobRow {
    /// Tasks `from..from+limit` as they read before their rows are applied: tasks without a
    /// row never ran, so they are pending, killed with their job, or (in a job that ended
    /// without running them) failed because of a dependency. Empty past the last task.
    pub fn untouched_tasks(&self, from: u32, limit: u32) -> Vec<TaskView> {
        let end = from.saturating_add(limit).min(self.counts.total);
        let state = if self.kill_requested {
            TaskState::Killed
        } else if self.state.is_final() {
            TaskState::DependencyFailed
        } else {
            TaskState::Pending
        };
        (from.min(end)..end)
            .map(|index| TaskView {
                index,
                state,
                attempts: Vec::new(),
                not_before: None,
            })
            .collect()
    }

    /// The API view of this row.
    pub fn view(&self) -> gaffer_api::views::JobView {
        gaffer_api::views::JobView {
            id: self.id,
            name: self.name.clone(),
            state: self.state,
            tasks: self.counts,
            created_at: self.created_at,
            finished_at: self.finished_at,
            kill_requested: self.kill_requested,
            held: self.held,
            pending_reason: None,
            spec: self.spec.clone(),
        }
    }
}
