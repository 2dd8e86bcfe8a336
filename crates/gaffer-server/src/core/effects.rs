//! The effects seam: everything the core's rules want done outside its own state goes through
//! [`Effects`]. The rules never do I/O themselves (they may read the store); the driver
//! commits the round's batch and then tells the effects whether it became durable
//! ([`Effects::committed`]). [`LiveEffects`] holds back every effect until then, so a message to
//! an agent, an answer to a caller or an event is never released for a change that was not
//! committed. Unit tests use a recording implementation.

use super::command::CoreError;
use crate::shared::Shared;
use gaffer_api::proto::ServerMsg;
use gaffer_api::views::{EventView, NodeView};
use gaffer_api::{AttemptKey, JobId};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// Outputs of an ended attempt to copy from its node: (node, attempt, paths).
pub type OutputPull = (String, AttemptKey, Vec<String>);

/// An answer to a caller, run with the outcome of the commit it waited for.
pub type Deferred = Box<dyn FnOnce(Result<(), CoreError>) + Send>;

/// What the core publishes after every round for readers that do not ask it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Tasks waiting to be placed.
    pub queue_depth: u64,
    /// Tasks assigned or running.
    pub running: u64,
    /// Jobs submitted since the core started.
    pub jobs_submitted: u64,
    /// Attempts started since the core started.
    pub tasks_started: u64,
    /// Attempts ended since the core started.
    pub tasks_finished: u64,
    /// The node table, by name.
    pub nodes: Vec<NodeView>,
}

/// What the core's rules may ask for. Everything but [`Effects::link`], [`Effects::unlink`] and
/// [`Effects::gauges`] belongs to the current round and takes effect only if it commits. The
/// driver publishes a round's gauges before it reports the commit, so that an answered caller
/// finds counters and pending reasons that include its change.
pub trait Effects {
    /// `node`'s agent is now reached over `tx` (stream number `conn`).
    fn link(&mut self, node: &str, conn: u64, tx: UnboundedSender<ServerMsg>);
    /// Stream `conn` of `node` closed (a newer stream stays linked).
    fn unlink(&mut self, node: &str, conn: u64);
    /// Sends `msg` to `node`'s agent, if it is linked when the round is released.
    fn send(&mut self, node: &str, msg: ServerMsg);
    /// Publishes a committed event to watchers.
    fn publish(&mut self, event: EventView);
    /// Sets or clears why a job's pending tasks are not placed.
    fn set_reason(&mut self, job: JobId, reason: Option<String>);
    /// Copies an ended attempt's outputs to the server.
    fn pull_outputs(&mut self, pull: OutputPull);
    /// Answers a caller once the round's commit is known.
    fn reply(&mut self, reply: Deferred);
    /// Publishes gauges (after every round, committed or not).
    fn gauges(&mut self, gauges: Gauges);
    /// The round's batch was committed (`Ok`) or not: release or drop its effects.
    fn committed(&mut self, result: &Result<(), CoreError>);
}

/// Effects on the running server: agent streams, the event broadcast, the pending reasons and
/// gauges in [`Shared`], and the output puller.
pub struct LiveEffects {
    shared: Arc<Shared>,
    pull_tx: UnboundedSender<OutputPull>,
    links: HashMap<String, (u64, UnboundedSender<ServerMsg>)>,
    outbox: Vec<(String, ServerMsg)>,
    events: Vec<EventView>,
    reasons: Vec<(JobId, Option<String>)>,
    pulls: Vec<OutputPull>,
    replies: Vec<Deferred>,
}

impl LiveEffects {
    /// Effects that publish into `shared` and hand output copies to `pull_tx`.
    pub fn new(shared: Arc<Shared>, pull_tx: UnboundedSender<OutputPull>) -> Self {
        LiveEffects {
            shared,
            pull_tx,
            links: HashMap::new(),
            outbox: Vec::new(),
            events: Vec::new(),
            reasons: Vec::new(),
            pulls: Vec::new(),
            replies: Vec::new(),
        }
    }
}

impl Effects for LiveEffects {
    fn link(&mut self, node: &str, conn: u64, tx: UnboundedSender<ServerMsg>) {
        self.links.insert(node.to_string(), (conn, tx));
    }

    fn unlink(&mut self, node: &str, conn: u64) {
        if self.links.get(node).is_some_and(|(c, _)| *c == conn) {
            self.links.remove(node);
        }
    }

    fn send(&mut self, node: &str, msg: ServerMsg) {
        self.outbox.push((node.to_string(), msg));
    }

    fn publish(&mut self, event: EventView) {
        self.events.push(event);
    }

    fn set_reason(&mut self, job: JobId, reason: Option<String>) {
        self.reasons.push((job, reason));
    }

    fn pull_outputs(&mut self, pull: OutputPull) {
        self.pulls.push(pull);
    }

    fn reply(&mut self, reply: Deferred) {
        self.replies.push(reply);
    }

    fn gauges(&mut self, g: Gauges) {
        let m = &self.shared.metrics;
        m.queue_depth.store(g.queue_depth, Ordering::Relaxed);
        m.running.store(g.running, Ordering::Relaxed);
        m.jobs_submitted.store(g.jobs_submitted, Ordering::Relaxed);
        m.tasks_started.store(g.tasks_started, Ordering::Relaxed);
        m.tasks_finished.store(g.tasks_finished, Ordering::Relaxed);
        *self.shared.nodes.write().unwrap_or_else(|p| p.into_inner()) = g.nodes;
    }

    fn committed(&mut self, result: &Result<(), CoreError>) {
        if result.is_err() {
            for reply in self.replies.drain(..) {
                reply(result.clone());
            }
            self.outbox.clear();
            self.events.clear();
            self.reasons.clear();
            self.pulls.clear();
            return;
        }
        // Reasons first: a caller that reads its job right after the answer sees them.
        if !self.reasons.is_empty() {
            let mut map = self
                .shared
                .reasons
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for (job, reason) in self.reasons.drain(..) {
                match reason {
                    Some(r) => map.insert(job, r),
                    None => map.remove(&job),
                };
            }
        }
        for reply in self.replies.drain(..) {
            reply(Ok(()));
        }
        for (node, msg) in self.outbox.drain(..) {
            if let Some((_, tx)) = self.links.get(&node) {
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
}
