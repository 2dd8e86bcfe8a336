//! The flags of `gaffer history` and `gaffer exec` (run in [`crate::commands`]).

use clap::Args;

/// `gaffer exec`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  gaffer exec j-000042 -- sh              # a shell in task 0's container\n  gaffer exec j-000042 --task 3 -- cat /etc/hosts\n  echo data | gaffer exec j-000042 -T -- sh -c 'cat > /work/in'"
)]
pub struct ExecArgs {
    /// Job id.
    pub job: String,
    /// Task index (its running attempt).
    #[arg(long, default_value_t = 0)]
    pub task: u32,
    /// Give the command a terminal (default: when stdin and stdout are one).
    #[arg(short = 't', long, conflicts_with = "no_tty")]
    pub tty: bool,
    /// Run it on pipes, even from a terminal.
    #[arg(short = 'T', long)]
    pub no_tty: bool,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `gaffer history`.
#[derive(Debug, Args)]
#[command(
    after_help = "Columns: job, task, name, state, tasks, attempts, submitted, started, ended, wait, run, cpu, maxrss, exit, nodes.\n\nExamples:\n  gaffer history --since 2h\n  gaffer history --since 2026-12-01 --until 2026-12-02 --tasks -o csv > usage.csv\n  gaffer history --columns job,name,run,cpu,maxrss j-000042"
)]
pub struct HistoryArgs {
    /// Only these jobs (then --since and --until do not apply).
    pub jobs: Vec<String>,
    /// Jobs submitted since: a time ago (30m, 2h, 7d) or a UTC date or time (2026-12-01,
    /// 2026-12-01T10:00:00). Default: 24h.
    #[arg(long)]
    pub since: Option<String>,
    /// Jobs submitted until (same forms as --since). Default: now.
    #[arg(long)]
    pub until: Option<String>,
    /// One row per task that ran, instead of per job.
    #[arg(long)]
    pub tasks: bool,
    /// Only jobs in this state (pending, running, succeeded, failed, killed).
    #[arg(long)]
    pub state: Option<String>,
    /// Only jobs whose name contains this.
    #[arg(long)]
    pub name: Option<String>,
    /// The columns to show, comma-separated (see below).
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Most jobs listed (newest first).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}
