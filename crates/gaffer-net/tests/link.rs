//! Links, namespaces and routes for real, inside a network namespace the test creates: the
//! test thread moves into a fresh namespace first, and every thread and process it starts
//! inherits it. Traffic goes only to addresses inside that namespace and the ones it makes.

use gaffer_net::ipam::{Cidr, Pool};
use gaffer_net::link::{self, Plumbing};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "network tests need root, and CI=true requires them to run"
    );
    eprintln!("skipped: network tests need root");
    false
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &Path, cmd: &str) -> String {
    sh(&format!("nsenter --net={} {cmd}", ns.display()))
}

/// Runs `f` on a thread in a new, empty network namespace (loopback up).
fn isolated(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        sh("ip link set lo up");
        f()
    })
    .join()
    .expect("the isolated test passed");
}

#[test]
fn two_attempts_on_the_bridge_reach_each_other_and_are_removed_without_a_trace() {
    if !root_or_skip() {
        return;
    }
    isolated(|| {
        let dir = tempfile::tempdir().unwrap();
        let subnet: Cidr = "10.88.3.0/24".parse().unwrap();
        let bridge = link::ensure_bridge("gaffer0", subnet.gateway(), subnet.prefix()).unwrap();
        // Idempotent: a restarted agent calls it again.
        assert_eq!(
            link::ensure_bridge("gaffer0", subnet.gateway(), 24).unwrap(),
            bridge
        );
        let mut pool = Pool::new(subnet);
        let mut plumbed = Vec::new();
        for i in 0..2 {
            let p = Plumbing {
                netns: dir.path().join(format!("ns{i}")),
                host_if: format!("{}test{i}", link::VETH_PREFIX),
                bridge,
                ip: pool.allocate().unwrap(),
                subnet,
            };
            link::create_netns(&p.netns).unwrap();
            link::plumb(&p).unwrap();
            plumbed.push(p);
        }
        let (a, b) = (&plumbed[0], &plumbed[1]);
        let addr = in_ns(&a.netns, "ip -4 -o addr show dev eth0");
        assert!(addr.contains("10.88.3.2/24"), "{addr}");
        let route = in_ns(&a.netns, "ip -4 route show default");
        assert!(route.contains("via 10.88.3.1 dev eth0"), "{route}");
        // Attempt to attempt, and attempt to the node's gateway.
        in_ns(&a.netns, &format!("busybox ping -c 1 -W 2 {}", b.ip));
        in_ns(&b.netns, "busybox ping -c 1 -W 2 10.88.3.1");
        let links = link::links_with_prefix(link::VETH_PREFIX).unwrap();
        assert_eq!(links.len(), 2, "{links:?}");

        for p in &plumbed {
            link::unplumb(&p.netns, &p.host_if).unwrap();
            assert!(!p.netns.exists());
            // Gone already: no error the second time.
            link::unplumb(&p.netns, &p.host_if).unwrap();
        }
        assert!(link::links_with_prefix(link::VETH_PREFIX)
            .unwrap()
            .is_empty());
        link::delete_link("gaffer0").unwrap();
        assert!(link::links_with_prefix("gaffer").unwrap().is_empty());
    });
}

#[test]
fn routes_to_other_nodes_follow_the_wanted_set() {
    if !root_or_skip() {
        return;
    }
    isolated(|| {
        let subnet: Cidr = "10.88.3.0/24".parse().unwrap();
        link::ensure_bridge("gaffer0", subnet.gateway(), 24).unwrap();
        let b: Cidr = "10.88.7.0/24".parse().unwrap();
        let c: Cidr = "10.88.9.0/24".parse().unwrap();
        let via = |x| Ipv4Addr::new(10, 88, 3, x);
        let proto = format!("ip -4 route show proto {}", link::ROUTE_PROTO);
        link::sync_routes(&[(b, via(20)), (c, via(21))]).unwrap();
        let r = sh(&proto);
        assert!(r.contains("10.88.7.0/24 via 10.88.3.20"), "{r}");
        assert!(r.contains("10.88.9.0/24 via 10.88.3.21"), "{r}");
        // A node changes address, another leaves.
        link::sync_routes(&[(b, via(30))]).unwrap();
        let r = sh(&proto);
        assert!(r.contains("10.88.7.0/24 via 10.88.3.30"), "{r}");
        assert!(!r.contains("10.88.9.0"), "{r}");
        // Other routes are not gaffer's and stay.
        sh("ip route add 10.99.0.0/24 via 10.88.3.40");
        link::sync_routes(&[]).unwrap();
        assert_eq!(sh(&proto).trim(), "");
        assert!(sh("ip -4 route").contains("10.99.0.0/24"));
        link::delete_link("gaffer0").unwrap();
    });
}
