//! The gaffer agent: the node daemon that runs what the server assigns to this node.
//!
//! It speaks to the server over one message stream (an uplink of [`AgentMsg`], a downlink of
//! [`ServerMsg`]); how that stream is carried (in-process channels in `gaffer dev`, a network
//! connection otherwise) is the caller's business. For every attempt it starts a supervisor
//! process (the shim, see `gaffer-runtime`) and reports `Started`/`Ended`. It never waits on
//! the server: a slow server only delays reports, never tasks.
//!
//! Restart safety: each attempt the server has not yet confirmed is recorded in a small
//! append-only journal, `<data>/active.log` (see [`journal`]). At start-up the agent probes
//! each recorded attempt (its shim may still be running, or may have finished while the agent
//! was down) and reports them all in `Register`; it drops an attempt from the journal only when
//! the server says `Forget`, i.e. after the server has durably recorded the end.

mod attempt;
mod exec;
mod files;
pub mod images;
pub mod journal;
mod launch;
pub mod net;
pub mod remote;
mod report;
mod script;
mod service;

use report::lost;
pub use report::result_from_status;

use gaffer_api::proto::{AgentMsg, AttemptReport, NodeInfo, ServerMsg};
use gaffer_api::{AttemptKey, JobId};
use gaffer_runtime::Probe;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory is unusable.
    #[error("agent data directory {path}: {source}")]
    DataDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, AgentError>;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name (unique in the cluster).
    pub name: String,
    /// Where attempt directories live.
    pub data_dir: PathBuf,
    /// CPUs offered.
    pub cpus: f64,
    /// Memory offered, bytes.
    pub memory: u64,
    /// Run tasks without an image as host processes.
    pub allow_host_tasks: bool,
    /// Labels task constraints match against.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Run container tasks (needs root and overlayfs).
    pub containers: bool,
    /// The executable that contains `gaffer shim`.
    pub shim_exe: PathBuf,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// The bridge of the `bridge` container network (`None`: this node offers no bridge
    /// network).
    pub bridge: Option<String>,
    /// Where cluster jobs' shared directories live (`<root>/<job>`); on storage the nodes
    /// share with `--storage-dir`.
    pub shared_root: PathBuf,
    /// Whether `shared_root` is on storage the nodes share.
    pub shared_storage: bool,
    /// Host directories tasks may mount (`--allow-mount`), and what is under them.
    pub allow_mounts: Vec<PathBuf>,
}

impl AgentConfig {
    /// Defaults for this machine: all CPUs and all memory.
    pub fn for_this_host(name: String, data_dir: PathBuf, shim_exe: PathBuf) -> Self {
        AgentConfig {
            name,
            shared_root: data_dir.join("shared"),
            shared_storage: false,
            allow_mounts: Vec::new(),
            data_dir,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0),
            memory: meminfo("MemTotal:").unwrap_or(1 << 30),
            allow_host_tasks: false,
            labels: Default::default(),
            containers: can_run_containers(),
            shim_exe,
            heartbeat: Duration::from_secs(2),
            bridge: can_run_containers().then(|| "gaffer0".to_string()),
        }
    }

    /// The directory of one attempt.
    pub fn attempt_dir(&self, key: &AttemptKey) -> PathBuf {
        attempt_dir(&self.data_dir, key.job, key.index, key.attempt)
    }
}

/// `<data>/attempts/<job>/<index>/<attempt>`.
pub fn attempt_dir(data_dir: &Path, job: JobId, index: u32, attempt: u32) -> PathBuf {
    data_dir
        .join("attempts")
        .join(job.to_string())
        .join(index.to_string())
        .join(attempt.to_string())
}

/// Whether this host can run containers: root, and overlayfs available.
pub fn can_run_containers() -> bool {
    nix::unistd::geteuid().is_root()
        && std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay"))
}

/// Reads a field of /proc/meminfo, in bytes.
pub fn meminfo(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The environment every task starts from, taken from the agent's own.
fn base_env() -> Vec<(String, String)> {
    const KEEP: [&str; 8] = [
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
    ];
    let mut env: Vec<(String, String)> = KEEP
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    env
}

/// A replica waiting at the start barrier: its address, and where its peers go.
struct Barrier {
    ip: String,
    tx: tokio::sync::oneshot::Sender<Vec<(String, String)>>,
}

/// Supervisors this process started, and kills waiting for theirs.
#[derive(Default)]
struct Procs {
    pids: HashMap<AttemptKey, u32>,
    kills: HashSet<AttemptKey>,
    /// Replicas waiting at the start barrier for their peers ([`ServerMsg::Peers`]).
    barriers: HashMap<AttemptKey, Barrier>,
}

struct Inner {
    cfg: AgentConfig,
    base_env: Vec<(String, String)>,
    /// The uplink of the current session, if connected.
    up: Mutex<Option<UnboundedSender<AgentMsg>>>,
    /// Shim pids of attempts started by this process, and kills that arrived before their
    /// attempt's supervisor existed; one lock so a kill can never fall between the two.
    procs: Mutex<Procs>,
    /// Attempts something in this process is waiting on (a child or an orphan watcher).
    watched: Mutex<HashSet<AttemptKey>>,
    /// Attempts not yet forgotten by the server.
    journal: journal::Journal,
    /// The node's images; fetches from the server's catalog.
    images: images::Images,
    /// The bridge container network.
    net: net::BridgeNet,
    /// Front doors of cluster jobs' services.
    doors: service::FrontDoors,
    /// `gaffer exec` sessions.
    execs: exec::Execs,
}

/// A node agent. Open it once; run one [`Agent::session`] per connection to the server.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

/// Runs an agent over one in-process stream until the downlink closes (`gaffer dev`).
pub async fn run(
    cfg: AgentConfig,
    up: UnboundedSender<AgentMsg>,
    down: UnboundedReceiver<ServerMsg>,
) -> Result<()> {
    Agent::open(cfg)?.session(up, down).await;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    /// Opens the agent's data directory and journal.
    pub fn open(cfg: AgentConfig) -> Result<Agent> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| AgentError::DataDir {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let path = cfg.data_dir.join("active.log");
        let (journal, _) =
            journal::Journal::open(&path).map_err(|source| AgentError::DataDir { path, source })?;
        let bridge = cfg.bridge.as_deref().unwrap_or("gaffer0");
        let net = net::BridgeNet::new(&cfg.name, &cfg.data_dir, bridge);
        if cfg.containers && cfg.bridge.is_some() {
            let live: Vec<PathBuf> = journal.keys().iter().map(|k| cfg.attempt_dir(k)).collect();
            net.recover(&live);
        }
        Ok(Agent {
            inner: Arc::new(Inner {
                base_env: base_env(),
                up: Mutex::new(None),
                procs: Mutex::new(Procs::default()),
                watched: Mutex::new(HashSet::new()),
                journal,
                images: images::Images::new(cfg.data_dir.clone()),
                net,
                doors: service::FrontDoors::default(),
                execs: exec::Execs::default(),
                cfg,
            }),
        })
    }

    /// The agent's settings.
    pub fn config(&self) -> &AgentConfig {
        &self.inner.cfg
    }

    /// Serves one connection: registers (reporting every attempt the server has not yet
    /// forgotten), heartbeats, and obeys the server until the downlink closes.
    pub async fn session(
        &self,
        up: UnboundedSender<AgentMsg>,
        mut down: UnboundedReceiver<ServerMsg>,
    ) {
        let agent = self.inner.clone();
        {
            // Hold the uplink lock while registering so that no other message can overtake
            // `Register` on the new stream.
            let mut slot = lock(&agent.up);
            let reports = agent.reports();
            let _ = up.send(AgentMsg::Register {
                node: agent.node_info(),
                attempts: reports,
            });
            *slot = Some(up.clone());
        }
        let period = agent.cfg.heartbeat;
        let hb_up = up.clone();
        let hb = agent.clone();
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let memory_free = meminfo("MemAvailable:").unwrap_or(0);
                let (images, image_digests) = hb.images.held();
                if hb_up
                    .send(AgentMsg::Heartbeat {
                        memory_free,
                        images,
                        image_digests,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        while let Some(msg) = down.recv().await {
            match msg {
                ServerMsg::Start(launch) => {
                    let a = agent.clone();
                    tokio::spawn(async move { a.start(*launch).await });
                }
                ServerMsg::Kill { key } => agent.kill(key),
                ServerMsg::Peers { key, peers } => agent.peers(key, peers),
                ServerMsg::Service {
                    job,
                    host,
                    backends,
                    open,
                } => agent.doors.update(job, host, backends, open),
                ServerMsg::PullImage {
                    reference,
                    name,
                    insecure,
                } => {
                    let root = agent.cfg.data_dir.clone();
                    tokio::task::spawn_blocking(move || {
                        tracing::info!(%reference, %name, "pulling an image");
                        match images::node_store(&root).pull(&name, &reference, insecure) {
                            Ok(_) => tracing::info!(%reference, %name, "pulled"),
                            Err(e) => tracing::warn!(%reference, error = %e, "image pull failed"),
                        }
                    });
                }
                ServerMsg::BlobData { .. } => agent.images.answer(msg),
                ServerMsg::FetchImage { name, digest, size } => {
                    let a = agent.clone();
                    tokio::spawn(async move {
                        if !a.cfg.containers {
                            return;
                        }
                        let send = |m| a.try_send(m);
                        if let Err(e) = a.images.ensure(&name, &digest, size, &send).await {
                            tracing::warn!(image = %name, error = %e.message, "image fetch failed");
                        }
                    });
                }
                ServerMsg::Network {
                    subnet,
                    cluster_cidr,
                    routes,
                } => {
                    // In order, before any later Start: a bridge attempt needs the subnet.
                    // (It comes when a node joins or leaves; syncing routes is one netlink
                    // round trip.)
                    agent.configure_network(&subnet, &cluster_cidr, &routes);
                }
                ServerMsg::RemoveImage { name, digest } => {
                    let a = agent.clone();
                    tokio::task::spawn_blocking(move || a.images.remove_if(&name, &digest));
                }
                ServerMsg::Reregister => {
                    let _slot = lock(&agent.up);
                    let _ = up.send(AgentMsg::Register {
                        node: agent.node_info(),
                        attempts: agent.reports(),
                    });
                }
                ServerMsg::Purge { job } => {
                    let dirs = [
                        agent.cfg.data_dir.join("attempts").join(job.to_string()),
                        agent.cfg.shared_root.join(job.to_string()),
                    ];
                    tokio::task::spawn_blocking(move || {
                        for dir in dirs {
                            match std::fs::remove_dir_all(&dir) {
                                Ok(()) => {}
                                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                                Err(e) => {
                                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a deleted job's files")
                                }
                            }
                        }
                    });
                }
                ServerMsg::Forget { key } => {
                    lock(&agent.procs).kills.remove(&key);
                    if let Err(e) = agent.journal.remove(key) {
                        tracing::warn!(attempt = %key, error = %e, "cannot update the attempt journal");
                    }
                }
                ServerMsg::ExecStart {
                    session,
                    key,
                    argv,
                    tty,
                } => agent.exec_start(session, key, argv, tty),
                ServerMsg::ExecInput { session, data } => agent.exec_input(session, &data),
                ServerMsg::ExecKill { session } => agent.exec_kill(session),
                ServerMsg::ReadFile {
                    req,
                    key,
                    path,
                    offset,
                    max,
                } => {
                    let a = agent.clone();
                    tokio::task::spawn_blocking(move || {
                        let msg = a.read_file(req, key, &path, offset, max);
                        a.send(msg);
                    });
                }
            }
        }
        heartbeat.abort();
        agent.doors.close_all();
        let mut slot = lock(&agent.up);
        if slot.as_ref().is_some_and(|s| s.same_channel(&up)) {
            *slot = None;
        }
    }
}

impl Inner {
    fn node_info(&self) -> NodeInfo {
        let (images, image_digests) = self.images.held();
        NodeInfo {
            name: self.cfg.name.clone(),
            cpus: self.cfg.cpus,
            memory: self.cfg.memory,
            allow_host_tasks: self.cfg.allow_host_tasks,
            labels: self.cfg.labels.clone(),
            images,
            image_digests,
            containers: self.containers(),
            bridge: self.containers() && self.cfg.bridge.is_some(),
            shared_storage: self.cfg.shared_storage,
            allow_mounts: self
                .cfg
                .allow_mounts
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        }
    }

    /// Whether this agent can run container tasks.
    fn containers(&self) -> bool {
        self.cfg.containers
    }

    fn send(&self, msg: AgentMsg) {
        self.try_send(msg);
    }

    /// Sends on the current uplink; false when there is none.
    fn try_send(&self, msg: AgentMsg) -> bool {
        lock(&self.up)
            .as_ref()
            .is_some_and(|up| up.send(msg).is_ok())
    }

    /// What to tell the server about every attempt it has not forgotten. Attempts whose
    /// supervisor is alive but unwatched (from a previous life of the agent) get a watcher.
    fn reports(self: &Arc<Self>) -> Vec<AttemptReport> {
        let mut reports = Vec::new();
        for key in self.journal.keys() {
            if let Some(b) = lock(&self.procs).barriers.get(&key) {
                // Not running yet: the server sends its peers again when all are prepared.
                reports.push(AttemptReport::Prepared {
                    key,
                    ip: b.ip.clone(),
                });
                continue;
            }
            if lock(&self.watched).contains(&key) {
                reports.push(AttemptReport::Running { key });
                continue;
            }
            let dir = self.cfg.attempt_dir(&key);
            match gaffer_runtime::probe(&dir) {
                Probe::Running { pid } => {
                    tracing::info!(attempt = %key, pid, "re-attached to a running attempt");
                    reports.push(AttemptReport::Running { key });
                    lock(&self.watched).insert(key);
                    let a = self.clone();
                    tokio::spawn(async move { a.watch_orphan(key, dir).await });
                }
                Probe::Ended(status) => {
                    self.net.detach(&dir);
                    reports.push(AttemptReport::Ended {
                        key,
                        result: result_from_status(&status),
                    })
                }
                Probe::Gone => {
                    self.net.detach(&dir);
                    let _ = gaffer_runtime::cleanup_attempt(&dir);
                    reports.push(AttemptReport::Ended {
                        key,
                        result: lost("its supervisor disappeared while the agent was down".into()),
                    })
                }
            }
        }
        reports
    }

    /// Polls a shim this process did not start until it ends.
    async fn watch_orphan(self: Arc<Self>, key: AttemptKey, dir: PathBuf) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let d = dir.clone();
            let probe = tokio::task::spawn_blocking(move || gaffer_runtime::probe(&d))
                .await
                .unwrap_or(Probe::Gone);
            let result = match probe {
                Probe::Running { .. } => continue,
                Probe::Ended(s) => result_from_status(&s),
                Probe::Gone => {
                    let _ = gaffer_runtime::cleanup_attempt(&dir);
                    lost("its supervisor exited without a result".into())
                }
            };
            lock(&self.watched).remove(&key);
            self.net.detach(&dir);
            self.send(AgentMsg::Ended { key, result });
            let a = self.clone();
            tokio::task::spawn_blocking(move || a.images.purge_retired());
            return;
        }
    }
}
