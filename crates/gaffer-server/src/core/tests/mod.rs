//! Unit tests of the core's rules: a real SQLite store in a temporary directory, a fake clock
//! (every round is run at an explicit `now`), and [`Recorder`], an [`Effects`] that keeps what
//! each committed round released. No agent, thread or socket: each test runs in milliseconds.

mod batch;
mod effects;
mod gang;
mod jobs;
mod network;
mod nodes;
mod retries;
mod scheduling;

use super::*;
use gaffer_api::proto::{AgentMsg, AttemptReport, AttemptResult, EndKind, NodeInfo, ServerMsg};
use gaffer_api::views::{AttemptView, EventView};
use gaffer_api::{ByteSize, DurationSpec, JobSpec, JobState, Placement, TaskState};
use gaffer_store::sqlite::SqliteStore;
use gaffer_store::JobRow;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::oneshot;

const GIB: u64 = 1 << 30;

/// One released effect.
#[derive(Debug)]
pub(super) enum Fx {
    Send(String, ServerMsg),
    Event(EventView),
    Reason(JobId, Option<String>),
    #[allow(dead_code)] // recorded for completeness; no test reads outputs yet
    Pull(OutputPull),
}

/// Records effects; those of a round become visible only when it commits.
#[derive(Default)]
pub(super) struct Recorder {
    round: Vec<Fx>,
    replies: Vec<Deferred>,
    released: Vec<Fx>,
    links: HashMap<String, u64>,
    gauges: Gauges,
    /// Pending reasons as the API would read them.
    reasons: HashMap<JobId, String>,
}

impl Effects for Recorder {
    fn link(&mut self, node: &str, conn: u64, _tx: tokio::sync::mpsc::UnboundedSender<ServerMsg>) {
        self.links.insert(node.to_string(), conn);
    }
    fn unlink(&mut self, node: &str, conn: u64) {
        if self.links.get(node) == Some(&conn) {
            self.links.remove(node);
        }
    }
    fn send(&mut self, node: &str, msg: ServerMsg) {
        self.round.push(Fx::Send(node.to_string(), msg));
    }
    fn publish(&mut self, event: EventView) {
        self.round.push(Fx::Event(event));
    }
    fn set_reason(&mut self, job: JobId, reason: Option<String>) {
        self.round.push(Fx::Reason(job, reason));
    }
    fn pull_outputs(&mut self, pull: OutputPull) {
        self.round.push(Fx::Pull(pull));
    }
    fn reply(&mut self, reply: Deferred) {
        self.replies.push(reply);
    }
    fn gauges(&mut self, gauges: Gauges) {
        self.gauges = gauges;
    }
    fn committed(&mut self, result: &Result<(), CoreError>) {
        for r in self.replies.drain(..) {
            r(result.clone());
        }
        if result.is_ok() {
            // As on the server, a message to a node whose stream is gone is dropped.
            let links = &self.links;
            self.round
                .retain(|f| !matches!(f, Fx::Send(n, _) if !links.contains_key(n)));
            for f in &self.round {
                if let Fx::Reason(job, r) = f {
                    match r {
                        Some(r) => self.reasons.insert(*job, r.clone()),
                        None => self.reasons.remove(job),
                    };
                }
            }
            self.released.append(&mut self.round);
        } else {
            self.round.clear();
        }
    }
}

/// A job spec builder: `job().cpus(0.5).memory_gib(1).retries(2)`.
pub(super) struct SpecB(JobSpec);

pub(super) fn job() -> SpecB {
    SpecB(JobSpec {
        command: vec!["/bin/true".into()],
        ..JobSpec::default()
    })
}

impl SpecB {
    pub(super) fn cpus(mut self, c: f64) -> Self {
        self.0.resources.cpus = Some(c);
        self
    }
    pub(super) fn memory_gib(mut self, g: u64) -> Self {
        self.0.resources.memory = Some(ByteSize(g * GIB));
        self
    }
    pub(super) fn priority(mut self, p: i32) -> Self {
        self.0.priority = p;
        self
    }
    pub(super) fn name(mut self, n: &str) -> Self {
        self.0.name = Some(n.into());
        self
    }
    pub(super) fn array(mut self, n: u32) -> Self {
        self.0.array = Some(n);
        self
    }
    pub(super) fn retries(mut self, n: u32, backoff_ms: u64) -> Self {
        self.0.retries = n;
        self.0.retry_backoff = Some(DurationSpec(backoff_ms));
        self
    }
    pub(super) fn after(mut self, dep: JobId) -> Self {
        self.0.depends_on.push(dep);
        self
    }
    pub(super) fn strategy(mut self, s: Placement) -> Self {
        self.0.strategy = Some(s);
        self
    }
    pub(super) fn constraint(mut self, k: &str, v: &str) -> Self {
        self.0.constraints.insert(k.into(), v.into());
        self
    }
    pub(super) fn image(mut self, i: &str) -> Self {
        self.0.image = Some(i.into());
        self
    }
    pub(super) fn spec(self) -> JobSpec {
        self.0
    }
}

/// A node: `node("a", 4.0, 8)` has 4 CPUs and 8 GiB and runs host tasks.
pub(super) fn node(name: &str, cpus: f64, memory_gib: u64) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        cpus,
        memory: memory_gib * GIB,
        allow_host_tasks: true,
        labels: Default::default(),
        images: Vec::new(),
        image_digests: Default::default(),
        containers: false,
        bridge: false,
        shared_storage: false,
        allow_mounts: Vec::new(),
    }
}

/// The core under test with its store, clock and connections.
pub(super) struct H {
    pub(super) core: Core<Recorder>,
    pub(super) store: Arc<SqliteStore>,
    pub(super) now: UnixMs,
    conns: HashMap<String, u64>,
    next_conn: u64,
    _dir: tempfile::TempDir,
}

pub(super) const T0: UnixMs = 1_700_000_000_000;

impl H {
    pub(super) fn new() -> H {
        H::with(CoreConfig {
            heartbeat_timeout: Duration::from_secs(10),
            ..CoreConfig::default()
        })
    }

    pub(super) fn with(cfg: CoreConfig) -> H {
        // On tmpfs where there is one: the store's fsyncs are then free, and a test is a few ms.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("store"));
        let core = Core::load(store.clone(), Recorder::default(), cfg, T0).expect("load");
        H {
            core,
            store,
            now: T0,
            conns: HashMap::new(),
            next_conn: 1,
            _dir: dir,
        }
    }

    /// Reloads the core from the store, as a restarted server (or a new HA leader) does.
    pub(super) fn restart(&mut self, cfg: CoreConfig) {
        self.core =
            Core::load(self.store.clone(), Recorder::default(), cfg, self.now).expect("load");
        self.conns.clear();
    }

    /// Runs the round's rules and commits it.
    pub(super) fn round(&mut self) {
        self.core.tick(self.now);
        assert!(self.core.finish_round(self.now), "commit failed");
    }

    /// Moves the fake clock on by `ms` and runs a round.
    pub(super) fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.round();
    }

    /// Applies a command that expects an answer, runs the round, and returns the answer.
    pub(super) fn ask<T>(
        &mut self,
        make: impl FnOnce(command::Reply<T>) -> Command,
    ) -> Result<T, CoreError> {
        let (tx, mut rx) = oneshot::channel();
        self.core.apply(make(tx), self.now);
        assert!(rx.try_recv().is_err(), "answered before the commit");
        self.round();
        rx.try_recv().expect("answered after the round")
    }

    pub(super) fn submit(&mut self, spec: JobSpec) -> JobId {
        self.submit_all(vec![spec])[0]
    }

    pub(super) fn submit_all(&mut self, specs: Vec<JobSpec>) -> Vec<JobId> {
        self.try_submit(specs, false).expect("submit")
    }

    /// Submits a spec that no node registered now could run, to wait for one.
    pub(super) fn submit_anyway(&mut self, spec: JobSpec) -> JobId {
        self.try_submit(vec![spec], true).expect("submit")[0]
    }

    pub(super) fn try_submit(
        &mut self,
        specs: Vec<JobSpec>,
        allow_unplaceable: bool,
    ) -> Result<Vec<JobId>, CoreError> {
        self.ask(|reply| Command::Submit {
            specs,
            idempotency_key: None,
            allow_unplaceable,
            reply,
        })
    }

    pub(super) fn kill(&mut self, job: JobId) -> JobState {
        self.ask(|reply| Command::Kill { job, reply })
            .expect("kill")
    }

    /// Registers (or re-registers) a node's agent with the attempts it reports.
    pub(super) fn connect_with(&mut self, info: NodeInfo, attempts: Vec<AttemptReport>) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(info.name.clone(), conn);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        self.core.apply(
            Command::AgentConnected {
                conn,
                address: format!("10.0.0.{conn}:4000"),
                node: info,
                attempts,
                tx,
            },
            self.now,
        );
        self.round();
    }

    pub(super) fn connect(&mut self, info: NodeInfo) {
        self.connect_with(info, Vec::new());
    }

    /// A message from `node`'s current stream, then a round.
    pub(super) fn agent(&mut self, node: &str, msg: AgentMsg) {
        let conn = self.conns[node];
        self.core.apply(
            Command::Agent {
                conn,
                node: node.into(),
                msg,
            },
            self.now,
        );
        self.round();
    }

    pub(super) fn started(&mut self, node: &str, key: AttemptKey) {
        self.agent(
            node,
            AgentMsg::Started {
                key,
                at: self.now,
                ip: None,
            },
        );
    }

    pub(super) fn ended(&mut self, node: &str, key: AttemptKey, kind: EndKind, code: Option<i32>) {
        let result = AttemptResult {
            kind,
            exit_code: code,
            signal: None,
            started_at: None,
            ended_at: self.now,
            max_rss_bytes: None,
            cpu_secs: None,
            outputs: Vec::new(),
            message: None,
        };
        self.agent(node, AgentMsg::Ended { key, result });
    }

    /// Starts and ends an attempt with an exit code.
    pub(super) fn run_to_exit(&mut self, node: &str, key: AttemptKey, code: i32) {
        self.started(node, key);
        self.ended(node, key, EndKind::Exited, Some(code));
    }

    /// Takes the released effects.
    pub(super) fn take(&mut self) -> Vec<Fx> {
        std::mem::take(&mut self.core.effects().released)
    }

    /// Takes the released effects and returns the attempts started, as (node, attempt).
    pub(super) fn starts(&mut self) -> Vec<(String, AttemptKey)> {
        self.take()
            .into_iter()
            .filter_map(|f| match f {
                Fx::Send(n, ServerMsg::Start(l)) => Some((n, l.key)),
                _ => None,
            })
            .collect()
    }

    /// Takes the released effects and returns the messages sent, as (node, message).
    pub(super) fn sent(&mut self) -> Vec<(String, ServerMsg)> {
        self.take()
            .into_iter()
            .filter_map(|f| match f {
                Fx::Send(n, m) => Some((n, m)),
                _ => None,
            })
            .collect()
    }

    /// Why job `id` is not placed, as the API would show it.
    pub(super) fn reason(&self, id: JobId) -> Option<String> {
        self.core.fx.reasons.get(&id).cloned()
    }

    /// The committed row of job `id`.
    pub(super) fn job(&self, id: JobId) -> JobRow {
        self.store.get_job(id).expect("read").expect("job exists")
    }

    /// Committed state of task `index` of job `id`.
    pub(super) fn task(&self, id: JobId, index: u32) -> TaskState {
        let row = self.job(id);
        self.store.list_tasks(&row, index, 1).expect("tasks")[0].state
    }

    /// Committed attempts of task `index` of job `id`.
    pub(super) fn attempts(&self, id: JobId, index: u32) -> Vec<AttemptView> {
        self.store.attempts(id, index).expect("attempts")
    }

    /// The node table of the last round.
    pub(super) fn node_view(&mut self, name: &str) -> gaffer_api::views::NodeView {
        let g = &self.core.effects().gauges;
        g.nodes
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .expect("node known")
    }
}

/// Attempt `attempt` of task `index` of `job`.
pub(super) fn key(job: JobId, index: u32, attempt: u32) -> AttemptKey {
    AttemptKey {
        job,
        index,
        attempt,
    }
}
