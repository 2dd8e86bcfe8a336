//! The flags of `gaffer submit` (run in [`crate::commands::submit`]).

use crate::cli::{duration, env_pair, port_spec, size};

/// `N` or `N%K`.
fn array_spec(s: &str) -> Result<(u32, Option<u32>), String> {
    let num = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("`{s}` must be N or N%K (numbers), e.g. 100 or 100%10"))
    };
    match s.split_once('%') {
        Some((n, k)) => Ok((num(n)?, Some(num(k)?))),
        None => Ok((num(s)?, None)),
    }
}
use clap::Args;
use gaffer_api::{ByteSize, DurationSpec};
use std::path::PathBuf;

/// `gaffer submit`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  gaffer submit --name hello -- echo hello world\n  gaffer submit job.sh ARG     # a batch script: its #GAFFER and #SBATCH lines are flags\n  gaffer submit --shell 'for i in 1 2 3; do echo $i; sleep 1; done'\n  gaffer submit --timeout 2s -- sleep 30\n  gaffer submit --retries 3 --shell 'exit 1'\n  gaffer submit --array 100 --shell 'echo $GAFFER_TASK_INDEX'\n  gaffer submit --output 'results/*.csv' --shell 'mkdir results; echo a,b > results/x.csv'\n  gaffer submit -f jobs.json      # one spec or a list; all or nothing"
)]
pub struct SubmitArgs {
    /// The program and its arguments (after `--`). A batch script (a file that starts with
    /// `#!`, or an executable text file) is stored with the job and run from that copy; the
    /// flags in its leading comment block apply first (`#GAFFER --cpus 2`, with this
    /// command's flag names, and the common `#SBATCH` options: --job-name, --array (A-B:S%K),
    /// --cpus-per-task, --mem, --mem-per-cpu, --time, --output, --error, --chdir,
    /// --dependency, --export, --hold), then the flags given here. A script with `#SBATCH`
    /// lines gets Slurm's variables (SLURM_JOB_ID, SLURM_ARRAY_TASK_ID, ...) and, unless it
    /// says --export, the submitting shell's environment, as under sbatch.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Run a script file in place as a plain command: no stored copy, no directives.
    #[arg(long)]
    pub no_script: bool,
    /// Refuse a script whose `#SBATCH` directives include options gaffer does not support
    /// (default: one warning lists them).
    #[arg(long)]
    pub strict: bool,
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
    /// Working directory; a relative one is taken from the directory you submit from (the
    /// node must see the same path: `gaffer dev`, or a shared filesystem). Default: a fresh
    /// directory per attempt.
    #[arg(long)]
    pub workdir: Option<String>,
    /// Also write each task's standard output to this file on its node, as Slurm's
    /// --output does: `%j` the job number, `%a` the array index, `%x` the job name; relative
    /// to --workdir (else the submit directory). Without --stderr, standard error goes there
    /// too. Host processes only; `gaffer logs` keeps working.
    #[arg(long, value_name = "PATH")]
    pub stdout: Option<String>,
    /// Also write each task's standard error to this file (patterns as for --stdout).
    #[arg(long, value_name = "PATH")]
    pub stderr: Option<String>,
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
    /// Number of tasks, N or N%K (at most K of them run at once); each gets
    /// GAFFER_TASK_INDEX (0 to N-1).
    #[arg(long, value_name = "N[%K]", value_parser = array_spec)]
    pub array: Option<(u32, Option<u32>)>,
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
    /// Start only after these jobs succeeded (comma-separated ids); fail if one of them fails
    /// (Slurm's afterok).
    #[arg(long = "after", value_delimiter = ',', value_name = "JOBS")]
    pub after: Vec<String>,
    /// Start only after these jobs ended, however they ended (afterany).
    #[arg(long = "after-any", value_delimiter = ',', value_name = "JOBS")]
    pub after_any: Vec<String>,
    /// Start only after these jobs ended without success; fail if one of them succeeds
    /// (afternotok: a clean-up or alert job).
    #[arg(long = "after-not-ok", value_delimiter = ',', value_name = "JOBS")]
    pub after_not_ok: Vec<String>,
    /// Start only once every earlier job of the same name has ended (Slurm's singleton).
    #[arg(long)]
    pub singleton: bool,
    /// Submit the job held: nothing starts until `gaffer release JOB`.
    #[arg(long)]
    pub hold: bool,
    /// Accept a job that no node of the cluster could run now (more CPUs or memory than the
    /// largest node, labels or an image no node has): it waits for such a node to join,
    /// instead of being refused.
    #[arg(long)]
    pub allow_unplaceable: bool,
    /// Print only the job id(s).
    #[arg(short, long)]
    pub quiet: bool,
    /// Wait for the job(s) to finish, as `gaffer wait` does: exit status 0 if all succeeded,
    /// 1 if one did not (or the submit was refused), 124 after `gaffer wait`'s --timeout.
    #[arg(long)]
    pub wait: bool,
    /// Idempotency key: resubmitting with the same key returns the first submission's ids.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}
