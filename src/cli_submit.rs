//! The flags of `gaffer submit` (run in [`crate::commands::submit`]).

use crate::cli::{duration, env_pair, port_spec, size};
use clap::Args;
use gaffer_api::{ByteSize, DurationSpec};
use std::path::PathBuf;

/// `gaffer submit`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  gaffer submit --name hello -- echo hello world\n  gaffer submit --shell 'for i in 1 2 3; do echo $i; sleep 1; done'\n  gaffer submit --timeout 2s -- sleep 30\n  gaffer submit --retries 3 --shell 'exit 1'\n  gaffer submit --array 100 --shell 'echo $GAFFER_TASK_INDEX'\n  gaffer submit --output 'results/*.csv' --shell 'mkdir results; echo a,b > results/x.csv'\n  gaffer submit -f jobs.json      # one spec or a list; all or nothing"
)]
pub struct SubmitArgs {
    /// The program and its arguments (after `--`).
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// A command line for /bin/sh -c instead of COMMAND.
    #[arg(long, conflicts_with = "command")]
    pub shell: Option<String>,
    /// Job spec file (JSON or TOML): one spec, a list, or {"jobs": [...]}.
    #[arg(short = 'f', long = "file", conflicts_with_all = ["command", "shell"])]
    pub file: Option<PathBuf>,
    /// Job name.
    #[arg(long)]
    pub name: Option<String>,
    /// Environment variable NAME=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = env_pair)]
    pub env: Vec<(String, String)>,
    /// Working directory (absolute); default: a fresh directory per attempt.
    #[arg(long)]
    pub workdir: Option<String>,
    /// Container image (runs as a host process without one).
    #[arg(long)]
    pub image: Option<String>,
    /// CPUs to reserve (default 1).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory to reserve, e.g. 256M or 2G.
    #[arg(long, value_parser = size)]
    pub memory: Option<ByteSize>,
    /// Process limit (containers).
    #[arg(long)]
    pub pids: Option<u32>,
    /// Run as UID[:GID] inside the container (default: the image's user, else 65534).
    #[arg(long)]
    pub user: Option<String>,
    /// Container network: bridge (an address of its own on the node's subnet, reachable from
    /// other nodes' containers), host or none (loopback only). Default: bridge on nodes that
    /// offer it (agents that run containers do, unless started with --no-bridge), else host.
    #[arg(long)]
    pub network: Option<gaffer_api::Network>,
    /// Map a port of a bridge container: HOST:CONTAINER[/tcp|/udp] answers on every address of
    /// its node and on 127.0.0.1 there; CONTAINER alone gets a free host port (shown by
    /// `gaffer status`). Repeatable; implies --network bridge.
    #[arg(long = "port", short = 'p', value_parser = port_spec)]
    pub ports: Vec<gaffer_api::ports::PortSpec>,
    /// Wall-clock limit per attempt, e.g. 30s, 5m, 2h.
    #[arg(long, value_parser = duration)]
    pub timeout: Option<DurationSpec>,
    /// Time between SIGTERM and SIGKILL (default 5s).
    #[arg(long, value_parser = duration)]
    pub kill_grace: Option<DurationSpec>,
    /// Retries after a failure or timeout (default 0).
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Delay before the first retry, doubling after (default 1s).
    #[arg(long, value_parser = duration)]
    pub retry_backoff: Option<DurationSpec>,
    /// Files to keep, as a glob relative to the working directory (repeatable).
    #[arg(long = "output")]
    pub outputs: Vec<String>,
    /// Number of tasks; each gets GAFFER_TASK_INDEX.
    #[arg(long)]
    pub array: Option<u32>,
    /// Run N replicas of one distributed program (2 to 1024; containers go on the bridge
    /// network): placed together or not at all (spread over nodes by default), started only
    /// once every replica has its address, replica i named NAME-i. Each gets GAFFER_REPLICA,
    /// GAFFER_REPLICAS, GAFFER_PEERS (the names, space-separated), GAFFER_PEER_ADDRS,
    /// GAFFER_HOSTFILE (a file of the names, one a line; addresses for host processes) and,
    /// in a container, an /etc/hosts listing every replica. Not with --array.
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// What a failed replica restarts: group (default: all replicas, together again; the
    /// failed one uses one of its --retries), replica (it alone, keeping its name; its peers
    /// keep running and learn its new address) or never (the job fails).
    #[arg(long, value_name = "POLICY", requires = "replicas")]
    pub restart: Option<gaffer_api::cluster::Restart>,
    /// One front door to the replicas, HOSTPORT:PORT: every node listens on HOSTPORT (its
    /// addresses and 127.0.0.1) and forwards each TCP connection to PORT of a ready replica;
    /// when readiness moves (a new leader), new connections follow within about 2 s.
    #[arg(long, value_name = "HOSTPORT:PORT", requires = "replicas")]
    pub service: Option<gaffer_api::cluster::Service>,
    /// Readiness check run by /bin/sh -c inside each replica every second: ready while it
    /// exits 0 (e.g. only the leader). Without it, every running replica is ready.
    #[arg(long, value_name = "CMD", requires = "replicas")]
    pub ready_cmd: Option<String>,
    /// Mount one directory of the job's own, read-write, at PATH in every replica. It
    /// outlives replica restarts and is removed with the job (`gaffer rm`). It lives under the
    /// agents' --storage-dir when they share one; otherwise all replicas run on one node.
    #[arg(long, value_name = "PATH", requires = "replicas")]
    pub shared_dir: Option<String>,
    /// Bind a host directory into the container, HOST:CONTAINER[:ro] (repeatable). Only on
    /// nodes whose agent allows HOST (gaffer agent --allow-mount DIR); a HOST that resolves
    /// outside those directories (a symlink) fails the attempt.
    #[arg(long = "mount", value_name = "HOST:CONTAINER[:ro]")]
    pub mounts: Vec<gaffer_api::mounts::MountSpec>,
    /// Priority: higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Run only on nodes with this label, NAME=VALUE (repeatable).
    #[arg(long = "constraint", value_parser = env_pair)]
    pub constraints: Vec<(String, String)>,
    /// Placement strategy: most_free_memory (default), binpack or spread.
    #[arg(long)]
    pub strategy: Option<gaffer_api::Placement>,
    /// Start only after these jobs succeeded (comma-separated ids); fail if one of them fails.
    #[arg(long = "after", value_delimiter = ',')]
    pub after: Vec<String>,
    /// Print only the job id(s).
    #[arg(short, long)]
    pub quiet: bool,
    /// Wait for the job(s) to finish, as `gaffer wait` does.
    #[arg(long)]
    pub wait: bool,
    /// Idempotency key: resubmitting with the same key returns the first submission's ids.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}
