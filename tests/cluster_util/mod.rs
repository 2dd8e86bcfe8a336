//! Harness for the multi-host tests: one `gaffer server` and several `gaffer agent` processes,
//! each agent in its own network namespace joined to the host by a veth pair on a private
//! subnet that exists only on this machine. Falls back to every process on 127.0.0.1 when
//! namespaces cannot be created (no privilege); tests that need to cut a link then skip.
//!
//! Everything started here is killed when the [`Cluster`] is dropped, even on panic: the
//! server, the agents, the per-attempt supervisors and the tasks (found through a marker
//! environment variable and their working directories), and the namespaces and veths are
//! deleted.

#![allow(dead_code)]

pub use crate::util::{
    all_pids, is_zombie_or_gone, proc_entries, run_cmd, wait_child, wait_until, Out,
};
pub use gaffer_api::now_ms;
use serde_json::{json, Value};
use std::fs::File;
use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_gaffer");

/// Environment variable put on every process and task of a cluster, to find them in /proc.
pub const MARK_VAR: &str = "GAFFER_CLUSTER_TEST_MARK";

/// How long to wait for the server to answer /healthz and for agents to register.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Default deadline for a job to finish.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(90);

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_serial() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// Runs `ip ARGS`; the error is its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One agent's link: a network namespace and the veth pair joining it to the host.
#[derive(Debug, Clone)]
pub struct Link {
    /// Network namespace name.
    pub netns: String,
    /// Host-side interface name.
    pub host_if: String,
    /// Address of the host side (what the agent dials).
    pub host_ip: String,
    /// Address inside the namespace (what the server sees).
    pub ns_ip: String,
}

/// The namespaces of one cluster, on one private /24 reserved for as long as it lives.
pub struct Net {
    /// Per agent.
    pub links: Vec<Link>,
    _lock: std::os::unix::net::UnixListener,
}

impl Net {
    /// Creates `n` namespaces, each joined to the host by a /30 of 10.231.X.0/24.
    pub fn create(n: usize) -> Result<Net, String> {
        let pid = std::process::id();
        let serial = next_serial();
        let (octet, lock) = Self::reserve_subnet(pid, serial)?;
        let mut net = Net {
            links: Vec::new(),
            _lock: lock,
        };
        for i in 0..n {
            let base = 4 * i as u32;
            let link = Link {
                netns: format!("gfc-{pid}-{serial}-{i}"),
                host_if: format!("g{pid:x}-{serial:x}-{i}h"),
                host_ip: format!("10.231.{octet}.{}", base + 1),
                ns_ip: format!("10.231.{octet}.{}", base + 2),
            };
            let ns_if = format!("g{pid:x}-{serial:x}-{i}n");
            // A namespace left over by a killed run with a recycled pid.
            let _ = ip(&["netns", "del", &link.netns]);
            let _ = ip(&["link", "del", &link.host_if]);
            // Pushed first so that Drop removes whatever part was created.
            net.links.push(link.clone());
            ip(&["netns", "add", &link.netns])?;
            ip(&[
                "link",
                "add",
                &link.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns_if,
            ])?;
            ip(&["link", "set", &ns_if, "netns", &link.netns])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/30", link.host_ip),
                "dev",
                &link.host_if,
            ])?;
            ip(&["link", "set", &link.host_if, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", link.netns.as_str(), "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["addr", "add", &format!("{}/30", link.ns_ip), "dev", &ns_if])?;
            inside(&["link", "set", &ns_if, "up"])?;
            inside(&["link", "set", "lo", "up"])?;
            inside(&["route", "add", "default", "via", &link.host_ip])?;
        }
        Ok(net)
    }

    /// Picks a third octet no other cluster on this machine uses, starting from one derived
    /// from the pid and a counter, and holds a lock file for it.
    pub fn reserve_subnet(
        pid: u32,
        serial: u32,
    ) -> Result<(u32, std::os::unix::net::UnixListener), String> {
        let used = Command::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let start = (pid.wrapping_mul(31).wrapping_add(serial * 7)) % 240;
        for k in 0..240 {
            let octet = 10 + (start + k) % 240;
            if used.contains(&format!("10.231.{octet}.")) {
                continue;
            }
            // An abstract Unix socket is a lock that vanishes with its holder: no file to clean.
            let name = format!("gaffer-cluster-net-{octet}");
            let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            else {
                continue;
            };
            if let Ok(l) = std::os::unix::net::UnixListener::bind_addr(&addr) {
                return Ok((octet, l));
            }
        }
        Err("no free 10.231.X.0/24 subnet".into())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = ip(&["link", "del", &l.host_if]);
            let _ = ip(&["netns", "del", &l.netns]);
        }
    }
}

/// Which join token an agent presents.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinToken {
    /// The cluster's (if it has one).
    Cluster,
    /// None at all.
    Missing,
    /// This one.
    Custom(String),
}

/// How to start one agent.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Node name.
    pub name: String,
    /// `--cpus`.
    pub cpus: f64,
    /// `--memory`.
    pub memory: String,
    /// `--labels`, e.g. `zone=a,gpu=0`.
    pub labels: String,
    /// Which join token to present.
    pub join_token: JoinToken,
}

impl AgentSpec {
    /// An agent with no labels.
    pub fn new(name: &str, cpus: f64, memory: &str) -> Self {
        AgentSpec {
            name: name.into(),
            cpus,
            memory: memory.into(),
            labels: String::new(),
            join_token: JoinToken::Cluster,
        }
    }

    /// With `--labels`.
    pub fn labels(mut self, l: &str) -> Self {
        self.labels = l.into();
        self
    }

    /// With this join token choice.
    pub fn join_token(mut self, t: JoinToken) -> Self {
        self.join_token = t;
        self
    }
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// The agents.
    pub agents: Vec<AgentSpec>,
    /// `--heartbeat-timeout`.
    pub heartbeat_timeout: Option<String>,
    /// `--strategy`.
    pub strategy: Option<String>,
    /// API token (`--token-file`).
    pub api_token: Option<String>,
    /// Join token (`--join-token-file`).
    pub join_token: Option<String>,
    /// Put each agent in its own network namespace (if possible).
    pub netns: bool,
}

impl ClusterOpts {
    /// These agents; no tokens, the server's default strategy and heartbeat timeout.
    pub fn new(agents: Vec<AgentSpec>) -> Self {
        ClusterOpts {
            agents,
            heartbeat_timeout: None,
            strategy: None,
            api_token: None,
            join_token: None,
            // GAFFER_CLUSTER_NO_NETNS=1 forces the 127.0.0.1 fallback (to test it as non-root).
            netns: std::env::var_os("GAFFER_CLUSTER_NO_NETNS").is_none(),
        }
    }

    /// n1/n2/n3, `cpus` each, `memory` each, labelled zone=a/b/c.
    pub fn three(cpus: f64, memory: &str) -> Self {
        Self::new(
            ["a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(i, z)| {
                    AgentSpec::new(&format!("n{}", i + 1), cpus, memory)
                        .labels(&format!("zone={z}"))
                })
                .collect(),
        )
    }

    /// With `--heartbeat-timeout`.
    pub fn heartbeat(mut self, t: &str) -> Self {
        self.heartbeat_timeout = Some(t.into());
        self
    }
}

struct AgentProc {
    spec: AgentSpec,
    data: PathBuf,
    child: Option<Child>,
    launches: u32,
}

/// A running server and its agents. See the module docs.
pub struct Cluster {
    /// Temporary directory: data dirs, logs, scratch files.
    pub tmp: tempfile::TempDir,
    /// Value of [`MARK_VAR`] on this cluster's processes and tasks.
    pub marker: String,
    /// Server port.
    pub port: u16,
    /// `http://127.0.0.1:PORT` (what the CLI uses).
    pub addr: String,
    opts: ClusterOpts,
    server: Option<Child>,
    server_launches: u32,
    agents: Vec<AgentProc>,
    net: Option<Net>,
    http: ureq::Agent,
    /// Why there are no namespaces, if there are none.
    pub no_netns_reason: Option<String>,
}

impl Cluster {
    /// Starts the server and every agent and waits until all agents are `ready`.
    pub fn start(opts: ClusterOpts) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("gaffer-cluster-")
            .tempdir()
            .expect("tempdir");
        let (net, no_netns_reason) = if opts.netns {
            match Net::create(opts.agents.len()) {
                Ok(n) => (Some(n), None),
                Err(e) => {
                    eprintln!(
                        "cluster: no network namespaces ({e}); running every agent on 127.0.0.1"
                    );
                    (None, Some(e))
                }
            }
        } else {
            (None, Some("namespaces not requested".to_string()))
        };
        let marker = format!(
            "{}-{}-{}",
            std::process::id(),
            next_serial(),
            now_ms() % 1_000_000_000
        );
        if let Some(t) = &opts.api_token {
            std::fs::write(tmp.path().join("api.token"), format!("{t}\n")).expect("token file");
        }
        if let Some(t) = &opts.join_token {
            std::fs::write(tmp.path().join("join.token"), format!("{t}\n")).expect("token file");
        }
        let agents = opts
            .agents
            .iter()
            .map(|s| AgentProc {
                data: tmp.path().join(format!("agent-{}", s.name)),
                spec: s.clone(),
                child: None,
                launches: 0,
            })
            .collect();
        let mut c = Cluster {
            marker,
            port: 0,
            addr: String::new(),
            server: None,
            server_launches: 0,
            agents,
            net,
            http: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .timeout_read(Duration::from_secs(30))
                .timeout_write(Duration::from_secs(30))
                .build(),
            no_netns_reason,
            opts,
            tmp,
        };
        c.start_server();
        for i in 0..c.agents.len() {
            c.start_agent(i);
        }
        for i in 0..c.agents.len() {
            if c.agents[i].spec.join_token == JoinToken::Cluster {
                let name = c.agents[i].spec.name.clone();
                c.wait_node_state(&name, "ready", READY_TIMEOUT);
            }
        }
        c
    }

    /// Root of the temporary directory.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// Whether agents run in their own network namespaces.
    pub fn has_netns(&self) -> bool {
        self.net.is_some()
    }

    fn server_data(&self) -> PathBuf {
        self.root().join("server")
    }

    /// The server's data directory.
    pub fn server_dir(&self) -> PathBuf {
        self.server_data()
    }

    /// An agent's data directory.
    pub fn agent_dir(&self, i: usize) -> PathBuf {
        self.agents[i].data.clone()
    }

    /// Index of the agent named `name`.
    pub fn agent_index(&self, name: &str) -> usize {
        self.agents
            .iter()
            .position(|a| a.spec.name == name)
            .unwrap_or_else(|| panic!("no agent named {name}"))
    }

    fn start_server(&mut self) {
        let mut last = String::new();
        for _ in 0..5 {
            self.server_launches += 1;
            let port = TcpListener::bind("0.0.0.0:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let n = self.server_launches;
            let out = self.root().join(format!("server-{n}.out"));
            let err = self.root().join(format!("server-{n}.err"));
            let mut cmd = Command::new(BIN);
            cmd.arg("server")
                .arg("--data-dir")
                .arg(self.server_data())
                .arg("--listen")
                .arg(format!("0.0.0.0:{port}"));
            if let Some(t) = &self.opts.heartbeat_timeout {
                cmd.args(["--heartbeat-timeout", t]);
            }
            if let Some(s) = &self.opts.strategy {
                cmd.args(["--strategy", s]);
            }
            if self.opts.api_token.is_some() {
                cmd.arg("--token-file").arg(self.root().join("api.token"));
            }
            if self.opts.join_token.is_some() {
                cmd.arg("--join-token-file")
                    .arg(self.root().join("join.token"));
            }
            cmd.env(MARK_VAR, &self.marker)
                .env("GAFFER_LOG", "info")
                .current_dir(self.root())
                .stdin(Stdio::null())
                .stdout(File::create(&out).expect("server log"))
                .stderr(File::create(&err).expect("server log"));
            let mut child = cmd.spawn().expect("spawn gaffer server");
            let url = format!("http://127.0.0.1:{port}/healthz");
            let quick = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(2))
                .build();
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if let Some(st) = child.try_wait().expect("try_wait server") {
                    last = format!(
                        "gaffer server exited with {st}: {}",
                        std::fs::read_to_string(&err).unwrap_or_default()
                    );
                    break;
                }
                if quick.get(&url).call().is_ok_and(|r| r.status() == 200) {
                    self.port = port;
                    self.addr = format!("http://127.0.0.1:{port}");
                    self.server = Some(child);
                    return;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("gaffer server not ready within {READY_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !last.contains("cannot listen") {
                break;
            }
        }
        panic!("could not start gaffer server: {last}");
    }

    /// The server URL agent `i` dials.
    pub fn server_url_for(&self, i: usize) -> String {
        match &self.net {
            Some(n) => format!("http://{}:{}", n.links[i].host_ip, self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// The address the server should see agent `i` connect from.
    pub fn agent_ip(&self, i: usize) -> String {
        match &self.net {
            Some(n) => n.links[i].ns_ip.clone(),
            None => "127.0.0.1".into(),
        }
    }

    /// (Re)starts agent `i` on its data directory. Does not wait for it to register.
    pub fn start_agent(&mut self, i: usize) {
        assert!(self.agents[i].child.is_none(), "agent {i} is running");
        let server = self.server_url_for(i);
        let root = self.root().to_path_buf();
        let cluster_join = self.opts.join_token.is_some();
        let netns = self.net.as_ref().map(|n| n.links[i].netns.clone());
        let a = &mut self.agents[i];
        a.launches += 1;
        let out = root.join(format!("agent-{}-{}.out", a.spec.name, a.launches));
        let err = root.join(format!("agent-{}-{}.err", a.spec.name, a.launches));
        let mut cmd = match &netns {
            // nsenter, not `ip netns exec`: that one also remounts /sys for the namespace, which
            // hides the cgroup hierarchies the agent's containers need.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("agent")
            .arg("--no-bridge")
            .args(["--server", &server, "--name", &a.spec.name])
            .arg("--data-dir")
            .arg(&a.data)
            .args(["--cpus", &a.spec.cpus.to_string()])
            .args(["--memory", &a.spec.memory])
            .arg("--allow-host-tasks");
        if !a.spec.labels.is_empty() {
            cmd.args(["--labels", &a.spec.labels]);
        }
        match &a.spec.join_token {
            JoinToken::Cluster if cluster_join => {
                cmd.arg("--join-token-file").arg(root.join("join.token"));
            }
            JoinToken::Custom(t) => {
                let f = root.join(format!("join-{}.token", a.spec.name));
                std::fs::write(&f, format!("{t}\n")).expect("token file");
                cmd.arg("--join-token-file").arg(f);
            }
            _ => {}
        }
        cmd.env(MARK_VAR, &self.marker)
            .env("GAFFER_LOG", "info")
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("agent log"))
            .stderr(File::create(&err).expect("agent log"));
        a.child = Some(cmd.spawn().expect("spawn gaffer agent"));
    }

    /// Pid of agent `i` (in a namespace, the agent itself: nsenter execs it).
    pub fn agent_pid(&self, i: usize) -> i32 {
        self.agents[i].child.as_ref().expect("agent running").id() as i32
    }

    /// SIGKILLs agent `i` (its supervisors and tasks keep running) and reaps it.
    pub fn kill9_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs agent `i` and waits for it to exit.
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if wait_child(&mut c, Duration::from_secs(15)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
                panic!("agent {i} did not exit within 15s of SIGTERM");
            }
        }
    }

    /// Whether agent `i`'s process is still alive.
    pub fn agent_alive(&mut self, i: usize) -> bool {
        match self.agents[i].child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Everything agent `i` printed to stderr in its latest run.
    pub fn agent_stderr(&self, i: usize) -> String {
        let a = &self.agents[i];
        std::fs::read_to_string(
            self.root()
                .join(format!("agent-{}-{}.err", a.spec.name, a.launches)),
        )
        .unwrap_or_default()
    }

    /// Takes agent `i`'s link down (host side of its veth).
    pub fn link_down(&self, i: usize) {
        let n = self.net.as_ref().expect("link_down needs namespaces");
        ip(&["link", "set", &n.links[i].host_if, "down"]).expect("link down");
    }

    /// Brings agent `i`'s link back up.
    pub fn link_up(&self, i: usize) {
        let n = self.net.as_ref().expect("link_up needs namespaces");
        ip(&["link", "set", &n.links[i].host_if, "up"]).expect("link up");
    }

    // ---- CLI -------------------------------------------------------------------------------

    /// Runs the CLI (GAFFER_ADDR set; GAFFER_TOKEN set when the cluster has an API token).
    pub fn gaffer(&self, args: &[&str]) -> Out {
        self.gaffer_with_token(args, self.opts.api_token.as_deref())
    }

    /// Runs the CLI with this token, or none.
    pub fn gaffer_with_token(&self, args: &[&str], token: Option<&str>) -> Out {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("GAFFER_ADDR", &self.addr)
            .env_remove("GAFFER_TOKEN")
            .current_dir(self.root());
        if let Some(t) = token {
            cmd.env("GAFFER_TOKEN", t);
        }
        run_cmd(cmd, Duration::from_secs(120))
    }

    /// `gaffer submit -q -e MARK ARGS`: the id of the one job created.
    pub fn submit(&self, args: &[&str]) -> String {
        let mark = format!("{MARK_VAR}={}", self.marker);
        let mut all = vec!["submit", "-q", "-e", mark.as_str()];
        all.extend_from_slice(args);
        let out = self.gaffer(&all).ok();
        let id = out.stdout.trim().to_string();
        assert!(
            id.starts_with("j-") && !id.contains('\n'),
            "unexpected submit output: {out:?}"
        );
        id
    }

    // ---- HTTP ------------------------------------------------------------------------------

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.http.request(method, &format!("{}{path}", self.addr));
        match &self.opts.api_token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    /// GET: status and body (no token, whatever the cluster has).
    pub fn get_anon(&self, path: &str) -> (u16, String) {
        result(self.http.get(&format!("{}{path}", self.addr)).call())
    }

    /// GET: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        result(self.req("GET", path).call())
    }

    /// GET, expecting 200 and JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// POST JSON: status and body.
    pub fn post(&self, path: &str, body: &Value) -> (u16, String) {
        result(
            self.req("POST", path)
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
        )
    }

    /// Submits one spec through the API (with the marker in its env); returns its id.
    pub fn submit_json(&self, mut spec: Value) -> String {
        spec["env"][MARK_VAR] = json!(self.marker);
        let (code, text) = self.post("/v1/jobs", &spec);
        assert_eq!(code, 201, "submit {spec}: {text}");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        v["ids"][0].as_str().expect("id").to_string()
    }

    /// GET /v1/jobs/{id} (all tasks).
    pub fn job(&self, id: &str) -> Value {
        self.get_json(&format!("/v1/jobs/{id}?tasks_limit=100000"))
    }

    /// GET /v1/nodes.
    pub fn nodes(&self) -> Vec<Value> {
        self.get_json("/v1/nodes")
            .as_array()
            .cloned()
            .expect("nodes list")
    }

    /// One node as listed, if it is.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.nodes().into_iter().find(|n| n["name"] == name)
    }

    /// Waits until node `name` is listed in `state`.
    pub fn wait_node_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        wait_until(&format!("node {name} to be {state}"), timeout, || {
            self.node(name).filter(|n| n["state"] == state)
        })
    }

    /// Polls a job until its state is final.
    pub fn wait_final(&self, id: &str, timeout: Duration) -> Value {
        wait_until(&format!("job {id} to finish"), timeout, || {
            let j = self.job(id);
            matches!(j["state"].as_str(), Some("succeeded" | "failed" | "killed")).then_some(j)
        })
    }

    /// Polls a job until `pred` holds.
    pub fn wait_job(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_until(&format!("job {id}: {what}"), timeout, || {
            let j = self.job(id);
            pred(&j).then_some(j)
        })
    }

    /// Live processes of one attempt of this cluster's tasks (by their environment).
    pub fn attempt_pids(&self, job: &str, task: u32, attempt: u32) -> Vec<i32> {
        let want = [
            format!("{MARK_VAR}={}", self.marker),
            format!("GAFFER_TASK_ID={job}.{task}"),
            format!("GAFFER_ATTEMPT={attempt}"),
        ];
        live_pids()
            .into_iter()
            .filter(|&p| {
                let env = proc_entries(p, "environ");
                want.iter().all(|w| env.iter().any(|e| e == w))
            })
            .collect()
    }

    /// Prints the tail of every log, for failures.
    pub fn dump_logs(&self) {
        let Ok(rd) = std::fs::read_dir(self.root()) else {
            return;
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "out" || e == "err"))
            .collect();
        files.sort();
        for f in files {
            let s = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("==== {} ====\n{}", f.display(), tail.join("\n"));
        }
    }

    /// Kills every active job through the API (best effort, quick).
    fn kill_active_jobs(&self) {
        if self.server.is_none() {
            return;
        }
        let quick = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(3))
            .build();
        let auth = self
            .opts
            .api_token
            .as_ref()
            .map(|t| format!("Bearer {t}"))
            .unwrap_or_default();
        for state in ["running", "pending"] {
            let Ok(r) = quick
                .get(&format!("{}/v1/jobs?state={state}&limit=1000", self.addr))
                .set("Authorization", &auth)
                .call()
            else {
                continue;
            };
            let Ok(v) = r.into_json::<Value>() else {
                continue;
            };
            for j in v["jobs"].as_array().cloned().unwrap_or_default() {
                if let Some(id) = j["id"].as_str() {
                    let _ = quick
                        .post(&format!("{}/v1/jobs/{id}/kill", self.addr))
                        .set("Authorization", &auth)
                        .call();
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.kill_active_jobs();
        for a in &mut self.agents {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_leftovers(self.tmp.path(), &self.marker);
        // `self.net` is dropped after this: the namespaces and veths go with it.
    }
}

fn result(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(resp) => {
            let code = resp.status();
            (code, resp.into_string().unwrap_or_default())
        }
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
        Err(e) => panic!("HTTP transport error: {e}"),
    }
}

/// Live, non-zombie pids other than this process.
pub fn live_pids() -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&p| p != me && !is_zombie_or_gone(p))
        .collect()
}

/// Kills every process of a cluster: by the marker in its environment, by a path under `root`
/// in its arguments, or a task (GAFFER_JOB_ID set) whose working directory is under `root`.
/// Tasks' process groups go first, so nothing escapes when its supervisor dies.
pub fn kill_leftovers(root: &Path, marker: &str) {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let root_s = root.to_string_lossy().into_owned();
    let mark = format!("{MARK_VAR}={marker}");
    let ours = nix::unistd::getpgrp().as_raw();
    for _ in 0..20 {
        let mut found = false;
        for pid in live_pids() {
            let env = proc_entries(pid, "environ");
            let by_mark = env.contains(&mark);
            let by_args = proc_entries(pid, "cmdline")
                .iter()
                .any(|a| a.starts_with(&root_s));
            let is_task = env.iter().any(|e| e.starts_with("GAFFER_JOB_ID="));
            let by_cwd = is_task
                && std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .map(|c| c.to_string_lossy().starts_with(&root_s))
                    .unwrap_or(false);
            if !(by_mark || by_args || by_cwd) {
                continue;
            }
            found = true;
            if is_task {
                if let Ok(g) = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))) {
                    if g.as_raw() > 1 && g.as_raw() != ours {
                        let _ = nix::sys::signal::killpg(g, nix::sys::signal::Signal::SIGKILL);
                    }
                }
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The attempts of task `index` of a job detail.
pub fn attempts(job: &Value, index: usize) -> Vec<Value> {
    job["task_list"][index]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every task of a job detail.
pub fn tasks(job: &Value) -> Vec<Value> {
    job["task_list"].as_array().cloned().unwrap_or_default()
}

/// The node of the latest attempt of task `index`, once it has one.
pub fn node_of(job: &Value, index: usize) -> Option<String> {
    attempts(job, index)
        .last()
        .and_then(|a| a["node"].as_str().map(str::to_string))
}
