//! Subnets and addresses: the cluster CIDR, the subnet each node gets from it, and the addresses
//! a node hands to its bridge attempts. Pure: no I/O.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network, `ADDR/PREFIX`, always stored with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

/// A string that is not an IPv4 CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR `{input}`: {why} (expected e.g. 10.88.0.0/16)")]
pub struct CidrError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl Cidr {
    /// The network of `addr` with `prefix` bits (host bits are cleared); `None` if `prefix > 32`.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Cidr> {
        (prefix <= 32).then(|| Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The `i`-th address (0 is the network address), if inside.
    pub fn nth(&self, i: u64) -> Option<Ipv4Addr> {
        (i < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + i as u32))
    }

    /// The gateway of a node subnet: its first host address (`.1` of a /24).
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1).unwrap_or(self.addr)
    }

    /// The `i`-th subnet of length `prefix` inside this network.
    pub fn subnet(&self, prefix: u8, i: u64) -> Option<Cidr> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let count = 1u64 << (prefix - self.prefix);
        if i >= count {
            return None;
        }
        let start = u32::from(self.addr) as u64 + (i << (32 - prefix));
        Cidr::new(Ipv4Addr::from(start as u32), prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| CidrError {
            input: s.to_string(),
            why,
        };
        let (ip, prefix) = s.split_once('/').ok_or_else(|| err("no `/PREFIX`"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| err("not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| err("the prefix must be 0 to 32"))?;
        let c = Cidr::new(ip, prefix).ok_or_else(|| err("the prefix must be 0 to 32"))?;
        if c.addr != ip {
            return Err(err("host bits are set (give the network address)"));
        }
        Ok(c)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The first subnet of length `prefix` in `cluster` that overlaps none of `taken`.
pub fn carve(cluster: Cidr, prefix: u8, taken: &[Cidr]) -> Option<Cidr> {
    let count = 1u64 << prefix.checked_sub(cluster.prefix)?.min(24);
    (0..count)
        .filter_map(|i| cluster.subnet(prefix, i))
        .find(|s| !taken.iter().any(|t| t.overlaps(s)))
}

/// The addresses a node hands to its attempts: every host address of its subnet except the
/// gateway. Allocation goes round the subnet, so an address just freed is the last to be reused
/// (peers may still have it in their ARP caches).
#[derive(Debug, Clone)]
pub struct Pool {
    subnet: Cidr,
    used: BTreeSet<Ipv4Addr>,
    /// Where the next search starts (an index into the subnet).
    next: u64,
}

impl Pool {
    /// An empty pool over `subnet`.
    pub fn new(subnet: Cidr) -> Pool {
        Pool {
            subnet,
            used: BTreeSet::new(),
            next: 2,
        }
    }

    /// The subnet.
    pub fn subnet(&self) -> Cidr {
        self.subnet
    }

    /// Marks `ip` as used (an attempt that survived an agent restart); false if it is not a
    /// host address of the subnet or is already used.
    pub fn reserve(&mut self, ip: Ipv4Addr) -> bool {
        self.is_host(ip) && self.used.insert(ip)
    }

    /// A free address, now used; `None` when the subnet is full.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let size = self.subnet.size();
        let hosts = size.saturating_sub(3); // network, gateway, broadcast
        for k in 0..hosts {
            let i = 2 + (self.next - 2 + k) % hosts;
            let ip = self.subnet.nth(i)?;
            if !self.used.contains(&ip) {
                self.used.insert(ip);
                self.next = i + 1;
                if self.next >= size - 1 {
                    self.next = 2;
                }
                return Some(ip);
            }
        }
        None
    }

    /// Frees `ip`.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }

    /// Addresses in use.
    pub fn used(&self) -> usize {
        self.used.len()
    }

    fn is_host(&self, ip: Ipv4Addr) -> bool {
        let size = self.subnet.size();
        self.subnet.contains(ip) && {
            let i = (u32::from(ip) - u32::from(self.subnet.addr)) as u64;
            i >= 2 && i + 1 < size
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_refuses_with_the_reason() {
        assert_eq!(c("10.88.0.0/16").to_string(), "10.88.0.0/16");
        for (bad, why) in [
            ("10.88.0.0", "no `/PREFIX`"),
            ("10.88.0/16", "not an IPv4 address"),
            ("10.88.0.0/33", "the prefix must be 0 to 32"),
            (
                "10.88.0.1/16",
                "host bits are set (give the network address)",
            ),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert_eq!(e.why, why, "{bad}");
            assert!(e.to_string().contains(bad));
        }
    }

    #[test]
    fn carves_the_first_free_subnet() {
        let cluster = c("10.88.0.0/16");
        assert_eq!(carve(cluster, 24, &[]), Some(c("10.88.0.0/24")));
        let taken = [c("10.88.0.0/24"), c("10.88.2.0/24")];
        assert_eq!(carve(cluster, 24, &taken), Some(c("10.88.1.0/24")));
        let all: Vec<Cidr> = (0..256).map(|i| cluster.subnet(24, i).unwrap()).collect();
        assert_eq!(carve(cluster, 24, &all), None);
        assert_eq!(
            carve(c("10.88.0.0/24"), 16, &[]),
            None,
            "larger than the cluster"
        );
    }

    #[test]
    fn the_pool_skips_network_gateway_and_broadcast_and_goes_round() {
        let mut p = Pool::new(c("10.88.3.0/29")); // .0 net, .1 gw, .2-.6 hosts, .7 bcast
        let got: Vec<Ipv4Addr> = (0..5).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(got[0], Ipv4Addr::new(10, 88, 3, 2));
        assert_eq!(got[4], Ipv4Addr::new(10, 88, 3, 6));
        assert_eq!(p.allocate(), None);
        p.release(Ipv4Addr::new(10, 88, 3, 3));
        assert_eq!(p.allocate(), Some(Ipv4Addr::new(10, 88, 3, 3)));
        p.release(Ipv4Addr::new(10, 88, 3, 2));
        p.release(Ipv4Addr::new(10, 88, 3, 5));
        // Round-robin: .5 (after the last handed out, .3) comes before .2.
        assert_eq!(p.allocate(), Some(Ipv4Addr::new(10, 88, 3, 5)));
        assert!(!p.reserve(Ipv4Addr::new(10, 88, 3, 1)), "the gateway");
        assert!(!p.reserve(Ipv4Addr::new(10, 88, 3, 4)), "already used");
        assert!(p.reserve(Ipv4Addr::new(10, 88, 3, 2)));
        assert_eq!(p.used(), 5);
    }
}
