//! Job rules: dependencies, kill (also racing an attempt's start), remove, retry on request.

use super::*;

#[test]
fn a_dependent_job_waits_for_its_dependency_to_succeed() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let first = h.submit(job().spec());
    let then = h.submit(job().after(first).spec());
    let starts = h.starts();
    assert_eq!(starts.len(), 1, "only the dependency starts: {starts:?}");
    assert_eq!(
        h.reason(then).as_deref(),
        Some(format!("waiting for {first} to succeed").as_str())
    );
    let (n, k) = starts[0].clone();
    h.run_to_exit(&n, k, 0);
    let starts = h.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].1.job, then);
    assert_eq!(h.reason(then), None);
}

#[test]
fn a_failed_dependency_fails_the_dependent_without_running_it() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let first = h.submit(job().spec());
    let then = h.submit(job().array(3).after(first).spec());
    let (n, k) = h.starts().remove(0);
    h.run_to_exit(&n, k, 1);
    assert_eq!(h.job(first).state, JobState::Failed);
    let row = h.job(then);
    assert_eq!(row.state, JobState::Failed);
    assert_eq!((row.counts.failed, row.counts.pending), (3, 0));
    assert_eq!(h.task(then, 2), TaskState::DependencyFailed);
    let events = h.take();
    assert!(
        events.iter().any(|f| matches!(f, Fx::Event(e)
            if e.job == then && e.to == "dependency_failed" && e.detail == format!("{first} ended failed"))),
        "{events:?}"
    );
    assert!(!events
        .iter()
        .any(|f| matches!(f, Fx::Send(_, ServerMsg::Start(l)) if l.key.job == then)));

    // Submitted after the dependency failed: fails at once.
    let late = h.submit(job().after(first).spec());
    assert_eq!(h.job(late).state, JobState::Failed);
    assert_eq!(h.task(late, 0), TaskState::DependencyFailed);
}

#[test]
fn an_unknown_dependency_is_refused_with_the_field() {
    let mut h = H::new();
    let err = h
        .ask(|reply| Command::Submit {
            specs: vec![job().after(JobId(99)).spec()],
            idempotency_key: None,
            allow_unplaceable: false,
            reply,
        })
        .unwrap_err();
    match err {
        CoreError::Invalid(f) => {
            assert_eq!(f[0].field, "depends_on[0]");
            assert_eq!(f[0].message, "job j-000099 not found");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn kill_racing_start_ends_killed_and_sends_the_kill() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let id = h.submit(job().spec());
    let (n, k) = h.starts().remove(0);
    // The kill arrives while the Start is on its way: the agent is told to kill...
    assert_eq!(h.kill(id), JobState::Running);
    let sent = h.sent();
    assert!(
        sent.iter()
            .any(|(to, m)| to == "a" && matches!(m, ServerMsg::Kill { key } if *key == k)),
        "{sent:?}"
    );
    // ...the start report still lands, then the attempt ends as killed.
    h.started(&n, k);
    assert_eq!(h.task(id, 0), TaskState::Running);
    h.ended(&n, k, EndKind::Killed, None);
    assert_eq!(h.job(id).state, JobState::Killed);
    assert_eq!(h.task(id, 0), TaskState::Killed);
    assert_eq!(h.node_view("a").running_tasks, 0);
}

#[test]
fn kill_after_a_clean_exit_keeps_the_success_and_a_failure_reads_killed() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let id = h.submit(job().array(2).retries(3, 1000).spec());
    let starts = h.starts();
    h.kill(id);
    h.ended(&starts[0].0, starts[0].1, EndKind::Exited, Some(0));
    h.ended(&starts[1].0, starts[1].1, EndKind::Exited, Some(1));
    let row = h.job(id);
    assert_eq!((row.counts.succeeded, row.counts.killed), (1, 1));
    assert_eq!(row.state, JobState::Killed);
    assert!(h.starts().is_empty(), "a killed job is never retried");
}

#[test]
fn kill_of_a_pending_array_kills_its_untouched_tasks() {
    let mut h = H::new();
    let id = h.submit(job().array(1000).spec());
    assert_eq!(h.kill(id), JobState::Killed);
    let row = h.job(id);
    assert_eq!((row.counts.killed, row.counts.pending), (1000, 0));
    assert_eq!(h.task(id, 999), TaskState::Killed);
    h.connect(node("a", 4.0, 4));
    assert!(h.starts().is_empty());
}

#[test]
fn force_remove_of_a_running_job_frees_its_reservation() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let id = h.submit(job().cpus(2.0).memory_gib(1).spec());
    h.starts();
    assert_eq!(h.node_view("a").memory_allocated, GIB);
    let r = h.ask(|reply| Command::Remove {
        job: id,
        force: false,
        reply,
    });
    assert!(matches!(r, Err(CoreError::Conflict(_))), "{r:?}");
    h.ask(|reply| Command::Remove {
        job: id,
        force: true,
        reply,
    })
    .expect("removed");
    let v = h.node_view("a");
    assert_eq!(
        (v.memory_allocated, v.cpus_allocated, v.running_tasks),
        (0, 0.0, 0)
    );
    assert!(h.store.get_job(id).unwrap().is_none());
    let sent = h.sent();
    assert!(sent
        .iter()
        .any(|(_, m)| matches!(m, ServerMsg::Purge { job } if *job == id)));
}

#[test]
fn retry_on_request_requeues_only_the_failed_tasks() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let id = h.submit(job().array(3).spec());
    let starts = h.starts();
    for (i, (n, k)) in starts.into_iter().enumerate() {
        h.run_to_exit(&n, k, if i == 1 { 3 } else { 0 });
    }
    assert_eq!(h.job(id).state, JobState::Failed);
    let n = h.ask(|reply| Command::Retry { job: id, reply }).unwrap();
    assert_eq!(n, 1);
    let starts = h.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!((starts[0].1.index, starts[0].1.attempt), (1, 2));
    h.run_to_exit(&starts[0].0, starts[0].1, 0);
    let row = h.job(id);
    assert_eq!(row.state, JobState::Succeeded);
    assert_eq!((row.counts.succeeded, row.counts.failed), (3, 0));
}

#[test]
fn retry_of_a_killed_job_is_refused() {
    let mut h = H::new();
    let id = h.submit(job().spec());
    h.kill(id);
    let r = h.ask(|reply| Command::Retry { job: id, reply });
    assert!(matches!(r, Err(CoreError::Conflict(m)) if m.contains("was killed")));
}

#[test]
fn a_spec_no_node_could_ever_run_is_refused_naming_the_field_and_the_largest_node() {
    let mut h = H::new();
    // Nothing is refused before any node registered.
    h.submit(job().cpus(1000.0).spec());
    let mut a = node("a", 4.0, 6);
    a.containers = true;
    a.images = vec!["busybox".into()];
    h.connect(a);
    h.connect(node("b", 2.0, 2));
    h.take();
    let refused = |h: &mut H, spec: JobSpec| -> (String, String) {
        match h.try_submit(vec![spec], false) {
            Err(CoreError::Invalid(f)) => (f[0].field.clone(), f[0].message.clone()),
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    let (field, msg) = refused(&mut h, job().cpus(1000.0).spec());
    assert_eq!(field, "resources.cpus");
    assert!(
        msg.starts_with("1000 CPUs: the largest node offers 4"),
        "{msg}"
    );
    let (field, msg) = refused(&mut h, job().memory_gib(7).spec());
    assert_eq!(field, "resources.memory");
    assert!(
        msg.starts_with("7GiB: the largest node offers 6GiB"),
        "{msg}"
    );
    assert!(msg.contains("--allow-unplaceable"), "{msg}");
    let (field, _) = refused(&mut h, job().constraint("zone", "mars").spec());
    assert_eq!(field, "constraints");
    let (field, msg) = refused(&mut h, job().image("alpine").spec());
    assert_eq!(field, "image");
    assert!(msg.contains("`alpine`"), "{msg}");
    // Container tasks go only to the container node (4 CPUs).
    let (field, _) = refused(
        &mut h,
        job().image("busybox").cpus(3.0).memory_gib(7).spec(),
    );
    assert_eq!(field, "resources.memory");
    let mut gang = job().image("busybox").cpus(1.0).spec();
    gang.replicas = Some(5);
    let (field, msg) = refused(&mut h, gang.clone());
    assert_eq!(field, "replicas");
    assert!(msg.contains("at most 4"), "{msg}");

    // What fits somewhere is accepted; so is what the submit asks to wait for.
    h.submit(job().memory_gib(6).spec());
    let waits = h.submit_anyway(job().memory_gib(7).spec());
    assert!(h.reason(waits).is_some_and(|r| r.contains("7GiB")));
    gang.replicas = Some(4);
    h.submit(gang);
}
