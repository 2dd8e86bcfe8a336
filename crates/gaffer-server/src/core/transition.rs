//! Task transitions: the one function that changes a task's state ([`move_task`], guarded by
//! [`TaskState::can_become`] and keeping the job's counts in step), and the pure rules of what
//! an ended attempt becomes ([`classify`], [`after_end`]).

use super::model::{ActiveJob, TaskRt};
use gaffer_api::batch::DepKind;
use gaffer_api::proto::{AttemptResult, EndKind};
use gaffer_api::spec::{DEFAULT_RETRY_BACKOFF, MAX_RETRY_BACKOFF};
use gaffer_api::state::TaskCounts;
use gaffer_api::{JobId, JobSpec, TaskState, UnixMs};
use std::collections::BTreeMap;

/// A task state change that the lifecycle does not allow: a bug in a rule, refused instead of
/// applied, so the task and its job's counts stay as they were.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {job}[{index}]: illegal transition {from} -> {to}")]
pub struct IllegalMove {
    /// Job.
    pub job: JobId,
    /// Task index.
    pub index: u32,
    /// State it is in.
    pub from: TaskState,
    /// State it was asked to move to.
    pub to: TaskState,
}

/// Moves task `index` of `job` to `to`, moving it between the job's `counts` buckets. Returns
/// the state it left.
pub(super) fn move_task(
    counts: &mut TaskCounts,
    job: JobId,
    index: u32,
    t: &mut TaskRt,
    to: TaskState,
) -> Result<TaskState, IllegalMove> {
    let from = t.state;
    check(job, index, from, to)?;
    let left = bucket(counts, from);
    *left = left.saturating_sub(1);
    *bucket(counts, to) += 1;
    t.state = to;
    Ok(from)
}

/// Whether task `index` of `job` may move `from` → `to`. A rule that changes more than the
/// task checks its moves first, so that a refusal leaves everything as it was.
pub(super) fn check(
    job: JobId,
    index: u32,
    from: TaskState,
    to: TaskState,
) -> Result<(), IllegalMove> {
    if from.can_become(to) {
        Ok(())
    } else {
        Err(IllegalMove {
            job,
            index,
            from,
            to,
        })
    }
}

/// Moves every pending task of a job that never had an attempt (so has no [`TaskRt`]) to the
/// end state `to`: all of `counts.pending` once the touched pending tasks have moved.
pub(super) fn end_untouched(counts: &mut TaskCounts, to: TaskState) -> u32 {
    let n = std::mem::take(&mut counts.pending);
    *bucket(counts, to) += n;
    n
}

/// The count a task in state `s` is part of.
fn bucket(c: &mut TaskCounts, s: TaskState) -> &mut u32 {
    match s {
        TaskState::Pending => &mut c.pending,
        TaskState::Assigned | TaskState::Running => &mut c.running,
        TaskState::Succeeded => &mut c.succeeded,
        TaskState::Failed
        | TaskState::TimedOut
        | TaskState::OomKilled
        | TaskState::Lost
        | TaskState::DependencyFailed => &mut c.failed,
        TaskState::Killed => &mut c.killed,
    }
}

/// Maps an attempt result to the task state it ends in, with a one-line reason.
pub(super) fn classify(r: &AttemptResult) -> (TaskState, String) {
    let detail = r.message.clone();
    match r.kind {
        EndKind::Exited => match (r.exit_code, r.signal) {
            (Some(0), _) => (TaskState::Succeeded, "exit code 0".into()),
            (Some(c), _) => (TaskState::Failed, format!("exit code {c}")),
            (None, Some(s)) => (TaskState::Failed, format!("killed by signal {s}")),
            (None, None) => (
                TaskState::Failed,
                detail.unwrap_or_else(|| "ended without a status".into()),
            ),
        },
        EndKind::TimedOut => (
            TaskState::TimedOut,
            detail.unwrap_or_else(|| "timed out".into()),
        ),
        EndKind::Killed => (
            TaskState::Killed,
            detail.unwrap_or_else(|| "killed on request".into()),
        ),
        EndKind::SpawnFailed => (
            TaskState::Failed,
            detail.unwrap_or_else(|| "could not start".into()),
        ),
        EndKind::OomKilled => (
            TaskState::OomKilled,
            detail.unwrap_or_else(|| "out of memory".into()),
        ),
        EndKind::Lost => (TaskState::Lost, detail.unwrap_or_else(|| "lost".into())),
    }
}

/// The result the core records for an attempt whose end it never heard of.
pub(super) fn lost_result(now: UnixMs, why: &str) -> AttemptResult {
    AttemptResult {
        kind: EndKind::Lost,
        exit_code: None,
        signal: None,
        started_at: None,
        ended_at: now,
        max_rss_bytes: None,
        cpu_secs: None,
        outputs: Vec::new(),
        message: Some(why.to_string()),
    }
}

/// What happens to a task after one of its attempts ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterEnd {
    /// Back to pending, placed again no earlier than `delay` ms from now. `free`: the attempt
    /// does not count against the retry budget (a lost attempt within the free allowance, or a
    /// move off a draining node).
    Retry { delay: UnixMs, free: bool },
    /// The end is final.
    Stay,
}

/// Inputs of [`after_end`] besides the spec.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ended {
    /// The state the attempt ended in.
    pub(super) end: TaskState,
    /// Attempts so far, including this one.
    pub(super) attempt: u32,
    /// Free (lost) attempts before this one.
    pub(super) lost: u32,
    /// The job was asked to die.
    pub(super) kill_requested: bool,
    /// The attempt was killed to move it off a draining node.
    pub(super) migrated: bool,
}

/// Whether and when an ended attempt is retried: a move off a draining node always is, at
/// once and free; a lost attempt is, at once and free, `max_lost` times; any other retryable
/// end uses the spec's `retries`, after `retry_backoff` doubled per counted attempt (capped at
/// [`MAX_RETRY_BACKOFF`]). A killed job is never retried.
pub(super) fn after_end(spec: &JobSpec, e: Ended, max_lost: u32) -> AfterEnd {
    if e.migrated && e.end == TaskState::Lost {
        return AfterEnd::Retry {
            delay: 0,
            free: true,
        };
    }
    if !e.end.is_retryable() || e.kill_requested {
        return AfterEnd::Stay;
    }
    if e.end == TaskState::Lost && e.lost < max_lost {
        return AfterEnd::Retry {
            delay: 0,
            free: true,
        };
    }
    let used = e.attempt.saturating_sub(e.lost); // attempts that counted against the budget
    if used > spec.retries {
        return AfterEnd::Stay;
    }
    let base = spec.retry_backoff.unwrap_or(DEFAULT_RETRY_BACKOFF).0;
    let shift = used.saturating_sub(1).min(20);
    AfterEnd::Retry {
        delay: base.saturating_mul(1 << shift).min(MAX_RETRY_BACKOFF.0),
        free: false,
    }
}

/// The pending reason of a job waiting for `deps`.
/// Why job `job`, with tasks left to start, is not in the placement queue; `None` when it is
/// (or has nothing left to start).
pub(super) fn idle_reason(job: &ActiveJob) -> Option<String> {
    let row = &job.row;
    let unstarted = !job.ready.is_empty() || row.next_fresh < row.counts.total;
    if row.kill_requested || !unstarted {
        return None;
    }
    if row.held {
        return Some(format!(
            "held: `gaffer release {}` lets its tasks start",
            row.id
        ));
    }
    if let Some(why) = waiting_reason(&job.waiting_on) {
        return Some(why);
    }
    if job.at_max_running() {
        return Some(format!(
            "{} of its tasks run, its limit (max_running): the others start as they end",
            row.counts.running
        ));
    }
    None
}

fn waiting_reason(deps: &BTreeMap<JobId, DepKind>) -> Option<String> {
    if deps.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    for kind in [DepKind::Ok, DepKind::Any, DepKind::NotOk] {
        let ids: Vec<String> = deps
            .iter()
            .filter(|(_, k)| **k == kind)
            .map(|(d, _)| d.to_string())
            .collect();
        if !ids.is_empty() {
            parts.push(format!("{} {}", ids.join(", "), kind.waits_for()));
        }
    }
    Some(format!("waiting for {}", parts.join(" and ")))
}
