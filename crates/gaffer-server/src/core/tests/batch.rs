//! Holds, the running-task limit, the dependency kinds and singletons.

use super::*;
use gaffer_api::batch::DepKind;

fn hold(h: &mut H, job: JobId, on: bool) -> Result<JobState, CoreError> {
    h.ask(|reply| Command::Hold {
        job,
        hold: on,
        reply,
    })
}

fn with_kind(mut spec: JobSpec, dep: JobId, kind: DepKind) -> JobSpec {
    match kind {
        DepKind::Ok => spec.depends_on.push(dep),
        DepKind::Any => spec.after_any.push(dep),
        DepKind::NotOk => spec.after_not_ok.push(dep),
    }
    spec
}

#[test]
fn a_held_job_starts_nothing_until_released_and_its_hold_survives_a_restart() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let mut spec = job().array(2).spec();
    spec.hold = true;
    let id = h.submit(spec);
    assert!(h.starts().is_empty());
    assert!(h.job(id).held);
    assert!(h.reason(id).is_some_and(|r| r.starts_with("held")));
    h.restart(CoreConfig::default());
    h.connect(node("a", 4.0, 4));
    h.take();
    assert!(h.starts().is_empty(), "still held after a restart");
    assert_eq!(hold(&mut h, id, false).unwrap(), JobState::Pending);
    let starts = h.starts();
    assert_eq!(starts.len(), 2);
    // Held while it runs: running tasks go on; a finished job keeps no hold.
    assert_eq!(hold(&mut h, id, true).unwrap(), JobState::Running);
    for (n, k) in starts {
        h.run_to_exit(&n, k, 0);
    }
    let row = h.job(id);
    assert_eq!(row.state, JobState::Succeeded);
    assert!(!row.held);
    assert!(matches!(
        hold(&mut h, id, true),
        Err(CoreError::Conflict(_))
    ));
}

#[test]
fn max_running_caps_the_tasks_placed_at_once_and_says_so() {
    let mut h = H::new();
    h.connect(node("a", 8.0, 8));
    h.take();
    let mut spec = job().array(5).spec();
    spec.max_running = Some(2);
    let id = h.submit(spec);
    let first = h.starts();
    assert_eq!(first.len(), 2);
    let why = h.reason(id).unwrap_or_default();
    assert!(why.contains("max_running"), "{why}");
    let (n, k) = first[0].clone();
    h.run_to_exit(&n, k, 0);
    assert_eq!(h.starts().len(), 1, "one ended, one more starts");
}

#[test]
fn dependency_kinds_decide_on_the_end_and_on_a_forced_removal() {
    let mut h = H::new();
    h.connect(node("a", 8.0, 8));
    h.take();
    let failing = h.submit(job().spec());
    let (n, k) = h.starts().remove(0);
    let any = h.submit(with_kind(job().spec(), failing, DepKind::Any));
    let not_ok = h.submit(with_kind(job().spec(), failing, DepKind::NotOk));
    let ok = h.submit(with_kind(job().spec(), failing, DepKind::Ok));
    assert!(h.starts().is_empty());
    h.run_to_exit(&n, k, 1);
    let started: Vec<JobId> = h.starts().into_iter().map(|(_, k)| k.job).collect();
    assert!(
        started.contains(&any) && started.contains(&not_ok),
        "{started:?}"
    );
    assert_eq!(h.job(ok).state, JobState::Failed, "afterok of a failure");

    // A running dependency removed by force ends `killed` for its dependents.
    let running = h.submit(job().spec());
    h.starts();
    let any = h.submit(with_kind(job().spec(), running, DepKind::Any));
    let ok = h.submit(with_kind(job().spec(), running, DepKind::Ok));
    h.ask(|reply| Command::Remove {
        job: running,
        force: true,
        reply,
    })
    .expect("removed");
    let started: Vec<JobId> = h.starts().into_iter().map(|(_, k)| k.job).collect();
    assert_eq!(started, vec![any], "afterany runs after a removal");
    assert_eq!(h.task(ok, 0), TaskState::DependencyFailed);
}

#[test]
fn a_singleton_waits_for_its_name_and_keeps_an_explicit_kind() {
    let mut h = H::new();
    h.connect(node("a", 8.0, 8));
    h.take();
    let first = h.submit(job().name("x").spec());
    let (n, k) = h.starts().remove(0);
    let mut spec = with_kind(job().name("x").spec(), first, DepKind::Ok);
    spec.singleton = true;
    let second = h.submit(spec);
    let mut plain = job().name("x").spec();
    plain.singleton = true;
    let third = h.submit(plain);
    assert!(h.starts().is_empty());
    let why = h.reason(third).unwrap_or_default();
    assert!(
        why.contains(&first.to_string()) && why.contains(&second.to_string()),
        "{why}"
    );
    // Its explicit afterok wins over the singleton's afterany: a failure fails it.
    h.run_to_exit(&n, k, 1);
    assert_eq!(h.job(second).state, JobState::Failed);
    let started: Vec<JobId> = h.starts().into_iter().map(|(_, k)| k.job).collect();
    assert_eq!(started, vec![third]);
}

#[test]
fn a_started_job_whose_dependency_was_removed_survives_a_restart() {
    let mut h = H::new();
    h.connect(node("a", 8.0, 8));
    h.take();
    let dep = h.submit(job().spec());
    let (n, k) = h.starts().remove(0);
    h.run_to_exit(&n, k, 0);
    let array = h.submit(job().array(2).cpus(8.0).after(dep).spec());
    assert_eq!(h.starts().len(), 1);
    h.ask(|reply| Command::Remove {
        job: dep,
        force: false,
        reply,
    })
    .expect("removed");
    h.restart(CoreConfig::default());
    assert_ne!(h.task(array, 1), TaskState::DependencyFailed);
    assert_eq!(h.job(array).state, JobState::Running);
}
