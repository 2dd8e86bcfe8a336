//! The nftables table of gaffer.
//!
//! A node has one table (default `inet gaffer`) that [`apply`] replaces as a whole, in one
//! transaction, with `nft -j -f -`: the JSON of [`Ruleset::to_json`] adds the table (so that the
//! delete that follows cannot fail on a node without it), deletes it, then adds it again with its
//! chains and rules. The kernel applies the batch atomically: a packet sees either the old table
//! or the new one, and a batch that fails leaves the old table as it was.
//!
//! The table holds three `nat` chains:
//!
//! - `prerouting` (hook `prerouting`, priority `dstnat`): for each [`PortRule`],
//!   `meta nfproto ipv4 fib daddr type local PROTO dport HOST dnat ip to IP:CPORT`, so the host
//!   port answers on every address of the node (as `docker run -p` without its userland proxy);
//! - `output` (hook `output`, priority `dstnat`): the same DNAT for connections the node itself
//!   opens to one of its addresses, 127.0.0.1 included;
//! - `postrouting` (hook `postrouting`, priority `srcnat`):
//!   - `ip saddr SUBNET ip daddr != CLUSTER masquerade`: containers reach the outside with the
//!     node's address, while traffic between containers (on this node or another one) keeps its
//!     source address;
//!   - `ip saddr 127.0.0.0/8 oifname BRIDGE masquerade`: a connection to 127.0.0.1:HOST, DNATed
//!     to a container, leaves with the bridge's address so that the container can answer it
//!     (the kernel routes such a packet only with `route_localnet`, see
//!     [`enable_route_localnet`]);
//!   - `ip saddr SUBNET oifname BRIDGE ct status dnat masquerade`: hairpin, a container that
//!     connects to a mapped port of its own node (on the bridge's address or another one) gets
//!     its answer back through the node, not directly from its neighbour. Where `br_netfilter`
//!     is active (bridged frames pass the IP hooks), the DNATed frame is bridged back out of the
//!     port it came in by, so the container's bridge port needs hairpin mode (`ip link set VETH
//!     type bridge_slave hairpin on`), as Docker sets without its userland proxy.
//!
//! There is no `filter` chain: a chain of ours that accepts cannot overrule another table that
//! drops (every base chain of a hook sees the packet), and with no table dropping, forwarding is
//! accepted by default.
//!
//! Everything runs in the network namespace of the caller: the agent calls it in its node's
//! namespace, the tests in a namespace they create.

use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The default name of gaffer's table.
pub const DEFAULT_TABLE: &str = "gaffer";

/// The family of gaffer's table.
///
/// `inet` rather than `ip`: one table serves both IPv4 and a later IPv6 without a second table to
/// replace and clean up, and NAT works in `inet` since Linux 5.2. Every rule here matches IPv4
/// only (`ip saddr`, `meta nfproto ipv4`).
pub const FAMILY: &str = "inet";

pub use crate::ipam::{Cidr, CidrError};

/// The nft JSON of a subnet as a match's right-hand side: `{"prefix":{..}}`, or the bare
/// address for a /32.
fn cidr_json(c: Cidr) -> Value {
    if c.prefix() >= 32 {
        json!(c.addr().to_string())
    } else {
        json!({"prefix": {"addr": c.addr().to_string(), "len": c.prefix()}})
    }
}

/// The transport protocol of a mapped port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The name nft uses: `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host port mapped to a container: `HOST -> IP:CONTAINER` for one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRule {
    /// TCP or UDP.
    pub proto: Proto,
    /// The port that answers on every address of the node, 127.0.0.1 included.
    pub host_port: u16,
    /// The container's address.
    pub ip: Ipv4Addr,
    /// The port inside the container.
    pub container_port: u16,
}

/// The whole content of gaffer's table on a node: see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The table's name (family [`FAMILY`]), [`DEFAULT_TABLE`] unless told otherwise.
    pub table: String,
    /// The node's bridge, e.g. `gaffer0`.
    pub bridge: String,
    /// The node's subnet, e.g. `10.88.3.0/24`.
    pub subnet: Cidr,
    /// The cluster CIDR, e.g. `10.88.0.0/16`: traffic to it keeps its source address.
    pub cluster_cidr: Cidr,
    /// The mapped ports.
    pub ports: Vec<PortRule>,
}

/// An error of the nftables functions.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be started or talked to.
    #[error("cannot run `nft` for table {table:?} (is the nftables package installed?): {source}")]
    Spawn {
        /// The table concerned.
        table: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// `nft` ran and failed; the kernel or nft refused the batch (nothing was changed).
    #[error("nft failed to {action} table {FAMILY} {table:?} ({status}): {stderr}")]
    Nft {
        /// The table concerned.
        table: String,
        /// What was asked of nft: `replace`, `delete` or `list`.
        action: &'static str,
        /// nft's exit status.
        status: std::process::ExitStatus,
        /// nft's standard error, trimmed.
        stderr: String,
    },
    /// `nft -j list tables` printed something that is not the JSON expected.
    #[error("unexpected output of `nft -j list tables`: {0}")]
    Output(String),
    /// An interface name that cannot be one (empty, over 15 bytes, `/`, `.` or `..`).
    #[error("invalid interface name {0:?}")]
    BadInterface(String),
    /// A sysctl could not be written.
    #[error("cannot write {path}: {source}", path = path.display())]
    Sysctl {
        /// The file under /proc/sys.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

impl Ruleset {
    /// A ruleset for the table [`DEFAULT_TABLE`] with no mapped ports.
    pub fn new(bridge: impl Into<String>, subnet: Cidr, cluster_cidr: Cidr) -> Self {
        Ruleset {
            table: DEFAULT_TABLE.to_string(),
            bridge: bridge.into(),
            subnet,
            cluster_cidr,
            ports: Vec::new(),
        }
    }

    /// The nft JSON (`{"nftables":[...]}`) of one transaction that replaces the whole table:
    /// add it, delete it, add it again with its chains and rules.
    pub fn to_json(&self) -> Value {
        let table = self.table.as_str();
        let mut cmds = vec![
            json!({"add": {"table": {"family": FAMILY, "name": table}}}),
            json!({"delete": {"table": {"family": FAMILY, "name": table}}}),
            json!({"add": {"table": {"family": FAMILY, "name": table}}}),
        ];
        for (name, hook, prio) in [
            ("prerouting", "prerouting", -100),
            ("output", "output", -100),
            ("postrouting", "postrouting", 100),
        ] {
            cmds.push(json!({"add": {"chain": {
                "family": FAMILY, "table": table, "name": name,
                "type": "nat", "hook": hook, "prio": prio, "policy": "accept",
            }}}));
        }
        let rule = |chain: &str, expr: Vec<Value>| json!({"add": {"rule": {"family": FAMILY, "table": table, "chain": chain, "expr": expr}}});
        for p in &self.ports {
            for chain in ["prerouting", "output"] {
                cmds.push(rule(chain, dnat_expr(p)));
            }
        }
        let subnet = cidr_json(self.subnet);
        cmds.push(rule(
            "postrouting",
            vec![
                eq(payload("ip", "saddr"), subnet.clone()),
                matches("!=", payload("ip", "daddr"), cidr_json(self.cluster_cidr)),
                json!({"masquerade": null}),
            ],
        ));
        cmds.push(rule(
            "postrouting",
            vec![
                eq(
                    payload("ip", "saddr"),
                    json!({"prefix": {"addr": "127.0.0.0", "len": 8}}),
                ),
                eq(json!({"meta": {"key": "oifname"}}), json!(self.bridge)),
                json!({"masquerade": null}),
            ],
        ));
        cmds.push(rule(
            "postrouting",
            vec![
                eq(payload("ip", "saddr"), subnet),
                eq(json!({"meta": {"key": "oifname"}}), json!(self.bridge)),
                json!({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}),
                json!({"masquerade": null}),
            ],
        ));
        json!({ "nftables": cmds })
    }
}

/// `meta nfproto ipv4 fib daddr type local PROTO dport HOST dnat ip to IP:CPORT`.
fn dnat_expr(p: &PortRule) -> Vec<Value> {
    vec![
        eq(json!({"meta": {"key": "nfproto"}}), json!("ipv4")),
        eq(
            json!({"fib": {"result": "type", "flags": ["daddr"]}}),
            json!("local"),
        ),
        eq(payload(p.proto.as_str(), "dport"), json!(p.host_port)),
        json!({"dnat": {"family": "ip", "addr": p.ip.to_string(), "port": p.container_port}}),
    ]
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn eq(left: Value, right: Value) -> Value {
    matches("==", left, right)
}

/// Runs `nft` with `args`, `input` on its standard input; its standard output on success.
fn run_nft(
    table: &str,
    action: &'static str,
    args: &[&str],
    input: Option<&[u8]>,
) -> Result<Vec<u8>, NftError> {
    let spawn_err = |source| NftError::Spawn {
        table: table.to_string(),
        source,
    };
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(input) = input {
        // nft reads the whole batch before it prints anything, so writing it all first cannot
        // deadlock on a full stdout pipe. Dropping the handle closes its stdin.
        let mut stdin = child.stdin.take().expect("stdin is piped");
        if let Err(e) = stdin.write_all(input) {
            // A write error (EPIPE) means nft exited early: its status and stderr say why.
            drop(stdin);
            let out = child.wait_with_output().map_err(spawn_err)?;
            if out.status.success() {
                return Err(spawn_err(e));
            }
            return Err(nft_failed(table, action, &out));
        }
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(nft_failed(table, action, &out));
    }
    Ok(out.stdout)
}

fn nft_failed(table: &str, action: &'static str, out: &std::process::Output) -> NftError {
    NftError::Nft {
        table: table.to_string(),
        action,
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

/// Replaces gaffer's table with `rs`, atomically, with `nft -j -f -` in the caller's network
/// namespace. On error nothing was changed.
pub fn apply(rs: &Ruleset) -> Result<(), NftError> {
    let input = serde_json::to_vec(&rs.to_json()).expect("a JSON value serializes");
    run_nft(&rs.table, "replace", &["-j", "-f", "-"], Some(&input)).map(drop)
}

/// Deletes the table `table` (family [`FAMILY`]); no error if there is none.
pub fn delete_table(table: &str) -> Result<(), NftError> {
    // Adding an existing table is no error, so add + delete in one batch never fails on a
    // missing table (nft's `destroy` needs Linux 6.3 and nft 1.0.8).
    let t = json!({"family": FAMILY, "name": table});
    let batch = json!({"nftables": [{"add": {"table": t}}, {"delete": {"table": t}}]});
    let input = serde_json::to_vec(&batch).expect("a JSON value serializes");
    run_nft(table, "delete", &["-j", "-f", "-"], Some(&input)).map(drop)
}

/// Whether the table `table` (family [`FAMILY`]) exists, from `nft -j list tables`.
pub fn table_exists(table: &str) -> Result<bool, NftError> {
    let out = run_nft(table, "list", &["-j", "list", "tables"], None)?;
    tables_contain(&out, table)
}

/// Whether the output of `nft -j list tables` names the table `table` of family [`FAMILY`].
fn tables_contain(out: &[u8], table: &str) -> Result<bool, NftError> {
    let bad = || NftError::Output(String::from_utf8_lossy(out).chars().take(500).collect());
    let v: Value = serde_json::from_slice(out).map_err(|_| bad())?;
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    Ok(items.iter().filter_map(|i| i.get("table")).any(|t| {
        t.get("family").and_then(Value::as_str) == Some(FAMILY)
            && t.get("name").and_then(Value::as_str) == Some(table)
    }))
}

/// Checks that `name` can be an interface name and a path component under /proc/sys.
fn check_interface(name: &str) -> Result<(), NftError> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
    {
        return Err(NftError::BadInterface(name.to_string()));
    }
    Ok(())
}

fn write_sysctl(path: PathBuf) -> Result<(), NftError> {
    std::fs::write(&path, b"1\n").map_err(|source| NftError::Sysctl { path, source })
}

/// Sets `net.ipv4.conf.BRIDGE.route_localnet=1` in the caller's network namespace, so that a
/// connection to 127.0.0.1:HOST, DNATed to a container, is routed out of the bridge.
pub fn enable_route_localnet(bridge: &str) -> Result<(), NftError> {
    check_interface(bridge)?;
    write_sysctl(PathBuf::from(format!(
        "/proc/sys/net/ipv4/conf/{bridge}/route_localnet"
    )))
}

/// Sets `net.ipv4.ip_forward=1` in the caller's network namespace, so that the node routes
/// between its bridge and its other links.
pub fn enable_ip_forward() -> Result<(), NftError> {
    write_sysctl(PathBuf::from("/proc/sys/net/ipv4/ip_forward"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_tables_output_is_parsed() {
        let out = br#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "ip", "name": "gaffer", "handle": 1}},
            {"table": {"family": "inet", "name": "other", "handle": 2}}]}"#;
        assert!(!tables_contain(out, "gaffer").unwrap());
        assert!(tables_contain(out, "other").unwrap());
        assert!(matches!(
            tables_contain(b"nope", "gaffer"),
            Err(NftError::Output(_))
        ));
        assert!(matches!(
            tables_contain(b"{}", "gaffer"),
            Err(NftError::Output(_))
        ));
    }

    #[test]
    fn interface_names_are_checked() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../../kernel",
            "sixteen-chars-xx",
            "a b",
        ] {
            assert!(
                matches!(enable_route_localnet(bad), Err(NftError::BadInterface(_))),
                "{bad:?}"
            );
        }
        check_interface("gaffer0").unwrap();
    }
}
