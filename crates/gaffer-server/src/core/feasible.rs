//! Refusing at submit what no node of the cluster could ever run — more CPUs or memory than
//! the largest node offers, labels no node has, an image nobody can supply, more replicas
//! than the cluster holds at once — instead of letting it wait forever. A submit that means
//! to wait for such a node says so (`allow_unplaceable`). Nodes known only from the store do
//! not count, and with no node registered yet nothing is refused.

use super::model::{milli, Node};
use super::{Core, Effects};
use gaffer_api::{ByteSize, FieldError, JobSpec};

impl<E: Effects> Core<E> {
    /// Why no registered node could ever run a task of `spec`, naming the field and the
    /// largest node's figure; `None` if one could (or no node has registered yet).
    pub(super) fn unplaceable(&self, spec: &JobSpec) -> Option<FieldError> {
        let registered: Vec<&Node> = self.nodes.values().filter(|n| n.conn != 0).collect();
        if registered.is_empty() {
            return None;
        }
        let kind: Vec<&Node> = registered
            .iter()
            .copied()
            .filter(|n| match spec.image {
                Some(_) => n.info.containers,
                None => n.info.allow_host_tasks,
            })
            .collect();
        if kind.is_empty() {
            // A host task on a cluster without host nodes is refused by its own check.
            return spec.image.as_ref().map(|_| {
                FieldError::new(
                    "image",
                    "no node runs containers (agents need root and overlayfs)",
                )
            });
        }
        let fit: Vec<&Node> = kind
            .iter()
            .copied()
            .filter(|n| {
                spec.constraints
                    .iter()
                    .all(|(k, v)| n.info.labels.get(k) == Some(v))
            })
            .collect();
        if fit.is_empty() {
            let want: Vec<String> = spec
                .constraints
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            return Some(FieldError::new(
                "constraints",
                format!("no node has the label(s) {}", want.join(", ")),
            ));
        }
        let cpus = milli(spec.cpus());
        let most_cpus = fit.iter().map(|n| milli(n.info.cpus)).max().unwrap_or(0);
        if cpus > most_cpus {
            return Some(FieldError::new(
                "resources.cpus",
                format!(
                    "{} CPUs: the largest node offers {}",
                    spec.cpus(),
                    most_cpus as f64 / 1000.0
                ),
            ));
        }
        let memory = spec.resources.memory.map_or(0, |m| m.0);
        let most_memory = fit.iter().map(|n| n.info.memory).max().unwrap_or(0);
        if memory > most_memory {
            return Some(FieldError::new(
                "resources.memory",
                format!(
                    "{}: the largest node offers {}",
                    ByteSize(memory),
                    ByteSize(most_memory)
                ),
            ));
        }
        if let Some(image) = &spec.image {
            let somewhere = self.catalog.contains_key(image)
                || fit.iter().any(|n| n.info.images.iter().any(|i| i == image));
            if !somewhere {
                return Some(FieldError::new(
                    "image",
                    format!("no node has image `{image}` and the server's catalog does not either (gaffer image import)"),
                ));
            }
        }
        if let Some(n) = spec.replicas {
            let room: u64 = fit
                .iter()
                .map(|node| {
                    let by_cpu = milli(node.info.cpus).checked_div(cpus).unwrap_or(u64::MAX);
                    let by_mem = node.info.memory.checked_div(memory).unwrap_or(u64::MAX);
                    by_cpu.min(by_mem)
                })
                .fold(0u64, u64::saturating_add);
            if room < n as u64 {
                return Some(FieldError::new(
                    "replicas",
                    format!("{n} replicas must run at once, and the cluster's nodes hold at most {room} of them ({} CPU, {} each)", spec.cpus(), ByteSize(memory)),
                ));
            }
        }
        None
    }
}
