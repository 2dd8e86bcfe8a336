//! The `bridge` container network across nodes: a `gaffer server` and two `gaffer agent`s,
//! each in a network namespace of its own, all three on one L2 segment (a Linux bridge in a
//! fourth "lan" namespace), as host-gw routing needs. A bridge container on node a and one on
//! node b reach each other by their addresses through the routes the agents install
//! (`SUBNET via NODE_IP proto 171`); when b dies (kill -9 of its agent and of its supervisors
//! and tasks) and the server declares it down, a's route to b's subnet goes. Before that,
//! cluster jobs (`--replicas`) on the two nodes are placed whole or not at all (see [`gangs`]).
//!
//! Everything lives in namespaces this test creates (on a private 10.233.X.0/24 that exists
//! only inside them) and in its temporary directory; the processes, mounts and namespaces are
//! removed when the [`Lan`] guard is dropped, also on panic. Root, overlayfs, busybox and nft
//! are needed; elsewhere the test says why it skips, and fails under CI=true.

mod util;

use serde_json::{json, Value};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use util::net::sh;
use util::{wait_until, Out, BIN};

/// The server's port inside its namespace (nothing else listens there).
const PORT: u16 = 6464;

/// The three machines of the lan: the server and two agents, and their host number.
const ROLES: [(&str, u8); 3] = [("s", 1), ("a", 2), ("b", 3)];

/// The namespaces of the test, its processes and its temporary directory, all removed on drop.
struct Lan {
    pid: u32,
    /// Third octet of the lan's 10.233.X.0/24.
    x: u32,
    /// Namespaces created so far (for Drop).
    made: Vec<String>,
    server: Option<Child>,
    agents: Vec<(String, Option<Child>)>,
    http: ureq::Agent,
    /// Dropped last.
    tmp: tempfile::TempDir,
}

impl Lan {
    /// The lan namespace with its bridge, and S, A and B joined to it by veths.
    fn create() -> Lan {
        let pid = std::process::id();
        let mut lan = Lan {
            pid,
            x: 10 + pid % 240,
            made: Vec::new(),
            server: None,
            agents: Vec::new(),
            http: util::agent(),
            tmp: tempfile::Builder::new()
                .prefix("gaffer-xnode-")
                .tempdir()
                .expect("tempdir"),
        };
        for role in ["lan", "s", "a", "b"] {
            let ns = lan.ns(role);
            // Left over by a killed run with a recycled pid.
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            sh(&format!("ip netns add {ns}"));
            lan.made.push(ns.clone());
            sh(&format!("ip -n {ns} link set lo up"));
        }
        let l = lan.ns("lan");
        sh(&format!(
            "ip -n {l} link add br0 type bridge && ip -n {l} link set br0 up"
        ));
        for (role, host) in ROLES {
            let ns = lan.ns(role);
            let ip = lan.ip(host);
            sh(&format!(
                "ip -n {l} link add port-{role} type veth peer name eth0 netns {ns} && \
                 ip -n {l} link set port-{role} master br0 up && \
                 ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up"
            ));
        }
        lan
    }

    fn ns(&self, role: &str) -> String {
        format!("gxn-{}-{role}", self.pid)
    }

    fn ns_path(&self, role: &str) -> String {
        format!("/run/netns/{}", self.ns(role))
    }

    fn ip(&self, host: u8) -> String {
        format!("10.233.{}.{host}", self.x)
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn node_dir(&self, name: &str) -> PathBuf {
        self.root().join(format!("node-{name}"))
    }

    fn addr(&self) -> String {
        format!("http://{}:{PORT}", self.ip(1))
    }

    /// `nsenter --net=<role's namespace> -- PROGRAM`, in the temporary directory.
    fn inside(&self, role: &str, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path(role)))
            .arg("--")
            .arg(program)
            .current_dir(self.root())
            .env("GAFFER_LOG", "info")
            .stdin(Stdio::null());
        c
    }

    fn logged(&self, mut cmd: Command, name: &str) -> Child {
        let out = File::create(self.root().join(format!("{name}.out"))).unwrap();
        let err = File::create(self.root().join(format!("{name}.err"))).unwrap();
        cmd.stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"))
    }

    fn start_server(&mut self) {
        let mut cmd = self.inside("s", BIN);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(self.root().join("server"))
            .args(["--listen", &format!("{}:{PORT}", self.ip(1))])
            .args(["--heartbeat-timeout", "2s"]);
        self.server = Some(self.logged(cmd, "server"));
    }

    fn start_agent(&mut self, name: &str) {
        let mut cmd = self.inside(name, BIN);
        cmd.arg("agent")
            .args(["--server", &self.addr(), "--name", name])
            .arg("--data-dir")
            .arg(self.node_dir(name))
            .args(["--labels", &format!("node={name}")]);
        let child = self.logged(cmd, &format!("agent-{name}"));
        self.agents.push((name.to_string(), Some(child)));
    }

    /// The CLI against the server, run inside S.
    fn gaffer(&self, args: &[&str]) -> Out {
        let mut cmd = self.inside("s", BIN);
        cmd.args(args).env("GAFFER_ADDR", self.addr());
        util::run_cmd(cmd, Duration::from_secs(60))
    }

    fn submit(&self, args: &[&str]) -> String {
        let mut all = vec!["submit", "-q"];
        all.extend_from_slice(args);
        let out = self.gaffer(&all).ok();
        let id = out.stdout.trim().to_string();
        assert!(id.starts_with("j-"), "unexpected submit output: {out:?}");
        id
    }

    /// GET on the server (from a thread that has joined S).
    fn get_json(&self, path: &str) -> Value {
        let (code, body) =
            util::http_result(self.http.get(&format!("{}{path}", self.addr())).call());
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    fn job(&self, id: &str) -> Value {
        self.get_json(&format!("/v1/jobs/{id}"))
    }

    fn wait_final(&self, id: &str) -> Value {
        wait_until(&format!("job {id} to finish"), util::JOB_TIMEOUT, || {
            let j = self.job(id);
            matches!(j["state"].as_str(), Some("succeeded" | "failed" | "killed")).then_some(j)
        })
    }

    /// The running attempt of task 0 once it has an address.
    fn running_attempt(&self, id: &str) -> Value {
        wait_until(
            &format!("{id} to run on the bridge"),
            Duration::from_secs(60),
            || {
                let j = self.job(id);
                let a = util::attempts(&j, 0).last().cloned()?;
                (a["state"] == "running" && a["ip"].is_string()).then_some(a)
            },
        )
    }

    /// Node name → state, from `gaffer nodes -o json`.
    fn node_states(&self) -> Vec<(String, String)> {
        let out = self.gaffer(&["nodes", "-o", "json"]).ok();
        let v: Value = serde_json::from_str(&out.stdout).expect("nodes JSON");
        v.as_array()
            .expect("a list of nodes")
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or_default().to_string(),
                    n["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn wait_node(&self, name: &str, state: &str, timeout: Duration) {
        wait_until(&format!("node {name} {state}"), timeout, || {
            self.node_states()
                .iter()
                .any(|(n, s)| n == name && s == state)
                .then_some(())
        });
    }

    /// `ip ARGS` inside a role's namespace.
    fn ip_in(&self, role: &str, args: &str) -> String {
        sh(&format!("ip -n {} {args}", self.ns(role)))
    }

    /// gaffer's routes to other nodes in a role's namespace.
    fn routes(&self, role: &str) -> String {
        self.ip_in(role, "-4 route show proto 171")
    }

    /// Net namespace inodes of a role's namespace and of the attempt namespaces under its
    /// data directory.
    fn netns_inodes(&self, role: &str) -> Vec<u64> {
        let Ok(node) = std::fs::metadata(self.ns_path(role)) else {
            return Vec::new();
        };
        let mut inodes = vec![node.ino()];
        // Only files that are namespaces (bind mounts of nsfs, whose device is the node's).
        if let Ok(rd) = std::fs::read_dir(self.node_dir(role).join("netns")) {
            inodes.extend(
                rd.flatten()
                    .filter_map(|e| std::fs::metadata(e.path()).ok())
                    .filter(|m| m.dev() == node.dev())
                    .map(|m| m.ino()),
            );
        }
        inodes
    }

    /// SIGKILLs every process in the namespaces of `roles` (the agents' supervisors and
    /// tasks, which may sit in attempt namespaces of their own) until none is left: how many
    /// it killed, and whether none is left.
    fn kill_all_in(&self, roles: &[&str]) -> (usize, bool) {
        let inodes: Vec<u64> = roles.iter().flat_map(|r| self.netns_inodes(r)).collect();
        let me = std::process::id() as i32;
        let in_ours = |pid: i32| {
            std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| {
                let l = l.to_string_lossy();
                inodes.iter().any(|i| l == format!("net:[{i}]"))
            })
        };
        let mut killed = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let found: Vec<i32> = util::all_pids()
                .into_iter()
                .filter(|&p| p != me && !util::is_zombie_or_gone(p) && in_ours(p))
                .collect();
            if found.is_empty() {
                return (killed.len(), true);
            }
            killed.extend(found.iter().copied());
            for p in found {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (killed.len(), false)
    }

    /// SIGKILLs agent `name` and reaps it, then every supervisor and task it left.
    fn kill9_node(&mut self, name: &str) {
        if let Some((_, c)) = self.agents.iter_mut().find(|(n, _)| n == name) {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let (killed, gone) = self.kill_all_in(&[name]);
        assert!(gone, "processes of node {name} outlive SIGKILL");
        assert!(killed > 0, "node {name} had supervisors and tasks to kill");
        util::kill_leftovers(&self.node_dir(name));
    }

    fn dump_logs(&self) {
        for name in [
            "server.out",
            "server.err",
            "agent-a.out",
            "agent-a.err",
            "agent-b.out",
            "agent-b.err",
        ] {
            let text = std::fs::read_to_string(self.root().join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("---- {name} (last lines) ----");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for (_, c) in &mut self.agents {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.kill_all_in(&["s", "a", "b"]);
        util::kill_leftovers(self.tmp.path());
        util::unmount_under(self.tmp.path());
        for ns in &self.made {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread that has joined the network namespace at `path`.
fn joined<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(path).expect("open the server's namespace");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A busybox image with one httpd root per node, imported through the server as `web`.
fn import_web(lan: &Lan) {
    let root = lan.root().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for n in ["a", "b"] {
        std::fs::create_dir_all(root.join("www").join(n)).unwrap();
        std::fs::write(
            root.join("www").join(n).join("index.html"),
            format!("served by a container on node {n}\n"),
        )
        .unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "httpd", "wget", "ip", "cat", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    let tarball = lan.root().join("web.tar");
    util::tar_dir(&root, &tarball);
    lan.gaffer(&["image", "import", "web", tarball.to_str().unwrap()])
        .ok();
}

/// The /24 of an address: its node's subnet.
fn subnet_of(ip: &str) -> String {
    let (net, _) = ip.rsplit_once('.').expect("an IPv4 address");
    format!("{net}.0/24")
}

#[test]
fn containers_on_two_nodes_reach_each_other_and_a_dead_nodes_route_goes() {
    if no_containers().is_some() {
        return;
    }
    let started = std::time::Instant::now();
    let (root, names);
    {
        let mut lan = Lan::create();
        root = std::fs::canonicalize(lan.root()).unwrap();
        names = lan.made.clone();
        lan.start_server();
        lan.start_agent("a");
        lan.start_agent("b");
        let s = lan.ns_path("s");
        joined(&s, || body(&mut lan));
        eprintln!("test body took {:?}", started.elapsed());
    }
    // Nothing of the test is left: no namespace, no mount under its directory.
    let netns = sh("ip netns list");
    for n in &names {
        assert!(
            !netns.contains(n.as_str()),
            "namespace {n} is left: {netns}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(1)
                .is_some_and(|t| Path::new(t).starts_with(&root))
        })
        .collect();
    assert!(
        left.is_empty(),
        "mounts left under {}: {left:?}",
        root.display()
    );
    assert!(!root.exists(), "{} is left", root.display());
    eprintln!("whole test took {:?}", started.elapsed());
}

fn body(lan: &mut Lan) {
    let quick = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    let health = format!("{}/healthz", lan.addr());
    wait_until("the server to answer", Duration::from_secs(20), || {
        quick
            .get(&health)
            .call()
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    });
    lan.wait_node("a", "ready", Duration::from_secs(30));
    lan.wait_node("b", "ready", Duration::from_secs(30));
    import_web(lan);
    gangs(lan);
    let (ip_a, ip_b) = (lan.ip(2), lan.ip(3));

    // A web server on each node, on the bridge.
    let web = |n: &str| {
        lan.submit(&[
            "--image",
            "web",
            "--network",
            "bridge",
            "--constraint",
            &format!("node={n}"),
            "--",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            &format!("/www/{n}"),
        ])
    };
    let (web_a, web_b) = (web("a"), web("b"));
    let att_a = lan.running_attempt(&web_a);
    let att_b = lan.running_attempt(&web_b);
    let cip_a = att_a["ip"].as_str().unwrap().to_string();
    let cip_b = att_b["ip"].as_str().unwrap().to_string();
    let (sub_a, sub_b) = (subnet_of(&cip_a), subnet_of(&cip_b));
    assert_ne!(sub_a, sub_b, "each node has a subnet of its own");
    assert!(sub_a.starts_with("10.88.") && sub_b.starts_with("10.88."));
    let nodes: Value =
        serde_json::from_str(&lan.gaffer(&["nodes", "-o", "json"]).ok().stdout).unwrap();
    for (n, sub) in [("a", &sub_a), ("b", &sub_b)] {
        let node = nodes.as_array().unwrap().iter().find(|v| v["name"] == n);
        assert_eq!(node.unwrap()["subnet"], json!(sub), "{nodes}");
    }

    // Each node routes the other's subnet via the other's address on the lan.
    for (role, sub, via) in [("a", &sub_b, &ip_b), ("b", &sub_a, &ip_a)] {
        let want = format!("{sub} via {via} ");
        wait_until(
            &format!("node {role} to route {sub} via {via}"),
            Duration::from_secs(10),
            || {
                lan.routes(role)
                    .lines()
                    .any(|l| l.starts_with(&want))
                    .then_some(())
            },
        );
    }

    // A container on each node fetches from the other node's container by its address.
    for (from, to, ip) in [("b", "a", &cip_a), ("a", "b", &cip_b)] {
        // On the bridge by default.
        let client = lan.submit(&[
            "--image",
            "web",
            "--constraint",
            &format!("node={from}"),
            "--",
            "wget",
            "-q",
            "-O-",
            &format!("http://{ip}/"),
        ]);
        let j = lan.wait_final(&client);
        let out = lan.gaffer(&["logs", &client]).ok().stdout;
        assert_eq!(j["state"], "succeeded", "{from} -> {to} ({ip}): {j}\n{out}");
        assert!(
            out.contains(&format!("served by a container on node {to}\n")),
            "{from} -> {to} ({ip}): {out}"
        );
        let own = util::attempts(&j, 0)[0]["ip"].as_str().unwrap().to_string();
        assert_eq!(
            subnet_of(&own),
            if from == "a" {
                sub_a.clone()
            } else {
                sub_b.clone()
            },
            "the client ran on node {from}'s subnet"
        );
    }

    // Node b dies with a bridge task running: its agent, supervisors and tasks are killed.
    lan.kill9_node("b");
    lan.wait_node("b", "down", Duration::from_secs(15));
    wait_until(
        "node a's route to b's subnet to go",
        Duration::from_secs(10),
        || (!lan.routes("a").contains(&sub_b)).then_some(()),
    );
    assert!(
        lan.node_states()
            .iter()
            .any(|(n, s)| n == "a" && s == "ready"),
        "{:?}",
        lan.node_states()
    );

    // The rest ends; node a keeps no veth of its attempts.
    for id in [&web_a, &web_b] {
        lan.gaffer(&["kill", id]).ok();
    }
    for id in [&web_a, &web_b] {
        let j = lan.wait_final(id);
        assert_eq!(j["state"], "killed", "{j}");
    }
    wait_until(
        "node a's attempt veths to go",
        Duration::from_secs(10),
        || {
            let links = lan.ip_in("a", "-o link");
            (!links.contains(": gv")).then_some(())
        },
    );
}

/// Cluster jobs on the two nodes (2 CPUs each): a gang that fits only across both is placed
/// on both; one that cannot fit reserves nothing while a small task runs; of two gangs that
/// each fit alone but not together, the second waits whole.
fn gangs(lan: &Lan) {
    let gang = |name: &str, n: &str| {
        lan.submit(&[
            "--allow-unplaceable",
            "--name",
            name,
            "--replicas",
            n,
            "--cpus",
            "1",
            "--image",
            "web",
            "--",
            "sleep",
            "300",
        ])
    };
    let nodes_of = |id: &str| -> Vec<String> {
        let j = lan.job(id);
        let mut n: Vec<String> = j["task_list"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| {
                t["attempts"].as_array()?.last()?["node"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        n.sort();
        n
    };
    let allocated = || -> f64 {
        let out = lan.gaffer(&["nodes", "-o", "json"]).ok().stdout;
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n["cpus_allocated"].as_f64().unwrap())
            .sum()
    };
    let running = |id: &str, k: usize| {
        wait_until(
            &format!("{k} replicas of {id} running"),
            Duration::from_secs(60),
            || {
                let j = lan.job(id);
                let up = (0..k)
                    .filter(|i| {
                        util::attempts(&j, *i)
                            .last()
                            .is_some_and(|a| a["state"] == "running")
                    })
                    .count();
                (up == k).then_some(())
            },
        )
    };
    let end = |id: &str| {
        lan.gaffer(&["kill", id]).ok();
        lan.wait_final(id);
    };

    // 3 x 1 CPU fit only across both nodes.
    let across = gang("across", "3");
    running(&across, 3);
    let mut on: Vec<String> = nodes_of(&across);
    on.dedup();
    assert_eq!(on, ["a", "b"], "placed on both nodes");
    end(&across);

    // 5 x 1 CPU never fit: nothing reserved, and a small task still runs.
    let big = gang("big", "5");
    let j = lan.job(&big);
    let why = wait_until("the big gang's reason", Duration::from_secs(10), || {
        lan.job(&big)["pending_reason"].as_str().map(String::from)
    });
    assert!(
        why.starts_with("needs 5 × (1 CPU, 0B) at once; 4 fit now")
            && why.contains("could never hold them all"),
        "{why}\n{j}"
    );
    assert_eq!(allocated(), 0.0, "a waiting gang reserves nothing");
    let small = lan.submit(&["--image", "web", "--", "sleep", "0"]);
    assert_eq!(lan.wait_final(&small)["state"], "succeeded");
    end(&big);

    // Two gangs of 3: the first runs, the second waits whole (no half start), then runs.
    let first = gang("first", "3");
    running(&first, 3);
    let second = gang("second", "3");
    let why = wait_until("the second gang's reason", Duration::from_secs(10), || {
        lan.job(&second)["pending_reason"]
            .as_str()
            .map(String::from)
    });
    assert!(why.contains("at once; 1 fit now"), "{why}");
    assert_eq!(allocated(), 3.0, "only the first gang holds CPUs");
    assert!(
        nodes_of(&second).is_empty(),
        "no replica of the second started"
    );
    end(&first);
    running(&second, 3);
    end(&second);
}

fn no_containers() -> Option<String> {
    util::net::unsupported("bridge network across nodes", true)
}
