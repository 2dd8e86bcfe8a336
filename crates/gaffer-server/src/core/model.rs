//! What the core holds in memory: active jobs and their touched tasks, and nodes with the
//! ledger of what each has reserved.
//!
//! A job's tasks that never had an attempt have no [`TaskRt`]: they are counted in
//! `counts.pending` and start at `row.next_fresh` (see `gaffer_store`'s lazy task rows).

use gaffer_api::batch::DepKind;
use gaffer_api::ports::{PortMapping, Protocol};
use gaffer_api::proto::NodeInfo;
use gaffer_api::{AttemptKey, JobId, Placement, TaskState, UnixMs};
use gaffer_sched::{Demand, Strategy};
use gaffer_store::{JobRow, TaskRow};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// A task that has had an attempt, or waits for a retry.
#[derive(Debug, Clone)]
pub(super) struct TaskRt {
    /// Changed only through [`super::transition::move_task`].
    pub(super) state: TaskState,
    pub(super) attempt: u32,
    /// Lost attempts that did not count against the retry budget.
    pub(super) lost: u32,
    pub(super) node: Option<String>,
    /// Earliest time a retry may be placed.
    pub(super) not_before: Option<UnixMs>,
    pub(super) started_at: Option<UnixMs>,
    /// The current attempt's address and mapped ports (bridge network).
    pub(super) ip: Option<String>,
    pub(super) ports: Vec<PortMapping>,
    /// A running replica's readiness (`None`: not a replica, or not running).
    pub(super) ready: Option<bool>,
}

impl TaskRt {
    /// A task about to get its first attempt.
    pub(super) fn fresh() -> Self {
        TaskRt {
            state: TaskState::Pending,
            attempt: 0,
            lost: 0,
            node: None,
            not_before: None,
            started_at: None,
            ip: None,
            ports: Vec::new(),
            ready: None,
        }
    }

    /// The view of its current attempt while it runs, as the store keeps it.
    pub(super) fn running_view(&self) -> gaffer_api::views::AttemptView {
        gaffer_api::views::AttemptView {
            attempt: self.attempt,
            node: self.node.clone().unwrap_or_default(),
            state: TaskState::Running,
            started_at: self.started_at,
            ended_at: None,
            exit_code: None,
            signal: None,
            message: None,
            max_rss_bytes: None,
            cpu_secs: None,
            outputs: Vec::new(),
            ip: self.ip.clone(),
            ports: self.ports.clone(),
            ready: self.ready,
        }
    }

    /// A task as the store has it.
    pub(super) fn from_row(t: &TaskRow) -> Self {
        TaskRt {
            state: t.state,
            attempt: t.attempts,
            lost: t.lost,
            node: t.node.clone(),
            not_before: t.not_before,
            started_at: None,
            ip: None,
            ports: Vec::new(),
            ready: None,
        }
    }

    /// The store row of task `index` of `job`.
    pub(super) fn row(&self, job: JobId, index: u32) -> TaskRow {
        TaskRow {
            job,
            index,
            state: self.state,
            attempts: self.attempt,
            lost: self.lost,
            node: self.node.clone(),
            not_before: self.not_before,
        }
    }

    /// Assigned or running: it holds a reservation on its node.
    pub(super) fn is_placed(&self) -> bool {
        matches!(self.state, TaskState::Assigned | TaskState::Running)
    }
}

/// A job that is not final.
pub(super) struct ActiveJob {
    pub(super) row: JobRow,
    /// Touched, non-final tasks.
    pub(super) tasks: HashMap<u32, TaskRt>,
    /// Retries whose back-off has passed, in order.
    pub(super) ready: VecDeque<u32>,
    /// Dependencies not satisfied yet, with what each must do.
    pub(super) waiting_on: BTreeMap<JobId, DepKind>,
}

impl ActiveJob {
    pub(super) fn new(row: JobRow) -> Self {
        ActiveJob {
            row,
            tasks: HashMap::new(),
            ready: VecDeque::new(),
            waiting_on: BTreeMap::new(),
        }
    }

    /// It has a task that could be placed now.
    pub(super) fn has_work(&self) -> bool {
        !self.row.kill_requested
            && !self.row.held
            && self.waiting_on.is_empty()
            && !self.at_max_running()
            && (!self.ready.is_empty() || self.row.next_fresh < self.row.counts.total)
    }

    /// As many of its tasks run as its `max_running` allows.
    pub(super) fn at_max_running(&self) -> bool {
        self.row
            .spec
            .max_running
            .is_some_and(|m| self.row.counts.running >= m)
    }

    /// What one of its attempts holds on a node, with `ports` (its mapped host ports).
    pub(super) fn reservation(&self, ports: &[PortMapping]) -> Reservation {
        Reservation {
            cpus_m: milli(self.row.spec.cpus()),
            memory: self.row.spec.resources.memory.map(|m| m.0).unwrap_or(0),
            ports: ports.iter().map(|p| port_key(p.host, p.protocol)).collect(),
        }
    }

    /// What task `t`'s current attempt holds: its mapped ports, or (for an attempt known only
    /// from the store) the ports the spec fixes.
    pub(super) fn held_by(&self, t: &TaskRt) -> Reservation {
        if !t.ports.is_empty() {
            return self.reservation(&t.ports);
        }
        let fixed: Vec<PortMapping> = self
            .row
            .spec
            .ports
            .iter()
            .filter_map(|p| {
                Some(PortMapping {
                    host: p.host?,
                    container: p.container,
                    protocol: p.protocol,
                })
            })
            .collect();
        self.reservation(&fixed)
    }

    /// Its fixed host ports (those it names), as the scheduler counts them.
    pub(super) fn fixed_ports(&self) -> Vec<(u16, u8)> {
        self.row
            .spec
            .ports
            .iter()
            .filter_map(|p| Some(port_key(p.host?, p.protocol)))
            .collect()
    }

    /// What the scheduler must find for one of its tasks.
    pub(super) fn demand(&self) -> Demand {
        Demand {
            cpus: self.row.spec.cpus(),
            memory: self.row.spec.resources.memory.map(|m| m.0).unwrap_or(0),
            ports: self.fixed_ports(),
            host: self.row.spec.image.is_none(),
            constraints: self.row.spec.constraints.clone(),
            image: self.row.spec.image.clone(),
            bridge: self.row.spec.net() == Some(gaffer_api::Network::Bridge),
            node: None,
            mounts: self
                .row
                .spec
                .mounts
                .iter()
                .map(|m| (&m.host).into())
                .collect(),
        }
    }

    /// Its queue key: higher priority first, then lower id (FIFO).
    pub(super) fn queue_key(&self) -> QueueKey {
        (std::cmp::Reverse(self.row.spec.priority), self.row.id)
    }
}

/// Order of the placement queue.
pub(super) type QueueKey = (std::cmp::Reverse<i32>, JobId);

/// CPU (in thousandths), memory and host ports that one attempt holds on its node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Reservation {
    pub(super) cpus_m: u64,
    pub(super) memory: u64,
    pub(super) ports: Vec<(u16, u8)>,
}

/// A host port as the scheduler and the ledger key it: (port, 0 for TCP or 1 for UDP).
pub(super) fn port_key(port: u16, protocol: Protocol) -> (u16, u8) {
    (port, matches!(protocol, Protocol::Udp) as u8)
}

/// What a node has reserved, per attempt, with the totals kept in step. The one place node
/// allocation is added up: an attempt releases exactly what it reserved.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    held: HashMap<AttemptKey, Reservation>,
    /// CPUs reserved, in thousandths (sums of fractions like 0.1 drift in floating point).
    cpus_m: u64,
    memory: u64,
    ports: HashSet<(u16, u8)>,
}

impl Ledger {
    /// Reserves `r` for `key` (replacing what `key` held before).
    pub(super) fn reserve(&mut self, key: AttemptKey, r: Reservation) {
        self.release(key);
        self.cpus_m += r.cpus_m;
        self.memory += r.memory;
        self.ports.extend(r.ports.iter().copied());
        self.held.insert(key, r);
    }

    /// Releases what `key` held; false if it held nothing.
    pub(super) fn release(&mut self, key: AttemptKey) -> bool {
        match self.held.remove(&key) {
            Some(r) => {
                self.cpus_m -= r.cpus_m;
                self.memory -= r.memory;
                for p in &r.ports {
                    self.ports.remove(p);
                }
                true
            }
            None => false,
        }
    }

    /// Forgets every reservation.
    pub(super) fn clear(&mut self) {
        *self = Ledger::default();
    }

    /// The attempts holding reservations, in no particular order.
    pub(super) fn attempts(&self) -> Vec<AttemptKey> {
        self.held.keys().copied().collect()
    }

    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub(super) fn cpus(&self) -> f64 {
        cpus_of(self.cpus_m)
    }

    pub(super) fn memory(&self) -> u64 {
        self.memory
    }

    /// Host ports held.
    pub(super) fn ports(&self) -> &HashSet<(u16, u8)> {
        &self.ports
    }
}

/// A worker node, registered or known only from attempts in the store.
pub(super) struct Node {
    pub(super) info: NodeInfo,
    pub(super) address: String,
    pub(super) draining: bool,
    /// Declared down by the heartbeat timeout; cleared when the agent registers again.
    pub(super) down: bool,
    /// A `Reregister` was sent since it went down.
    pub(super) reregister_asked: bool,
    /// The agent's current stream (0: never connected to this server).
    pub(super) conn: u64,
    /// That stream is open.
    pub(super) connected: bool,
    pub(super) ledger: Ledger,
    pub(super) memory_free: u64,
    pub(super) last_seen: UnixMs,
}

impl Node {
    /// A node known only by name (from attempts in the store) until its agent registers.
    pub(super) fn placeholder(name: &str, last_seen: UnixMs) -> Self {
        Node::new(
            NodeInfo {
                name: name.to_string(),
                cpus: 0.0,
                memory: 0,
                allow_host_tasks: false,
                labels: Default::default(),
                images: Vec::new(),
                image_digests: Default::default(),
                containers: false,
                bridge: false,
                shared_storage: false,
                allow_mounts: Vec::new(),
            },
            0,
            last_seen,
        )
    }

    pub(super) fn new(info: NodeInfo, conn: u64, now: UnixMs) -> Self {
        Node {
            memory_free: info.memory,
            info,
            address: String::new(),
            draining: false,
            down: false,
            reregister_asked: false,
            conn,
            connected: false,
            ledger: Ledger::default(),
            last_seen: now,
        }
    }

    /// Connected, not down and not draining: new tasks may go here.
    pub(super) fn ready(&self) -> bool {
        self.connected && !self.down && !self.draining
    }
}

/// CPUs in thousandths, the unit of a node's allocation.
pub(super) fn milli(cpus: f64) -> u64 {
    (cpus * 1000.0).round().max(0.0) as u64
}

/// Thousandths of CPUs back as CPUs.
pub(super) fn cpus_of(milli: u64) -> f64 {
    milli as f64 / 1000.0
}

/// A job's placement strategy, or the server's default.
pub(super) fn strategy_of(p: Option<Placement>, default: Strategy) -> Strategy {
    match p {
        None => default,
        Some(Placement::MostFreeMemory) => Strategy::MostFreeMemory,
        Some(Placement::Binpack) => Strategy::Binpack,
        Some(Placement::Spread) => Strategy::Spread,
    }
}
