//! Node rules: drain and migrate, heartbeat loss and re-registration, a restarted core.

use super::*;

fn drain(h: &mut H, node: &str, migrate: bool) {
    let node = node.to_string();
    h.ask(|reply| Command::Drain {
        node,
        migrate,
        reply,
    })
    .expect("drained");
}

#[test]
fn a_drained_node_gets_no_new_tasks_until_enabled() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    drain(&mut h, "a", false);
    h.take();
    let id = h.submit(job().spec());
    assert!(h.starts().is_empty());
    assert_eq!(h.job(id).state, JobState::Pending);
    assert_eq!(h.node_view("a").state, "draining");
    h.ask(|reply| Command::Enable {
        node: "a".into(),
        reply,
    })
    .unwrap();
    assert_eq!(h.starts().len(), 1);
    let r = h.ask(|reply| Command::Drain {
        node: "nope".into(),
        migrate: false,
        reply,
    });
    assert!(matches!(r, Err(CoreError::NoSuchNode(n)) if n == "nope"));
}

#[test]
fn migrate_moves_running_tasks_without_using_their_retries() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 64));
    h.connect(node("b", 4.0, 4));
    h.take();
    let id = h.submit(job().spec()); // no retries
    let (n, k) = h.starts().remove(0);
    assert_eq!(n, "a");
    h.started(&n, k);
    drain(&mut h, "a", true);
    let sent = h.sent();
    assert!(
        sent.iter()
            .any(|(to, m)| to == "a" && matches!(m, ServerMsg::Kill { key } if *key == k)),
        "{sent:?}"
    );
    // The agent kills it; it is lost by the move and placed again, on b.
    h.ended(&n, k, EndKind::Killed, None);
    let attempts = h.attempts(id, 0);
    assert_eq!(attempts[0].state, TaskState::Lost);
    assert_eq!(
        attempts[0].message.as_deref(),
        Some("moved off draining node a")
    );
    let starts = h.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!((starts[0].0.as_str(), starts[0].1.attempt), ("b", 2));
    h.run_to_exit(&starts[0].0, starts[0].1, 0);
    assert_eq!(h.job(id).state, JobState::Succeeded);
}

#[test]
fn a_silent_node_goes_down_its_attempts_are_lost_and_it_must_reregister() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.connect(node("b", 4.0, 4));
    h.take();
    let id = h.submit(job().spec());
    let (n, k) = h.starts().remove(0);
    h.started(&n, k);
    let other = if n == "a" { "b" } else { "a" };

    // The other node keeps beating; this one falls silent past the 10 s timeout.
    h.now += 10_001;
    h.agent(other, heartbeat());
    let attempts = h.attempts(id, 0);
    assert_eq!(attempts[0].state, TaskState::Lost);
    assert!(
        attempts[0]
            .message
            .as_deref()
            .unwrap()
            .contains("stopped responding"),
        "{attempts:?}"
    );
    h.round(); // the lost attempt's retry is due at once: placed in the next round
    let fx = h.take();
    assert!(
        !fx.iter()
            .any(|f| matches!(f, Fx::Send(to, ServerMsg::Forget { .. }) if to == &n)),
        "the silent agent must keep reporting the attempt: {fx:?}"
    );
    let moved: Vec<_> = fx
        .iter()
        .filter_map(|f| match f {
            Fx::Send(to, ServerMsg::Start(l)) => Some((to.clone(), l.key)),
            _ => None,
        })
        .collect();
    assert_eq!(moved, [(other.to_string(), key(id, 0, 2))]);
    assert_eq!(h.node_view(&n).state, "down");

    // The silent agent speaks again: it is asked to register, and when it does with the old
    // attempt still running, that attempt is killed there.
    h.agent(&n, heartbeat());
    let sent = h.sent();
    assert!(sent
        .iter()
        .any(|(to, m)| to == &n && matches!(m, ServerMsg::Reregister)));
    h.connect_with(node(&n, 4.0, 4), vec![AttemptReport::Running { key: k }]);
    let sent = h.sent();
    assert!(
        sent.iter()
            .any(|(to, m)| to == &n && matches!(m, ServerMsg::Kill { key } if *key == k)),
        "{sent:?}"
    );
    assert_eq!(h.node_view(&n).state, "ready");
    assert_eq!(
        h.task(id, 0),
        TaskState::Assigned,
        "the new attempt is untouched"
    );
}

#[test]
fn a_restarted_core_reconciles_with_what_agents_report() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let id = h.submit(job().array(3).retries(0, 0).spec());
    let starts = h.starts();
    for (n, k) in &starts {
        h.started(n, *k);
    }
    h.restart(CoreConfig::default());
    // Known only from the store until its agent registers: down, holding the three attempts.
    h.round();
    let v = h.node_view("a");
    assert_eq!((v.state.as_str(), v.running_tasks), ("down", 3));

    // Task 0 still runs, task 1 ended while the server was away, task 2 the agent never heard of.
    let ended = AttemptReport::Ended {
        key: starts[1].1,
        result: AttemptResult {
            kind: EndKind::Exited,
            exit_code: Some(0),
            signal: None,
            started_at: Some(h.now),
            ended_at: h.now,
            max_rss_bytes: None,
            cpu_secs: None,
            outputs: Vec::new(),
            message: None,
        },
    };
    let running = AttemptReport::Running { key: starts[0].1 };
    h.connect_with(node("a", 4.0, 4), vec![running, ended]);
    let row = h.job(id);
    assert_eq!(
        (row.counts.running, row.counts.succeeded),
        (2, 1),
        "{:?}",
        row.counts
    );
    assert_eq!(h.task(id, 0), TaskState::Running);
    assert_eq!(h.task(id, 1), TaskState::Succeeded);
    // The free lost allowance retries task 2 at once.
    assert_eq!(h.attempts(id, 2)[0].state, TaskState::Lost);
    let starts2 = h.starts();
    assert_eq!(starts2.len(), 1);
    assert_eq!(starts2[0].1, key(id, 2, 2));
    let v = h.node_view("a");
    assert_eq!((v.state.as_str(), v.running_tasks), ("ready", 2));
}

#[test]
fn a_restarted_core_declares_attempts_lost_if_their_node_never_returns() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let id = h.submit(job().spec());
    let (n, k) = h.starts().remove(0);
    h.started(&n, k);
    h.restart(CoreConfig::default());
    // Ten seconds of grace for reconnecting on top of the heartbeat timeout.
    h.advance(10_000 + 10_000);
    assert_eq!(h.task(id, 0), TaskState::Running);
    h.advance(1);
    assert_eq!(h.attempts(id, 0)[0].state, TaskState::Lost);
    assert_eq!(
        h.task(id, 0),
        TaskState::Pending,
        "retried when a node comes"
    );
}

fn heartbeat() -> AgentMsg {
    AgentMsg::Heartbeat {
        memory_free: 0,
        images: Vec::new(),
        image_digests: Default::default(),
    }
}
