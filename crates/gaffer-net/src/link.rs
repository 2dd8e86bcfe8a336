//! Links, addresses, routes and network namespaces through rtnetlink.
//!
//! The functions are synchronous. Each runs its netlink requests on a short-lived thread with a
//! single-threaded runtime: a netlink socket belongs to the network namespace of the thread that
//! opens it, so a thread that first joins an attempt's namespace configures the inside of it,
//! and the caller's own namespace and runtime are never touched.

use crate::ipam::Cidr;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder,
};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

/// The route protocol number that marks gaffer's routes to other nodes' subnets, so that they
/// can be told apart from everyone else's (`ip route show proto 171`).
pub const ROUTE_PROTO: u8 = 171;

/// Prefix of the host end of every attempt's veth pair.
pub const VETH_PREFIX: &str = "gv";

/// A failed network operation, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was being done, e.g. "add veth gv1a2b3c4d".
        op: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call or file operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done, with the path.
        op: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A link that should exist does not.
    #[error("no link named `{0}`")]
    NoLink(String),
}

type Result<T> = std::result::Result<T, LinkError>;

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let op = op.into();
    move |source| LinkError::Netlink { op, source }
}

fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> LinkError {
    let op = op.into();
    move |source| LinkError::Io { op, source }
}

/// Runs `f` with a netlink handle on a fresh thread, inside the network namespace at `netns`
/// (or the caller's).
fn with_netlink<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let netns = netns.map(Path::to_path_buf);
    let thread = std::thread::Builder::new()
        .name("gaffer-netlink".into())
        .spawn(move || -> Result<T> {
            if let Some(path) = &netns {
                let file = std::fs::File::open(path)
                    .map_err(io(format!("open network namespace {}", path.display())))?;
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    |e| LinkError::Io {
                        op: format!("join network namespace {}", path.display()),
                        source: e.into(),
                    },
                )?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(io("start a netlink runtime"))?;
            rt.block_on(async move {
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(io("open a netlink socket"))?;
                let conn = tokio::spawn(conn);
                let r = f(handle).await;
                conn.abort();
                r
            })
        })
        .map_err(io("start a netlink thread"))?;
    thread.join().unwrap_or_else(|_| {
        Err(LinkError::Io {
            op: "netlink thread".into(),
            source: std::io::Error::other("panicked"),
        })
    })
}

async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // The kernel answers an unknown name with ENODEV.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("look up link {name}"))(e)),
    }
}

async fn add_address(h: &Handle, index: u32, ip: Ipv4Addr, prefix: u8, what: &str) -> Result<()> {
    match h
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(nl(format!("add address {ip}/{prefix} to {what}"))(e)),
    }
}

async fn set_up(h: &Handle, index: u32, what: &str) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("set {what} up")))
}

/// Makes sure bridge `name` exists, is up and holds `gateway/prefix`; returns its index.
pub fn ensure_bridge(name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<u32> {
    let name = name.to_string();
    with_netlink(None, move |h| async move {
        let index = match index_of(&h, &name).await? {
            Some(i) => i,
            None => {
                match h.link().add(LinkBridge::new(&name).build()).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                    Err(e) => return Err(nl(format!("add bridge {name}"))(e)),
                }
                index_of(&h, &name)
                    .await?
                    .ok_or_else(|| LinkError::NoLink(name.clone()))?
            }
        };
        add_address(&h, index, gateway, prefix, &name).await?;
        set_up(&h, index, &name).await?;
        Ok(index)
    })
}

/// Deletes link `name`; no error if it does not exist.
pub fn delete_link(name: &str) -> Result<()> {
    let name = name.to_string();
    with_netlink(None, move |h| async move {
        if let Some(index) = index_of(&h, &name).await? {
            match h.link().del(index).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                Err(e) => return Err(nl(format!("delete link {name}"))(e)),
            }
        }
        Ok(())
    })
}

/// Names of the links whose name starts with `prefix`.
pub fn links_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let prefix = prefix.to_string();
    with_netlink(None, move |h| async move {
        let mut links = h.link().get().execute();
        let mut names = Vec::new();
        while let Some(l) = links.try_next().await.map_err(nl("list links"))? {
            for a in &l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    if n.starts_with(&prefix) {
                        names.push(n.clone());
                    }
                }
            }
        }
        Ok(names)
    })
}

/// Creates a network namespace kept alive by a bind mount at `path` (like `ip netns add`).
pub fn create_netns(path: &Path) -> Result<()> {
    let path = path.to_path_buf();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    std::fs::File::create(&path).map_err(io(format!("create {}", path.display())))?;
    let p = path.clone();
    let made = std::thread::Builder::new()
        .name("gaffer-netns".into())
        .spawn(move || -> std::io::Result<()> {
            // A thread's network namespace is its own: this one moves to a new namespace,
            // which the bind mount then keeps after the thread ends.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &p,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .map_err(io("start a netns thread"))?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("netns thread panicked")));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(LinkError::Io {
            op: format!("create network namespace {}", path.display()),
            source: e,
        });
    }
    Ok(())
}

/// Deletes the network namespace at `path` (its links go with it, and their host-side peers);
/// no error if it is already gone.
pub fn delete_netns(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(LinkError::Io {
                op: format!("unmount network namespace {}", path.display()),
                source: e.into(),
            })
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("remove {}", path.display()))(e)),
    }
}

/// An attempt's end of the bridge network.
#[derive(Debug, Clone)]
pub struct Plumbing {
    /// The attempt's network namespace (a file made by [`create_netns`]).
    pub netns: PathBuf,
    /// Host end of the veth pair, a port of the bridge.
    pub host_if: String,
    /// The bridge's index ([`ensure_bridge`]).
    pub bridge: u32,
    /// The attempt's address inside, on `eth0`.
    pub ip: Ipv4Addr,
    /// The node subnet (its prefix is eth0's).
    pub subnet: Cidr,
}

/// Creates the veth pair of an attempt: `host_if` on the bridge, `eth0` inside `netns` with
/// the attempt's address and a default route via the subnet's gateway; loopback is up.
pub fn plumb(p: &Plumbing) -> Result<()> {
    let netns = std::fs::File::open(&p.netns)
        .map_err(io(format!("open network namespace {}", p.netns.display())))?;
    let (host_if, bridge) = (p.host_if.clone(), p.bridge);
    with_netlink(None, move |h| async move {
        // The peer is created inside the namespace, named eth0 there: one request.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name("eth0".to_string())
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let mut veth = LinkMessageBuilder::<LinkUnspec>::new()
            .name(host_if.clone())
            .build();
        veth.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        h.link()
            .add(veth)
            .execute()
            .await
            .map_err(nl(format!("add veth {host_if}")))?;
        drop(netns);
        let index = index_of(&h, &host_if)
            .await?
            .ok_or_else(|| LinkError::NoLink(host_if.clone()))?;
        h.link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("attach {host_if} to the bridge")))?;
        // Hairpin: with br_netfilter, a container's packets to its own node's mapped port come
        // back out of the port they came in on.
        h.link()
            .set_port(LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .await
            .map_err(nl(format!("set hairpin on {host_if}")))
    })?;
    let (ip, subnet) = (p.ip, p.subnet);
    with_netlink(Some(&p.netns), move |h| async move {
        // As in Docker: in its own namespace a task of any user may bind any port (the
        // sysctl is the namespace's own, opened from a thread inside it).
        std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")
            .map_err(io("allow low ports in the attempt's network namespace"))?;
        let lo = index_of(&h, "lo")
            .await?
            .ok_or_else(|| LinkError::NoLink("lo".into()))?;
        set_up(&h, lo, "lo").await?;
        let eth0 = index_of(&h, "eth0")
            .await?
            .ok_or_else(|| LinkError::NoLink("eth0".into()))?;
        add_address(&h, eth0, ip, subnet.prefix(), "eth0").await?;
        set_up(&h, eth0, "eth0").await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(subnet.gateway())
            .output_interface(eth0)
            .build();
        h.route()
            .add(route)
            .execute()
            .await
            .map_err(nl(format!("add default route via {}", subnet.gateway())))
    })
}

/// Removes an attempt's veth pair and network namespace. Deleting the host end first takes
/// `eth0` with it at once; a namespace's own teardown in the kernel is asynchronous.
pub fn unplumb(netns: &Path, host_if: &str) -> Result<()> {
    let link = delete_link(host_if);
    let ns = delete_netns(netns);
    link.and(ns)
}

/// Makes gaffer's routes (those marked [`ROUTE_PROTO`]) exactly `want`: each subnet via its
/// node's address. Routes of nodes no longer wanted are deleted.
pub fn sync_routes(want: &[(Cidr, Ipv4Addr)]) -> Result<()> {
    let want = want.to_vec();
    with_netlink(None, move |h| async move {
        let mut have = Vec::new();
        let mut routes = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = routes.try_next().await.map_err(nl("list routes"))? {
            if r.header.protocol != RouteProtocol::Other(ROUTE_PROTO) {
                continue;
            }
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let via = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let dst = dst.and_then(|d| Cidr::new(d, r.header.destination_prefix_length));
            have.push((dst, via, r));
        }
        for (dst, via, r) in have {
            let keep = matches!((dst, via), (Some(d), Some(v)) if want.contains(&(d, v)));
            if !keep {
                let what = dst.map(|d| d.to_string()).unwrap_or_default();
                match h.route().del(r).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
                    Err(e) => return Err(nl(format!("delete route to {what}"))(e)),
                }
            }
        }
        for (subnet, via) in want {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(subnet.addr(), subnet.prefix())
                .gateway(via)
                .protocol(RouteProtocol::Other(ROUTE_PROTO))
                .build();
            h.route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("add route to {subnet} via {via}")))?;
        }
        Ok(())
    })
}
