//! Command-line definitions (clap). Parsing only: nothing here talks to a server.

use clap::{Args, Parser, Subcommand, ValueEnum};
use gaffer_api::units::{parse_duration, parse_size};
use gaffer_api::{ByteSize, DurationSpec};
use std::net::SocketAddr;
use std::path::PathBuf;

pub use crate::cli_accounting::{ExecArgs, HistoryArgs};
use crate::cli_images::{AgentCommand, ImageCommand};
pub use crate::cli_submit::SubmitArgs;

/// gaffer: a distributed job manager. Submit commands, watch them run, collect their output.
#[derive(Debug, Parser)]
#[command(
    name = "gaffer",
    version,
    after_help = "Start a local cluster with `gaffer dev`, then e.g.:\n  gaffer submit --name hello -- echo hello world\n  gaffer jobs\n  gaffer logs -f j-000001\n\nThe CLI finds the server through --addr or GAFFER_ADDR (default http://127.0.0.1:6464)."
)]
pub struct Cli {
    /// Server address.
    #[arg(
        long,
        global = true,
        env = "GAFFER_ADDR",
        default_value = "http://127.0.0.1:6464"
    )]
    pub addr: String,
    /// CA certificate (PEM) to trust for an https:// server.
    #[arg(long, global = true, env = "GAFFER_CA")]
    pub ca: Option<PathBuf>,
    /// API token, when the server was started with --token-file.
    #[arg(long, global = true, env = "GAFFER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format of listings and status.
    #[arg(short = 'o', long = "format", global = true, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables for people.
    Human,
    /// JSON for scripts.
    Json,
    /// Only the job's state, one word (pending, running, succeeded, failed, killed): `gaffer
    /// status` only, e.g. for a workflow manager's status command.
    State,
    /// Comma-separated values with a header line: `gaffer history` only.
    Csv,
}

impl Format {
    /// Refuses a format that `command` cannot print (`-o state` is only for `gaffer status`),
    /// as a usage error, rather than ignoring it.
    pub fn check(self, command: &Command) -> Result<(), clap::Error> {
        if self == Format::State && !matches!(command, Command::Status(_)) {
            return Err(<Cli as clap::CommandFactory>::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "-o state is only for `gaffer status` (it prints the job's state); \
                 use -o human or -o json here",
            ));
        }
        if self == Format::Csv && !matches!(command, Command::History(_)) {
            return Err(<Cli as clap::CommandFactory>::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "-o csv is only for `gaffer history`; use -o human or -o json here",
            ));
        }
        Ok(())
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server and one local agent in this process (SQLite state in ./.gaffer).
    Dev(DevArgs),
    /// Run the server: API, scheduler and the endpoint agents connect to.
    Server(ServerArgs),
    /// Run an agent on a worker node: it connects to the server and runs the tasks placed here.
    Agent(AgentArgs),
    /// Drain or re-enable a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The cluster's container images: import (upload to the server), ls, rm, pull.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Submit a job: `gaffer submit [OPTIONS] -- COMMAND [ARGS...]`, `--shell 'LINE'` or `-f FILE`.
    #[command(args_override_self = true)]
    Submit(Box<SubmitArgs>),
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Show a job: its tasks, attempts, exit codes and reasons.
    Status(StatusArgs),
    /// Print a task's stdout (or stderr); -f follows it while it runs.
    Logs(LogsArgs),
    /// Kill jobs: pending tasks never start, running ones get SIGTERM then SIGKILL.
    Kill(JobsList),
    /// Give every task that failed, timed out or was lost a new attempt.
    Retry(JobsList),
    /// Hold jobs: their tasks that have not started stay pending until `gaffer release`
    /// (running ones go on). `gaffer submit --hold` submits a job held.
    Hold(JobsList),
    /// Release held jobs: their pending tasks may start.
    Release(JobsList),
    /// Accounting, like sacct: wait, run and CPU time, peak memory, exit code and nodes of the
    /// jobs submitted in a time range (default: the last 24 hours), per job or per task.
    History(HistoryArgs),
    /// Wait for jobs to finish; exit status 0 only if every task succeeded (see --help).
    Wait(WaitArgs),
    /// Delete finished jobs and their history.
    Rm(RmArgs),
    /// Download the output files of a job.
    Output(OutputArgs),
    /// List worker nodes.
    Nodes,
    /// List the servers of an HA cluster (--store etcd), the leader and its term.
    Servers,
    /// Run a command inside a running task's container (its namespaces, cgroup, user and
    /// environment), like docker exec: `gaffer exec JOB [--task N] -- CMD [ARGS...]`. With a
    /// terminal on stdin it gets a terminal too. Exit status: the command's.
    Exec(ExecArgs),
    /// Print state transitions (-f to follow them live).
    Events(EventsArgs),
    /// Offline maintenance of a store: snapshot the whole state to a file, restore it.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print a shell completion script: `gaffer completions bash > /etc/bash_completion.d/gaffer`,
    /// `gaffer completions zsh > ~/.zfunc/_gaffer`, `gaffer completions fish >
    /// ~/.config/fish/completions/gaffer.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Internal: supervise one task attempt (started by the agent).
    #[command(hide = true)]
    Shim {
        /// Attempt directory.
        dir: PathBuf,
    },
}

/// `gaffer dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for the state database, logs and outputs.
    #[arg(long, default_value = ".gaffer")]
    pub data_dir: PathBuf,
    /// Address to serve the API and UI on.
    #[arg(long, default_value = "127.0.0.1:6464")]
    pub listen: SocketAddr,
    /// CPUs the local agent offers (default: all).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory the local agent offers, e.g. 8G (default: all).
    #[arg(long, value_parser = size)]
    pub memory: Option<ByteSize>,
    /// The containers' network (`--network bridge`): the node's subnet comes from it.
    #[arg(long, default_value = gaffer_server::core::DEFAULT_CLUSTER_CIDR, value_parser = cidr)]
    pub cluster_cidr: gaffer_net::ipam::Cidr,
    #[command(flatten)]
    pub bridge: BridgeArgs,
    /// Let tasks mount this host directory and what is under it (--mount; repeatable).
    #[arg(long = "allow-mount", value_name = "DIR")]
    pub allow_mounts: Vec<PathBuf>,
}

/// The bridge network flags of `gaffer agent` and `gaffer dev`.
#[derive(Debug, Args)]
pub struct BridgeArgs {
    /// Name of the Linux bridge of the `bridge` container network (created when the first
    /// bridge task starts).
    #[arg(long, default_value = "gaffer0")]
    pub bridge: String,
    /// Offer no `bridge` network on this node (tasks asking for one go elsewhere).
    #[arg(long)]
    pub no_bridge: bool,
}

pub(crate) fn port_spec(s: &str) -> Result<gaffer_api::ports::PortSpec, String> {
    s.parse()
}

fn cidr(s: &str) -> Result<gaffer_net::ipam::Cidr, String> {
    s.parse()
        .map_err(|e: gaffer_net::ipam::CidrError| e.to_string())
}

pub(crate) fn size(s: &str) -> Result<ByteSize, String> {
    parse_size(s)
}

pub(crate) fn duration(s: &str) -> Result<DurationSpec, String> {
    parse_duration(s)
}

pub(crate) fn env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` must look like NAME=VALUE")),
    }
}

/// `gaffer server`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  gaffer server --data-dir /var/lib/gaffer --listen 0.0.0.0:6464 --token-file api.token --join-token-file join.token\n\nHA (run on three hosts; one is elected leader, the others forward to it):\n  gaffer server --store etcd --etcd-endpoints http://e1:2379,http://e2:2379,http://e3:2379 \\\n      --listen 0.0.0.0:6464 --advertise http://$(hostname):6464\n  gaffer servers            # members, leader and term\n  gaffer agent --server http://s1:6464,http://s2:6464,http://s3:6464"
)]
pub struct ServerArgs {
    /// Directory for the state database and the outputs copied from agents.
    #[arg(long, default_value = ".gaffer-server")]
    pub data_dir: PathBuf,
    /// Address to serve the API, UI and agent endpoint on.
    #[arg(long, default_value = "127.0.0.1:6464")]
    pub listen: SocketAddr,
    /// File holding the API token clients must present (GAFFER_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// File holding the token agents must present to join.
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
    /// A node silent this long is declared down and its tasks lost.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub heartbeat_timeout: DurationSpec,
    /// Lost attempts per task (node down, supervisor gone) that do not consume its retries.
    #[arg(long, default_value_t = 3)]
    pub max_lost: u32,
    /// Default placement strategy: most_free_memory, binpack or spread.
    #[arg(long, default_value = "most_free_memory")]
    pub strategy: gaffer_api::Placement,
    /// The containers' network (`--network bridge`): every node gets a /24 of it, kept for
    /// good, and nodes route each other's subnets.
    #[arg(long, default_value = gaffer_server::core::DEFAULT_CLUSTER_CIDR, value_parser = cidr)]
    pub cluster_cidr: gaffer_net::ipam::Cidr,
    /// Let tasks map host ports below 1024 (`--port 80:80`).
    #[arg(long)]
    pub allow_privileged_ports: bool,
    /// Shared directory (NFS, GlusterFS, CephFS) every agent also writes its attempts into.
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Where the state lives.
    #[command(flatten)]
    pub store: StoreArgs,
    /// With --store etcd: the URL other servers, agents and clients reach this server at
    /// (e.g. http://10.0.0.1:6464); followers send the leader's URL to agents and forward
    /// API calls to it.
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
    /// With --store etcd: TTL of this server's etcd lease. A dead leader is replaced after at
    /// most this long; a leader that cannot renew its lease within it steps down.
    #[arg(long, value_parser = duration, default_value = "3s")]
    pub lease_ttl: DurationSpec,
}

/// Which store holds the state, and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// sqlite: one server, state in <data-dir>/state.db. etcd: HA, several servers share the
    /// state in etcd and elect a leader.
    #[arg(long = "store", value_enum, default_value_t = StoreKind::Sqlite)]
    pub kind: StoreKind,
    /// etcd endpoints, comma-separated (http://host:2379,...).
    #[arg(
        long,
        value_delimiter = ',',
        env = "GAFFER_ETCD_ENDPOINTS",
        value_name = "URL,..."
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix in etcd: servers with the same prefix form one gaffer cluster, so several
    /// clusters can share one etcd.
    #[arg(long, default_value = "gaffer", value_name = "PREFIX")]
    pub etcd_prefix: String,
}

/// Store backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// A SQLite file in the data directory (the default; one server).
    Sqlite,
    /// An etcd cluster (HA: several servers, one leader).
    Etcd,
}

fn label_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = env_pair(s)?;
    if !gaffer_api::spec::valid_label(&k) {
        return Err(format!(
            "label name `{k}` may hold only letters, digits, `-`, `_`, `.`, `/`"
        ));
    }
    Ok((k, v))
}

/// `gaffer agent`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  gaffer agent --server http://10.0.0.1:6464 --name n1 --labels zone=a,gpu=0 --allow-host-tasks\n  \
gaffer agent image import tools tools.tar --data-dir /var/lib/gaffer-agent",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct AgentArgs {
    /// Tools for this machine's agent instead of running one.
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    /// Server URL(s), tried in turn (comma-separated).
    #[arg(
        long,
        required_unless_present = "cleanup_network",
        value_delimiter = ','
    )]
    pub server: Vec<String>,
    /// Node name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Directory for attempt logs, outputs and the agent's journal.
    #[arg(long, default_value = ".gaffer-agent")]
    pub data_dir: PathBuf,
    /// Labels for task constraints, NAME=VALUE (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = label_pair)]
    pub labels: Vec<(String, String)>,
    /// CPUs to offer (default: all).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory to offer, e.g. 8G (default: all).
    #[arg(long, value_parser = size)]
    pub memory: Option<ByteSize>,
    /// Run tasks without an image as plain host processes.
    #[arg(long)]
    pub allow_host_tasks: bool,
    /// File holding the cluster's join token.
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
    /// Shared directory to write attempts into (as `<dir>/<node name>`), as the server's --storage-dir.
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's TLS certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    #[command(flatten)]
    pub bridge: BridgeArgs,
    /// Let tasks mount this host directory and what is under it (`gaffer submit --mount`;
    /// repeatable). Nothing is mountable without it.
    #[arg(long = "allow-mount", value_name = "DIR")]
    pub allow_mounts: Vec<PathBuf>,
    /// Remove everything of the bridge network on this machine (attempt namespaces and veths
    /// of this --data-dir, the bridge, routes to other nodes, the `inet gaffer` nftables table)
    /// and exit. Run it with the agent stopped.
    #[arg(long)]
    pub cleanup_network: bool,
}

/// `gaffer node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Stop placing new tasks on a node.
    Drain {
        /// Node name.
        node: String,
        /// Also move its running tasks elsewhere (they are killed and re-queued).
        #[arg(long)]
        migrate: bool,
    },
    /// Place tasks on a drained node again.
    Enable {
        /// Node name.
        node: String,
    },
}

/// `gaffer jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state: pending, running, succeeded, failed, killed.
    #[arg(long)]
    pub state: Option<String>,
    /// Only jobs whose name contains this.
    #[arg(long)]
    pub name: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only jobs older than this id (for paging).
    #[arg(long)]
    pub before: Option<String>,
}

/// `gaffer status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Job id.
    pub job: String,
    /// Show tasks from this index.
    #[arg(long, default_value_t = 0)]
    pub tasks_from: u32,
    /// Show at most this many tasks.
    #[arg(long, default_value_t = 100)]
    pub tasks_limit: u32,
    /// Print only the batch script stored with the job (to edit and submit it again).
    #[arg(long)]
    pub script: bool,
}

/// `gaffer logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Job id, or JOB.TASK (the form of GAFFER_TASK_ID, e.g. j-000003.2).
    pub job: String,
    /// Task index. Without it, a job of several tasks prints every task's output that has
    /// any, each line prefixed with `[TASK] `, in task order.
    #[arg(long)]
    pub task: Option<u32>,
    /// Attempt number (default: the latest).
    #[arg(long)]
    pub attempt: Option<u32>,
    /// Show stderr instead of stdout.
    #[arg(long)]
    pub stderr: bool,
    /// Keep printing output while the task runs.
    #[arg(short, long)]
    pub follow: bool,
}

/// Job ids.
#[derive(Debug, Args)]
pub struct JobsList {
    /// Job ids.
    #[arg(required = true)]
    pub jobs: Vec<String>,
}

/// `gaffer wait`.
#[derive(Debug, Args)]
#[command(after_help = WAIT_EXIT)]
pub struct WaitArgs {
    /// Job ids.
    #[arg(required = true)]
    pub jobs: Vec<String>,
    /// Give up after this long (exit status 124).
    #[arg(long, value_parser = duration)]
    pub timeout: Option<DurationSpec>,
}

/// The exit statuses of `gaffer wait` and `gaffer submit --wait`.
pub const WAIT_EXIT: &str = "Exit status:\n  0    every job succeeded\n  1    a job failed, timed out, was killed or could not start (dependency_failed)\n  2    bad usage\n  3    no answer: the server cannot be reached, or a job does not exist\n  124  --timeout passed before the jobs finished";

/// `gaffer rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Job ids.
    #[arg(required = true)]
    pub jobs: Vec<String>,
    /// Kill and delete jobs that are still active.
    #[arg(long)]
    pub force: bool,
}

/// `gaffer output`.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Job id.
    pub job: String,
    /// Only this task.
    #[arg(long)]
    pub task: Option<u32>,
    /// Directory to write into (default: the current one).
    #[arg(long, default_value = ".")]
    pub dest: PathBuf,
}

/// `gaffer events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events.
    #[arg(short, long)]
    pub follow: bool,
    /// Only this job's events.
    #[arg(long)]
    pub job: Option<String>,
    /// Start after this event id (default: from the beginning without -f, only new ones with -f).
    #[arg(long)]
    pub after: Option<u64>,
}

/// `gaffer admin ...`: works on a store directly, not through a server.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Write the whole state of a store (jobs, tasks, attempts, events, id counters,
    /// idempotency keys) to a snapshot file.
    #[command(
        after_help = "The snapshot is JSON lines: a header, one record per line, and an end record \
with counts and a checksum. It is written to a temporary file next to FILE and renamed when \
complete. Logs and output files stay in the data directories; only the store is copied.\n\n\
With --store sqlite the data directory is locked: the snapshot refuses while a server or \
`gaffer dev` uses it. With --store etcd, stop every server of the cluster first: the snapshot \
refuses while one of them is leader, unless --force (then it is refused if the store changed \
meanwhile, but may otherwise mix two moments).\n\n\
Examples:\n  gaffer admin snapshot --data-dir /var/lib/gaffer state.snap\n  \
gaffer admin snapshot --data-dir .gaffer - | zstd > state.snap.zst\n  \
gaffer admin snapshot --store etcd --etcd-endpoints http://e1:2379 state.snap"
    )]
    Snapshot(SnapshotArgs),
    /// Load a snapshot into an empty store: SQLite or etcd, whichever it was taken from.
    #[command(
        after_help = "The whole file is checked (every line, the counts and the checksum) \
before anything is written. The destination must be empty: restore never merges into an \
existing state (move <data-dir>/state.db away, or pick a new --etcd-prefix). Rows are \
committed a few hundred jobs at a time; if a restore fails half way, empty the destination \
before trying again. Ids continue from the snapshot's counters.\n\n\
With --store sqlite the data directory is locked, so a restore refuses while a server uses \
it. With --store etcd, stop every server of the cluster first: writes are refused while \
one of them is leader.\n\n\
Examples:\n  gaffer admin restore --data-dir /var/lib/gaffer state.snap\n  \
zstd -dc state.snap.zst | gaffer admin restore --store etcd --etcd-endpoints http://e1:2379 -"
    )]
    Restore(RestoreArgs),
}

/// The store `gaffer admin` works on.
#[derive(Debug, Args)]
pub struct AdminStoreArgs {
    /// With --store sqlite: the data directory holding state.db (`gaffer server` uses
    /// .gaffer-server, `gaffer dev` uses .gaffer).
    #[arg(long, default_value = ".gaffer-server")]
    pub data_dir: PathBuf,
    /// Where the state lives.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `gaffer admin snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// File to write (`-`: standard output).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// With --store etcd: take the snapshot although a server leads the cluster (it is still
    /// refused if the state changes while it is taken).
    #[arg(long)]
    pub force: bool,
    /// The store to read.
    #[command(flatten)]
    pub store: AdminStoreArgs,
}

/// `gaffer admin restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot to read (`-`: standard input).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The store to fill; it must be empty.
    #[command(flatten)]
    pub store: AdminStoreArgs,
}
