//! Unit tests of the scheduler.

use super::*;

const G: u64 = 1 << 30;

fn node(name: &str, cpus: f64, mem_gib: u64) -> NodeCapacity {
    NodeCapacity {
        name: name.into(),
        ready: true,
        allow_host_tasks: true,
        cpus_free: cpus,
        memory_free: mem_gib * G,
        tasks: 0,
        labels: BTreeMap::new(),
        images: HashSet::new(),
        bridge: false,
        ports: HashSet::new(),
        allow_mounts: Vec::new(),
    }
}

/// A scheduler with a fixed strategy, for short tests.
struct S(Scheduler, Strategy);
impl S {
    fn place(&mut self, d: Demand) -> Result<usize, Unfit> {
        self.0.place(&d, self.1)
    }
    fn exhausted(&self) -> bool {
        self.0.exhausted()
    }
}

fn sched(nodes: Vec<NodeCapacity>, s: Strategy) -> S {
    let totals = nodes.iter().map(|n| (n.cpus_free, n.memory_free)).collect();
    S(Scheduler::new(nodes, totals), s)
}

fn d(cpus: f64, mem_gib: u64) -> Demand {
    Demand {
        cpus,
        memory: mem_gib * G,
        host: true,
        constraints: BTreeMap::new(),
        image: None,
        bridge: false,
        ports: Vec::new(),
        node: None,
        mounts: Vec::new(),
    }
}

#[test]
fn a_gang_is_placed_whole_or_not_at_all() {
    let mut s = sched(vec![node("a", 2.0, 4), node("b", 1.0, 4)], Strategy::Spread);
    // 3 x 1 CPU fit only across both nodes: spread puts them on both.
    let mut got =
        s.0.place_gang(&d(1.0, 1), 3, Strategy::Spread, false)
            .unwrap();
    got.sort();
    assert_eq!(got, vec![0, 0, 1]);
    assert!(s.exhausted());

    // A gang that does not fit reserves nothing, and a single task of the same demand
    // still fits after it.
    let mut s = sched(vec![node("a", 2.0, 4), node("b", 1.0, 4)], Strategy::Spread);
    let before = s.0.nodes().to_vec();
    let miss =
        s.0.place_gang(&d(1.0, 1), 4, Strategy::Spread, false)
            .unwrap_err();
    assert_eq!(s.0.nodes(), &before[..], "nothing reserved");
    match &miss {
        Unfit::Gang { fit, ever, .. } => assert_eq!((*fit, *ever), (3, false)),
        other => panic!("{other:?}"),
    }
    let text = miss.to_string();
    assert!(
        text.starts_with("needs 4 × (1 CPU, 1GiB) at once; 3 fit now (no node has 1 free cpus"),
        "{text}"
    );
    assert!(text.ends_with("could never hold them all"), "{text}");
    assert!(s.place(d(1.0, 1)).is_ok());

    // Two gangs that each fit alone but not together: the second waits whole, and it
    // could fit once the first is gone.
    let mut s = sched(vec![node("a", 2.0, 4), node("b", 2.0, 4)], Strategy::Spread);
    assert!(s
        .0
        .place_gang(&d(1.0, 1), 3, Strategy::Spread, false)
        .is_ok());
    match s.0.place_gang(&d(1.0, 1), 3, Strategy::Spread, false) {
        Err(Unfit::Gang {
            fit: 1, ever: true, ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(s.0.nodes().iter().map(|n| n.tasks).sum::<u32>(), 3);
}

#[test]
fn a_gang_that_shares_a_directory_goes_on_one_node() {
    let mut s = sched(vec![node("a", 2.0, 4), node("b", 3.0, 4)], Strategy::Spread);
    let got =
        s.0.place_gang(&d(1.0, 1), 3, Strategy::Spread, true)
            .unwrap();
    assert_eq!(got, vec![1, 1, 1], "only b holds all three");
    let mut s = sched(vec![node("a", 2.0, 4), node("b", 2.0, 4)], Strategy::Spread);
    let miss =
        s.0.place_gang(&d(1.0, 1), 3, Strategy::Spread, true)
            .unwrap_err();
    assert!(
        matches!(
            miss,
            Unfit::Gang {
                fit: 2,
                ever: false,
                ..
            }
        ),
        "{miss:?}"
    );
    assert!(
        miss.to_string().contains("no single node has room"),
        "{miss}"
    );
    // Pinned to a node (where the shared directory is).
    let mut pinned = d(1.0, 1);
    pinned.node = Some("b".into());
    assert_eq!(
        s.0.place_gang(&pinned, 2, Strategy::Spread, true),
        Ok(vec![1, 1])
    );
    pinned.node = Some("gone".into());
    let miss =
        s.0.place_gang(&pinned, 1, Strategy::Spread, true)
            .unwrap_err();
    assert!(miss.to_string().contains("must run on node gone"), "{miss}");
}

#[test]
fn a_taken_host_port_sends_the_task_elsewhere_or_names_the_port() {
    let mut s = sched(vec![node("a", 4.0, 4), node("b", 4.0, 4)], Strategy::Spread);
    let mut want = d(1.0, 0);
    want.ports = vec![(18080, 0)];
    let first = s.place(want.clone()).unwrap();
    let second = s.place(want.clone()).unwrap();
    assert_ne!(first, second, "never the same host port twice on a node");
    assert_eq!(
        s.place(want.clone()),
        Err(Unfit::PortTaken {
            port: "18080/tcp".into()
        })
    );
    // UDP 18080 is another port.
    want.ports = vec![(18080, 1)];
    assert!(s.place(want).is_ok());
    let mut s = sched(vec![node("a", 4.0, 4)], Strategy::Spread);
    s.0.take_ports(0, &[(30000, 0)]);
    let mut want = d(1.0, 0);
    want.ports = vec![(30000, 0)];
    assert!(s.place(want).is_err());
}

#[test]
fn a_bridge_task_goes_only_to_a_bridge_node() {
    let mut b = node("b", 1.0, 1);
    b.bridge = true;
    let mut s = sched(vec![node("a", 8.0, 64), b], Strategy::MostFreeMemory);
    let mut want = d(1.0, 0);
    want.bridge = true;
    assert_eq!(s.place(want.clone()), Ok(1));
    // b is full now; a has room but no bridge network.
    assert_eq!(
        s.place(want.clone()),
        Err(Unfit::NoCapacity {
            cpus: 1.0,
            memory: 0,
            ever: true
        })
    );
    let mut s = sched(vec![node("a", 8.0, 64)], Strategy::MostFreeMemory);
    assert_eq!(s.place(want), Err(Unfit::NoBridge));
    assert!(Unfit::NoBridge.to_string().contains("bridge network"));
}

#[test]
fn container_tasks_go_only_to_nodes_with_their_image() {
    let mut a = node("a", 8.0, 16);
    a.allow_host_tasks = false;
    let mut b = node("b", 8.0, 4);
    b.images.insert("busybox".into());
    let mut s = sched(vec![a, b], Strategy::MostFreeMemory);
    let mut want = d(1.0, 1);
    want.host = false;
    want.image = Some("busybox".into());
    assert_eq!(s.place(want.clone()), Ok(1));
    want.image = Some("alpine".into());
    assert_eq!(
        s.place(want).unwrap_err(),
        Unfit::NoImage {
            image: "alpine".into()
        }
    );
}

#[test]
fn constraints_work_beyond_64_distinct_labels() {
    // 100 nodes with a unique label each: too many pairs for one mask word.
    let nodes: Vec<NodeCapacity> = (0..100)
        .map(|i| {
            let mut n = node(&format!("n{i}"), 4.0, 4);
            n.labels.insert("host".into(), format!("h{i}"));
            n
        })
        .collect();
    let mut s = sched(nodes, Strategy::MostFreeMemory);
    let mut want = d(1.0, 1);
    want.constraints.insert("host".into(), "h77".into());
    assert_eq!(s.place(want.clone()), Ok(77));
    want.constraints.insert("host".into(), "nope".into());
    assert!(matches!(s.place(want), Err(Unfit::NoMatchingNode { .. })));
}

#[test]
fn constraints_select_labelled_nodes_and_explain_misses() {
    let mut a = node("a", 8.0, 16);
    a.labels.insert("zone".into(), "a".into());
    let mut b = node("b", 8.0, 4);
    b.labels.insert("zone".into(), "b".into());
    let mut s = sched(vec![a, b], Strategy::MostFreeMemory);
    let mut want = d(1.0, 1);
    want.constraints.insert("zone".into(), "b".into());
    assert_eq!(s.place(want.clone()), Ok(1));
    want.constraints.insert("zone".into(), "c".into());
    assert_eq!(
        s.place(want.clone()).unwrap_err().to_string(),
        "no ready node has the labels zone=c"
    );
    // A failed constrained demand does not block an unconstrained one.
    assert_eq!(s.place(d(1.0, 1)), Ok(0));
}

#[test]
fn default_picks_most_free_memory_and_reserves() {
    let mut s = sched(
        vec![node("a", 8.0, 4), node("b", 8.0, 16), node("c", 8.0, 8)],
        Strategy::MostFreeMemory,
    );
    assert_eq!(s.place(d(1.0, 6)), Ok(1)); // b: 16 -> 10
    assert_eq!(s.place(d(1.0, 6)), Ok(1)); // b: 10 -> 4
    assert_eq!(s.place(d(1.0, 6)), Ok(2)); // c: 8 -> 2
    assert!(matches!(
        s.place(d(1.0, 6)),
        Err(Unfit::NoCapacity { ever: true, .. })
    ));
}

#[test]
fn binpack_fills_the_fullest_node_that_fits() {
    let mut s = sched(
        vec![node("a", 8.0, 4), node("b", 8.0, 16)],
        Strategy::Binpack,
    );
    assert_eq!(s.place(d(1.0, 2)), Ok(0));
    assert_eq!(s.place(d(1.0, 2)), Ok(0));
    assert_eq!(s.place(d(1.0, 2)), Ok(1));
}

#[test]
fn spread_balances_task_counts() {
    let mut s = sched(
        vec![node("a", 8.0, 4), node("b", 8.0, 16)],
        Strategy::Spread,
    );
    let picks: Vec<_> = (0..4).map(|_| s.place(d(1.0, 1)).unwrap()).collect();
    assert_eq!(picks, [1, 0, 1, 0]);
}

#[test]
fn cpus_limit_concurrency_and_reasons_are_specific() {
    let mut s = sched(vec![node("a", 2.0, 4)], Strategy::MostFreeMemory);
    assert!(s.place(d(1.0, 0)).is_ok());
    assert!(s.place(d(1.0, 0)).is_ok());
    assert!(s.exhausted());
    let e = s.place(d(1.0, 0)).unwrap_err();
    assert_eq!(e.to_string(), "no node has 1 free cpus and 0B free memory");
    let e = s.place(d(1.0, 64)).unwrap_err();
    assert!(
        e.to_string().contains("64GiB") && e.to_string().contains("no node is that large"),
        "{e}"
    );
    let mut s = sched(vec![], Strategy::MostFreeMemory);
    assert_eq!(s.place(d(1.0, 0)), Err(Unfit::NoReadyNode));
    let mut n = node("a", 2.0, 4);
    n.allow_host_tasks = false;
    let mut s = sched(vec![n], Strategy::MostFreeMemory);
    assert_eq!(s.place(d(1.0, 0)), Err(Unfit::NoHostNode));
}
