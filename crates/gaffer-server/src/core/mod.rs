//! The job state machine and scheduling loop: the only writer of cluster state.
//!
//! [`Core`] is plain synchronous code over in-memory *active* state (jobs not yet final, their
//! non-final tasks, the nodes). Everything that changes state arrives as a [`Command`] on one
//! channel; [`run`] drains whatever is queued, applies it, fires due retry timers, runs one
//! placement round through `gaffer-sched`, commits the resulting [`Batch`] in one transaction,
//! and only then releases the round's effects (messages to agents, answers to API callers,
//! events). So a 201 always follows a durable commit, and a burst of task ends costs one fsync.
//!
//! Who does what:
//! - [`command`]: the commands, their errors and the handle callers hold;
//! - `model`: jobs, tasks and nodes in memory, with each node's reservation ledger;
//! - `transition`: the one guarded function that changes a task's state, and the pure rules of
//!   what an ended attempt becomes (classification, retry and back-off);
//! - `jobs`: submit, kill, remove, retry and dependencies;
//! - `attempts`: an attempt starts, ends, or its retry timer fires;
//! - `nodes`: agents connect, speak, go silent, drain; the image catalog;
//! - `gang`: cluster jobs' start barrier and peers;
//! - `service`: cluster jobs' front doors and replica readiness;
//! - `network`: node subnets of the cluster CIDR and the routes between nodes;
//! - `placement`: the scheduling round and the launch message it sends;
//! - [`effects`]: the seam through which the rules act on the world;
//! - `driver`: loading, the commit of a round, gauges and the thread loop.
//!
//! The one rule of I/O: only the driver writes (it commits the batch and then calls
//! [`Effects::committed`]); the rules read the store when a fact is not in memory, take `now`
//! as an argument and never read the clock, and act on the world only through [`Effects`].
//!
//! Finished jobs leave memory as soon as their last task ends; their history is read from the
//! store by the API.

mod attempts;
pub mod command;
mod driver;
pub mod effects;
mod feasible;
mod gang;
mod hold;
mod jobs;
mod model;
mod network;
mod nodes;
mod placement;
mod service;
mod transition;

#[cfg(test)]
mod tests;

pub use command::{
    Command, CoreConfig, CoreError, CoreHandle, DEFAULT_CLUSTER_CIDR, MAX_FREE_LOST,
};
pub use driver::{run, RECONNECT_GRACE};
pub use effects::{Deferred, Effects, Gauges, LiveEffects, OutputPull};
pub use transition::IllegalMove;

use command::Reply;
use gaffer_api::views::EventView;
use gaffer_api::{AttemptKey, JobId, UnixMs};
use gaffer_store::{Batch, Store};
use model::{ActiveJob, Node, QueueKey};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

/// Logs a refused task transition: a bug in a rule, which left that task as it was. Rules that
/// walk many tasks log and go on with the next one.
fn refused(e: &dyn std::fmt::Display) {
    tracing::error!(error = %e, "refused a task transition (a bug in the core's rules)");
}

/// Counters since the core started, published with the gauges.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    jobs_submitted: u64,
    tasks_started: u64,
    tasks_finished: u64,
}

/// The state machine. See the module docs.
pub struct Core<E: Effects = LiveEffects> {
    store: Arc<dyn Store>,
    fx: E,
    cfg: CoreConfig,
    jobs: HashMap<JobId, ActiveJob>,
    /// Jobs with a task that could be placed, by priority then id.
    queue: BTreeSet<QueueKey>,
    /// Retry back-offs: (not before, job, task).
    timers: BinaryHeap<Reverse<(UnixMs, JobId, u32)>>,
    nodes: HashMap<String, Node>,
    next_job_id: u64,
    next_event_id: u64,
    /// Changes of the current round, committed by the driver.
    batch: Batch,
    /// Active jobs whose row changed this round.
    dirty_jobs: HashSet<JobId>,
    /// A commit failed: the loop must stop.
    broken: bool,
    /// Active jobs waiting on each job.
    dependents: HashMap<JobId, Vec<JobId>>,
    /// Attempts being killed to move them off a draining node.
    migrating: HashSet<AttemptKey>,
    /// The image catalog ([`Command::Images`]): name → (archive digest, size).
    catalog: BTreeMap<String, (String, u64)>,
    /// Every node's container subnet, kept for good (a node that comes back gets its own).
    subnets: BTreeMap<String, gaffer_net::ipam::Cidr>,
    /// The pending reasons as published, so that only changes are published.
    reasons: HashMap<JobId, String>,
    /// Cluster jobs that do not fit now: since when (see `placement`'s queue hold).
    gang_since: HashMap<JobId, UnixMs>,
    /// Replica attempts being stopped because another replica failed (see `gang`).
    gang_stops: HashMap<AttemptKey, gang::Stop>,
    stats: Stats,
}

impl<E: Effects> Core<E> {
    /// Applies one command.
    pub fn apply(&mut self, cmd: Command, now: UnixMs) {
        let illegal = match cmd {
            Command::Submit {
                specs,
                idempotency_key,
                allow_unplaceable,
                reply,
            } => {
                self.submit(specs, idempotency_key, allow_unplaceable, reply, now);
                Ok(())
            }
            Command::Kill { job, reply } => {
                let r = self.kill(job, now);
                self.defer(reply, r);
                Ok(())
            }
            Command::Remove { job, force, reply } => {
                let r = self.remove(job, force, now);
                self.defer(reply, r);
                Ok(())
            }
            Command::Retry { job, reply } => {
                let r = self.retry(job, now);
                self.defer(reply, r);
                Ok(())
            }
            Command::Hold { job, hold, reply } => {
                let r = self.set_hold(job, hold, now);
                self.defer(reply, r);
                Ok(())
            }
            Command::Drain {
                node,
                migrate,
                reply,
            } => {
                let r = self.drain(&node, migrate);
                self.defer(reply, r);
                Ok(())
            }
            Command::Enable { node, reply } => {
                let r = self.enable(&node);
                self.defer(reply, r);
                Ok(())
            }
            Command::AgentConnected {
                conn,
                address,
                node,
                attempts,
                tx,
            } => {
                self.fx.link(&node.name, conn, tx);
                self.agent_connected(conn, address, node, attempts, now);
                Ok(())
            }
            Command::Agent { conn, node, msg } => self.agent_msg(conn, &node, msg, now),
            Command::AgentGone { conn, node } => {
                self.agent_gone(conn, &node);
                Ok(())
            }
            Command::Images(catalog) => {
                self.set_catalog(catalog);
                Ok(())
            }
            Command::Shutdown => Ok(()),
        };
        if let Err(e) = illegal {
            refused(&e);
        }
    }

    /// The rules that run once per round after the commands: due retries become placeable,
    /// silent nodes are declared down, and one placement round runs.
    pub fn tick(&mut self, now: UnixMs) {
        self.fire_timers(now);
        self.check_nodes(now);
        self.schedule(now);
    }

    /// The effects, for the driver and for tests.
    pub fn effects(&mut self) -> &mut E {
        &mut self.fx
    }

    /// Records an event in the batch and publishes it once committed.
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
        self.fx.publish(e);
    }

    /// Answers a caller with `r` once the round commits (or with the commit's error).
    fn defer<T: Send + 'static>(&mut self, reply: Reply<T>, r: Result<T, CoreError>) {
        self.fx
            .reply(Box::new(move |commit: Result<(), CoreError>| {
                let _ = reply.send(commit.and(r));
            }));
    }

    /// Sets or clears why job `id` is not placed (published only when it changes).
    fn set_reason(&mut self, id: JobId, reason: Option<String>) {
        let changed = match &reason {
            Some(r) => self.reasons.get(&id) != Some(r),
            None => self.reasons.contains_key(&id),
        };
        if !changed {
            return;
        }
        match &reason {
            Some(r) => self.reasons.insert(id, r.clone()),
            None => self.reasons.remove(&id),
        };
        self.fx.set_reason(id, reason);
    }

    /// Puts job `id` in the placement queue if it has placeable work, else takes it out.
    fn requeue(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let key = job.queue_key();
        if job.has_work() {
            self.queue.insert(key);
        } else {
            self.queue.remove(&key);
            if let Some(why) = transition::idle_reason(job) {
                self.set_reason(id, Some(why));
            }
        }
    }
}
