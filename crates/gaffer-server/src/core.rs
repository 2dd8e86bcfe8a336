//! The job state machine and scheduling loop: the only writer of cluster state.
//!
//! [`Core`] is plain synchronous code over in-memory *active* state (jobs not yet final, their
//! non-final tasks, the nodes). Everything that changes state arrives as a [`Command`] on one
//! channel; [`run`] drains whatever is queued, applies it, fires due retry timers, runs one
//! placement round through `gaffer-sched`, commits the resulting [`Batch`] in one transaction,
//! and only then sends messages to agents, answers API callers and publishes events. So a 201
//! always follows a durable commit, and a burst of task ends costs one fsync.
//!
//! Finished jobs leave memory as soon as their last task ends; their history is read from the
//! store by the API.

use crate::shared::Shared;
use gaffer_api::now_ms;
use gaffer_api::proto::{
    AgentMsg, AttemptReport, AttemptResult, EndKind, NodeInfo, ServerMsg, TaskLaunch,
};
use gaffer_api::spec::{DEFAULT_KILL_GRACE, DEFAULT_RETRY_BACKOFF, MAX_RETRY_BACKOFF};
use gaffer_api::state::TaskCounts;
use gaffer_api::views::{AttemptView, EventView, NodeView};
use gaffer_api::{AttemptKey, FieldError, JobId, JobSpec, JobState, Placement, TaskState, UnixMs};
use gaffer_sched::{Demand, NodeCapacity, Scheduler, Strategy};
use gaffer_store::{Batch, JobRow, Store, TaskRow};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc::UnboundedSender, oneshot};

/// Default number of lost attempts per task that do not consume the retry budget.
pub const MAX_FREE_LOST: u32 = 3;

/// Errors the core answers API calls with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CoreError {
    /// No such job.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// No such node.
    #[error("node `{0}` not found")]
    NoSuchNode(String),
    /// The request conflicts with the job's state.
    #[error("{0}")]
    Conflict(String),
    /// The request is invalid.
    #[error("invalid job spec")]
    Invalid(Vec<FieldError>),
    /// The store failed; nothing was changed.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
}

type Reply<T> = oneshot::Sender<Result<T, CoreError>>;

/// Everything that can change state.
pub enum Command {
    /// Create jobs (already validated), all or none.
    Submit {
        /// Specs.
        specs: Vec<JobSpec>,
        /// Idempotency key.
        idempotency_key: Option<String>,
        /// Answer: the new ids.
        reply: Reply<Vec<JobId>>,
    },
    /// Kill every task of a job.
    Kill {
        /// Job.
        job: JobId,
        /// Answer: the job's state afterwards.
        reply: Reply<JobState>,
    },
    /// Delete a job and its history.
    Remove {
        /// Job.
        job: JobId,
        /// Kill it first if it is still active.
        force: bool,
        /// Answer.
        reply: Reply<()>,
    },
    /// Give every task of a job that ended failed, timed out, OOM-killed or lost a new attempt.
    Retry {
        /// Job.
        job: JobId,
        /// Answer: how many tasks were re-queued.
        reply: Reply<u32>,
    },
    /// Stop placing tasks on a node (and with `migrate`, move its running tasks away).
    Drain {
        /// Node name.
        node: String,
        /// Re-queue its running tasks.
        migrate: bool,
        /// Answer.
        reply: Reply<()>,
    },
    /// Undo a drain.
    Enable {
        /// Node name.
        node: String,
        /// Answer.
        reply: Reply<()>,
    },
    /// An agent opened a stream.
    AgentConnected {
        /// Connection number, to tell reconnects apart.
        conn: u64,
        /// Where it connected from.
        address: String,
        /// The node.
        node: NodeInfo,
        /// Attempts it knows of.
        attempts: Vec<AttemptReport>,
        /// Where to send it messages.
        tx: UnboundedSender<ServerMsg>,
    },
    /// A message on an agent's stream.
    Agent {
        /// Connection number.
        conn: u64,
        /// Node name.
        node: String,
        /// The message.
        msg: AgentMsg,
    },
    /// An agent's stream closed.
    AgentGone {
        /// Connection number.
        conn: u64,
        /// Node name.
        node: String,
    },
    /// The server's image catalog changed: name → (archive digest, size). Tasks with one of
    /// these images may go to any node that runs containers; it fetches the archive.
    Images(std::collections::BTreeMap<String, (String, u64)>),
    /// Stop the loop after this round.
    Shutdown,
}

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Default placement strategy.
    pub strategy: Strategy,
    /// A node silent this long is down.
    pub heartbeat_timeout: Duration,
    /// Lost attempts per task that do not consume its retries.
    pub max_lost: u32,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            strategy: Strategy::MostFreeMemory,
            heartbeat_timeout: Duration::from_secs(10),
            max_lost: MAX_FREE_LOST,
        }
    }
}

/// Handle to send commands to the core.
#[derive(Clone)]
pub struct CoreHandle {
    tx: Sender<Command>,
}

impl CoreHandle {
    /// Wraps the command channel.
    pub fn new(tx: Sender<Command>) -> Self {
        CoreHandle { tx }
    }

    /// Sends a command; false if the core has stopped.
    pub fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).is_ok()
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, CoreError> {
        let (tx, rx) = oneshot::channel();
        if !self.send(make(tx)) {
            return Err(CoreError::Unavailable("the server is shutting down".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(CoreError::Unavailable("the server is shutting down".into())))
    }

    /// Submits validated specs atomically.
    pub async fn submit(
        &self,
        specs: Vec<JobSpec>,
        idempotency_key: Option<String>,
    ) -> Result<Vec<JobId>, CoreError> {
        self.ask(|reply| Command::Submit {
            specs,
            idempotency_key,
            reply,
        })
        .await
    }

    /// Kills a job.
    pub async fn kill(&self, job: JobId) -> Result<JobState, CoreError> {
        self.ask(|reply| Command::Kill { job, reply }).await
    }

    /// Removes a job.
    pub async fn remove(&self, job: JobId, force: bool) -> Result<(), CoreError> {
        self.ask(|reply| Command::Remove { job, force, reply })
            .await
    }

    /// Retries a job's failed tasks.
    pub async fn retry(&self, job: JobId) -> Result<u32, CoreError> {
        self.ask(|reply| Command::Retry { job, reply }).await
    }

    /// Drains a node.
    pub async fn drain(&self, node: String, migrate: bool) -> Result<(), CoreError> {
        self.ask(|reply| Command::Drain {
            node,
            migrate,
            reply,
        })
        .await
    }

    /// Re-enables a drained node.
    pub async fn enable(&self, node: String) -> Result<(), CoreError> {
        self.ask(|reply| Command::Enable { node, reply }).await
    }
}

struct TaskRt {
    state: TaskState,
    attempt: u32,
    lost: u32,
    node: Option<String>,
    not_before: Option<UnixMs>,
    started_at: Option<UnixMs>,
}

struct ActiveJob {
    row: JobRow,
    /// Touched, non-final tasks.
    tasks: HashMap<u32, TaskRt>,
    /// Retries whose back-off has passed, in order.
    ready: VecDeque<u32>,
    /// Dependencies that have not succeeded yet.
    waiting_on: BTreeSet<JobId>,
}

impl ActiveJob {
    fn new(row: JobRow) -> Self {
        ActiveJob {
            row,
            tasks: HashMap::new(),
            ready: VecDeque::new(),
            waiting_on: BTreeSet::new(),
        }
    }

    fn has_work(&self) -> bool {
        !self.row.kill_requested
            && self.waiting_on.is_empty()
            && (!self.ready.is_empty() || self.row.next_fresh < self.row.counts.total)
    }

    fn demand(&self) -> Demand {
        Demand {
            cpus: self.row.spec.cpus(),
            memory: self.row.spec.resources.memory.map(|m| m.0).unwrap_or(0),
            host: self.row.spec.image.is_none(),
            constraints: self.row.spec.constraints.clone(),
            image: self.row.spec.image.clone(),
        }
    }
}

/// CPUs in thousandths, the unit of a node's allocation.
fn milli(cpus: f64) -> u64 {
    (cpus * 1000.0).round().max(0.0) as u64
}

/// Thousandths of CPUs back as CPUs.
fn cpus_of(milli: u64) -> f64 {
    milli as f64 / 1000.0
}

fn strategy_of(p: Option<Placement>, default: Strategy) -> Strategy {
    match p {
        None => default,
        Some(Placement::MostFreeMemory) => Strategy::MostFreeMemory,
        Some(Placement::Binpack) => Strategy::Binpack,
        Some(Placement::Spread) => Strategy::Spread,
    }
}

struct Node {
    info: NodeInfo,
    address: String,
    draining: bool,
    /// Declared down by the heartbeat timeout; cleared when the agent registers again.
    down: bool,
    /// A `Reregister` was sent since it went down.
    reregister_asked: bool,
    conn: u64,
    tx: Option<UnboundedSender<ServerMsg>>,
    /// CPUs allocated, in thousandths (sums of fractions like 0.1 drift in floating point).
    cpus_alloc_m: u64,
    mem_alloc: u64,
    memory_free: u64,
    last_seen: UnixMs,
    running: HashSet<AttemptKey>,
}

/// Effects waiting for the commit of the current round.
type Deferred = Box<dyn FnOnce(Result<(), CoreError>) + Send>;

/// The state machine. See the module docs.
pub struct Core {
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    cfg: CoreConfig,
    jobs: HashMap<JobId, ActiveJob>,
    queue: BTreeSet<(Reverse<i32>, JobId)>,
    timers: BinaryHeap<Reverse<(UnixMs, JobId, u32)>>,
    nodes: HashMap<String, Node>,
    next_job_id: u64,
    next_event_id: u64,
    batch: Batch,
    dirty_jobs: HashSet<JobId>,
    outbox: Vec<(String, ServerMsg)>,
    deferred: Vec<Deferred>,
    events: Vec<EventView>,
    /// A commit failed: the loop must stop.
    broken: bool,
    /// Active jobs waiting on each job.
    dependents: HashMap<JobId, Vec<JobId>>,
    /// Attempts being killed to move them off a draining node.
    migrating: HashSet<AttemptKey>,
    /// Ended attempts whose outputs should be copied to the server (after commit).
    pulls: Vec<OutputPull>,
    pull_tx: UnboundedSender<OutputPull>,
    /// The image catalog ([`Command::Images`]).
    catalog: std::collections::BTreeMap<String, (String, u64)>,
}

/// Extra time nodes known only from the store get to reconnect after the core starts: an
/// agent treats a server as gone after 10 s of silence (`gaffer_agent::remote::SILENCE`).
pub const RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// Outputs of an ended attempt to copy from its node: (node, attempt, paths).
pub type OutputPull = (String, AttemptKey, Vec<String>);

impl Core {
    /// Loads active state from the store.
    pub fn load(
        store: Arc<dyn Store>,
        shared: Arc<Shared>,
        cfg: CoreConfig,
        pull_tx: UnboundedSender<OutputPull>,
    ) -> gaffer_store::Result<Self> {
        let active = store.load_active()?;
        let mut core = Core {
            store,
            shared,
            cfg,
            jobs: HashMap::new(),
            queue: BTreeSet::new(),
            timers: BinaryHeap::new(),
            nodes: HashMap::new(),
            next_job_id: active.next_job_id,
            next_event_id: active.next_event_id,
            batch: Batch::default(),
            dirty_jobs: HashSet::new(),
            outbox: Vec::new(),
            deferred: Vec::new(),
            events: Vec::new(),
            broken: false,
            dependents: HashMap::new(),
            migrating: HashSet::new(),
            pulls: Vec::new(),
            pull_tx,
            catalog: Default::default(),
        };
        for row in active.jobs {
            core.jobs.insert(row.id, ActiveJob::new(row));
        }
        for t in active.tasks {
            let Some(job) = core.jobs.get_mut(&t.job) else {
                continue;
            };
            if t.state == TaskState::Pending {
                core.timers
                    .push(Reverse((t.not_before.unwrap_or(0), t.job, t.index)));
            }
            if let (TaskState::Assigned | TaskState::Running, Some(n)) = (t.state, &t.node) {
                // Until its agent reconnects, the node is known only by these attempts; if it
                // never does, the heartbeat timeout declares them lost. An agent connected to a
                // server that died without closing its connection (a new HA leader took over)
                // notices only after its silence limit, so it gets that long on top.
                let now = now_ms() + RECONNECT_GRACE.as_millis() as u64;
                let node = core.nodes.entry(n.clone()).or_insert_with(|| Node {
                    info: NodeInfo {
                        name: n.clone(),
                        cpus: 0.0,
                        memory: 0,
                        allow_host_tasks: false,
                        labels: Default::default(),
                        images: Vec::new(),
                        image_digests: Default::default(),
                        containers: false,
                    },
                    address: String::new(),
                    draining: false,
                    down: false,
                    reregister_asked: false,
                    conn: 0,
                    tx: None,
                    cpus_alloc_m: 0,
                    mem_alloc: 0,
                    memory_free: 0,
                    last_seen: now,
                    running: HashSet::new(),
                });
                node.running.insert(AttemptKey {
                    job: t.job,
                    index: t.index,
                    attempt: t.attempts,
                });
            }
            job.tasks.insert(
                t.index,
                TaskRt {
                    state: t.state,
                    attempt: t.attempts,
                    lost: t.lost,
                    node: t.node,
                    not_before: t.not_before,
                    started_at: None,
                },
            );
        }
        let mut ids: Vec<JobId> = core.jobs.keys().copied().collect();
        ids.sort();
        let now = now_ms();
        for id in &ids {
            if let Err(e) = core.link_dependencies(*id, now) {
                tracing::warn!(job = %id, error = %e, "cannot resolve dependencies");
            }
        }
        for id in ids {
            core.requeue(id);
        }
        core.publish_gauges();
        Ok(core)
    }

    fn event(
        &mut self,
        now: UnixMs,
        job: JobId,
        at: Option<(u32, u32)>,
        from: Option<&str>,
        to: &str,
        detail: String,
    ) {
        let e = EventView {
            id: self.next_event_id,
            time: now,
            job,
            task: at.map(|a| a.0),
            attempt: at.map(|a| a.1),
            from: from.map(str::to_string),
            to: to.to_string(),
            detail,
        };
        self.next_event_id += 1;
        self.batch.events.push(e.clone());
        self.events.push(e);
    }

    fn requeue(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let key = (Reverse(job.row.spec.priority), id);
        if job.has_work() {
            self.queue.insert(key);
        } else {
            self.queue.remove(&key);
        }
    }

    /// Re-derives a job's state; writes it; drops it from memory once final.
    fn touch_job(&mut self, id: JobId, now: UnixMs) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let old = job.row.state;
        let new = JobState::derive(&job.row.counts);
        job.row.state = new;
        if new.is_final() && job.row.finished_at.is_none() {
            job.row.finished_at = Some(now);
        }
        self.dirty_jobs.insert(id);
        if old != new {
            self.event(
                now,
                id,
                None,
                Some(old.as_str()),
                new.as_str(),
                String::new(),
            );
        }
        if new.is_final() {
            let job = self.jobs.remove(&id).expect("job present");
            self.queue.remove(&(Reverse(job.row.spec.priority), id));
            self.batch.update_jobs.push(job.row);
            self.dirty_jobs.remove(&id);
            for dependent in self.dependents.remove(&id).unwrap_or_default() {
                if new == JobState::Succeeded {
                    if let Some(d) = self.jobs.get_mut(&dependent) {
                        d.waiting_on.remove(&id);
                        let reason = waiting_reason(&d.waiting_on);
                        self.set_reason(dependent, reason);
                        self.requeue(dependent);
                    }
                } else {
                    self.fail_dependency(dependent, id, new, now);
                }
            }
            self.set_reason(id, None);
        } else {
            self.requeue(id);
        }
    }

    fn set_reason(&mut self, id: JobId, reason: Option<String>) {
        let mut map = self
            .shared
            .reasons
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match reason {
            Some(r) => map.insert(id, r),
            None => map.remove(&id),
        };
    }

    /// Records what job `id` waits for; fails it at once if a dependency already failed.
    fn link_dependencies(&mut self, id: JobId, now: UnixMs) -> Result<(), CoreError> {
        let deps = match self.jobs.get(&id) {
            Some(j) => j.row.spec.depends_on.clone(),
            None => return Ok(()),
        };
        let mut failed = None;
        for d in deps {
            if d == id {
                continue;
            }
            if self.jobs.contains_key(&d) {
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.waiting_on.insert(d);
                }
                self.dependents.entry(d).or_default().push(id);
                continue;
            }
            self.flush_for(d);
            match self.store.get_job(d) {
                Ok(Some(r)) if r.state == JobState::Succeeded => {}
                Ok(Some(r)) if r.state.is_final() => failed = Some((d, r.state)),
                // Not final but not active either: only possible while it is being removed.
                Ok(Some(_)) => failed = Some((d, JobState::Killed)),
                Ok(None) => failed = Some((d, JobState::Killed)),
                Err(e) => return Err(CoreError::Unavailable(e.to_string())),
            }
        }
        if let Some((d, st)) = failed {
            self.fail_dependency(id, d, st, now);
        } else if let Some(j) = self.jobs.get(&id) {
            let reason = waiting_reason(&j.waiting_on);
            self.set_reason(id, reason);
        }
        Ok(())
    }

    /// A dependency of `id` ended without success: its tasks that never ran fail.
    fn fail_dependency(&mut self, id: JobId, dep: JobId, dep_state: JobState, now: UnixMs) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let mut rows = Vec::new();
        for (&idx, t) in job.tasks.iter_mut() {
            if t.state == TaskState::Pending {
                t.state = TaskState::DependencyFailed;
                t.not_before = None;
                rows.push(Self::task_row(id, idx, t));
            }
        }
        job.tasks.retain(|_, t| !t.state.is_end());
        job.ready.clear();
        job.waiting_on.clear();
        let n = job.row.counts.pending;
        job.row.counts.pending = 0;
        job.row.counts.failed += n;
        // Untouched tasks read as dependency_failed once the job is final.
        job.row.next_fresh = job.row.counts.total.max(job.row.next_fresh);
        self.batch.tasks.extend(rows);
        self.event(
            now,
            id,
            None,
            None,
            "dependency_failed",
            format!("{dep} ended {dep_state}"),
        );
        self.set_reason(id, None);
        self.touch_job(id, now);
    }

    /// Commits the round so far if it changes job `id`, so that a following store read sees
    /// those changes (a job that ended this round is no longer in memory, and its final row is
    /// only in the batch).
    fn flush_for(&mut self, id: JobId) {
        let touched = self.dirty_jobs.contains(&id)
            || self.batch.update_jobs.iter().any(|j| j.id == id)
            || self.batch.insert_jobs.iter().any(|j| j.id == id)
            || self.batch.tasks.iter().any(|t| t.job == id);
        if touched && !self.finish_round() {
            self.broken = true;
        }
    }

    fn task_row(job: JobId, index: u32, t: &TaskRt) -> TaskRow {
        TaskRow {
            job,
            index,
            state: t.state,
            attempts: t.attempt,
            lost: t.lost,
            node: t.node.clone(),
            not_before: t.not_before,
        }
    }

    /// Applies one command.
    pub fn apply(&mut self, cmd: Command, now: UnixMs) {
        match cmd {
            Command::Submit {
                specs,
                idempotency_key,
                reply,
            } => self.submit(specs, idempotency_key, reply, now),
            Command::Kill { job, reply } => {
                let r = self.kill(job, now);
                self.defer(reply, r);
            }
            Command::Remove { job, force, reply } => {
                let r = self.remove(job, force, now);
                self.defer(reply, r);
            }
            Command::AgentConnected {
                conn,
                address,
                node,
                attempts,
                tx,
            } => self.agent_connected(conn, address, node, attempts, tx, now),
            Command::Retry { job, reply } => {
                let r = self.retry(job, now);
                self.defer(reply, r);
            }
            Command::Drain {
                node,
                migrate,
                reply,
            } => {
                let r = self.drain(&node, migrate);
                self.defer(reply, r);
            }
            Command::Enable { node, reply } => {
                let r = match self.nodes.get_mut(&node) {
                    Some(n) => {
                        n.draining = false;
                        Ok(())
                    }
                    None => Err(CoreError::NoSuchNode(node)),
                };
                self.defer(reply, r);
            }
            Command::Agent { conn, node, msg } => self.agent_msg(conn, &node, msg, now),
            Command::AgentGone { conn, node } => {
                if let Some(n) = self.nodes.get_mut(&node) {
                    if n.conn == conn {
                        n.tx = None;
                    }
                }
            }
            Command::Images(catalog) => self.set_catalog(catalog),
            Command::Shutdown => {}
        }
    }

    /// A new image catalog. Nodes' copies it no longer has leave the placement view at once
    /// (the API tells connected nodes to delete them), not at their next heartbeat, so that no
    /// task is placed on a copy that is about to go.
    fn set_catalog(&mut self, catalog: std::collections::BTreeMap<String, (String, u64)>) {
        self.catalog = catalog;
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in names {
            self.prune_images(&n);
        }
    }

    /// Hides from placement a node's copies of catalog images that the catalog no longer maps
    /// to that archive (the node was offline when the image was removed or replaced). A name
    /// the catalog still has is fetched anew when a task needs it. The copies are not deleted
    /// here: a server that lost its catalog (an HA fail-over without a shared --storage-dir)
    /// must not wipe the nodes' images; `gaffer image rm` and `gaffer agent image rm` delete.
    fn prune_images(&mut self, node: &str) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let catalog = &self.catalog;
        let stale: Vec<String> = n
            .info
            .image_digests
            .iter()
            .filter(|(name, digest)| catalog.get(*name).is_none_or(|(d, _)| d != *digest))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            n.info.image_digests.remove(&name);
            n.info.images.retain(|i| *i != name);
        }
    }

    fn defer<T: Send + 'static>(&mut self, reply: Reply<T>, r: Result<T, CoreError>) {
        self.deferred
            .push(Box::new(move |commit: Result<(), CoreError>| {
                let _ = reply.send(commit.and(r));
            }));
    }

    fn submit(
        &mut self,
        specs: Vec<JobSpec>,
        key: Option<String>,
        reply: Reply<Vec<JobId>>,
        now: UnixMs,
    ) {
        if let Some(k) = &key {
            match self.store.idempotent_ids(k) {
                Ok(Some(ids)) => return self.defer(reply, Ok(ids)),
                Ok(None) => {}
                Err(e) => return self.defer(reply, Err(CoreError::Unavailable(e.to_string()))),
            }
            if let Some(ids) = self
                .batch
                .idempotency
                .iter()
                .find(|(bk, _)| bk == k)
                .map(|(_, ids)| ids.clone())
            {
                return self.defer(reply, Ok(ids));
            }
        }
        // Every dependency must exist (all or nothing, like the rest of the batch).
        let mut errors = Vec::new();
        // A task without an image needs a node that runs host processes: refuse it when the
        // cluster has nodes and none of them does (with no node known yet, it waits).
        // Placeholders for nodes known only from running attempts (conn 0) do not count.
        let mut registered = self.nodes.values().filter(|n| n.conn != 0).peekable();
        let any_node = registered.peek().is_some();
        let host_nodes = registered.any(|n| n.info.allow_host_tasks);
        if any_node && !host_nodes {
            for (i, spec) in specs.iter().enumerate() {
                if spec.image.is_none() {
                    errors.push(FieldError {
                        index: (specs.len() > 1).then_some(i),
                        field: "image".into(),
                        message: "no node runs host processes (agents need --allow-host-tasks): give a container image".into(),
                    });
                }
            }
        }
        for (i, spec) in specs.iter().enumerate() {
            for (k, d) in spec.depends_on.iter().enumerate() {
                let known = self.jobs.contains_key(d)
                    || match self.store.get_job(*d) {
                        Ok(r) => r.is_some(),
                        Err(e) => {
                            return self.defer(reply, Err(CoreError::Unavailable(e.to_string())))
                        }
                    };
                if !known {
                    errors.push(FieldError {
                        index: (specs.len() > 1).then_some(i),
                        field: format!("depends_on[{k}]"),
                        message: format!("job {d} not found"),
                    });
                }
            }
        }
        if !errors.is_empty() {
            return self.defer(reply, Err(CoreError::Invalid(errors)));
        }
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = JobId(self.next_job_id);
            self.next_job_id += 1;
            let total = spec.task_count();
            let row = JobRow {
                id,
                name: spec.display_name(),
                spec,
                state: JobState::Pending,
                counts: TaskCounts {
                    total,
                    pending: total,
                    ..Default::default()
                },
                created_at: now,
                finished_at: None,
                kill_requested: false,
                next_fresh: 0,
            };
            self.batch.insert_jobs.push(row.clone());
            self.event(now, id, None, None, "submitted", format!("{total} task(s)"));
            self.jobs.insert(id, ActiveJob::new(row));
            ids.push(id);
        }
        self.shared
            .metrics
            .jobs_submitted
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        for id in &ids {
            if let Err(e) = self.link_dependencies(*id, now) {
                tracing::warn!(job = %id, error = %e, "cannot resolve dependencies");
            }
            self.requeue(*id);
        }
        self.batch.next_job_id = Some(self.next_job_id);
        if let Some(k) = key {
            self.batch.idempotency.push((k, ids.clone()));
        }
        self.defer(reply, Ok(ids));
    }

    fn kill(&mut self, id: JobId, now: UnixMs) -> Result<JobState, CoreError> {
        if !self.jobs.contains_key(&id) {
            self.flush_for(id);
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return match self.store.get_job(id) {
                Ok(Some(row)) => Ok(row.state),
                Ok(None) => Err(CoreError::NotFound(id)),
                Err(e) => Err(CoreError::Unavailable(e.to_string())),
            };
        };
        if job.row.kill_requested {
            return Ok(job.row.state);
        }
        job.row.kill_requested = true;
        let mut killed_pending = job.row.counts.total - job.row.next_fresh;
        let mut rows = Vec::new();
        let mut kills = Vec::new();
        let mut task_events = Vec::new();
        for (&idx, t) in job.tasks.iter_mut() {
            match t.state {
                TaskState::Pending => {
                    t.state = TaskState::Killed;
                    t.not_before = None;
                    killed_pending += 1;
                    rows.push(Self::task_row(id, idx, t));
                    task_events.push((idx, t.attempt));
                }
                TaskState::Assigned | TaskState::Running => {
                    if let Some(n) = &t.node {
                        kills.push((
                            n.clone(),
                            AttemptKey {
                                job: id,
                                index: idx,
                                attempt: t.attempt,
                            },
                        ));
                    }
                }
                _ => {}
            }
        }
        job.tasks.retain(|_, t| t.state != TaskState::Killed);
        job.ready.clear();
        job.row.counts.pending -= killed_pending;
        job.row.counts.killed += killed_pending;
        self.batch.tasks.extend(rows);
        for (n, key) in kills {
            self.outbox.push((n, ServerMsg::Kill { key }));
        }
        self.event(now, id, None, None, "kill_requested", String::new());
        for (idx, attempt) in task_events {
            self.event(
                now,
                id,
                Some((idx, attempt)),
                Some("pending"),
                "killed",
                "killed before it started".into(),
            );
        }
        self.touch_job(id, now);
        Ok(self
            .jobs
            .get(&id)
            .map(|j| j.row.state)
            .unwrap_or(JobState::Killed))
    }

    fn remove(&mut self, id: JobId, force: bool, now: UnixMs) -> Result<(), CoreError> {
        if let Some(job) = self.jobs.get(&id) {
            if !force {
                return Err(CoreError::Conflict(format!(
                    "job {id} is {}: kill it first, or remove it with --force",
                    job.row.state
                )));
            }
            self.kill(id, now)?;
            if let Some(job) = self.jobs.remove(&id) {
                // Jobs waiting on it will never see it succeed.
                for dependent in self.dependents.remove(&id).unwrap_or_default() {
                    self.fail_dependency(dependent, id, JobState::Killed, now);
                }
                self.set_reason(id, None);
                self.queue.remove(&(Reverse(job.row.spec.priority), id));
                for (idx, t) in &job.tasks {
                    if let Some(n) = t.node.as_ref().and_then(|n| self.nodes.get_mut(n)) {
                        let key = AttemptKey {
                            job: id,
                            index: *idx,
                            attempt: t.attempt,
                        };
                        if n.running.remove(&key) {
                            n.cpus_alloc_m =
                                n.cpus_alloc_m.saturating_sub(milli(job.row.spec.cpus()));
                            n.mem_alloc -= job.row.spec.resources.memory.map(|m| m.0).unwrap_or(0);
                        }
                    }
                }
            }
            self.dirty_jobs.remove(&id);
        } else {
            match self.store.get_job(id) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(CoreError::NotFound(id)),
                Err(e) => return Err(CoreError::Unavailable(e.to_string())),
            }
        }
        self.batch.update_jobs.retain(|j| j.id != id);
        self.batch.insert_jobs.retain(|j| j.id != id);
        self.batch.tasks.retain(|t| t.job != id);
        self.batch.attempts.retain(|(j, _, _)| *j != id);
        self.batch.events.retain(|e| e.job != id);
        self.batch.delete_jobs.push(id);
        for name in self.nodes.keys() {
            self.outbox
                .push((name.clone(), ServerMsg::Purge { job: id }));
        }
        self.event(now, id, None, None, "removed", String::new());
        // The "removed" event is published but not stored: the job's events are gone. Keep the
        // counter so that the ids of deleted events are never handed out again.
        self.batch.events.retain(|e| e.job != id);
        self.batch.next_event_id = Some(self.next_event_id);
        Ok(())
    }

    fn agent_connected(
        &mut self,
        conn: u64,
        address: String,
        info: NodeInfo,
        reports: Vec<AttemptReport>,
        tx: UnboundedSender<ServerMsg>,
        now: UnixMs,
    ) {
        let name = info.name.clone();
        tracing::info!(node = %name, cpus = info.cpus, memory = info.memory, "agent registered");
        let node = self.nodes.entry(name.clone()).or_insert_with(|| Node {
            info: info.clone(),
            address: String::new(),
            draining: false,
            down: false,
            reregister_asked: false,
            conn,
            tx: None,
            cpus_alloc_m: 0,
            mem_alloc: 0,
            memory_free: info.memory,
            last_seen: now,
            running: HashSet::new(),
        });
        node.info = info;
        self.prune_images(&name);
        let node = self.nodes.get_mut(&name).expect("just inserted");
        node.down = false;
        node.reregister_asked = false;
        node.address = address;
        node.conn = conn;
        node.tx = Some(tx);
        node.last_seen = now;
        node.running.clear();
        node.cpus_alloc_m = 0;
        node.mem_alloc = 0;

        let mut reported: HashMap<AttemptKey, AttemptReport> = reports
            .into_iter()
            .map(|r| match &r {
                AttemptReport::Running { key } | AttemptReport::Ended { key, .. } => (*key, r),
            })
            .collect();
        // Every attempt we believe runs on this node, checked against what the agent knows.
        let mut ours: Vec<(AttemptKey, TaskState, f64, u64)> = Vec::new();
        for (jid, job) in &self.jobs {
            for (idx, t) in &job.tasks {
                if matches!(t.state, TaskState::Assigned | TaskState::Running)
                    && t.node.as_deref() == Some(&name)
                {
                    ours.push((
                        AttemptKey {
                            job: *jid,
                            index: *idx,
                            attempt: t.attempt,
                        },
                        t.state,
                        job.row.spec.cpus(),
                        job.row.spec.resources.memory.map(|m| m.0).unwrap_or(0),
                    ));
                }
            }
        }
        for (key, state, cpus, mem) in ours {
            let n = self.nodes.get_mut(&name).expect("node inserted");
            n.running.insert(key);
            n.cpus_alloc_m += milli(cpus);
            n.mem_alloc += mem;
            match reported.remove(&key) {
                Some(AttemptReport::Running { .. }) => {
                    if state == TaskState::Assigned {
                        self.mark_running(key, now, now);
                    }
                    // A kill may have been lost while the agent was away: send it again.
                    let killing = self.migrating.contains(&key)
                        || self
                            .jobs
                            .get(&key.job)
                            .is_some_and(|j| j.row.kill_requested);
                    if killing {
                        self.outbox.push((name.clone(), ServerMsg::Kill { key }));
                    }
                }
                Some(AttemptReport::Ended { result, .. }) => self.attempt_ended(&name, key, result, now),
                None => self.attempt_ended(
                    &name,
                    key,
                    lost_result(now, "the agent has no record of this attempt (it never started, or its supervisor vanished)"),
                    now,
                ),
            }
        }
        for (key, r) in reported {
            match r {
                AttemptReport::Running { .. } => {
                    self.outbox.push((name.clone(), ServerMsg::Kill { key }))
                }
                AttemptReport::Ended { .. } => {
                    self.outbox.push((name.clone(), ServerMsg::Forget { key }))
                }
            }
        }
    }

    fn retry(&mut self, id: JobId, now: UnixMs) -> Result<u32, CoreError> {
        let unavailable = |e: gaffer_store::StoreError| CoreError::Unavailable(e.to_string());
        // The store must reflect this round's changes to the job before we read its tasks.
        self.flush_for(id);
        if self.broken {
            return Err(CoreError::Unavailable("the state store failed".into()));
        }
        if !self.jobs.contains_key(&id) {
            let row = self
                .store
                .get_job(id)
                .map_err(unavailable)?
                .ok_or(CoreError::NotFound(id))?;
            if self.batch.delete_jobs.contains(&id) {
                return Err(CoreError::NotFound(id));
            }
            self.jobs.insert(id, ActiveJob::new(row));
        }
        let job = self.jobs.get(&id).expect("inserted above");
        if job.row.kill_requested {
            return Err(CoreError::Conflict(format!(
                "job {id} was killed; submit it again instead"
            )));
        }
        let failed = [
            TaskState::Failed,
            TaskState::TimedOut,
            TaskState::OomKilled,
            TaskState::Lost,
        ];
        let rows = self
            .store
            .tasks_in_states(id, &failed)
            .map_err(unavailable)?;
        // Rows written earlier in this round are newer than the store's.
        let job = self.jobs.get_mut(&id).expect("inserted above");
        let mut n = 0;
        let mut events = Vec::new();
        for r in rows {
            if job.tasks.contains_key(&r.index) {
                continue;
            }
            let t = TaskRt {
                state: TaskState::Pending,
                attempt: r.attempts,
                lost: r.lost,
                node: r.node.clone(),
                not_before: None,
                started_at: None,
            };
            self.batch.tasks.push(Self::task_row(id, r.index, &t));
            job.tasks.insert(r.index, t);
            job.ready.push_back(r.index);
            events.push((r.index, r.attempts, r.state));
            n += 1;
        }
        job.row.counts.failed -= n.min(job.row.counts.failed);
        job.row.counts.pending += n;
        if n > 0 {
            job.row.finished_at = None;
        }
        for (idx, attempt, from) in events {
            self.event(
                now,
                id,
                Some((idx, attempt)),
                Some(from.as_str()),
                "pending",
                "retry requested".into(),
            );
        }
        self.touch_job(id, now);
        if n == 0
            && self
                .jobs
                .get(&id)
                .is_some_and(|j| j.tasks.is_empty() && j.row.state.is_final())
        {
            self.jobs.remove(&id);
        }
        Ok(n)
    }

    fn drain(&mut self, name: &str, migrate: bool) -> Result<(), CoreError> {
        let n = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| CoreError::NoSuchNode(name.to_string()))?;
        n.draining = true;
        if migrate {
            let keys: Vec<AttemptKey> = n.running.iter().copied().collect();
            for key in keys {
                self.migrating.insert(key);
                self.outbox
                    .push((name.to_string(), ServerMsg::Kill { key }));
            }
        }
        Ok(())
    }

    /// Declares nodes silent for longer than the heartbeat timeout `down`; their attempts are
    /// lost (and retried by the usual rules).
    fn check_nodes(&mut self, now: UnixMs) {
        let timeout = self.cfg.heartbeat_timeout.as_millis() as u64;
        let dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                !n.down
                    && (n.tx.is_some() || !n.running.is_empty())
                    && now.saturating_sub(n.last_seen) > timeout
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in dead {
            let Some(n) = self.nodes.get_mut(&name) else {
                continue;
            };
            tracing::warn!(node = %name, silent_ms = now.saturating_sub(n.last_seen), "node is down");
            // The stream may still be open (a network cut the agent has not noticed): keep it,
            // and ask the agent to register again when it speaks, so that attempts placed
            // elsewhere meanwhile are killed there.
            n.down = true;
            n.reregister_asked = false;
            let keys: Vec<AttemptKey> = n.running.iter().copied().collect();
            let why = format!(
                "node {name} stopped responding (no heartbeat for {})",
                gaffer_api::DurationSpec(timeout)
            );
            for key in &keys {
                self.attempt_ended(&name, *key, lost_result(now, &why), now);
            }
            // The agent must keep reporting these attempts (so it is told to kill the ones
            // still running when it registers again): do not let it forget them.
            self.outbox.retain(|(n, m)| {
                !(n == &name && matches!(m, ServerMsg::Forget { key } if keys.contains(key)))
            });
        }
    }

    fn agent_msg(&mut self, conn: u64, node: &str, msg: AgentMsg, now: UnixMs) {
        match self.nodes.get_mut(node) {
            Some(n) if n.conn == conn => {
                n.last_seen = now;
                if n.down && !n.reregister_asked {
                    n.reregister_asked = true;
                    self.outbox.push((node.to_string(), ServerMsg::Reregister));
                }
            }
            _ => return, // a stale connection
        }
        match msg {
            AgentMsg::Register { .. } => {}
            AgentMsg::Heartbeat {
                memory_free,
                images,
                image_digests,
            } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.memory_free = memory_free;
                    n.info.images = images;
                    n.info.image_digests = image_digests;
                }
                self.prune_images(node);
            }
            AgentMsg::Started { key, at } => self.mark_running(key, at, now),
            AgentMsg::Ended { key, result } => self.attempt_ended(node, key, result, now),
            // File and archive reads are answered by the gateway, never by the core.
            AgentMsg::FileData { .. } | AgentMsg::ReadBlob { .. } => {}
        }
    }

    fn mark_running(&mut self, key: AttemptKey, at: UnixMs, now: UnixMs) {
        let Some(job) = self.jobs.get_mut(&key.job) else {
            return;
        };
        let Some(t) = job.tasks.get_mut(&key.index) else {
            return;
        };
        if t.attempt != key.attempt || t.state != TaskState::Assigned {
            return;
        }
        t.state = TaskState::Running;
        t.started_at = Some(at);
        let node = t.node.clone().unwrap_or_default();
        self.batch.tasks.push(Self::task_row(key.job, key.index, t));
        self.batch.attempts.push((
            key.job,
            key.index,
            AttemptView {
                attempt: key.attempt,
                node,
                state: TaskState::Running,
                started_at: Some(at),
                ended_at: None,
                exit_code: None,
                signal: None,
                message: None,
                max_rss_bytes: None,
                cpu_secs: None,
                outputs: Vec::new(),
            },
        ));
        self.shared
            .metrics
            .tasks_started
            .fetch_add(1, Ordering::Relaxed);
        self.event(
            now,
            key.job,
            Some((key.index, key.attempt)),
            Some("assigned"),
            "running",
            String::new(),
        );
        self.touch_job(key.job, now);
    }

    fn attempt_ended(&mut self, node: &str, key: AttemptKey, result: AttemptResult, now: UnixMs) {
        self.outbox
            .push((node.to_string(), ServerMsg::Forget { key }));
        let Some(job) = self.jobs.get_mut(&key.job) else {
            return;
        };
        let Some(t) = job.tasks.get_mut(&key.index) else {
            return;
        };
        if t.attempt != key.attempt || !matches!(t.state, TaskState::Assigned | TaskState::Running)
        {
            return;
        }
        let cpus = job.row.spec.cpus();
        let mem = job.row.spec.resources.memory.map(|m| m.0).unwrap_or(0);
        if let Some(n) = t.node.as_ref().and_then(|n| self.nodes.get_mut(n)) {
            if n.running.remove(&key) {
                n.cpus_alloc_m = n.cpus_alloc_m.saturating_sub(milli(cpus));
                n.mem_alloc = n.mem_alloc.saturating_sub(mem);
            }
        }
        let (mut end, mut message) = classify(&result);
        let migrated = self.migrating.remove(&key);
        if job.row.kill_requested && end != TaskState::Succeeded {
            end = TaskState::Killed;
        } else if migrated && end != TaskState::Succeeded {
            end = TaskState::Lost;
            message = format!("moved off draining node {node}");
        }
        let from = t.state;
        let attempt = AttemptView {
            attempt: key.attempt,
            node: t.node.clone().unwrap_or_default(),
            state: end,
            started_at: result.started_at.or(t.started_at),
            ended_at: Some(result.ended_at),
            exit_code: result.exit_code,
            signal: result.signal,
            message: Some(message.clone()),
            max_rss_bytes: result.max_rss_bytes,
            cpu_secs: result.cpu_secs,
            outputs: result.outputs.clone(),
        };
        self.batch.attempts.push((key.job, key.index, attempt));
        if !result.outputs.is_empty() {
            self.pulls
                .push((node.to_string(), key, result.outputs.clone()));
        }
        self.shared
            .metrics
            .tasks_finished
            .fetch_add(1, Ordering::Relaxed);

        // Retry?
        let spec = &job.row.spec;
        let mut retry_in = None;
        if migrated && end == TaskState::Lost {
            // Moving a task is not its failure: the attempt does not count against retries.
            t.lost += 1;
            retry_in = Some(0);
        } else if end.is_retryable() && !job.row.kill_requested {
            if end == TaskState::Lost && t.lost < self.cfg.max_lost {
                t.lost += 1;
                retry_in = Some(0);
            } else {
                let used = t.attempt - t.lost; // attempts that counted against the budget
                if used <= spec.retries {
                    let base = spec.retry_backoff.unwrap_or(DEFAULT_RETRY_BACKOFF).0;
                    let shift = (used - 1).min(20);
                    retry_in = Some(base.saturating_mul(1 << shift).min(MAX_RETRY_BACKOFF.0));
                }
            }
        }
        let counts = &mut job.row.counts;
        counts.running -= 1;
        t.node = Some(node.to_string());
        t.started_at = None;
        match retry_in {
            Some(delay) => {
                counts.pending += 1;
                t.state = TaskState::Pending;
                t.not_before = Some(now + delay);
                self.timers.push(Reverse((now + delay, key.job, key.index)));
                let row = Self::task_row(key.job, key.index, t);
                self.batch.tasks.push(row);
                self.event(
                    now,
                    key.job,
                    Some((key.index, key.attempt)),
                    Some(from.as_str()),
                    end.as_str(),
                    message,
                );
                self.event(
                    now,
                    key.job,
                    Some((key.index, key.attempt)),
                    Some(end.as_str()),
                    "pending",
                    format!("retry in {}", gaffer_api::DurationSpec(delay)),
                );
            }
            None => {
                match end {
                    TaskState::Succeeded => counts.succeeded += 1,
                    TaskState::Killed => counts.killed += 1,
                    _ => counts.failed += 1,
                }
                t.state = end;
                t.not_before = None;
                let row = Self::task_row(key.job, key.index, t);
                job.tasks.remove(&key.index);
                self.batch.tasks.push(row);
                self.event(
                    now,
                    key.job,
                    Some((key.index, key.attempt)),
                    Some(from.as_str()),
                    end.as_str(),
                    message,
                );
            }
        }
        self.touch_job(key.job, now);
    }

    fn fire_timers(&mut self, now: UnixMs) {
        while let Some(Reverse((at, jid, idx))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(job) = self.jobs.get_mut(&jid) else {
                continue;
            };
            let Some(t) = job.tasks.get_mut(&idx) else {
                continue;
            };
            if t.state == TaskState::Pending
                && t.not_before.unwrap_or(0) <= now
                && !job.ready.contains(&idx)
            {
                job.ready.push_back(idx);
                self.requeue(jid);
            }
        }
    }

    fn next_timer(&self) -> Option<UnixMs> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// One placement round.
    fn schedule(&mut self, now: UnixMs) {
        if self.queue.is_empty() {
            return;
        }
        let mut names: Vec<String> = self.nodes.keys().cloned().collect();
        names.sort();
        let caps: Vec<NodeCapacity> = names
            .iter()
            .map(|n| {
                let node = &self.nodes[n];
                NodeCapacity {
                    name: n.clone(),
                    ready: node.tx.is_some() && !node.down && !node.draining,
                    allow_host_tasks: node.info.allow_host_tasks,
                    cpus_free: (node.info.cpus - cpus_of(node.cpus_alloc_m)).max(0.0),
                    memory_free: node.info.memory.saturating_sub(node.mem_alloc),
                    tasks: node.running.len() as u32,
                    labels: node.info.labels.clone(),
                    // The catalog's images count as present: the node fetches what it lacks.
                    images: if node.info.containers {
                        node.info
                            .images
                            .iter()
                            .chain(self.catalog.keys())
                            .cloned()
                            .collect()
                    } else {
                        Default::default()
                    },
                }
            })
            .collect();
        let totals = names
            .iter()
            .map(|n| (self.nodes[n].info.cpus, self.nodes[n].info.memory))
            .collect();
        let mut sched = Scheduler::new(caps, totals);
        let mut reasons: Vec<(JobId, Option<String>)> = Vec::new();
        let mut cursor: Option<(Reverse<i32>, JobId)> = None;
        loop {
            if sched.exhausted() {
                break;
            }
            let next = match cursor {
                None => self.queue.iter().next().copied(),
                Some(c) => self
                    .queue
                    .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                    .next()
                    .copied(),
            };
            let Some(entry) = next else { break };
            cursor = Some(entry);
            let jid = entry.1;
            let demand = self.jobs[&jid].demand();
            let strategy = strategy_of(self.jobs[&jid].row.spec.strategy, self.cfg.strategy);
            let mut placed_any = false;
            loop {
                let job = &self.jobs[&jid];
                if !job.has_work() {
                    break;
                }
                match sched.place(&demand, strategy) {
                    Ok(i) => {
                        placed_any = true;
                        self.assign(jid, &names[i], now);
                    }
                    Err(why) => {
                        reasons.push((jid, Some(why.to_string())));
                        break;
                    }
                }
            }
            if placed_any {
                reasons.push((jid, None));
                self.touch_job(jid, now);
            }
        }
        if !reasons.is_empty() {
            let mut map = self
                .shared
                .reasons
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for (jid, r) in reasons {
                match r {
                    Some(r) => {
                        map.insert(jid, r);
                    }
                    None => {
                        map.remove(&jid);
                    }
                }
            }
        }
    }

    fn assign(&mut self, jid: JobId, node_name: &str, now: UnixMs) {
        let job = self.jobs.get_mut(&jid).expect("queued job is active");
        let index = match job.ready.pop_front() {
            Some(i) => i,
            None => {
                let i = job.row.next_fresh;
                job.row.next_fresh += 1;
                job.tasks.insert(
                    i,
                    TaskRt {
                        state: TaskState::Pending,
                        attempt: 0,
                        lost: 0,
                        node: None,
                        not_before: None,
                        started_at: None,
                    },
                );
                job.row.counts.started += 1;
                i
            }
        };
        let t = job.tasks.get_mut(&index).expect("task present");
        t.attempt += 1;
        t.state = TaskState::Assigned;
        t.node = Some(node_name.to_string());
        t.not_before = None;
        job.row.counts.pending -= 1;
        job.row.counts.running += 1;
        let key = AttemptKey {
            job: jid,
            index,
            attempt: t.attempt,
        };
        let row = Self::task_row(jid, index, t);
        let spec = &job.row.spec;
        let mut env: Vec<(String, String)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend([
            ("GAFFER_JOB_ID".to_string(), jid.to_string()),
            ("GAFFER_JOB_NAME".to_string(), job.row.name.clone()),
            ("GAFFER_TASK_INDEX".to_string(), index.to_string()),
            ("GAFFER_TASK_ID".to_string(), key.task_id()),
            ("GAFFER_ATTEMPT".to_string(), key.attempt.to_string()),
            (
                "GAFFER_ARRAY_SIZE".to_string(),
                job.row.counts.total.to_string(),
            ),
        ]);
        let image_archive = spec
            .image
            .as_ref()
            .and_then(|name| self.catalog.get(name).cloned());
        // The node fetches the catalog's archive unless its copy of the image is that one.
        let fetching = match (&spec.image, &image_archive) {
            (Some(name), Some((digest, size))) => {
                let held = self
                    .nodes
                    .get(node_name)
                    .and_then(|n| n.info.image_digests.get(name));
                (held != Some(digest)).then(|| {
                    format!(
                        "{node_name} is fetching image `{name}` ({}, {}) from the server",
                        gaffer_api::units::ByteSize(*size),
                        &digest[..digest.len().min(19)]
                    )
                })
            }
            _ => None,
        };
        let launch = TaskLaunch {
            key,
            name: job.row.name.clone(),
            argv: spec.argv(),
            env,
            workdir: spec.workdir.clone(),
            image: spec.image.clone(),
            image_archive,
            timeout_ms: spec.timeout.map(|t| t.0),
            kill_grace_ms: spec.kill_grace.unwrap_or(DEFAULT_KILL_GRACE).0,
            outputs: spec.outputs.clone(),
            cpus: spec.cpus(),
            memory: spec.resources.memory.map(|m| m.0),
            pids: spec.resources.pids,
            user: spec.user.clone(),
            network: spec.network,
        };
        let demand = job.demand();
        self.batch.tasks.push(row);
        self.batch.attempts.push((
            jid,
            index,
            AttemptView {
                attempt: key.attempt,
                node: node_name.to_string(),
                state: TaskState::Assigned,
                started_at: None,
                ended_at: None,
                exit_code: None,
                signal: None,
                message: fetching,
                max_rss_bytes: None,
                cpu_secs: None,
                outputs: Vec::new(),
            },
        ));
        let node = self
            .nodes
            .get_mut(node_name)
            .expect("placed on a known node");
        node.cpus_alloc_m += milli(demand.cpus);
        node.mem_alloc += demand.memory;
        node.running.insert(key);
        self.outbox
            .push((node_name.to_string(), ServerMsg::Start(Box::new(launch))));
        self.event(
            now,
            jid,
            Some((index, key.attempt)),
            Some("pending"),
            "assigned",
            node_name.to_string(),
        );
    }

    fn publish_gauges(&self) {
        let mut pending = 0u64;
        let mut running = 0u64;
        for j in self.jobs.values() {
            pending += j.row.counts.pending as u64;
            running += j.row.counts.running as u64;
        }
        self.shared
            .metrics
            .queue_depth
            .store(pending, Ordering::Relaxed);
        self.shared
            .metrics
            .running
            .store(running, Ordering::Relaxed);
        let now = now_ms();
        let mut views: Vec<NodeView> = self
            .nodes
            .iter()
            .map(|(name, n)| NodeView {
                name: name.clone(),
                state: match (n.tx.is_some() && !n.down, n.draining) {
                    (false, _) => "down",
                    (true, true) => "draining",
                    (true, false) => "ready",
                }
                .into(),
                address: n.address.clone(),
                labels: n.info.labels.clone(),
                images: n.info.images.clone(),
                image_digests: n.info.image_digests.clone(),
                cpus_total: n.info.cpus,
                cpus_allocated: cpus_of(n.cpus_alloc_m),
                memory_total: n.info.memory,
                memory_allocated: n.mem_alloc,
                memory_free: n.memory_free,
                running_tasks: n.running.len() as u32,
                heartbeat_age_ms: now.saturating_sub(n.last_seen),
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        *self.shared.nodes.write().unwrap_or_else(|p| p.into_inner()) = views;
    }

    /// Ends the round: commits, then releases effects. Returns false if the store failed.
    pub fn finish_round(&mut self) -> bool {
        for id in std::mem::take(&mut self.dirty_jobs) {
            if let Some(j) = self.jobs.get(&id) {
                // Inserted jobs carry their full row; later changes in the same round update it.
                if let Some(ins) = self.batch.insert_jobs.iter_mut().find(|r| r.id == id) {
                    *ins = j.row.clone();
                } else {
                    self.batch.update_jobs.push(j.row.clone());
                }
            }
        }
        let batch = std::mem::take(&mut self.batch);
        let result = self
            .store
            .commit(&batch)
            .map_err(|e| CoreError::Unavailable(e.to_string()));
        let ok = result.is_ok();
        if let Err(e) = &result {
            tracing::error!(error = %e, "commit failed; stopping the core");
        }
        for d in self.deferred.drain(..) {
            d(result.clone());
        }
        if ok {
            for (node, msg) in self.outbox.drain(..) {
                if let Some(tx) = self.nodes.get(&node).and_then(|n| n.tx.as_ref()) {
                    let _ = tx.send(msg);
                }
            }
            for e in self.events.drain(..) {
                let _ = self.shared.events.send(e);
            }
            for p in self.pulls.drain(..) {
                let _ = self.pull_tx.send(p);
            }
        }
        self.publish_gauges();
        ok
    }
}

fn waiting_reason(deps: &BTreeSet<JobId>) -> Option<String> {
    if deps.is_empty() {
        return None;
    }
    let ids: Vec<String> = deps.iter().map(|d| d.to_string()).collect();
    Some(format!("waiting for {} to succeed", ids.join(", ")))
}

fn lost_result(now: UnixMs, why: &str) -> AttemptResult {
    AttemptResult {
        kind: EndKind::Lost,
        exit_code: None,
        signal: None,
        started_at: None,
        ended_at: now,
        max_rss_bytes: None,
        cpu_secs: None,
        outputs: Vec::new(),
        message: Some(why.to_string()),
    }
}

/// Maps an attempt result to the task state it ends in, with a one-line reason.
fn classify(r: &AttemptResult) -> (TaskState, String) {
    let detail = r.message.clone();
    match r.kind {
        EndKind::Exited => match (r.exit_code, r.signal) {
            (Some(0), _) => (TaskState::Succeeded, "exit code 0".into()),
            (Some(c), _) => (TaskState::Failed, format!("exit code {c}")),
            (None, Some(s)) => (TaskState::Failed, format!("killed by signal {s}")),
            (None, None) => (
                TaskState::Failed,
                detail.unwrap_or_else(|| "ended without a status".into()),
            ),
        },
        EndKind::TimedOut => (
            TaskState::TimedOut,
            detail.unwrap_or_else(|| "timed out".into()),
        ),
        EndKind::Killed => (
            TaskState::Killed,
            detail.unwrap_or_else(|| "killed on request".into()),
        ),
        EndKind::SpawnFailed => (
            TaskState::Failed,
            detail.unwrap_or_else(|| "could not start".into()),
        ),
        EndKind::OomKilled => (
            TaskState::OomKilled,
            detail.unwrap_or_else(|| "out of memory".into()),
        ),
        EndKind::Lost => (TaskState::Lost, detail.unwrap_or_else(|| "lost".into())),
    }
}

/// Runs the core on the current thread until [`Command::Shutdown`] or a store failure.
pub fn run(mut core: Core, rx: Receiver<Command>) -> Result<(), String> {
    loop {
        let now = now_ms();
        let wait = core
            .next_timer()
            .map(|t| t.saturating_sub(now))
            .unwrap_or(1000)
            .min(1000);
        let first = match rx.recv_timeout(Duration::from_millis(wait)) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let mut stop = false;
        let now = now_ms();
        let mut n = 0;
        let mut next = first;
        while let Some(cmd) = next {
            stop |= matches!(cmd, Command::Shutdown);
            core.apply(cmd, now);
            if core.broken {
                return Err("the state store failed; see the log above".into());
            }
            n += 1;
            next = if n < 20_000 { rx.try_recv().ok() } else { None };
        }
        core.fire_timers(now);
        core.check_nodes(now);
        core.schedule(now);
        if !core.finish_round() {
            return Err("the state store failed; see the log above".into());
        }
        if stop {
            return Ok(());
        }
    }
}
