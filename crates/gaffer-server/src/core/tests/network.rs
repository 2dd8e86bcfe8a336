//! Node subnets and the routes between nodes.

use super::*;

fn bridge_node(name: &str) -> NodeInfo {
    NodeInfo {
        containers: true,
        bridge: true,
        images: vec!["busybox".into()],
        ..node(name, 4.0, 4)
    }
}

/// The last Network message released for `node`: (subnet, routes).
fn network(h: &mut H, node: &str) -> Option<(String, Vec<(String, String)>)> {
    h.sent()
        .into_iter()
        .filter_map(|(to, m)| match m {
            ServerMsg::Network {
                subnet,
                routes,
                cluster_cidr,
            } if to == node => {
                assert_eq!(cluster_cidr, "10.88.0.0/16");
                Some((subnet, routes))
            }
            _ => None,
        })
        .next_back()
}

#[test]
fn bridge_nodes_get_subnets_for_good_and_routes_to_each_other() {
    let mut h = H::new();
    h.connect(bridge_node("a")); // conn 1: 10.0.0.1
    assert_eq!(network(&mut h, "a"), Some(("10.88.0.0/24".into(), vec![])));
    h.connect(node("plain", 4.0, 4)); // conn 2
    assert_eq!(network(&mut h, "plain"), None, "no bridge, no subnet");
    assert_eq!(h.node_view("a").subnet.as_deref(), Some("10.88.0.0/24"));
    assert_eq!(h.node_view("plain").subnet, None);
    h.connect(bridge_node("b")); // conn 3: 10.0.0.3
    let sent = h.sent();
    let last = |n: &str| {
        sent.iter()
            .filter_map(|(to, m)| match m {
                ServerMsg::Network { subnet, routes, .. } if to == n => {
                    Some((subnet.clone(), routes.clone()))
                }
                _ => None,
            })
            .next_back()
    };
    let route = |s: &str, via: &str| (s.to_string(), via.to_string());
    assert_eq!(
        last("a"),
        Some((
            "10.88.0.0/24".into(),
            vec![route("10.88.1.0/24", "10.0.0.3")]
        ))
    );
    assert_eq!(
        last("b"),
        Some((
            "10.88.1.0/24".into(),
            vec![route("10.88.0.0/24", "10.0.0.1")]
        ))
    );

    // b falls silent: a stops routing to it.
    h.now += 10_001;
    h.agent(
        "a",
        AgentMsg::Heartbeat {
            memory_free: 0,
            images: vec!["busybox".into()],
            image_digests: Default::default(),
        },
    );
    assert_eq!(network(&mut h, "a"), Some(("10.88.0.0/24".into(), vec![])));

    // b comes back from another address (conn 4: 10.0.0.4): a routes to it there, and b
    // keeps its subnet.
    h.connect(bridge_node("b"));
    assert_eq!(
        network(&mut h, "a"),
        Some((
            "10.88.0.0/24".into(),
            vec![route("10.88.1.0/24", "10.0.0.4")]
        ))
    );

    // A restarted server gives nodes the subnets they had.
    h.restart(CoreConfig::default());
    h.connect(bridge_node("b"));
    assert_eq!(network(&mut h, "b").unwrap().0, "10.88.1.0/24");
    h.connect(bridge_node("c"));
    assert_eq!(network(&mut h, "c").unwrap().0, "10.88.2.0/24");
}

#[test]
fn a_bridge_task_waits_for_a_bridge_node() {
    let mut h = H::new();
    h.connect(NodeInfo {
        containers: true,
        images: vec!["busybox".into()],
        ..node("plain", 8.0, 8)
    });
    h.take();
    let mut spec = job().image("busybox").spec();
    spec.network = Some(gaffer_api::Network::Bridge);
    let id = h.submit(spec);
    assert!(h.starts().is_empty());
    assert!(h.reason(id).unwrap().contains("bridge network"));
    h.connect(bridge_node("b"));
    let starts = h.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].0, "b");
}

#[test]
fn picked_host_ports_stay_taken_across_a_server_restart() {
    let mut h = H::new();
    h.connect(bridge_node("a"));
    let mut spec = job().image("busybox").cpus(0.1).spec();
    spec.ports = vec!["8080".parse().unwrap()];
    let first = h.submit(spec.clone());
    let (n, k) = h.starts().remove(0);
    h.started(&n, k);
    let got = h.attempts(first, 0)[0].ports.clone();
    assert_eq!(got[0].host, 30000, "{got:?}");

    h.restart(CoreConfig::default());
    h.connect_with(bridge_node("a"), vec![AttemptReport::Running { key: k }]);
    h.take();
    let second = h.submit(spec);
    h.starts();
    let again = h.attempts(second, 0)[0].ports.clone();
    assert_eq!(
        again[0].host, 30001,
        "30000 is still the first job's: {again:?}"
    );
}

#[test]
fn a_container_naming_no_network_gets_the_bridge_where_its_node_has_one() {
    let mut h = H::new();
    h.connect(bridge_node("b"));
    h.connect(NodeInfo {
        containers: true,
        images: vec!["busybox".into()],
        ..node("plain", 4.0, 4)
    });
    h.take();
    let spec = job().image("busybox").cpus(4.0).spec();
    h.submit_all(vec![spec.clone(), spec.clone()]);
    let mut nets: Vec<(String, Option<gaffer_api::Network>)> = h
        .sent()
        .into_iter()
        .filter_map(|(to, m)| match m {
            ServerMsg::Start(l) => Some((to, l.network)),
            _ => None,
        })
        .collect();
    nets.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        nets,
        vec![
            ("b".to_string(), Some(gaffer_api::Network::Bridge)),
            ("plain".to_string(), None),
        ],
        "each node took one: the bridge on b, the host's network on plain"
    );

    // What a spec names is kept.
    let mut h = H::new();
    h.connect(bridge_node("b"));
    h.take();
    let mut explicit = spec;
    explicit.network = Some(gaffer_api::Network::Host);
    h.submit(explicit);
    let sent = h.sent();
    let Some((_, ServerMsg::Start(l))) =
        sent.iter().find(|(_, m)| matches!(m, ServerMsg::Start(_)))
    else {
        panic!("a start: {sent:?}");
    };
    assert_eq!(l.network, Some(gaffer_api::Network::Host));
}
