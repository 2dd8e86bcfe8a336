//! Port mapping of `bridge` containers: what a spec asks for ([`PortSpec`], `--port
//! HOST:CONTAINER[/tcp|/udp]` or `--port CONTAINER`) and what an attempt got ([`PortMapping`]).

use crate::spec::{FieldError, Network};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// Host ports below this need the server's `--allow-privileged-ports`.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// Where the server picks a host port for `--port CONTAINER` (the range Kubernetes uses for
/// node ports, clear of Linux's default ephemeral range 32768-60999).
pub const AUTO_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// A transport protocol.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port the task wants reachable from outside: `host` on every address of its node
/// (and 127.0.0.1 there) forwards to `container` in the task. Without `host`, the server picks
/// a free one and reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Port on the node (absent: any free one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u16>,
    /// Port inside the container.
    pub container: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
}

impl FromStr for PortSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            |why: &str| format!("`{s}`: {why} (expected HOST:CONTAINER[/tcp|/udp] or CONTAINER)");
        let (ports, protocol) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (s, Protocol::Tcp),
        };
        let port = |p: &str| -> Result<u16, String> {
            p.parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("ports are numbers from 1 to 65535"))
        };
        let (host, container) = match ports.split_once(':') {
            Some((h, c)) => (Some(port(h)?), port(c)?),
            None => (None, port(ports)?),
        };
        Ok(PortSpec {
            host,
            container,
            protocol,
        })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            Some(h) => write!(f, "{h}:{}/{}", self.container, self.protocol),
            None => write!(f, "{}/{}", self.container, self.protocol),
        }
    }
}

/// A port an attempt got: `host` on its node forwards to `container` inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PortMapping {
    /// Port on the node.
    pub host: u16,
    /// Port inside the container.
    pub container: u16,
    /// Protocol.
    #[serde(default)]
    pub protocol: Protocol,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host, self.container, self.protocol)
    }
}

/// What is wrong with a spec's `ports` (`network` and `image` are the spec's).
pub fn check(ports: &[PortSpec], network: Option<Network>, image: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if ports.is_empty() {
        return errs;
    }
    if !image {
        errs.push(FieldError::new(
            "ports",
            "only applies to container tasks (give an image)",
        ));
    }
    if let Some(n @ (Network::Host | Network::None)) = network {
        let n = if n == Network::Host { "host" } else { "none" };
        errs.push(FieldError::new(
            "ports",
            format!("need the bridge network, not `{n}` (use --network bridge, or leave it out)"),
        ));
    }
    let (mut hosts, mut inside) = (HashSet::new(), HashSet::new());
    for (i, p) in ports.iter().enumerate() {
        let field = format!("ports[{i}]");
        if p.container == 0 || p.host == Some(0) {
            errs.push(FieldError::new(
                &field,
                format!("`{p}`: ports are 1 to 65535"),
            ));
        }
        if let Some(h) = p.host {
            if !hosts.insert((h, p.protocol)) {
                errs.push(FieldError::new(
                    &field,
                    format!("host port {h}/{} is given twice", p.protocol),
                ));
            }
        }
        if !inside.insert((p.container, p.protocol)) {
            errs.push(FieldError::new(
                &field,
                format!(
                    "container port {}/{} is given twice",
                    p.container, p.protocol
                ),
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_docker_forms() {
        let p: PortSpec = "18080:80".parse().unwrap();
        assert_eq!(
            (p.host, p.container, p.protocol),
            (Some(18080), 80, Protocol::Tcp)
        );
        let p: PortSpec = "53/udp".parse().unwrap();
        assert_eq!((p.host, p.container, p.protocol), (None, 53, Protocol::Udp));
        assert_eq!(p.to_string(), "53/udp");
        for bad in ["0:80", "70000:80", "80/sctp", "a:b", ""] {
            let e = bad.parse::<PortSpec>().unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn checks_network_duplicates_and_image() {
        let p = |s: &str| s.parse::<PortSpec>().unwrap();
        assert!(check(&[p("8080:80")], None, true).is_empty());
        assert!(check(&[p("8080:80")], Some(Network::Bridge), true).is_empty());
        let e = check(&[p("8080:80")], Some(Network::Host), true);
        assert!(e[0].message.contains("not `host`"), "{e:?}");
        let e = check(&[p("8080:80"), p("8080:81"), p("9090:81")], None, true);
        let msgs: Vec<&str> = e.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "host port 8080/tcp is given twice",
                "container port 81/tcp is given twice"
            ]
        );
        assert_eq!(e[0].field, "ports[1]");
        // The same number over two protocols is two ports.
        assert!(check(&[p("53:53/udp"), p("53:53/tcp")], None, true).is_empty());
        assert_eq!(check(&[p("80")], None, false)[0].field, "ports");
    }
}
