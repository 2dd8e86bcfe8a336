//! Retries on the fake clock, the lost-attempt allowance, and the transition guard.

use super::super::model::TaskRt;
use super::super::transition::{after_end, move_task, AfterEnd, Ended};
use super::*;
use gaffer_api::state::TaskCounts;

#[test]
fn a_failed_task_retries_after_a_doubling_back_off() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let id = h.submit(job().retries(2, 1000).spec());
    let (n, k) = h.starts().remove(0);
    h.run_to_exit(&n, k, 7);
    assert_eq!(h.task(id, 0), TaskState::Pending);
    assert_eq!(
        h.job(id).state,
        JobState::Pending,
        "a job whose only task waits out a back-off is pending (retrying), not running"
    );
    let events = h.take();
    assert!(events.iter().any(|f| matches!(f, Fx::Event(e)
        if e.from.as_deref() == Some("failed") && e.to == "pending" && e.detail == "retry in 1s")));

    h.advance(999);
    assert!(h.starts().is_empty(), "not before the back-off");
    h.advance(1);
    let (n, k) = h.starts().remove(0);
    assert_eq!(k.attempt, 2);

    h.run_to_exit(&n, k, 7);
    h.advance(1999);
    assert!(h.starts().is_empty(), "the second back-off is 2s");
    h.advance(1);
    let (n, k) = h.starts().remove(0);
    assert_eq!(k.attempt, 3);

    h.run_to_exit(&n, k, 7);
    h.advance(10_000);
    assert!(h.starts().is_empty(), "two retries used");
    let row = h.job(id);
    assert_eq!(row.state, JobState::Failed);
    assert_eq!(row.counts.failed, 1);
    let attempts = h.attempts(id, 0);
    assert_eq!(attempts.len(), 3);
    assert!(attempts
        .iter()
        .all(|a| a.message.as_deref() == Some("exit code 7")));
}

#[test]
fn back_off_doubles_and_is_capped() {
    let spec = job().retries(40, 1000).spec();
    let ended = |attempt| Ended {
        end: TaskState::Failed,
        attempt,
        lost: 0,
        kill_requested: false,
        migrated: false,
    };
    let delay = |attempt| match after_end(&spec, ended(attempt), 3) {
        AfterEnd::Retry { delay, free } => {
            assert!(!free);
            delay
        }
        AfterEnd::Stay => panic!("retries left"),
    };
    assert_eq!(delay(1), 1_000);
    assert_eq!(delay(2), 2_000);
    assert_eq!(delay(5), 16_000);
    assert_eq!(delay(30), 600_000, "capped at 10 minutes");
    assert_eq!(after_end(&spec, ended(41), 3), AfterEnd::Stay);
    let killed = Ended {
        kill_requested: true,
        ..ended(1)
    };
    assert_eq!(after_end(&spec, killed, 3), AfterEnd::Stay);
    let ok = Ended {
        end: TaskState::Succeeded,
        ..ended(1)
    };
    assert_eq!(after_end(&spec, ok, 3), AfterEnd::Stay);
}

#[test]
fn lost_attempts_retry_at_once_within_the_allowance_then_count() {
    let mut h = H::with(CoreConfig {
        max_lost: 2,
        ..CoreConfig::default()
    });
    h.connect(node("a", 4.0, 4));
    h.take();
    let id = h.submit(job().spec()); // no retries
    for attempt in 1..=2 {
        let (n, k) = h.starts().remove(0);
        assert_eq!(k.attempt, attempt);
        h.ended(&n, k, EndKind::Lost, None);
        assert_eq!(
            h.attempts(id, 0)[attempt as usize - 1].state,
            TaskState::Lost
        );
    }
    // The third lost attempt is over the allowance and there are no retries.
    let (n, k) = h.starts().remove(0);
    h.ended(&n, k, EndKind::Lost, None);
    assert_eq!(h.task(id, 0), TaskState::Lost);
    assert_eq!(h.job(id).state, JobState::Failed);
}

#[test]
fn a_lost_attempt_beyond_the_allowance_uses_the_retry_budget() {
    let mut h = H::with(CoreConfig {
        max_lost: 1,
        ..CoreConfig::default()
    });
    h.connect(node("a", 4.0, 4));
    h.take();
    let id = h.submit(job().retries(1, 500).spec());
    let (n, k) = h.starts().remove(0);
    h.ended(&n, k, EndKind::Lost, None); // free
    let (n, k) = h.starts().remove(0);
    h.ended(&n, k, EndKind::Lost, None); // counts: retry 1 of 1, after 500 ms
    h.advance(499);
    assert!(h.starts().is_empty());
    h.advance(1);
    let (n, k) = h.starts().remove(0);
    assert_eq!(k.attempt, 3);
    h.ended(&n, k, EndKind::Lost, None);
    assert_eq!(h.job(id).state, JobState::Failed);
}

#[test]
fn the_guard_refuses_an_illegal_move_and_leaves_counts_alone() {
    let mut counts = TaskCounts {
        total: 1,
        succeeded: 1,
        ..Default::default()
    };
    let mut t = TaskRt::fresh();
    t.state = TaskState::Succeeded;
    let before = counts;
    let err = move_task(&mut counts, JobId(4), 0, &mut t, TaskState::Pending).unwrap_err();
    assert_eq!(
        err.to_string(),
        "task j-000004[0]: illegal transition succeeded -> pending"
    );
    assert_eq!((t.state, counts), (TaskState::Succeeded, before));

    // A legal move keeps the buckets in step.
    let mut counts = TaskCounts {
        total: 1,
        running: 1,
        ..Default::default()
    };
    t.state = TaskState::Running;
    assert_eq!(
        move_task(&mut counts, JobId(4), 0, &mut t, TaskState::OomKilled),
        Ok(TaskState::Running)
    );
    assert_eq!((counts.running, counts.failed), (0, 1));
    move_task(&mut counts, JobId(4), 0, &mut t, TaskState::Pending).unwrap();
    assert_eq!((counts.failed, counts.pending), (0, 1));
}

#[test]
fn a_repeated_or_stale_report_changes_nothing() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let id = h.submit(job().retries(1, 0).spec());
    let (n, k) = h.starts().remove(0);
    h.run_to_exit(&n, k, 1);
    h.round();
    let (n2, k2) = h.starts().remove(0);
    // The first attempt's end is reported again after the retry started.
    h.ended(&n, k, EndKind::Exited, Some(0));
    h.started(&n, k);
    assert_eq!(h.task(id, 0), TaskState::Assigned);
    let row = h.job(id);
    assert_eq!(row.state, JobState::Running);
    assert_eq!(
        (row.counts.running, row.counts.succeeded, row.counts.failed),
        (1, 0, 0)
    );
    assert_eq!(h.attempts(id, 0).len(), 2, "no attempt recorded twice");
    h.run_to_exit(&n2, k2, 0);
    assert_eq!(h.job(id).state, JobState::Succeeded);
    assert_eq!(h.attempts(id, 0).len(), 2);
}
