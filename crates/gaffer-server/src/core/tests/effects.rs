//! [`LiveEffects`]: what the server does with a round's effects, on a real [`Shared`].

use super::*;
use crate::shared::Shared;
use std::sync::Mutex;

fn event(job: JobId) -> EventView {
    EventView {
        id: 1,
        time: T0,
        job,
        task: None,
        attempt: None,
        from: None,
        to: "submitted".into(),
        detail: String::new(),
    }
}

#[test]
fn a_committed_round_releases_reasons_before_answers_then_messages_and_events() {
    let shared = Arc::new(Shared::new());
    let (pull_tx, mut pull_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut fx = LiveEffects::new(shared.clone(), pull_tx);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut events = shared.events.subscribe();
    fx.link("a", 7, tx);
    fx.unlink("a", 6); // a stale stream's close leaves the newer link alone
    let job = JobId(1);
    fx.send("a", ServerMsg::Reregister);
    fx.send("gone", ServerMsg::Reregister);
    fx.publish(event(job));
    fx.set_reason(job, Some("waiting".into()));
    fx.pull_outputs(("a".into(), key(job, 0, 1), vec!["out".into()]));
    let seen = Arc::new(Mutex::new(None));
    let (s, reasons) = (seen.clone(), shared.clone());
    fx.reply(Box::new(move |r| {
        let reason = reasons.reasons.read().unwrap().get(&job).cloned();
        *s.lock().unwrap() = Some((r.is_ok(), reason));
    }));

    // Nothing is out before the commit.
    assert!(rx.try_recv().is_err());
    assert!(events.try_recv().is_err());
    assert!(shared.reasons.read().unwrap().is_empty());
    assert!(seen.lock().unwrap().is_none());

    fx.committed(&Ok(()));
    assert_eq!(
        *seen.lock().unwrap(),
        Some((true, Some("waiting".to_string()))),
        "the caller is answered after its job's reason is visible"
    );
    assert!(matches!(rx.try_recv(), Ok(ServerMsg::Reregister)));
    assert!(
        rx.try_recv().is_err(),
        "one message for the linked node only"
    );
    assert_eq!(events.try_recv().unwrap().job, job);
    assert_eq!(pull_rx.try_recv().unwrap().2, ["out"]);

    fx.unlink("a", 7);
    fx.send("a", ServerMsg::Reregister);
    fx.committed(&Ok(()));
    assert!(rx.try_recv().is_err(), "unlinked: dropped");
}

#[test]
fn a_failed_commit_answers_with_the_error_and_drops_the_rest() {
    let shared = Arc::new(Shared::new());
    let (pull_tx, _pull_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut fx = LiveEffects::new(shared.clone(), pull_tx);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut events = shared.events.subscribe();
    fx.link("a", 1, tx);
    fx.send("a", ServerMsg::Reregister);
    fx.publish(event(JobId(1)));
    fx.set_reason(JobId(1), Some("waiting".into()));
    let (reply_tx, mut reply_rx) = oneshot::channel();
    fx.reply(Box::new(move |r| {
        let _ = reply_tx.send(r);
    }));
    fx.committed(&Err(CoreError::Unavailable("disk full".into())));
    assert!(matches!(reply_rx.try_recv(), Ok(Err(CoreError::Unavailable(m))) if m == "disk full"));
    assert!(rx.try_recv().is_err());
    assert!(events.try_recv().is_err());
    assert!(shared.reasons.read().unwrap().is_empty());
    // The next round starts clean.
    fx.committed(&Ok(()));
    assert!(rx.try_recv().is_err());
}

#[test]
fn gauges_carry_counters_and_the_node_table() {
    let mut h = H::new();
    h.connect(node("a", 2.0, 4));
    let id = h.submit(job().memory_gib(1).spec());
    let (n, k) = h.starts().remove(0);
    h.started(&n, k);
    let g = h.core.gauges(h.now);
    assert_eq!((g.jobs_submitted, g.tasks_started, g.running), (1, 1, 1));
    let shared = Arc::new(Shared::new());
    let (pull_tx, _pull_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut fx = LiveEffects::new(shared.clone(), pull_tx);
    fx.gauges(g);
    let m = &shared.metrics;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(m.jobs_submitted.load(Relaxed), 1);
    assert_eq!(m.running.load(Relaxed), 1);
    let nodes = shared.nodes.read().unwrap();
    assert_eq!(nodes[0].memory_allocated, GIB);
    h.ended(&n, k, EndKind::Exited, Some(0));
    assert_eq!(h.job(id).state, JobState::Succeeded);
    assert_eq!(h.core.gauges(h.now).tasks_finished, 1);
}
