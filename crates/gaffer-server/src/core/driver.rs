//! The driver: loads the core from the store, commits each round's batch and releases its
//! effects, publishes gauges, and runs the loop on the core's thread. The only part of the
//! core that writes to the store or reads the clock.

use super::model::{ActiveJob, Node, TaskRt};
use super::{Command, Core, CoreConfig, CoreError, Effects, Gauges, Stats};
use gaffer_api::views::NodeView;
use gaffer_api::{now_ms, AttemptKey, JobId, TaskState, UnixMs};
use gaffer_store::{Batch, Store};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

/// Extra time nodes known only from the store get to reconnect after the core starts: an
/// agent treats a server as gone after 10 s of silence (`gaffer_agent::remote::SILENCE`).
pub const RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// Commands applied per round at most, so a flood cannot starve placement and commits.
const MAX_COMMANDS_PER_ROUND: usize = 20_000;

impl<E: Effects> Core<E> {
    /// Loads active state from the store; `now` is the time the core starts.
    pub fn load(
        store: Arc<dyn Store>,
        fx: E,
        cfg: CoreConfig,
        now: UnixMs,
    ) -> gaffer_store::Result<Self> {
        let active = store.load_active()?;
        let mut core = Core {
            store,
            fx,
            cfg,
            jobs: HashMap::new(),
            queue: BTreeSet::new(),
            timers: BinaryHeap::new(),
            nodes: HashMap::new(),
            next_job_id: active.next_job_id,
            next_event_id: active.next_event_id,
            batch: Batch::default(),
            dirty_jobs: HashSet::new(),
            broken: false,
            dependents: HashMap::new(),
            migrating: HashSet::new(),
            gang_since: HashMap::new(),
            gang_stops: HashMap::new(),
            catalog: Default::default(),
            subnets: Default::default(),
            reasons: Default::default(),
            stats: Stats::default(),
        };
        for (node, subnet) in &active.node_subnets {
            match subnet.parse() {
                Ok(s) => {
                    core.subnets.insert(node.clone(), s);
                }
                Err(e) => tracing::warn!(node = %node, error = %e, "ignoring a stored subnet"),
            }
        }
        for row in active.jobs {
            core.jobs.insert(row.id, ActiveJob::new(row));
        }
        // Until its agent reconnects, a node is known only by the attempts placed on it; if it
        // never does, the heartbeat timeout declares them lost. An agent connected to a server
        // that died without closing its connection (a new HA leader took over) notices only
        // after its silence limit, so it gets that long on top.
        let seen = now + RECONNECT_GRACE.as_millis() as u64;
        for t in active.tasks {
            let Some(job) = core.jobs.get_mut(&t.job) else {
                continue;
            };
            if t.state == TaskState::Pending {
                core.timers
                    .push(Reverse((t.not_before.unwrap_or(0), t.job, t.index)));
            }
            let mut rt = TaskRt::from_row(&t);
            if let (TaskState::Assigned | TaskState::Running, Some(n)) = (t.state, &t.node) {
                if !job.row.spec.ports.is_empty() || job.row.spec.replicas.is_some() {
                    // Its host ports (some picked by the server) and address are in its
                    // attempt record: they stay taken, and a replica's peers know it.
                    let held = core.store.attempts(t.job, t.index)?;
                    if let Some(a) = held.into_iter().find(|a| a.attempt == t.attempts) {
                        rt.ports = a.ports;
                        rt.ip = a.ip;
                        rt.ready = a.ready;
                    }
                }
                let key = AttemptKey {
                    job: t.job,
                    index: t.index,
                    attempt: t.attempts,
                };
                core.nodes
                    .entry(n.clone())
                    .or_insert_with(|| Node::placeholder(n, seen))
                    .ledger
                    .reserve(key, job.held_by(&rt));
            }
            job.tasks.insert(t.index, rt);
        }
        let mut ids: Vec<JobId> = core.jobs.keys().copied().collect();
        ids.sort();
        for id in &ids {
            if let Err(e) = core.link_dependencies(*id, now) {
                tracing::warn!(job = %id, error = %e, "cannot resolve dependencies");
            }
        }
        for id in ids {
            core.requeue(id);
        }
        let gauges = core.gauges(now);
        core.fx.gauges(gauges);
        Ok(core)
    }

    /// Ends the round: commits the batch, then releases (or drops) the round's effects and
    /// publishes gauges. Returns false if the store failed.
    pub fn finish_round(&mut self, now: UnixMs) -> bool {
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
        if let Err(e) = &result {
            tracing::error!(error = %e, "commit failed; stopping the core");
            self.broken = true;
        }
        let gauges = self.gauges(now);
        self.fx.gauges(gauges);
        self.fx.committed(&result);
        result.is_ok()
    }

    /// Commits the round so far if it changes job `id`, so that a following store read sees
    /// those changes (a job that ended this round is no longer in memory, and its final row is
    /// only in the batch).
    pub(super) fn flush_for(&mut self, id: JobId, now: UnixMs) {
        let touched = self.dirty_jobs.contains(&id)
            || self.batch.update_jobs.iter().any(|j| j.id == id)
            || self.batch.insert_jobs.iter().any(|j| j.id == id)
            || self.batch.tasks.iter().any(|t| t.job == id);
        if touched {
            self.finish_round(now);
        }
    }

    /// A commit failed; the loop must stop.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The gauges and node table as of `now`.
    pub fn gauges(&self, now: UnixMs) -> Gauges {
        let mut g = Gauges {
            jobs_submitted: self.stats.jobs_submitted,
            tasks_started: self.stats.tasks_started,
            tasks_finished: self.stats.tasks_finished,
            ..Gauges::default()
        };
        for j in self.jobs.values() {
            g.queue_depth += j.row.counts.pending as u64;
            g.running += j.row.counts.running as u64;
        }
        g.nodes = self
            .nodes
            .iter()
            .map(|(name, n)| NodeView {
                name: name.clone(),
                state: match (n.connected && !n.down, n.draining) {
                    (false, _) => "down",
                    (true, true) => "draining",
                    (true, false) => "ready",
                }
                .into(),
                address: n.address.clone(),
                subnet: self.subnets.get(name).map(ToString::to_string),
                labels: n.info.labels.clone(),
                images: n.info.images.clone(),
                image_digests: n.info.image_digests.clone(),
                cpus_total: n.info.cpus,
                cpus_allocated: n.ledger.cpus(),
                memory_total: n.info.memory,
                memory_allocated: n.ledger.memory(),
                memory_available: n.info.memory.saturating_sub(n.ledger.memory()),
                memory_free: n.memory_free,
                running_tasks: n.ledger.len() as u32,
                heartbeat_age_ms: now.saturating_sub(n.last_seen),
            })
            .collect();
        g.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        g
    }
}

/// Runs the core on the current thread until [`Command::Shutdown`] or a store failure.
pub fn run<E: Effects>(mut core: Core<E>, rx: Receiver<Command>) -> Result<(), String> {
    let failed = || Err("the state store failed; see the log above".to_string());
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
            if core.is_broken() {
                return failed();
            }
            n += 1;
            next = if n < MAX_COMMANDS_PER_ROUND {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        core.tick(now);
        if !core.finish_round(now) {
            return failed();
        }
        if stop {
            return Ok(());
        }
    }
}
