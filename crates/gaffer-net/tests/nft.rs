//! gaffer's nftables table: its JSON (module `json`, no root needed), then the table on a real
//! kernel, with real traffic, in network namespaces the test creates (and deletes, also on
//! panic). Only loopback and addresses inside those namespaces are ever contacted.
//!
//! Layout (`P` is the test's pid):
//!
//! ```text
//!  gnft-P-c (container)          gnft-P (node)                         gnft-P-o (outside)
//!  eth0 10.88.3.2/24 ---- gv-c [gaffer0 10.88.3.1/24]
//!  default via 10.88.3.1                              gv-o 10.88.4.1/24 ---- eth0 10.88.4.2/24
//!                                                          203.0.113.1/24         203.0.113.2/24
//! ```
//!
//! The outside namespace plays both another node's container (10.88.4.2, inside the cluster
//! CIDR) and a host outside the cluster (203.0.113.2, TEST-NET-3).

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use gaffer_net::nft::{self, Cidr, NftError, PortRule, Proto, Ruleset};

/// A server that answers every connection with `TAG PEER_IP\n` and prints `ready` once it listens.
const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    c, a = s.accept()
    c.sendall((sys.argv[2] + " " + a[0] + "\n").encode())
    c.close()
"#;

/// A client that prints the server's answer; exits 1 (with the error on stderr) if it gets none.
const CLIENT: &str = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.settimeout(5)
    print(s.makefile().readline().strip())
except OSError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
"#;

/// The JSON of the table; no root needed.
mod json {
    use gaffer_net::nft::{Cidr, PortRule, Proto, Ruleset};
    use serde_json::{json, Value};

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ruleset(ports: Vec<PortRule>) -> Ruleset {
        Ruleset {
            ports,
            ..Ruleset::new("gaffer0", cidr("10.88.3.0/24"), cidr("10.88.0.0/16"))
        }
    }

    fn tcp(host_port: u16, ip: [u8; 4], container_port: u16) -> PortRule {
        PortRule {
            proto: Proto::Tcp,
            host_port,
            ip: ip.into(),
            container_port,
        }
    }

    fn rules<'a>(v: &'a Value, chain: &str) -> Vec<&'a Value> {
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| &r["expr"])
            .collect()
    }

    #[test]
    fn to_json_replaces_the_table_in_one_batch() {
        let v = ruleset(vec![]).to_json();
        let cmds = v["nftables"].as_array().unwrap();
        let t = json!({"family": "inet", "name": "gaffer"});
        assert_eq!(cmds[0], json!({"add": {"table": t}}));
        assert_eq!(cmds[1], json!({"delete": {"table": t}}));
        assert_eq!(cmds[2], json!({"add": {"table": t}}));
        let chains: Vec<_> = cmds.iter().filter_map(|c| c["add"].get("chain")).collect();
        let summary: Vec<_> = chains
            .iter()
            .map(|c| {
                assert_eq!(c["type"], "nat");
                assert_eq!(c["table"], "gaffer");
                assert_eq!(c["policy"], "accept");
                (
                    c["name"].as_str().unwrap(),
                    c["hook"].as_str().unwrap(),
                    c["prio"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("prerouting", "prerouting", -100),
                ("output", "output", -100),
                ("postrouting", "postrouting", 100)
            ]
        );
        // Only adds after the one delete, and no filter chain.
        assert!(cmds[2..].iter().all(|c| c.get("add").is_some()));
        assert_eq!(cmds.len(), 3 + 3 + 3);
        assert!(rules(&v, "prerouting").is_empty());
        assert!(rules(&v, "output").is_empty());
    }

    #[test]
    fn to_json_masquerades_what_leaves_the_cluster_and_loopback() {
        let v = ruleset(vec![]).to_json();
        let post = rules(&v, "postrouting");
        assert_eq!(post.len(), 3);
        assert_eq!(
            *post[0],
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": {"prefix": {"addr": "10.88.3.0", "len": 24}}}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                           "right": {"prefix": {"addr": "10.88.0.0", "len": 16}}}},
                {"masquerade": null},
            ])
        );
        assert_eq!(
            *post[1],
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}},
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "gaffer0"}},
                {"masquerade": null},
            ])
        );
        assert_eq!(
            post[2][2]["match"]["left"],
            json!({"ct": {"key": "status"}})
        );
        assert_eq!(post[2][2]["match"]["right"], "dnat");
    }

    #[test]
    fn to_json_maps_each_port_in_prerouting_and_output() {
        let udp = PortRule {
            proto: Proto::Udp,
            ..tcp(5353, [10, 88, 3, 9], 53)
        };
        let v = ruleset(vec![tcp(18080, [10, 88, 3, 2], 80), udp]).to_json();
        for chain in ["prerouting", "output"] {
            let r = rules(&v, chain);
            assert_eq!(r.len(), 2, "{chain}");
            assert_eq!(
                *r[0],
                json!([
                    {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
                    {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}},
                               "right": "local"}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                               "right": 18080}},
                    {"dnat": {"family": "ip", "addr": "10.88.3.2", "port": 80}},
                ])
            );
            assert_eq!(r[1][2]["match"]["left"]["payload"]["protocol"], "udp");
            assert_eq!(r[1][2]["match"]["right"], 5353);
            assert_eq!(
                r[1][3],
                json!({"dnat": {"family": "ip", "addr": "10.88.3.9", "port": 53}})
            );
        }
    }

    #[test]
    fn to_json_uses_the_table_and_bridge_names() {
        let mut rs = ruleset(vec![]);
        rs.table = "gaffer-test".into();
        rs.bridge = "br-x".into();
        let v = rs.to_json();
        let cmds = v["nftables"].as_array().unwrap();
        for c in cmds {
            let obj = c.as_object().unwrap().values().next().unwrap();
            let (kind, body) = obj.as_object().unwrap().iter().next().unwrap();
            let table = if kind == "table" {
                &body["name"]
            } else {
                &body["table"]
            };
            assert_eq!(table, "gaffer-test", "{c}");
            assert_eq!(body["family"], "inet");
        }
        assert_eq!(rules(&v, "postrouting")[1][1]["match"]["right"], "br-x");
    }

    #[test]
    fn port_rules_serialize_with_lowercase_protocols() {
        let s = serde_json::to_value(tcp(18080, [10, 88, 3, 2], 80)).unwrap();
        assert_eq!(
            s,
            json!({"proto": "tcp", "host_port": 18080, "ip": "10.88.3.2", "container_port": 80})
        );
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: String) -> Netns {
        // Delete a leftover of an earlier run with the same pid, if any.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(None, &["ip", "netns", "add", &name]);
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip").args(["netns", "del", &self.0]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "ip netns del {}: {}",
                self.0,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("ip netns del {}: {e}", self.0),
        }
    }
}

/// A process, killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `args` (in `ns` if given) and panics with its stderr if it fails; its stdout.
fn run(ns: Option<&str>, args: &[&str]) -> String {
    let out = command(ns, args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{ns:?} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn command(ns: Option<&str>, args: &[&str]) -> Command {
    let mut c;
    match ns {
        Some(ns) => {
            c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(args);
        }
        None => {
            c = Command::new(args[0]);
            c.args(&args[1..]);
        }
    }
    c
}

/// Starts [`SERVER`] in `ns` on `port` and waits (with a deadline) for it to print `ready`.
fn start_server(ns: &str, port: u16, tag: &str) -> Proc {
    let mut child = command(Some(ns), &["python3", "-c", SERVER, &port.to_string(), tag])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the server");
    let stdout = child.stdout.take().unwrap();
    let server = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(line) if line.trim() == "ready" => server,
        Ok(line) => panic!("server {tag} in {ns} did not start: {line:?}"),
        Err(_) => panic!("server {tag} in {ns} not ready after 20 s"),
    }
}

/// Connects from the calling thread's namespace; the server's answer, or the error.
fn fetch(addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply.trim().to_string())
}

/// Connects from `ns` with [`CLIENT`]; the server's answer, or its error.
fn fetch_from(ns: &str, host: &str, port: u16) -> Result<String, String> {
    let out = command(
        Some(ns),
        &["python3", "-c", CLIENT, host, &port.to_string()],
    )
    .output()
    .expect("spawn the client");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn ruleset(ports: Vec<PortRule>) -> Ruleset {
    Ruleset {
        ports,
        ..Ruleset::new(
            "gaffer0",
            "10.88.3.0/24".parse::<Cidr>().unwrap(),
            "10.88.0.0/16".parse::<Cidr>().unwrap(),
        )
    }
}

#[test]
fn port_mapping_and_masquerade_on_a_real_kernel() {
    if !is_root() {
        let msg = "the nft integration test needs root (network namespaces, nftables)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}: failing, CI=true");
        }
        eprintln!("{msg}: skipped");
        return;
    }
    let pid = std::process::id();
    let node = Netns::create(format!("gnft-{pid}"));
    let cont = Netns::create(format!("gnft-{pid}-c"));
    let outside = Netns::create(format!("gnft-{pid}-o"));
    let paths = [node.path(), cont.path(), outside.path()];
    let (n, c, o) = (node.0.as_str(), cont.0.as_str(), outside.0.as_str());

    for cmds in [
        vec![
            "ip link set lo up",
            "ip link add gaffer0 type bridge",
            "ip addr add 10.88.3.1/24 dev gaffer0",
            "ip link set gaffer0 up",
        ],
        vec![
            &*format!("ip link add gv-c type veth peer name eth0 netns {c}"),
            "ip link set gv-c master gaffer0 up",
            // Hairpin: with br_netfilter, a DNATed frame is bridged back out of its own port.
            "ip link set gv-c type bridge_slave hairpin on",
            &*format!("ip link add gv-o type veth peer name eth0 netns {o}"),
            "ip addr add 10.88.4.1/24 dev gv-o",
            "ip addr add 203.0.113.1/24 dev gv-o",
            "ip link set gv-o up",
        ],
    ] {
        for cmd in cmds {
            run(Some(n), &cmd.split(' ').collect::<Vec<_>>());
        }
    }
    for cmd in [
        "ip link set lo up",
        "ip addr add 10.88.3.2/24 dev eth0",
        "ip link set eth0 up",
        "ip route add default via 10.88.3.1",
    ] {
        run(Some(c), &cmd.split(' ').collect::<Vec<_>>());
    }
    for cmd in [
        "ip link set lo up",
        "ip addr add 10.88.4.2/24 dev eth0",
        "ip addr add 203.0.113.2/24 dev eth0",
        "ip link set eth0 up",
        "ip route add 10.88.3.0/24 via 10.88.4.1",
    ] {
        run(Some(o), &cmd.split(' ').collect::<Vec<_>>());
    }

    let web = start_server(c, 80, "container");
    let ext = start_server(o, 9000, "outside");

    // The library runs in the caller's namespace: this thread enters the node's (setns affects
    // only the calling thread, and the processes it spawns).
    let node_path = node.path();
    let (cs, os) = (c.to_string(), o.to_string());
    let checks = std::thread::spawn(move || {
        let ns = std::fs::File::open(&node_path).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        in_node(&cs, &os);
    });
    let result = checks.join();

    drop((web, ext));
    drop((node, cont, outside));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    for p in paths {
        assert!(!std::path::Path::new(&p).exists(), "{p} left behind");
    }
}

/// The checks, in a thread inside the node's namespace; `c` and `o` are the container and the
/// outside namespaces.
fn in_node(c: &str, o: &str) {
    nft::enable_ip_forward().unwrap();
    nft::enable_route_localnet("gaffer0").unwrap();
    assert!(
        !nft::table_exists("gaffer").unwrap(),
        "a fresh namespace has no table"
    );
    nft::delete_table("gaffer").expect("deleting a missing table is no error");

    let port = PortRule {
        proto: Proto::Tcp,
        host_port: 18080,
        ip: "10.88.3.2".parse().unwrap(),
        container_port: 80,
    };
    nft::apply(&ruleset(vec![port])).unwrap();
    assert!(nft::table_exists("gaffer").unwrap());
    let listing = run(None, &["nft", "list", "table", "inet", "gaffer"]);
    eprintln!("{listing}");
    assert!(listing.contains("dnat ip to 10.88.3.2:80"), "{listing}");

    // The node itself, on loopback (DNAT in output, then masquerade from 127.0.0.0/8) and on
    // its addresses.
    assert_eq!(fetch("127.0.0.1:18080").unwrap(), "container 10.88.3.1");
    assert_eq!(fetch("10.88.3.1:18080").unwrap(), "container 10.88.3.1");
    assert_eq!(fetch("203.0.113.1:18080").unwrap(), "container 203.0.113.1");
    // Another host, on the node's address (DNAT in prerouting, forwarded): the source is kept.
    assert_eq!(
        fetch_from(o, "203.0.113.1", 18080).unwrap(),
        "container 203.0.113.2"
    );
    assert_eq!(
        fetch_from(o, "10.88.4.1", 18080).unwrap(),
        "container 10.88.4.2"
    );
    // Hairpin: the container, through its node's mapped port, reaches itself.
    assert_eq!(
        fetch_from(c, "10.88.3.1", 18080).unwrap(),
        "container 10.88.3.1"
    );
    // Leaving the cluster CIDR: masqueraded; inside it: the container's own address.
    assert_eq!(
        fetch_from(c, "203.0.113.2", 9000).unwrap(),
        "outside 203.0.113.1"
    );
    assert_eq!(
        fetch_from(c, "10.88.4.2", 9000).unwrap(),
        "outside 10.88.3.2"
    );

    // A batch the kernel refuses is an error naming the table, with nft's message, and it
    // changes nothing.
    let mut bad = ruleset(vec![]);
    bad.table = "t".repeat(300);
    let e = nft::apply(&bad).expect_err("a 300-character table name");
    eprintln!("{e}");
    match &e {
        NftError::Nft { table, stderr, .. } => {
            assert_eq!(table, &bad.table);
            assert!(!stderr.is_empty(), "{e}");
            assert!(e.to_string().contains(stderr.as_str()), "{e}");
        }
        other => panic!("not an nft failure: {other:?}"),
    }
    assert_eq!(fetch("127.0.0.1:18080").unwrap(), "container 10.88.3.1");

    // Replaced atomically without the port: it no longer answers, masquerade still works.
    nft::apply(&ruleset(vec![])).unwrap();
    assert!(nft::table_exists("gaffer").unwrap());
    for addr in ["127.0.0.1:18080", "10.88.3.1:18080"] {
        let e = fetch(addr).expect_err(addr);
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr}: {e}"
        );
    }
    fetch_from(o, "10.88.4.1", 18080).expect_err("port 18080 from outside after the replace");
    assert_eq!(
        fetch_from(c, "203.0.113.2", 9000).unwrap(),
        "outside 203.0.113.1"
    );

    nft::delete_table("gaffer").unwrap();
    assert!(!nft::table_exists("gaffer").unwrap());
    nft::delete_table("gaffer").unwrap();
    // Without the table, the container leaves with its own address.
    assert_eq!(
        fetch_from(c, "203.0.113.2", 9000).unwrap(),
        "outside 10.88.3.2"
    );
}
