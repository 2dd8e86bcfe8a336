//! The core's front door: the [`Command`]s that change state, the errors they are answered
//! with, the core's settings, and the [`CoreHandle`] the API and the agent gateway hold.

use gaffer_api::proto::{AgentMsg, AttemptReport, NodeInfo, ServerMsg};
use gaffer_api::{FieldError, JobId, JobSpec, JobState};
use gaffer_net::ipam::Cidr;
use gaffer_sched::Strategy;
use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
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
    /// A rule asked for a task transition the lifecycle forbids (a bug); that task was left
    /// as it was.
    #[error("internal error: {0}")]
    Illegal(#[from] super::transition::IllegalMove),
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, CoreError>>;

/// Everything that can change state.
pub enum Command {
    /// Create jobs (already validated), all or none.
    Submit {
        /// Specs.
        specs: Vec<JobSpec>,
        /// Idempotency key.
        idempotency_key: Option<String>,
        /// Accept specs that no node registered now could run (they wait for one).
        allow_unplaceable: bool,
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
    /// Hold a job (its tasks that have not started wait) or release it.
    Hold {
        /// Job.
        job: JobId,
        /// Hold (true) or release.
        hold: bool,
        /// Answer: the job's state.
        reply: Reply<JobState>,
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
    Images(BTreeMap<String, (String, u64)>),
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
    /// The container network of the cluster: every node that runs the bridge network gets a
    /// subnet of it.
    pub cluster_cidr: Cidr,
    /// Prefix length of a node's subnet (24: 253 addresses per node).
    pub node_prefix: u8,
    /// Tasks may map host ports below 1024.
    pub allow_privileged_ports: bool,
}

/// The default cluster CIDR.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.88.0.0/16";

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            strategy: Strategy::MostFreeMemory,
            heartbeat_timeout: Duration::from_secs(10),
            max_lost: MAX_FREE_LOST,
            cluster_cidr: DEFAULT_CLUSTER_CIDR.parse().expect("a valid CIDR"),
            node_prefix: 24,
            allow_privileged_ports: false,
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
        allow_unplaceable: bool,
    ) -> Result<Vec<JobId>, CoreError> {
        self.ask(|reply| Command::Submit {
            specs,
            idempotency_key,
            allow_unplaceable,
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

    /// Holds (`hold`) or releases a job.
    pub async fn hold(&self, job: JobId, hold: bool) -> Result<JobState, CoreError> {
        self.ask(|reply| Command::Hold { job, hold, reply }).await
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
