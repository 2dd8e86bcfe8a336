//! Placement: which node a task goes to. Pure and synchronous: capacities and demands in,
//! placements out, no I/O and no clock.
//!
//! A node is *feasible* for a task when it is ready, accepts the kind of task (host process or
//! container), carries every label the task is constrained to, and has the CPUs and memory the
//! task reserves still unreserved. Among feasible
//! nodes the [`Strategy`] picks one: the most free memory by default (spread load by memory
//! headroom), `Binpack` (the fullest node that fits) or `Spread` (the node with fewest tasks).
//! [`Scheduler::place`] reserves what it hands out, so one call per task in priority order gives
//! a consistent round.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// How to choose among feasible nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The node with the most unreserved memory (ties: most free CPUs).
    #[default]
    MostFreeMemory,
    /// The node with the least unreserved memory that still fits.
    Binpack,
    /// The node running the fewest tasks.
    Spread,
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCapacity {
    /// The node's name (for messages).
    pub name: String,
    /// Ready for new work.
    pub ready: bool,
    /// Accepts tasks without an image.
    pub allow_host_tasks: bool,
    /// CPUs not reserved.
    pub cpus_free: f64,
    /// Memory not reserved, bytes.
    pub memory_free: u64,
    /// Tasks placed there.
    pub tasks: u32,
    /// The node's labels.
    pub labels: BTreeMap<String, String>,
    /// Container images the node has (empty when it cannot run containers).
    pub images: HashSet<String>,
    /// Runs the `bridge` container network (it has a subnet).
    pub bridge: bool,
    /// Host ports taken there: (port, protocol number: 0 TCP, 1 UDP).
    pub ports: HashSet<(u16, u8)>,
    /// Host directories its tasks may mount (and what is under them).
    pub allow_mounts: Vec<std::path::PathBuf>,
}

/// What a task needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Demand {
    /// CPUs to reserve.
    pub cpus: f64,
    /// Memory to reserve, bytes.
    pub memory: u64,
    /// Runs as a host process (needs a node that allows them).
    pub host: bool,
    /// Labels the node must carry.
    pub constraints: BTreeMap<String, String>,
    /// Container image the node must have.
    pub image: Option<String>,
    /// Needs the `bridge` container network.
    pub bridge: bool,
    /// Host ports it needs free on the node: (port, protocol number: 0 TCP, 1 UDP).
    pub ports: Vec<(u16, u8)>,
    /// The one node it may run on (a replica whose peers' shared directory is there).
    pub node: Option<String>,
    /// Host directories it mounts: the node must allow each.
    pub mounts: Vec<std::path::PathBuf>,
}

/// Why a task fits nowhere right now.
#[derive(Debug, Clone, PartialEq)]
pub enum Unfit {
    /// No node is ready.
    NoReadyNode,
    /// No ready node accepts host tasks.
    NoHostNode,
    /// No ready node runs the bridge network.
    NoBridge,
    /// Nodes have room, but a host port the task needs is taken on each of them.
    PortTaken {
        /// The port, e.g. `18080/tcp`.
        port: String,
    },
    /// No ready node (with the labels) has the image.
    NoImage {
        /// The image.
        image: String,
    },
    /// No ready node carries the labels.
    NoMatchingNode {
        /// The constraints, as `k=v,k=v`.
        constraints: String,
    },
    /// No ready node lets tasks mount this host directory.
    NoMount {
        /// The directory.
        path: String,
    },
    /// It must run on one node (`Demand::node`), which is not ready.
    NodeGone {
        /// The node.
        node: String,
    },
    /// No single node holds every replica, and they must share one.
    NoSingleNode,
    /// Not all replicas of a cluster job fit at once (and none is placed).
    Gang {
        /// Replicas to place.
        replicas: u32,
        /// How many of them fit now.
        fit: u32,
        /// CPUs each asks for.
        cpus: f64,
        /// Memory each asks for, bytes.
        memory: u64,
        /// Whether they would all fit were the nodes empty.
        ever: bool,
        /// Why the next one does not fit.
        next: Box<Unfit>,
    },
    /// Nodes exist but none has enough free CPUs and memory.
    NoCapacity {
        /// CPUs asked for.
        cpus: f64,
        /// Memory asked for.
        memory: u64,
        /// Whether any node could ever hold it (total capacity).
        ever: bool,
    },
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::NoReadyNode => write!(f, "no node is ready"),
            Unfit::NoMount { path } => write!(
                f,
                "no ready node lets tasks mount {path} (start its agent with --allow-mount DIR)"
            ),
            Unfit::NodeGone { node } => write!(
                f,
                "it must run on node {node}, where its peers' shared directory is, and that node is not ready"
            ),
            Unfit::NoSingleNode => write!(
                f,
                "no single node has room for all of them, and they share a directory the nodes do not share (agents without --storage-dir)"
            ),
            Unfit::NoHostNode => write!(
                f,
                "no ready node allows host tasks (start an agent with --allow-host-tasks, or give an image)"
            ),
            Unfit::NoBridge => write!(
                f,
                "no ready node runs the bridge network (agents that run containers offer it unless started with --no-bridge)"
            ),
            Unfit::PortTaken { port } => write!(
                f,
                "host port {port} is taken on every node with room (it is free again when the task holding it ends)"
            ),
            Unfit::NoImage { image } => write!(
                f,
                "no ready node has the image `{image}` (import it with `gaffer image import`)"
            ),
            Unfit::NoMatchingNode { constraints } => {
                write!(f, "no ready node has the labels {constraints}")
            }
            Unfit::Gang {
                replicas,
                fit,
                cpus,
                memory,
                ever,
                next,
            } => {
                write!(
                    f,
                    "needs {replicas} × ({cpus} CPU, {}) at once; {fit} fit now ({next})",
                    human_bytes(*memory)
                )?;
                if !ever {
                    write!(f, "; the ready nodes could never hold them all")?;
                }
                Ok(())
            }
            Unfit::NoCapacity { cpus, memory, ever } => {
                write!(f, "no node has {cpus} free cpus and {} free memory", human_bytes(*memory))?;
                if !ever {
                    write!(f, " (no node is that large)")?;
                }
                Ok(())
            }
        }
    }
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < 4 {
        v /= 1024.0;
        i += 1;
    }
    if v.fract() == 0.0 {
        format!("{v}{}", U[i])
    } else {
        format!("{v:.1}{}", U[i])
    }
}

/// Tolerance for floating-point CPU arithmetic.
const EPS: f64 = 1e-9;

/// One scheduling round over a set of nodes.
#[derive(Debug, Clone)]
pub struct Scheduler {
    nodes: Vec<NodeCapacity>,
    totals: Vec<(f64, u64)>,
    /// Each distinct label pair `(k, v)` of the nodes gets a bit (when there are at most 64).
    bits: HashMap<(String, String), u32>,
    /// Label bits of each node; `None` when there are too many distinct pairs for a mask.
    masks: Option<Vec<u64>>,
    /// Demands that already failed this round; a task needing at least as much fails too.
    failed: Vec<Demand>,
}

impl Scheduler {
    /// Starts a round. `totals[i]` is node i's total (cpus, memory), used only for messages.
    pub fn new(nodes: Vec<NodeCapacity>, totals: Vec<(f64, u64)>) -> Self {
        let mut bits: HashMap<(String, String), u32> = HashMap::new();
        for n in &nodes {
            for (k, v) in &n.labels {
                let next = bits.len() as u32;
                bits.entry((k.clone(), v.clone())).or_insert(next);
            }
        }
        let masks = (bits.len() <= 64).then(|| {
            nodes
                .iter()
                .map(|n| {
                    n.labels
                        .iter()
                        .fold(0u64, |m, (k, v)| m | 1 << bits[&(k.clone(), v.clone())])
                })
                .collect()
        });
        Scheduler {
            nodes,
            totals,
            bits,
            masks,
            failed: Vec::new(),
        }
    }

    /// The nodes with what is left of them.
    pub fn nodes(&self) -> &[NodeCapacity] {
        &self.nodes
    }

    /// True once no node could take even the smallest possible task.
    pub fn exhausted(&self) -> bool {
        !self.nodes.iter().any(|n| n.ready && n.cpus_free > EPS)
    }

    /// Whether any node is ready for new work.
    pub fn any_ready(&self) -> bool {
        self.nodes.iter().any(|n| n.ready)
    }

    /// Marks `ports` taken on node `i` (host ports the caller picked itself).
    pub fn take_ports(&mut self, i: usize, ports: &[(u16, u8)]) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.ports.extend(ports.iter().copied());
        }
    }

    /// Picks a node for `d` and reserves its resources there; returns the node's index.
    pub fn place(&mut self, d: &Demand, strategy: Strategy) -> Result<usize, Unfit> {
        let want = self.want(d);
        if self.failed.iter().any(|f| dominates(d, f)) {
            return Err(self.why(d, &want));
        }
        let mut best: Option<usize> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            // Cheap numeric checks first; labels last.
            if !(n.ready
                && n.cpus_free + EPS >= d.cpus
                && n.memory_free >= d.memory
                && (!d.host || n.allow_host_tasks)
                && (!d.bridge || n.bridge)
                && d.ports.iter().all(|p| !n.ports.contains(p))
                && d.node.as_ref().is_none_or(|w| *w == n.name)
                && mounts_allowed(d, n)
                && self.has_labels(i, &want, d)
                && d.image.as_ref().is_none_or(|im| n.images.contains(im)))
            {
                continue;
            }
            best = match best {
                None => Some(i),
                Some(b) if better(strategy, n, &self.nodes[b]) => Some(i),
                keep => keep,
            };
        }
        match best {
            Some(i) => {
                let n = &mut self.nodes[i];
                n.cpus_free -= d.cpus;
                n.memory_free -= d.memory;
                n.tasks += 1;
                n.ports.extend(d.ports.iter().copied());
                Ok(i)
            }
            None => {
                self.failed.push(d.clone());
                Err(self.why(d, &want))
            }
        }
    }

    /// Places `n` tasks of demand `d` (the replicas of a cluster job) in one decision: all of
    /// them, reserving what they take, or none, reserving nothing. A miss does not count
    /// against single tasks of the same demand later in the round.
    ///
    /// With `together`, all of them go on one node (they share a directory the nodes do not
    /// share): the first node in the strategy's order that holds them all.
    pub fn place_gang(
        &mut self,
        d: &Demand,
        n: u32,
        strategy: Strategy,
        together: bool,
    ) -> Result<Vec<usize>, Unfit> {
        match self.try_gang(d, n, strategy, together) {
            Ok((trial, got)) => {
                *self = trial;
                Ok(got)
            }
            Err((fit, next)) => Err(Unfit::Gang {
                replicas: n,
                fit,
                cpus: d.cpus,
                memory: d.memory,
                ever: self.gang_fits_empty(d, n, strategy, together),
                next: Box::new(next),
            }),
        }
    }

    /// Places the gang on a copy: the copy and the nodes, or how many fit and why not more.
    fn try_gang(
        &self,
        d: &Demand,
        n: u32,
        strategy: Strategy,
        together: bool,
    ) -> Result<(Scheduler, Vec<usize>), (u32, Unfit)> {
        let all = |d: &Demand| -> Result<(Scheduler, Vec<usize>), (u32, Unfit)> {
            let mut trial = self.clone();
            let mut got = Vec::with_capacity(n as usize);
            for _ in 0..n {
                match trial.place(d, strategy) {
                    Ok(i) => got.push(i),
                    Err(next) => return Err((got.len() as u32, next)),
                }
            }
            Ok((trial, got))
        };
        if !together || d.node.is_some() {
            if let Some(w) = &d.node {
                if !self.nodes.iter().any(|x| x.ready && x.name == *w) {
                    return Err((0, Unfit::NodeGone { node: w.clone() }));
                }
            }
            return all(d);
        }
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by(|a, b| {
            let (a, b) = (&self.nodes[*a], &self.nodes[*b]);
            better(strategy, b, a).cmp(&better(strategy, a, b))
        });
        let mut most = 0;
        for i in order {
            let one = Demand {
                node: Some(self.nodes[i].name.clone()),
                ..d.clone()
            };
            match all(&one) {
                Ok(done) => return Ok(done),
                Err((fit, _)) => most = most.max(fit),
            }
        }
        Err((most, Unfit::NoSingleNode))
    }

    /// Whether `n` tasks of `d` would fit on the ready nodes were nothing running there.
    fn gang_fits_empty(&self, d: &Demand, n: u32, strategy: Strategy, together: bool) -> bool {
        let mut empty = self.clone();
        empty.failed.clear();
        for (node, (cpus, memory)) in empty.nodes.iter_mut().zip(&self.totals) {
            node.cpus_free = *cpus;
            node.memory_free = *memory;
            node.tasks = 0;
            node.ports.clear();
        }
        empty.try_gang(d, n, strategy, together).is_ok()
    }

    /// The demand's constraints as a label mask: `Some(None)` when some constraint names a
    /// label no node has, `None` when masks are not in use.
    fn want(&self, d: &Demand) -> Option<Option<u64>> {
        if d.constraints.is_empty() {
            return Some(Some(0));
        }
        self.masks.as_ref()?;
        let mut m = 0u64;
        for (k, v) in &d.constraints {
            match self.bits.get(&(k.clone(), v.clone())) {
                Some(b) => m |= 1 << b,
                None => return Some(None),
            }
        }
        Some(Some(m))
    }

    fn has_labels(&self, i: usize, want: &Option<Option<u64>>, d: &Demand) -> bool {
        match (want, &self.masks) {
            (Some(Some(w)), Some(masks)) => masks[i] & w == *w,
            (Some(Some(0)), None) => true,
            (Some(None), _) => false,
            _ => d
                .constraints
                .iter()
                .all(|(k, v)| self.nodes[i].labels.get(k) == Some(v)),
        }
    }

    /// Explains a miss in one pass over the nodes, without allocating.
    fn why(&self, d: &Demand, want: &Option<Option<u64>>) -> Unfit {
        let (mut ready, mut kind, mut bridged, mut labelled, mut imaged, mut ever) =
            (false, false, false, false, false, false);
        let mut taken: Option<(u16, u8)> = None;
        let (mut mounted, mut refused_mount) = (false, None::<std::path::PathBuf>);
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.ready {
                continue;
            }
            ready = true;
            if d.host && !n.allow_host_tasks {
                continue;
            }
            kind = true;
            if d.bridge && !n.bridge {
                continue;
            }
            bridged = true;
            if !self.has_labels(i, want, d) {
                continue;
            }
            labelled = true;
            if d.image.as_ref().is_some_and(|im| !n.images.contains(im)) {
                continue;
            }
            imaged = true;
            if !mounts_allowed(d, n) {
                refused_mount = refused_mount.or_else(|| {
                    d.mounts
                        .iter()
                        .find(|m| !n.allow_mounts.iter().any(|a| m.starts_with(a)))
                        .cloned()
                });
                continue;
            }
            mounted = true;
            if n.cpus_free + EPS >= d.cpus && n.memory_free >= d.memory {
                // It has room now, so a port is what stops it.
                taken = taken.or_else(|| d.ports.iter().find(|p| n.ports.contains(p)).copied());
            }
            let (c, m) = self.totals.get(i).copied().unwrap_or((0.0, 0));
            if c + EPS >= d.cpus && m >= d.memory {
                ever = true;
            }
        }
        if !ready {
            Unfit::NoReadyNode
        } else if !kind {
            Unfit::NoHostNode
        } else if !bridged {
            Unfit::NoBridge
        } else if !labelled {
            let c: Vec<String> = d
                .constraints
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            Unfit::NoMatchingNode {
                constraints: c.join(","),
            }
        } else if !imaged {
            Unfit::NoImage {
                image: d.image.clone().unwrap_or_default(),
            }
        } else if !mounted {
            Unfit::NoMount {
                path: refused_mount
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            }
        } else if let Some((port, proto)) = taken {
            Unfit::PortTaken {
                port: format!("{port}/{}", if proto == 1 { "udp" } else { "tcp" }),
            }
        } else {
            Unfit::NoCapacity {
                cpus: d.cpus,
                memory: d.memory,
                ever,
            }
        }
    }
}

/// Whether node `n` lets tasks mount every host directory `d` mounts.
fn mounts_allowed(d: &Demand, n: &NodeCapacity) -> bool {
    d.mounts
        .iter()
        .all(|m| n.allow_mounts.iter().any(|a| m.starts_with(a)))
}

fn better(strategy: Strategy, a: &NodeCapacity, b: &NodeCapacity) -> bool {
    match strategy {
        Strategy::MostFreeMemory => (a.memory_free, a.cpus_free) > (b.memory_free, b.cpus_free),
        Strategy::Binpack => (a.memory_free, a.cpus_free) < (b.memory_free, b.cpus_free),
        Strategy::Spread => {
            (a.tasks, std::cmp::Reverse(a.memory_free))
                < (b.tasks, std::cmp::Reverse(b.memory_free))
        }
    }
}

/// `a` needs at least what `b` needed (and `b` did not fit).
fn dominates(a: &Demand, b: &Demand) -> bool {
    a.image == b.image
        && a.node == b.node
        && b.mounts.iter().all(|m| a.mounts.contains(m))
        && (a.bridge || !b.bridge)
        && b.ports.iter().all(|p| a.ports.contains(p))
        && a.cpus + EPS >= b.cpus
        && a.memory >= b.memory
        && (a.host || !b.host)
        && b.constraints
            .iter()
            .all(|(k, v)| a.constraints.get(k) == Some(v))
}

#[cfg(test)]
mod tests;
