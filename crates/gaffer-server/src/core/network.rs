//! The cluster's container network: every node that runs the bridge network gets a subnet of
//! the cluster CIDR (kept in the store, so a restart or fail-over keeps it), and every such
//! node is told its subnet and the routes to the others' subnets via their addresses.

use super::{Core, Effects};
use gaffer_api::proto::ServerMsg;
use gaffer_net::ipam::{carve, Cidr};
use std::net::Ipv4Addr;

impl<E: Effects> Core<E> {
    /// Gives node `name` a subnet if it runs the bridge network and has none yet.
    pub(super) fn give_subnet(&mut self, name: &str) {
        let wants = self.nodes.get(name).is_some_and(|n| n.info.bridge);
        if !wants || self.subnets.contains_key(name) {
            return;
        }
        let taken: Vec<Cidr> = self.subnets.values().copied().collect();
        match carve(self.cfg.cluster_cidr, self.cfg.node_prefix, &taken) {
            Some(subnet) => {
                tracing::info!(node = %name, %subnet, "node gets a container subnet");
                self.subnets.insert(name.to_string(), subnet);
                self.batch
                    .node_subnets
                    .push((name.to_string(), subnet.to_string()));
            }
            None => tracing::warn!(
                node = %name,
                cluster_cidr = %self.cfg.cluster_cidr,
                "the cluster CIDR has no free subnet left: this node gets no bridge network"
            ),
        }
    }

    /// Tells every connected bridge node its subnet and the routes to the other nodes that are
    /// up. Called when a node comes, goes or changes address.
    pub(super) fn send_networks(&mut self) {
        let up: Vec<(String, Cidr, Option<Ipv4Addr>)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.connected && !n.down && n.info.bridge)
            .filter_map(|(name, n)| {
                let subnet = *self.subnets.get(name)?;
                Some((name.clone(), subnet, node_ip(&n.address)))
            })
            .collect();
        for (name, subnet, _) in &up {
            let routes = up
                .iter()
                .filter(|(other, _, _)| other != name)
                .filter_map(|(_, s, ip)| Some((s.to_string(), ip.as_ref()?.to_string())))
                .collect();
            self.fx.send(
                name,
                ServerMsg::Network {
                    subnet: subnet.to_string(),
                    cluster_cidr: self.cfg.cluster_cidr.to_string(),
                    routes,
                },
            );
        }
    }
}

/// The IPv4 address of a node's `ip:port` (its agent's connection); `None` for anything else.
fn node_ip(address: &str) -> Option<Ipv4Addr> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::node_ip;

    #[test]
    fn node_addresses_are_ipv4_with_a_port() {
        assert_eq!(node_ip("10.1.2.3:40000"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(node_ip("10.1.2.3"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(node_ip("[::1]:80"), None);
        assert_eq!(node_ip("local"), None);
    }
}
