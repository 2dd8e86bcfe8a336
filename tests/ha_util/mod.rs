//! Harness for the HA tests: a 3-member etcd cluster, `gaffer server --store etcd` processes and
//! agents, each server and agent in its own network namespace on one bridge (a private
//! 10.231.X.0/24 of this machine), so that a server's network can be cut by taking its veth
//! down. etcd runs on the host, listening on 127.0.0.1 and on the bridge's address.
//!
//! Everything started here is killed when the [`Ha`] is dropped, even on panic (servers,
//! agents, etcd, supervisors and tasks), and the namespaces and the bridge are deleted.

#![allow(dead_code)]

use crate::cluster_util::{ip, kill_leftovers, Net, BIN, MARK_VAR};
use crate::util::{free_port, wait_child, wait_until};
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Lease TTL of the test servers.
pub const LEASE_TTL: &str = "2s";

/// Namespaces on one bridge.
pub struct Bridge {
    /// Bridge device.
    pub name: String,
    /// Host address on the bridge.
    pub host_ip: String,
    /// Per namespace: (netns name, host-side veth, address inside).
    pub ns: Vec<(String, String, String)>,
    _lock: std::os::unix::net::UnixListener,
}

impl Bridge {
    /// A bridge with `n` namespaces attached.
    pub fn create(n: usize) -> Result<Bridge, String> {
        let pid = std::process::id();
        let serial = (gaffer_api::now_ms() % 10_000) as u32;
        let (octet, lock) = Net::reserve_subnet(pid, serial)?;
        let name = format!("gb{pid:x}{octet:x}");
        let mut b = Bridge {
            name: name.clone(),
            host_ip: format!("10.231.{octet}.1"),
            ns: Vec::new(),
            _lock: lock,
        };
        let _ = ip(&["link", "del", &name]);
        ip(&["link", "add", &name, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", b.host_ip), "dev", &name])?;
        ip(&["link", "set", &name, "up"])?;
        for i in 0..n {
            let netns = format!("gha-{pid}-{octet}-{i}");
            let host_if = format!("gh{pid:x}{octet:x}-{i}h");
            let ns_if = format!("gh{pid:x}{octet:x}-{i}n");
            let addr = format!("10.231.{octet}.{}", 10 + i);
            let _ = ip(&["netns", "del", &netns]);
            let _ = ip(&["link", "del", &host_if]);
            b.ns.push((netns.clone(), host_if.clone(), addr.clone()));
            ip(&["netns", "add", &netns])?;
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])?;
            ip(&["link", "set", &ns_if, "netns", &netns])?;
            ip(&["link", "set", &host_if, "master", &name])?;
            ip(&["link", "set", &host_if, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", netns.as_str(), "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["addr", "add", &format!("{addr}/24"), "dev", &ns_if])?;
            inside(&["link", "set", &ns_if, "up"])?;
            inside(&["link", "set", "lo", "up"])?;
        }
        Ok(b)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for (netns, host_if, _) in &self.ns {
            let _ = ip(&["link", "del", host_if]);
            let _ = ip(&["netns", "del", netns]);
        }
        let _ = ip(&["link", "del", &self.name]);
    }
}

/// A 3-member etcd cluster on the host.
pub struct Etcd {
    children: Vec<Child>,
    /// Client URLs reachable from the namespaces.
    pub endpoints: Vec<String>,
}

impl Etcd {
    /// Starts three members listening on 127.0.0.1 and `extra_ip`; waits until healthy.
    pub fn start(root: &Path, extra_ip: &str) -> Etcd {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut children = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = File::create(root.join(format!("etcd-{i}.log"))).expect("etcd log");
            let child = Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(root.join(format!("etcd-{i}")))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client},http://{extra_ip}:{client}"),
                    "--advertise-client-urls",
                    &format!("http://{extra_ip}:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &cluster.join(","),
                    "--initial-cluster-state",
                    "new",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start etcd (Debian package etcd-server)");
            children.push(child);
        }
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(2))
            .build();
        for (client, _) in &ports {
            wait_until("etcd healthy", Duration::from_secs(30), || {
                let r = agent
                    .get(&format!("http://127.0.0.1:{client}/health"))
                    .call()
                    .ok()?;
                r.into_string().ok()?.contains("true").then_some(())
            });
        }
        Etcd {
            children,
            endpoints: ports
                .iter()
                .map(|(c, _)| format!("http://{extra_ip}:{c}"))
                .collect(),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Proc {
    child: Option<Child>,
    launches: u32,
}

/// etcd, servers and agents; see the module docs.
pub struct Ha {
    /// Data directories and logs.
    pub tmp: tempfile::TempDir,
    /// Marker on every process and task.
    pub marker: String,
    servers: Vec<Proc>,
    agents: Vec<Proc>,
    etcd: Option<Etcd>,
    net: Option<Bridge>,
    http: ureq::Agent,
    /// API token every server requires (`--token-file`), if any.
    pub token: Option<String>,
}

/// Port every server listens on inside its namespace.
const PORT: u16 = 6464;

impl Ha {
    /// Whether this machine can run the HA tests (root, for namespaces).
    pub fn possible() -> bool {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the HA tests need root (network namespaces)");
            return false;
        }
        true
    }

    /// `servers` servers and `agents` agents (named a0, a1, ...), each in its own namespace.
    pub fn start(servers: usize, agents: usize) -> Ha {
        Self::start_with_token(servers, agents, None)
    }

    /// Like [`Ha::start`], every server requiring the API token `token`.
    pub fn start_with_token(servers: usize, agents: usize, token: Option<&str>) -> Ha {
        let tmp = tempfile::Builder::new()
            .prefix("gaffer-ha-")
            .tempdir()
            .expect("tempdir");
        let net = Bridge::create(servers + agents).expect("network namespaces");
        let etcd = Etcd::start(tmp.path(), &net.host_ip);
        let mut ha = Ha {
            marker: format!(
                "ha-{}-{}",
                std::process::id(),
                gaffer_api::now_ms() % 1_000_000_000
            ),
            servers: (0..servers)
                .map(|_| Proc {
                    child: None,
                    launches: 0,
                })
                .collect(),
            agents: (0..agents)
                .map(|_| Proc {
                    child: None,
                    launches: 0,
                })
                .collect(),
            etcd: Some(etcd),
            net: Some(net),
            http: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(2))
                .timeout(Duration::from_secs(10))
                .build(),
            token: token.map(str::to_string),
            tmp,
        };
        if let Some(t) = token {
            std::fs::write(ha.root().join("api.token"), format!("{t}\n")).expect("token file");
        }
        for i in 0..servers {
            ha.start_server(i);
        }
        ha.wait_leader(None, Duration::from_secs(30));
        for i in 0..agents {
            ha.start_agent(i);
        }
        for i in 0..agents {
            ha.wait_node_ready(&format!("a{i}"), Duration::from_secs(30));
        }
        ha
    }

    /// Root of the temporary directory.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn net(&self) -> &Bridge {
        self.net.as_ref().expect("network")
    }

    /// URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}:{PORT}", self.net().ns[i].2)
    }

    /// URLs of every server, comma-separated (for `--addr` and `--server`).
    pub fn all_urls(&self) -> String {
        (0..self.servers.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcd endpoints.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd.as_ref().expect("etcd").endpoints.clone()
    }

    fn in_ns(&self, i: usize) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.net().ns[i].0, BIN]);
        c.env(MARK_VAR, &self.marker)
            .env("GAFFER_LOG", "info")
            .current_dir(self.root())
            .stdin(Stdio::null());
        c
    }

    /// (Re)starts server `i` (does not wait for it).
    pub fn start_server(&mut self, i: usize) {
        assert!(self.servers[i].child.is_none(), "server {i} is running");
        self.servers[i].launches += 1;
        let n = self.servers[i].launches;
        let mut cmd = self.in_ns(i);
        let addr = self.net().ns[i].2.clone();
        cmd.arg("server")
            .args(["--store", "etcd", "--etcd-prefix", "gaffer-test"])
            .args(["--etcd-endpoints", &self.etcd_endpoints().join(",")])
            .args(["--listen", &format!("{addr}:{PORT}")])
            .args(["--advertise", &self.url(i)])
            .args(["--lease-ttl", LEASE_TTL]);
        if self.token.is_some() {
            cmd.arg("--token-file").arg(self.root().join("api.token"));
        }
        cmd.arg("--data-dir")
            .arg(self.root().join(format!("server-{i}")))
            .stdout(File::create(self.root().join(format!("server-{i}-{n}.out"))).expect("log"))
            .stderr(File::create(self.root().join(format!("server-{i}-{n}.err"))).expect("log"));
        self.servers[i].child = Some(cmd.spawn().expect("spawn gaffer server"));
    }

    /// How many times server `i` was started (its current logs are `server-{i}-{n}.*`).
    pub fn launches(&self, i: usize) -> u32 {
        self.servers[i].launches
    }

    /// Pid of server `i` (`ip netns exec` execs the server itself).
    pub fn server_pid(&self, i: usize) -> i32 {
        self.servers[i].child.as_ref().expect("server running").id() as i32
    }

    /// SIGKILLs server `i` and reaps it.
    pub fn kill9_server(&mut self, i: usize) {
        let mut c = self.servers[i].child.take().expect("server running");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// SIGTERMs server `i` and waits for its exit code.
    pub fn stop_server(&mut self, i: usize) -> std::process::ExitStatus {
        let mut c = self.servers[i].child.take().expect("server running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_child(&mut c, Duration::from_secs(20)).expect("server stops on SIGTERM")
    }

    /// Whether server `i`'s process is alive.
    pub fn server_alive(&mut self, i: usize) -> bool {
        match &mut self.servers[i].child {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Takes the network of namespace `i` (a server's or an agent's) down or up.
    pub fn link(&self, i: usize, up: bool) {
        let host_if = &self.net().ns[i].1;
        ip(&["link", "set", host_if, if up { "up" } else { "down" }]).expect("ip link set");
    }

    /// (Re)starts agent `k` (namespace `servers + k`).
    pub fn start_agent(&mut self, k: usize) {
        assert!(self.agents[k].child.is_none(), "agent {k} is running");
        self.agents[k].launches += 1;
        let n = self.agents[k].launches;
        let ns = self.servers.len() + k;
        let mut cmd = self.in_ns(ns);
        cmd.arg("agent")
            .arg("--no-bridge")
            .args(["--server", &self.all_urls(), "--name", &format!("a{k}")])
            .arg("--data-dir")
            .arg(self.root().join(format!("agent-{k}")))
            .args(["--cpus", "2", "--memory", "2GiB", "--allow-host-tasks"])
            .stdout(File::create(self.root().join(format!("agent-{k}-{n}.out"))).expect("log"))
            .stderr(File::create(self.root().join(format!("agent-{k}-{n}.err"))).expect("log"));
        self.agents[k].child = Some(cmd.spawn().expect("spawn gaffer agent"));
    }

    /// GET `path` from server `i`: status and body; `None` when it cannot be reached.
    pub fn get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        let mut req = self.http.get(&format!("{}{path}", self.url(i)));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(r) => {
                let code = r.status();
                Some((code, r.into_string().unwrap_or_default()))
            }
            Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().unwrap_or_default())),
            Err(_) => None,
        }
    }

    /// GET JSON from the first server (of those whose process runs) that answers 200.
    pub fn get_json(&mut self, path: &str) -> Option<Value> {
        for i in 0..self.servers.len() {
            if !self.server_alive(i) {
                continue;
            }
            if let Some((200, body)) = self.get(i, path) {
                return serde_json::from_str(&body).ok();
            }
        }
        None
    }

    /// The leader's index and term as server `asked` sees them.
    pub fn leader_seen_by(&self, asked: usize) -> Option<(usize, i64)> {
        let (code, body) = self.get(asked, "/v1/servers")?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let id = v["leader"].as_str()?;
        let term = v["term"].as_i64()?;
        let i = (0..self.servers.len()).find(|&i| self.url(i).ends_with(id))?;
        Some((i, term))
    }

    /// Waits until a server other than `not` is leader and accepts writes (its `/v1/nodes`
    /// answers 200 through itself); returns its index and term.
    pub fn wait_leader(&mut self, not: Option<usize>, timeout: Duration) -> (usize, i64) {
        let n = self.servers.len();
        wait_until("a leader serving requests", timeout, || {
            for asked in 0..n {
                if Some(asked) == not || !self.server_alive(asked) {
                    continue;
                }
                let Some((l, term)) = self.leader_seen_by(asked) else {
                    continue;
                };
                if Some(l) == not {
                    continue;
                }
                if let Some((200, _)) = self.get(l, "/v1/nodes") {
                    return Some((l, term));
                }
            }
            None
        })
    }

    /// Waits until node `name` is ready.
    pub fn wait_node_ready(&mut self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(nodes) = self.get_json("/v1/nodes") {
                let ok = nodes
                    .as_array()
                    .is_some_and(|a| a.iter().any(|n| n["name"] == name && n["state"] == "ready"));
                if ok {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {name} is not ready after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs the CLI on the host against every server.
    pub fn gaffer(&self, args: &[&str]) -> crate::util::Out {
        let mut cmd = Command::new(BIN);
        cmd.env("GAFFER_ADDR", self.all_urls()).args(args);
        if let Some(t) = &self.token {
            cmd.env("GAFFER_TOKEN", t);
        }
        crate::util::run_cmd(cmd, Duration::from_secs(60))
    }

    /// Every log this harness wrote, for a failing test.
    pub fn dump_logs(&self) {
        let Ok(rd) = std::fs::read_dir(self.root()) else {
            return;
        };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if name.ends_with(".out") || name.ends_with(".err") {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("----- {name} (last 40 lines)");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for p in self.agents.iter_mut().chain(self.servers.iter_mut()) {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        kill_leftovers(self.tmp.path(), &self.marker);
        self.etcd.take();
        self.net.take();
    }
}
