//! Cluster jobs: gang placement, the queue hold, the start barrier and the peers.

use super::*;

fn bridge_node(name: &str, cpus: f64) -> NodeInfo {
    NodeInfo {
        containers: true,
        bridge: true,
        images: vec!["busybox".into()],
        ..node(name, cpus, 8)
    }
}

fn gang(n: u32, cpus: f64) -> JobSpec {
    let mut spec = job().image("busybox").cpus(cpus).spec();
    spec.name = Some("cluster".into());
    spec.replicas = Some(n);
    spec
}

/// The Start messages released, as (node, launch).
fn launches(h: &mut H) -> Vec<(String, TaskLaunchBox)> {
    h.sent()
        .into_iter()
        .filter_map(|(to, m)| match m {
            ServerMsg::Start(l) => Some((to, l)),
            _ => None,
        })
        .collect()
}
type TaskLaunchBox = Box<gaffer_api::proto::TaskLaunch>;
type Peers = Vec<(String, String)>;

/// Lets [`placement::GANG_HOLD_MS`] pass, with heartbeats from `nodes` so they stay up.
fn pass_hold(h: &mut H, nodes: &[&str]) {
    let step = 5_000;
    for _ in 0..=placement::GANG_HOLD_MS / step {
        h.now += step;
        for n in nodes {
            h.agent(
                n,
                AgentMsg::Heartbeat {
                    memory_free: 8 * GIB,
                    images: vec!["busybox".into()],
                    image_digests: Default::default(),
                },
            );
        }
    }
}

fn env<'a>(l: &'a gaffer_api::proto::TaskLaunch, k: &str) -> &'a str {
    l.env
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{k} in {:?}", l.env))
}

#[test]
fn replicas_are_placed_together_and_start_once_all_have_addresses() {
    let mut h = H::new();
    h.connect(bridge_node("a", 2.0));
    h.connect(bridge_node("b", 1.0));
    h.take();
    let id = h.submit(gang(3, 1.0));
    let mut got = launches(&mut h);
    got.sort_by_key(|(_, l)| l.key.index);
    assert_eq!(got.len(), 3, "all three in one round");
    let mut nodes: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["a", "a", "b"],
        "spread over both nodes, as only both hold 3"
    );
    for (i, (_, l)) in got.iter().enumerate() {
        assert_eq!(l.replicas, Some(3));
        assert_eq!(l.network, Some(gaffer_api::Network::Bridge));
        assert_eq!(env(l, "GAFFER_REPLICA"), i.to_string());
        assert_eq!(env(l, "GAFFER_REPLICAS"), "3");
        assert_eq!(env(l, "GAFFER_PEERS"), "cluster-0 cluster-1 cluster-2");
        assert_eq!(env(l, "GAFFER_HOSTFILE"), "/etc/gaffer/hostfile");
    }

    // The barrier: nobody hears of peers until the last replica has its address.
    let prepared = |h: &mut H, (n, l): &(String, TaskLaunchBox), ip: &str| {
        h.agent(
            n,
            AgentMsg::Prepared {
                key: l.key,
                ip: ip.into(),
            },
        );
    };
    prepared(&mut h, &got[0], "10.88.0.2");
    prepared(&mut h, &got[1], "10.88.0.3");
    assert!(h.sent().is_empty(), "two of three prepared: nobody starts");
    prepared(&mut h, &got[2], "10.88.1.2");
    let peers: Vec<(String, AttemptKey, Peers)> = h
        .sent()
        .into_iter()
        .filter_map(|(to, m)| match m {
            ServerMsg::Peers { key, peers } => Some((to, key, peers)),
            _ => None,
        })
        .collect();
    assert_eq!(peers.len(), 3, "every replica is told");
    let want = vec![
        ("cluster-0".to_string(), "10.88.0.2".to_string()),
        ("cluster-1".to_string(), "10.88.0.3".to_string()),
        ("cluster-2".to_string(), "10.88.1.2".to_string()),
    ];
    for (to, key, p) in &peers {
        assert_eq!(p, &want);
        assert_eq!(to, &got[key.index as usize].0);
    }
    assert_eq!(
        h.task(id, 0),
        TaskState::Assigned,
        "running only once started"
    );
}

#[test]
fn a_gang_that_cannot_fit_reserves_nothing_and_small_tasks_still_run() {
    let mut h = H::new();
    h.connect(bridge_node("a", 2.0));
    h.connect(bridge_node("b", 1.0));
    h.take();
    let big = h.submit_anyway(gang(4, 1.0));
    assert!(h.starts().is_empty());
    let why = h.reason(big).unwrap();
    assert!(
        why.starts_with("needs 4 × (1 CPU, 0B) at once; 3 fit now")
            && why.ends_with("could never hold them all"),
        "{why}"
    );
    let small = h.submit(job().image("busybox").cpus(1.0).spec());
    assert_eq!(h.starts().len(), 1);
    // It never holds the queue: it could not fit even on empty nodes.
    pass_hold(&mut h, &["a", "b"]);
    let other = h.submit(job().image("busybox").cpus(1.0).spec());
    assert_eq!(h.starts().len(), 1);
    assert_eq!(h.task(small, 0), TaskState::Assigned);
    assert_eq!(h.task(other, 0), TaskState::Assigned);
}

#[test]
fn two_gangs_that_fit_only_apart_never_half_start_and_a_waiting_gang_holds_the_queue() {
    let mut h = H::new();
    h.connect(bridge_node("a", 2.0));
    h.connect(bridge_node("b", 2.0));
    h.take();
    let first = h.submit(gang(3, 1.0));
    let second = h.submit(gang(3, 1.0));
    let got = h.starts();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(_, k)| k.job == first));
    assert!(h.reason(second).unwrap().contains("1 fit now"));

    // Before the hold a small task takes the last CPU; after it, small tasks wait.
    let small = h.submit(job().image("busybox").cpus(1.0).spec());
    assert_eq!(h.starts().len(), 1);
    pass_hold(&mut h, &["a", "b"]);
    h.take();
    // One replica of the first gang ends: one CPU is free, which the second gang cannot use
    // and which the small task submitted now does not get either.
    let late = h.submit(job().image("busybox").cpus(1.0).spec());
    let end = |h: &mut H, i: u32| {
        let node = h.attempts(first, i)[0].node.clone();
        h.run_to_exit(&node, key(first, i, 1), 0);
    };
    end(&mut h, 0);
    assert!(h.starts().is_empty());
    assert!(h.reason(second).unwrap().contains("holding the queue"));
    assert!(
        h.reason(late)
            .unwrap()
            .contains("waiting behind cluster job"),
        "{:?}",
        h.reason(late)
    );
    end(&mut h, 1);
    end(&mut h, 2);
    let got = h.starts();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|(_, k)| k.job == second));
    assert_eq!(h.task(small, 0), TaskState::Assigned);
    assert_eq!(h.task(late, 0), TaskState::Pending);
}

/// Prepares and starts every attempt in `starts` (addresses 10.88.0.(10 + index)); returns
/// the messages that released.
fn run_all(h: &mut H, starts: &[(String, AttemptKey)]) -> Vec<(String, ServerMsg)> {
    for (n, k) in starts {
        h.agent(
            n,
            AgentMsg::Prepared {
                key: *k,
                ip: format!("10.88.0.{}", 10 + k.index),
            },
        );
    }
    let sent = h.sent();
    for (n, k) in starts {
        h.started(n, *k);
    }
    sent
}

fn kills(sent: &[(String, ServerMsg)]) -> Vec<AttemptKey> {
    let mut k: Vec<AttemptKey> = sent
        .iter()
        .filter_map(|(_, m)| match m {
            ServerMsg::Kill { key } => Some(*key),
            _ => None,
        })
        .collect();
    k.sort_by_key(|k| k.index);
    k
}

fn with(restart: Option<gaffer_api::cluster::Restart>, retries: u32) -> JobSpec {
    let mut spec = gang(3, 1.0);
    spec.restart = restart;
    spec.retries = retries;
    spec.retry_backoff = Some(DurationSpec(1_000));
    spec
}

#[test]
fn by_default_a_failed_replica_restarts_its_whole_group_and_fails_it_when_out_of_retries() {
    let mut h = H::new();
    h.connect(bridge_node("a", 4.0));
    h.take();
    let id = h.submit(with(None, 1));
    let first = h.starts();
    run_all(&mut h, &first);
    h.ended("a", key(id, 1, 1), EndKind::Exited, Some(1));
    let sent = h.sent();
    assert_eq!(
        kills(&sent),
        [key(id, 0, 1), key(id, 2, 1)],
        "its peers are stopped"
    );
    for i in [0, 2] {
        h.ended("a", key(id, i, 1), EndKind::Killed, None);
    }
    let a0 = &h.attempts(id, 0)[0];
    assert_eq!(a0.state, TaskState::Lost);
    assert_eq!(
        a0.message.as_deref(),
        Some("restarted with its group: replica 1 (cluster-1) failed")
    );
    assert!(
        h.starts().is_empty(),
        "the group waits for the failed one's back-off"
    );
    h.advance(1_000);
    let again = h.starts();
    let mut got: Vec<AttemptKey> = again.iter().map(|(_, k)| *k).collect();
    got.sort_by_key(|k| k.index);
    assert_eq!(
        got,
        [key(id, 0, 2), key(id, 1, 2), key(id, 2, 2)],
        "placed together"
    );
    assert_eq!(h.job(id).state, JobState::Running);

    // Replica 1 fails again with no retry left: the others are stopped and the job fails.
    run_all(&mut h, &again);
    h.ended("a", key(id, 1, 2), EndKind::Exited, Some(1));
    assert_eq!(kills(&h.sent()), [key(id, 0, 2), key(id, 2, 2)]);
    for i in [0, 2] {
        h.ended("a", key(id, i, 2), EndKind::Killed, None);
    }
    assert_eq!(h.job(id).state, JobState::Failed);
    let a2 = h.attempts(id, 2).pop().unwrap();
    assert_eq!(a2.state, TaskState::Failed);
    assert!(a2
        .message
        .unwrap()
        .starts_with("stopped: replica 1 (cluster-1) failed and is not restarted"),);
}

#[test]
fn restart_replica_restarts_it_alone_and_tells_every_peer_its_new_address() {
    let mut h = H::new();
    h.connect(bridge_node("a", 4.0));
    h.take();
    let id = h.submit(with(Some(gaffer_api::cluster::Restart::Replica), 1));
    let first = h.starts();
    run_all(&mut h, &first);
    h.ended("a", key(id, 2, 1), EndKind::Exited, Some(1));
    assert!(kills(&h.sent()).is_empty(), "its peers keep running");
    h.advance(1_000);
    let again = h.starts();
    assert_eq!(again, [("a".to_string(), key(id, 2, 2))]);
    h.agent(
        "a",
        AgentMsg::Prepared {
            key: key(id, 2, 2),
            ip: "10.88.0.99".into(),
        },
    );
    let mut told: Vec<(AttemptKey, String)> = h
        .sent()
        .into_iter()
        .filter_map(|(_, m)| match m {
            ServerMsg::Peers { key, peers } => Some((key, peers[2].1.clone())),
            _ => None,
        })
        .collect();
    told.sort_by_key(|(k, _)| k.index);
    assert_eq!(
        told,
        [
            (key(id, 0, 1), "10.88.0.99".to_string()),
            (key(id, 1, 1), "10.88.0.99".to_string()),
            (key(id, 2, 2), "10.88.0.99".to_string()),
        ]
    );
}

#[test]
fn restart_never_fails_the_job_at_the_first_failure() {
    let mut h = H::new();
    h.connect(bridge_node("a", 4.0));
    h.take();
    let id = h.submit(with(Some(gaffer_api::cluster::Restart::Never), 0));
    let first = h.starts();
    run_all(&mut h, &first);
    h.ended("a", key(id, 0, 1), EndKind::TimedOut, None);
    assert_eq!(kills(&h.sent()), [key(id, 1, 1), key(id, 2, 1)]);
    for i in [1, 2] {
        h.ended("a", key(id, i, 1), EndKind::Killed, None);
    }
    assert_eq!(h.job(id).state, JobState::Failed);
    h.advance(10_000);
    assert!(h.starts().is_empty());
}

/// The last Service message released for `node`: (backends, open).
fn service_of(sent: &[(String, ServerMsg)], node: &str) -> Option<(Vec<String>, bool)> {
    sent.iter()
        .filter_map(|(to, m)| match m {
            ServerMsg::Service {
                backends,
                open,
                host,
                ..
            } if to == node => {
                assert_eq!(*host, 12379);
                Some((backends.clone(), *open))
            }
            _ => None,
        })
        .next_back()
}

#[test]
fn every_node_forwards_the_service_to_the_ready_replicas() {
    let mut h = H::new();
    h.connect(bridge_node("a", 4.0));
    h.connect(bridge_node("b", 4.0));
    h.take();
    let mut spec = gang(2, 1.0);
    spec.service = Some("12379:2379".parse().unwrap());
    spec.ready_cmd = Some("test -f /work/leader".into());
    let id = h.submit(spec.clone());
    let first = h.starts();
    run_all(&mut h, &first);
    let node_of = |i: u32| first.iter().find(|(_, k)| k.index == i).unwrap().0.clone();
    let ready = |h: &mut H, i: u32, r: bool| {
        h.agent(
            &node_of(i),
            AgentMsg::Ready {
                key: key(id, i, 1),
                ready: r,
            },
        );
        h.sent()
    };
    let sent = ready(&mut h, 0, true);
    for n in ["a", "b"] {
        assert_eq!(
            service_of(&sent, n),
            Some((vec!["10.88.0.10:2379".to_string()], true)),
            "{n}"
        );
    }
    assert_eq!(
        h.attempts(id, 0)[0].ready,
        Some(true),
        "recorded for the API"
    );
    // The leader moves.
    ready(&mut h, 1, true);
    let sent = ready(&mut h, 0, false);
    assert_eq!(
        service_of(&sent, "a"),
        Some((vec!["10.88.0.11:2379".to_string()], true))
    );
    // A node that joins now learns it too.
    h.connect(bridge_node("c", 1.0));
    assert_eq!(
        service_of(&h.sent(), "c"),
        Some((vec!["10.88.0.11:2379".to_string()], true))
    );
    // A second job cannot take the same front door.
    let err = h.ask(|reply| Command::Submit {
        specs: vec![spec.clone()],
        idempotency_key: None,
        allow_unplaceable: false,
        reply,
    });
    assert!(format!("{err:?}").contains("front door of job"), "{err:?}");
    // The job ends: every node closes the door.
    h.kill(id);
    for i in 0..2 {
        h.ended(&node_of(i), key(id, i, 1), EndKind::Killed, None);
    }
    let sent = h.sent();
    assert_eq!(service_of(&sent, "b"), Some((vec![], false)));
}

#[test]
fn replicas_sharing_a_directory_stay_on_its_node_unless_the_nodes_share_storage() {
    let mut h = H::new();
    h.connect(bridge_node("a", 2.0));
    h.connect(bridge_node("b", 3.0));
    h.take();
    let mut spec = with(None, 1);
    spec.shared_dir = Some("/data".into());
    let id = h.submit(spec.clone());
    let first = h.starts();
    assert!(
        first.iter().all(|(n, _)| n == "b"),
        "only b holds all three: {first:?}"
    );
    // A group restart comes back to b, where the directory is, even with a free elsewhere.
    run_all(&mut h, &first);
    h.ended("b", key(id, 0, 1), EndKind::Exited, Some(1));
    h.take();
    for i in [1, 2] {
        h.ended("b", key(id, i, 1), EndKind::Killed, None);
    }
    h.advance(1_000);
    let again = h.starts();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|(n, _)| n == "b"), "{again:?}");

    // Nodes that share their storage spread the replicas.
    let mut h = H::new();
    for (n, c) in [("a", 2.0), ("b", 3.0)] {
        h.connect(NodeInfo {
            shared_storage: true,
            ..bridge_node(n, c)
        });
    }
    h.take();
    h.submit(spec);
    let got = launches(&mut h);
    assert_eq!(got.len(), 3);
    assert!(got.iter().any(|(n, _)| n == "a") && got.iter().any(|(n, _)| n == "b"));
    assert_eq!(got[0].1.shared_dir.as_deref(), Some("/data"));
}

#[test]
fn a_reconnecting_agent_reports_replicas_at_the_barrier_and_they_get_their_peers_again() {
    let mut h = H::new();
    h.connect(bridge_node("a", 4.0));
    h.take();
    let id = h.submit(gang(2, 1.0));
    let first = h.starts();
    for (n, k) in &first {
        h.agent(
            n,
            AgentMsg::Prepared {
                key: *k,
                ip: format!("10.88.0.{}", 10 + k.index),
            },
        );
    }
    h.take(); // the Peers messages are lost with the connection
    let reports = first
        .iter()
        .map(|(_, k)| AttemptReport::Prepared {
            key: *k,
            ip: format!("10.88.0.{}", 10 + k.index),
        })
        .collect();
    h.connect_with(bridge_node("a", 4.0), reports);
    let mut told: Vec<AttemptKey> = h
        .sent()
        .into_iter()
        .filter_map(|(_, m)| match m {
            ServerMsg::Peers { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    told.sort_by_key(|k| k.index);
    told.dedup();
    assert_eq!(
        told,
        [key(id, 0, 1), key(id, 1, 1)],
        "both are told their peers again"
    );
    assert_eq!(
        h.task(id, 0),
        TaskState::Assigned,
        "not running before it starts"
    );
}

#[test]
fn a_group_restart_waits_for_every_stopped_replica_and_survives_a_server_restart() {
    let mut h = H::new();
    h.connect(bridge_node("a", 4.0));
    h.take();
    let id = h.submit(with(None, 1));
    let first = h.starts();
    run_all(&mut h, &first);
    h.ended("a", key(id, 1, 1), EndKind::Exited, Some(1));
    h.take();
    // The failed one's back-off passes while its peers are still stopping: nothing starts.
    h.advance(2_000);
    assert!(h.starts().is_empty());
    assert!(h
        .reason(id)
        .unwrap()
        .contains("waiting for the other replicas to stop"));

    // The server restarts before the peers' ends arrive: their stops are forgotten, and the
    // ends the agent reports put them back with the group all the same.
    h.restart(CoreConfig::default());
    let killed = |k| AttemptReport::Ended {
        key: k,
        result: AttemptResult {
            kind: EndKind::Killed,
            exit_code: None,
            signal: Some(15),
            started_at: None,
            ended_at: 0,
            max_rss_bytes: None,
            cpu_secs: None,
            outputs: Vec::new(),
            message: None,
        },
    };
    h.connect_with(
        bridge_node("a", 4.0),
        vec![killed(key(id, 0, 1)), killed(key(id, 2, 1))],
    );
    h.advance(1_000);
    let again = h.starts();
    assert_eq!(again.len(), 3, "{again:?}");
    assert_eq!(h.attempts(id, 0)[0].state, TaskState::Lost);
    assert_eq!(h.job(id).state, JobState::Running);
}
