//! Container networks on a node: the `bridge` network of `gaffer agent`.
//!
//! Every node has one Linux bridge (default `gaffer0`) holding the gateway address (`.1`) of the
//! node's subnet, which the server carves out of the cluster CIDR. A bridge attempt gets a
//! network namespace of its own, kept as a bind-mounted file so that the container joins it and
//! a restarted agent finds it; one end of a veth pair is `eth0` inside, with an address from the
//! node's subnet and a default route via the gateway, the other end is a port of the bridge.
//! Other nodes' subnets are routed via those nodes' addresses (host-gw, no overlay). One
//! nftables table (`inet gaffer`), replaced atomically, masquerades traffic that leaves the
//! cluster CIDR and maps host ports to containers.
//!
//! - [`ipam`]: subnets and addresses (pure);
//! - [`nft`]: the nftables table, generated as JSON and applied with `nft -j -f -`;
//! - [`link`]: links, addresses, routes and namespaces through rtnetlink.

pub mod ipam;
pub mod link;
pub mod nft;
