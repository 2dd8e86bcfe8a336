//! Placement: queue order, strategies, reasons, and the node ledger.

use super::*;

#[test]
fn higher_priority_is_placed_first_and_fifo_within_a_priority() {
    let mut h = H::new();
    // Submitted before any node exists, so all four wait for the same round.
    let low = h.submit(job().cpus(1.0).priority(0).spec());
    let first = h.submit(job().cpus(1.0).priority(5).spec());
    let second = h.submit(job().cpus(1.0).priority(5).spec());
    let later_low = h.submit(job().cpus(1.0).priority(0).spec());
    h.take();

    h.connect(node("a", 1.0, 8)); // one slot
    let mut order = Vec::new();
    for _ in 0..4 {
        let starts = h.starts();
        assert_eq!(starts.len(), 1, "one CPU, one task at a time: {starts:?}");
        let (n, k) = starts[0].clone();
        order.push(k.job);
        h.run_to_exit(&n, k, 0);
    }
    assert_eq!(order, [first, second, low, later_low]);
    for id in order {
        assert_eq!(h.job(id).state, JobState::Succeeded);
    }
}

#[test]
fn most_free_memory_is_the_default_and_counts_reservations() {
    let mut h = H::new();
    h.connect(node("a", 8.0, 8));
    h.connect(node("b", 8.0, 16));
    h.take();
    let ids = h.submit_all(vec![
        job().memory_gib(6).spec(), // b: 16 -> 10
        job().memory_gib(6).spec(), // b: 10 -> 4
        job().memory_gib(6).spec(), // a: 8 -> 2
    ]);
    let starts = h.starts();
    let on: Vec<(&str, JobId)> = starts.iter().map(|(n, k)| (n.as_str(), k.job)).collect();
    assert_eq!(on, [("b", ids[0]), ("b", ids[1]), ("a", ids[2])]);
    assert_eq!(h.node_view("b").memory_allocated, 12 * GIB);
    assert_eq!(h.node_view("a").memory_allocated, 6 * GIB);
}

#[test]
fn binpack_fills_one_node_and_spread_alternates() {
    let mut h = H::new();
    h.connect(node("a", 8.0, 8));
    h.connect(node("b", 8.0, 8));
    h.take();
    h.submit(
        job()
            .array(3)
            .memory_gib(2)
            .strategy(Placement::Binpack)
            .spec(),
    );
    let nodes: Vec<String> = h.starts().into_iter().map(|(n, _)| n).collect();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n == &nodes[0]), "binpack: {nodes:?}");

    let mut h = H::new();
    h.connect(node("a", 8.0, 8));
    h.connect(node("b", 8.0, 8));
    h.take();
    h.submit(
        job()
            .array(4)
            .memory_gib(1)
            .strategy(Placement::Spread)
            .spec(),
    );
    let mut per = HashMap::new();
    for (n, _) in h.starts() {
        *per.entry(n).or_insert(0) += 1;
    }
    assert_eq!(per.get("a"), Some(&2), "spread: {per:?}");
    assert_eq!(per.get("b"), Some(&2), "spread: {per:?}");
}

#[test]
fn a_task_that_fits_nowhere_waits_with_a_reason_and_starts_when_room_frees() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let big = h.submit(job().cpus(2.0).spec());
    let (n, k) = h.starts().remove(0);
    let waiting = h.submit(job().cpus(3.0).spec());
    assert!(h.starts().is_empty());
    let why = h.reason(waiting).expect("a pending reason");
    assert_eq!(why, "no node has 3 free cpus and 0B free memory");
    assert_eq!(h.node_view("a").cpus_allocated, 2.0);

    h.run_to_exit(&n, k, 0);
    assert_eq!(h.job(big).state, JobState::Succeeded);
    let starts = h.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].1.job, waiting);
    assert_eq!(h.reason(waiting), None, "the reason is cleared once placed");
    assert_eq!(h.node_view("a").cpus_allocated, 3.0);
}

#[test]
fn constraints_pick_the_labelled_node() {
    let mut h = H::new();
    let mut b = node("b", 4.0, 4);
    b.labels.insert("zone".into(), "west".into());
    h.connect(node("a", 4.0, 64));
    h.connect(b);
    h.take();
    h.submit(job().constraint("zone", "west").spec());
    assert_eq!(h.starts()[0].0, "b");
    let nowhere = h.submit_anyway(job().constraint("zone", "east").spec());
    assert!(h.starts().is_empty());
    assert!(h.reason(nowhere).is_some());
}

#[test]
fn fractional_cpus_add_up_exactly_on_the_ledger() {
    let mut h = H::new();
    h.connect(node("a", 1.0, 8));
    h.take();
    h.submit(job().array(12).cpus(0.1).spec());
    let starts = h.starts();
    assert_eq!(starts.len(), 10, "ten tenths fill one CPU");
    assert_eq!(h.node_view("a").cpus_allocated, 1.0);
    for (n, k) in starts {
        h.run_to_exit(&n, k, 0);
    }
    // Each end frees a tenth that the next task takes at once.
    assert_eq!(h.starts().len(), 2);
    assert_eq!(h.node_view("a").cpus_allocated, 0.2);
}

#[test]
fn a_container_task_goes_only_where_its_image_is_or_the_catalog_has_it() {
    let mut h = H::new();
    let mut a = node("a", 4.0, 4);
    a.containers = true;
    let mut b = node("b", 4.0, 4);
    b.containers = true;
    b.images = vec!["busybox".into()];
    h.connect(a);
    h.connect(b);
    h.take();
    h.submit(job().image("busybox").spec());
    assert_eq!(h.starts()[0].0, "b");
    let other = h.submit_anyway(job().image("alpine").spec());
    assert!(h.starts().is_empty());
    assert!(h.reason(other).is_some());

    // Once the server's catalog has it, any node that runs containers can fetch it.
    let mut catalog = BTreeMap::new();
    catalog.insert(
        "alpine".to_string(),
        (format!("sha256:{}", "ab".repeat(32)), 42),
    );
    h.core.apply(Command::Images(catalog), h.now);
    h.round();
    let (n, k) = h.starts().remove(0);
    assert_eq!(
        n, "a",
        "most free memory among equal nodes, a has nothing reserved"
    );
    let a = h.attempts(k.job, 0);
    let msg = a[0].message.as_deref().unwrap_or_default();
    assert!(msg.contains("is fetching image `alpine`"), "{msg}");
}

#[test]
fn nothing_is_released_before_the_commit() {
    let mut h = H::new();
    h.connect(node("a", 4.0, 4));
    h.take();
    let (tx, mut rx) = oneshot::channel();
    h.core.apply(
        Command::Submit {
            specs: vec![job().spec()],
            idempotency_key: None,
            allow_unplaceable: false,
            reply: tx,
        },
        h.now,
    );
    h.core.tick(h.now);
    assert!(rx.try_recv().is_err());
    assert!(
        h.take().is_empty(),
        "no message, event or reason before the commit"
    );
    assert!(h.core.finish_round(h.now));
    let ids = rx.try_recv().expect("answered").expect("submitted");
    assert_eq!(h.starts().len(), 1);
    assert_eq!(h.job(ids[0]).state, JobState::Running);
}

#[test]
fn jobs_behind_a_full_cluster_say_why_they_wait() {
    let mut h = H::new();
    let early = h.submit(job().spec());
    assert_eq!(h.reason(early).as_deref(), Some("no node is ready"));
    h.connect(node("a", 1.0, 8));
    let (n, k) = h.starts().remove(0);
    assert_eq!(h.reason(early), None, "placed");
    // The only CPU is taken: the round stops before it reaches these.
    let late: Vec<JobId> = (0..3).map(|_| h.submit(job().spec())).collect();
    for id in &late {
        let why = h.reason(*id).expect("a reason");
        assert!(
            why.starts_with("every ready node is fully allocated"),
            "{why}"
        );
    }
    h.run_to_exit(&n, k, 0);
    assert_eq!(h.reason(late[0]), None, "the next one runs");
    assert!(h.reason(late[1]).is_some());
}
