//! The agent's side of the `bridge` container network (see `gaffer-net`).
//!
//! The server gives the node its subnet and the other nodes' routes ([`ServerMsg::Network`]).
//! Nothing is created until the first bridge attempt starts: then the bridge comes up with the
//! subnet's gateway. Each bridge attempt gets an address from the node's pool, a network
//! namespace in `<data>/netns/`, a veth pair (host end `gv<agent><attempt>`, a port of the
//! bridge) and its own `/etc/hosts` and `/etc/resolv.conf`; what it holds is recorded in
//! `<attempt dir>/net.json`, so that a restarted agent neither hands its address out twice nor
//! forgets to remove it. [`BridgeNet::recover`] removes what no live attempt owns.
//!
//! [`ServerMsg::Network`]: gaffer_api::proto::ServerMsg::Network

use gaffer_api::ports::{PortMapping, Protocol};
use gaffer_api::AttemptKey;
use gaffer_net::ipam::{Cidr, Pool};
use gaffer_net::link::{self, Plumbing};
use gaffer_net::nft;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a bridge attempt holds, kept in `<attempt dir>/net.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AttemptNet {
    /// Its address on the node's subnet.
    pub ip: Ipv4Addr,
    /// Its subnet.
    pub subnet: Cidr,
    /// Its network namespace file.
    pub netns: PathBuf,
    /// Host end of its veth pair.
    pub host_if: String,
    /// Its mapped ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
}

const NET_FILE: &str = "net.json";

/// Why an attempt could not be put on the bridge.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The server has not given this node a subnet (yet).
    #[error(
        "node {node} has no container subnet yet (the server assigns one when the agent registers)"
    )]
    NoSubnet {
        /// This node.
        node: String,
    },
    /// Every address of the subnet is taken.
    #[error("the container subnet {subnet} of node {node} is full")]
    Full {
        /// This node.
        node: String,
        /// Its subnet.
        subnet: Cidr,
    },
    /// A netlink or namespace operation failed.
    #[error("container network on node {node}: {source}")]
    Link {
        /// This node.
        node: String,
        /// What failed.
        #[source]
        source: link::LinkError,
    },
    /// The nftables table could not be replaced.
    #[error("container network on node {node}: {source}")]
    Nft {
        /// This node.
        node: String,
        /// What nft said.
        #[source]
        source: nft::NftError,
    },
    /// A file of the attempt could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Default)]
struct State {
    subnet: Option<Cidr>,
    cluster: Option<Cidr>,
    pool: Option<Pool>,
    /// The bridge's index once it is up.
    bridge: Option<u32>,
    /// Addresses of live attempts found at start-up, reserved once the pool exists.
    recovered: Vec<Ipv4Addr>,
    routes: Vec<(Cidr, Ipv4Addr)>,
    /// Mapped ports of the attempts on the bridge, by namespace file.
    ports: HashMap<PathBuf, Vec<nft::PortRule>>,
}

/// The node's bridge network.
pub struct BridgeNet {
    node: String,
    bridge: String,
    /// `<data>/netns`.
    netns_dir: PathBuf,
    /// Prefix of this agent's veth names: `gv` and 4 hex digits of the agent's data directory.
    prefix: String,
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// FNV-1a, 32 bits: short stable names from longer ones.
fn fnv(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

impl BridgeNet {
    /// The bridge network of the agent of `node` with data directory `data_dir`, on bridge
    /// `bridge`.
    pub fn new(node: &str, data_dir: &Path, bridge: &str) -> Self {
        let id = fnv(&data_dir.display().to_string()) & 0xffff;
        BridgeNet {
            node: node.to_string(),
            bridge: bridge.to_string(),
            netns_dir: data_dir.join("netns"),
            prefix: format!("{}{id:04x}", link::VETH_PREFIX),
            state: Mutex::new(State::default()),
        }
    }

    fn link_err(&self) -> impl FnOnce(link::LinkError) -> NetError + '_ {
        |source| NetError::Link {
            node: self.node.clone(),
            source,
        }
    }

    /// The server's word on this node's subnet and the routes to the others.
    pub fn configure(
        &self,
        subnet: Cidr,
        cluster: Cidr,
        routes: Vec<(Cidr, Ipv4Addr)>,
    ) -> Result<(), NetError> {
        let mut st = lock(&self.state);
        if st.subnet != Some(subnet) {
            let mut pool = Pool::new(subnet);
            for ip in std::mem::take(&mut st.recovered) {
                pool.reserve(ip);
            }
            st.pool = Some(pool);
            st.subnet = Some(subnet);
            st.bridge = None; // its gateway address is set again when next needed
        }
        st.cluster = Some(cluster);
        if routes != st.routes {
            link::sync_routes(&routes).map_err(self.link_err())?;
            st.routes = routes;
        }
        Ok(())
    }

    /// Puts attempt `key` (directory `dir`, hostname `hostname`) on the bridge: returns its
    /// network namespace and the files to bind over `/etc/hosts` and `/etc/resolv.conf`.
    pub fn attach(
        &self,
        key: &AttemptKey,
        dir: &Path,
        hostname: &str,
        ports: &[PortMapping],
    ) -> Result<(AttemptNet, Vec<(PathBuf, PathBuf)>), NetError> {
        let (bridge, ip, subnet) = {
            let mut st = lock(&self.state);
            let subnet = st.subnet.ok_or_else(|| NetError::NoSubnet {
                node: self.node.clone(),
            })?;
            let bridge = match st.bridge {
                Some(b) => b,
                None => {
                    let b = link::ensure_bridge(&self.bridge, subnet.gateway(), subnet.prefix())
                        .map_err(self.link_err())?;
                    self.nft_err(nft::enable_ip_forward())?;
                    self.nft_err(nft::enable_route_localnet(&self.bridge))?;
                    self.apply_rules(&st)?;
                    st.bridge = Some(b);
                    b
                }
            };
            let ip = st
                .pool
                .as_mut()
                .and_then(Pool::allocate)
                .ok_or_else(|| NetError::Full {
                    node: self.node.clone(),
                    subnet,
                })?;
            (bridge, ip, subnet)
        };
        let net = AttemptNet {
            ip,
            subnet,
            netns: self
                .netns_dir
                .join(format!("{}-{}", key.task_id(), key.attempt)),
            host_if: format!("{}{:08x}", self.prefix, fnv(&format!("{key}"))),
            ports: ports.to_vec(),
        };
        let done = self.plumb(&net, bridge, dir, hostname).and_then(|files| {
            if !net.ports.is_empty() {
                let mut st = lock(&self.state);
                st.ports.insert(net.netns.clone(), rules(&net));
                self.apply_rules(&st)?;
            }
            Ok(files)
        });
        match done {
            Ok(files) => Ok((net, files)),
            Err(e) => {
                self.release(&net);
                Err(e)
            }
        }
    }

    fn nft_err<T>(&self, r: Result<T, nft::NftError>) -> Result<T, NetError> {
        r.map_err(|source| NetError::Nft {
            node: self.node.clone(),
            source,
        })
    }

    /// Replaces the nftables table: masquerade for the subnet, and every mapped port.
    fn apply_rules(&self, st: &State) -> Result<(), NetError> {
        let (Some(subnet), Some(cluster)) = (st.subnet, st.cluster) else {
            return Ok(());
        };
        let mut rs = nft::Ruleset::new(self.bridge.clone(), subnet, cluster);
        rs.ports = st.ports.values().flatten().cloned().collect();
        self.nft_err(nft::apply(&rs))
    }

    fn plumb(
        &self,
        net: &AttemptNet,
        bridge: u32,
        dir: &Path,
        hostname: &str,
    ) -> Result<Vec<(PathBuf, PathBuf)>, NetError> {
        let write = |path: PathBuf, text: String| {
            std::fs::write(&path, text)
                .map(|()| path.clone())
                .map_err(|source| NetError::File { path, source })
        };
        // Recorded first: whatever happens next, a restarted agent finds what to remove.
        let record = serde_json::to_string(net).unwrap_or_default();
        write(dir.join(NET_FILE), record)?;
        link::create_netns(&net.netns).map_err(self.link_err())?;
        link::plumb(&Plumbing {
            netns: net.netns.clone(),
            host_if: net.host_if.clone(),
            bridge,
            ip: net.ip,
            subnet: net.subnet,
        })
        .map_err(self.link_err())?;
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(|source| NetError::File {
            path: etc.clone(),
            source,
        })?;
        let hosts = write(etc.join("hosts"), hosts_file(hostname, net.ip))?;
        let resolv = write(etc.join("resolv.conf"), resolv_conf())?;
        Ok(vec![
            (hosts, PathBuf::from("/etc/hosts")),
            (resolv, PathBuf::from("/etc/resolv.conf")),
        ])
    }

    /// Removes an attempt's veth pair and namespace and frees its address (no-op for an attempt
    /// that was never on the bridge).
    pub fn detach(&self, dir: &Path) {
        if let Some(net) = self.unmap(dir) {
            self.remove(dir, &net);
        }
    }

    /// The first half of [`BridgeNet::detach`], done before the attempt's end is reported: its
    /// ports stop answering, so the server may give them to the next task at once. Returns
    /// what [`BridgeNet::remove`] is left to do.
    pub fn unmap(&self, dir: &Path) -> Option<AttemptNet> {
        let text = std::fs::read_to_string(dir.join(NET_FILE)).ok()?;
        let net = match serde_json::from_str::<AttemptNet>(&text) {
            Ok(net) => net,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "unreadable net.json");
                let _ = std::fs::remove_file(dir.join(NET_FILE));
                return None;
            }
        };
        self.drop_ports(&net);
        Some(net)
    }

    /// The second half: removes the veth pair and the namespace (deleting a veth takes the
    /// kernel tens of milliseconds), then frees the address, so that no new attempt gets it
    /// while the old one may still answer.
    pub fn remove(&self, dir: &Path, net: &AttemptNet) {
        self.release(net);
        let _ = std::fs::remove_file(dir.join(NET_FILE));
    }

    fn drop_ports(&self, net: &AttemptNet) {
        let mut st = lock(&self.state);
        if st.ports.remove(&net.netns).is_some() {
            if let Err(e) = self.apply_rules(&st) {
                tracing::warn!(error = %e, "cannot remove an attempt's ports");
            }
        }
    }

    fn release(&self, net: &AttemptNet) {
        self.drop_ports(net);
        if let Err(e) = link::unplumb(&net.netns, &net.host_if) {
            tracing::warn!(netns = %net.netns.display(), error = %e, "cannot remove an attempt's network");
        }
        let mut st = lock(&self.state);
        if st.subnet == Some(net.subnet) {
            if let Some(p) = st.pool.as_mut() {
                p.release(net.ip);
            }
        }
    }

    /// At start-up: keeps the addresses of `live` attempts (their directories) and removes
    /// every namespace and veth of this agent that no live attempt owns (left by a crash).
    pub fn recover(&self, live: &[PathBuf]) {
        let mut owned: HashMap<PathBuf, String> = HashMap::new();
        let mut ips = Vec::new();
        for dir in live {
            if let Ok(text) = std::fs::read_to_string(dir.join(NET_FILE)) {
                if let Ok(net) = serde_json::from_str::<AttemptNet>(&text) {
                    ips.push(net.ip);
                    if !net.ports.is_empty() {
                        lock(&self.state)
                            .ports
                            .insert(net.netns.clone(), rules(&net));
                    }
                    owned.insert(net.netns, net.host_if);
                }
            }
        }
        lock(&self.state).recovered = ips;
        if let Ok(entries) = std::fs::read_dir(&self.netns_dir) {
            for e in entries.flatten() {
                let path = e.path();
                if !owned.contains_key(&path) {
                    tracing::info!(netns = %path.display(), "removing a network namespace no attempt owns");
                    if let Err(e) = link::delete_netns(&path) {
                        tracing::warn!(netns = %path.display(), error = %e, "cannot remove");
                    }
                }
            }
        }
        let links = match link::links_with_prefix(&self.prefix) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list links");
                return;
            }
        };
        for name in links {
            if !owned.values().any(|h| *h == name) {
                tracing::info!(link = %name, "removing a veth no attempt owns");
                if let Err(e) = link::delete_link(&name) {
                    tracing::warn!(link = %name, error = %e, "cannot remove");
                }
            }
        }
    }

    /// Removes everything of the bridge network on this node: namespaces, veths, the bridge
    /// and the routes to other nodes (`gaffer agent --cleanup-network`).
    pub fn remove_all(&self) -> Result<(), NetError> {
        self.recover(&[]);
        link::sync_routes(&[]).map_err(self.link_err())?;
        link::delete_link(&self.bridge).map_err(self.link_err())?;
        Ok(())
    }
}

/// The DNAT rules of an attempt's mapped ports.
fn rules(net: &AttemptNet) -> Vec<nft::PortRule> {
    net.ports
        .iter()
        .map(|p| nft::PortRule {
            proto: match p.protocol {
                Protocol::Tcp => nft::Proto::Tcp,
                Protocol::Udp => nft::Proto::Udp,
            },
            host_port: p.host,
            ip: net.ip,
            container_port: p.container,
        })
        .collect()
}

/// Writes a replica's `/etc/hosts` (loopback and every peer) and its hostfile (the peers'
/// names, one a line) under `dir/etc`, in place: a running container sees the change through
/// its bind mount. Returns the hostfile's path.
pub fn write_peers(dir: &Path, peers: &[(String, String)]) -> Result<PathBuf, NetError> {
    let etc = dir.join("etc");
    let write = |path: PathBuf, text: String| {
        std::fs::write(&path, text)
            .map(|()| path.clone())
            .map_err(|source| NetError::File { path, source })
    };
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let mut names = String::new();
    for (name, ip) in peers {
        hosts.push_str(&format!("{ip}\t{name}\n"));
        names.push_str(&format!("{name}\n"));
    }
    write(etc.join("hosts"), hosts)?;
    write(etc.join("hostfile"), names)
}

/// The attempt's `/etc/hosts`: loopback names and its own hostname.
fn hosts_file(hostname: &str, ip: Ipv4Addr) -> String {
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n")
}

/// The node's resolvers, less those on loopback (the container's loopback is its own).
fn resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    host.lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some("nameserver"), Some(addr)) => !(addr.starts_with("127.") || addr == "::1"),
                _ => true,
            }
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_an_interface_name_and_differ_per_agent() {
        let a = BridgeNet::new("a", Path::new("/var/lib/gaffer-a"), "gaffer0");
        let b = BridgeNet::new("b", Path::new("/var/lib/gaffer-b"), "gaffer0");
        assert_ne!(a.prefix, b.prefix);
        let name = format!("{}{:08x}", a.prefix, fnv("j-000001[0]#1"));
        assert!(name.len() <= 15, "{name}");
    }

    #[test]
    fn hosts_names_the_attempt() {
        let h = hosts_file("web-0", Ipv4Addr::new(10, 88, 3, 2));
        assert!(h.ends_with("10.88.3.2\tweb-0\n"), "{h}");
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
    }
}
