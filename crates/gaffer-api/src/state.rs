//! Task and job states and the legal transitions between them.
//!
//! A task moves `pending → assigned → running → (succeeded | failed | timed_out | oom_killed |
//! killed | lost)`. `failed`, `timed_out`, `oom_killed` and `lost` go back to `pending` while
//! retries remain. The job state is derived from its tasks' counts ([`JobState::derive`]).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// State of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a node (or for its retry back-off).
    Pending,
    /// Placed on a node; the agent has been told to start it.
    Assigned,
    /// Its process is running.
    Running,
    /// Exited with status 0.
    Succeeded,
    /// Exited non-zero, was killed by a signal, or could not start.
    Failed,
    /// Exceeded its timeout.
    TimedOut,
    /// Exceeded its memory limit.
    OomKilled,
    /// Killed on request; final, never retried.
    Killed,
    /// Its node or supervisor disappeared.
    Lost,
    /// A job it depends on did not succeed; it never ran. Final.
    DependencyFailed,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 10] = [
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::TimedOut,
        TaskState::OomKilled,
        TaskState::Killed,
        TaskState::Lost,
        TaskState::DependencyFailed,
    ];

    /// The snake_case name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::TimedOut => "timed_out",
            TaskState::OomKilled => "oom_killed",
            TaskState::Killed => "killed",
            TaskState::Lost => "lost",
            TaskState::DependencyFailed => "dependency_failed",
        }
    }

    /// True for states an attempt ends in.
    pub fn is_end(self) -> bool {
        match self {
            TaskState::Pending | TaskState::Assigned | TaskState::Running => false,
            TaskState::Succeeded
            | TaskState::Failed
            | TaskState::TimedOut
            | TaskState::OomKilled
            | TaskState::Killed
            | TaskState::Lost
            | TaskState::DependencyFailed => true,
        }
    }

    /// True for end states that may be retried.
    pub fn is_retryable(self) -> bool {
        match self {
            TaskState::Failed | TaskState::TimedOut | TaskState::OomKilled | TaskState::Lost => {
                true
            }
            TaskState::Pending
            | TaskState::Assigned
            | TaskState::Running
            | TaskState::Succeeded
            | TaskState::Killed
            | TaskState::DependencyFailed => false,
        }
    }

    /// Whether `self → to` is a legal transition.
    pub fn can_become(self, to: TaskState) -> bool {
        use TaskState::*;
        match self {
            // Failed: a replica waiting for a retry when its cluster job fails.
            Pending => matches!(to, Assigned | Killed | DependencyFailed | Failed),
            Assigned => matches!(
                to,
                Running | Lost | Killed | Failed | Succeeded | TimedOut | OomKilled
            ),
            Running => to.is_end(),
            Failed | TimedOut | OomKilled | Lost => to == Pending,
            Succeeded | Killed | DependencyFailed => false,
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown task state `{s}`"))
    }
}

/// State of a job, derived from its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// No task has started yet.
    Pending,
    /// Some task is assigned or running, or some have ended and others wait.
    Running,
    /// Every task succeeded.
    Succeeded,
    /// Every task ended and at least one failed for good.
    Failed,
    /// The job was killed.
    Killed,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 5] = [
        JobState::Pending,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Killed,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Killed => "killed",
        }
    }

    /// True when no task of the job will run again.
    pub fn is_final(self) -> bool {
        match self {
            JobState::Pending | JobState::Running => false,
            JobState::Succeeded | JobState::Failed | JobState::Killed => true,
        }
    }

    /// Derives the job state from task counts.
    pub fn derive(c: &TaskCounts) -> JobState {
        let ended = c.succeeded + c.failed + c.killed;
        if ended >= c.total {
            if c.killed > 0 {
                JobState::Killed
            } else if c.failed > 0 {
                JobState::Failed
            } else {
                JobState::Succeeded
            }
        } else if c.running > 0 || ended > 0 {
            // Tasks that ran and wait out a retry back-off, with nothing running or ended,
            // leave their job pending (retrying), not running.
            JobState::Running
        } else {
            JobState::Pending
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!("unknown job state `{s}` (expected pending, running, succeeded, failed or killed)")
            })
    }
}

/// How many of a job's tasks are in each group of states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskCounts {
    /// All tasks.
    pub total: u32,
    /// Waiting to be placed (including retries in back-off).
    pub pending: u32,
    /// Assigned or running.
    pub running: u32,
    /// Succeeded.
    pub succeeded: u32,
    /// Failed for good (failed, timed out, OOM-killed or lost with no retry left).
    pub failed: u32,
    /// Killed.
    pub killed: u32,
    /// Tasks that have had at least one attempt.
    pub started: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
    }

    #[test]
    fn final_states_do_not_move_and_retryable_ones_go_back_to_pending() {
        assert!(!TaskState::Succeeded.can_become(TaskState::Pending));
        assert!(!TaskState::Killed.can_become(TaskState::Pending));
        assert!(TaskState::Failed.can_become(TaskState::Pending));
        assert!(!TaskState::Pending.can_become(TaskState::Running));
    }

    #[test]
    fn job_state_is_derived_from_counts() {
        let mut c = TaskCounts {
            total: 3,
            pending: 3,
            ..Default::default()
        };
        assert_eq!(JobState::derive(&c), JobState::Pending);
        c.pending = 2;
        c.running = 1;
        assert_eq!(JobState::derive(&c), JobState::Running);
        c = TaskCounts {
            total: 3,
            succeeded: 2,
            failed: 1,
            ..Default::default()
        };
        assert_eq!(JobState::derive(&c), JobState::Failed);
        c.killed = 1;
        c.failed = 0;
        assert_eq!(JobState::derive(&c), JobState::Killed);
        c = TaskCounts {
            total: 3,
            succeeded: 3,
            ..Default::default()
        };
        assert_eq!(JobState::derive(&c), JobState::Succeeded);
    }
}
