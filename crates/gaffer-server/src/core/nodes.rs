//! Rules for nodes: an agent registers and is reconciled with what the core believes runs
//! there, speaks (heartbeats, attempt reports), goes silent or away, is drained; and the image
//! catalog that decides which images every node can get.

use super::model::Node;
use super::transition::lost_result;
use super::{refused, Core, CoreError, Effects};
use gaffer_api::proto::{AgentMsg, AttemptReport, NodeInfo, ServerMsg};
use gaffer_api::{AttemptKey, TaskState, UnixMs};
use std::collections::{BTreeMap, HashMap};

impl<E: Effects> Core<E> {
    /// An agent registered on stream `conn` with the attempts it knows of.
    pub(super) fn agent_connected(
        &mut self,
        conn: u64,
        address: String,
        info: NodeInfo,
        reports: Vec<AttemptReport>,
        now: UnixMs,
    ) {
        let name = info.name.clone();
        tracing::info!(node = %name, cpus = info.cpus, memory = info.memory, "agent registered");
        let node = self
            .nodes
            .entry(name.clone())
            .or_insert_with(|| Node::new(info.clone(), conn, now));
        node.info = info;
        self.prune_images(&name);
        let node = self.nodes.get_mut(&name).expect("just inserted");
        node.down = false;
        node.reregister_asked = false;
        node.address = address;
        node.conn = conn;
        node.connected = true;
        node.last_seen = now;
        node.ledger.clear();
        self.give_subnet(&name);
        self.send_networks();
        self.send_services_to(&name);

        let mut reported: HashMap<AttemptKey, AttemptReport> = reports
            .into_iter()
            .map(|r| match &r {
                AttemptReport::Running { key }
                | AttemptReport::Prepared { key, .. }
                | AttemptReport::Ended { key, .. } => (*key, r),
            })
            .collect();
        // Every attempt we believe runs on this node, checked against what the agent knows.
        let mut ours = Vec::new();
        for (jid, job) in &self.jobs {
            for (idx, t) in &job.tasks {
                if t.is_placed() && t.node.as_deref() == Some(&name) {
                    let key = AttemptKey {
                        job: *jid,
                        index: *idx,
                        attempt: t.attempt,
                    };
                    ours.push((key, t.state, job.held_by(t)));
                }
            }
        }
        for (key, state, reservation) in ours {
            let n = self.nodes.get_mut(&name).expect("node inserted");
            n.ledger.reserve(key, reservation);
            match reported.remove(&key) {
                Some(AttemptReport::Running { .. }) => {
                    if state == TaskState::Assigned {
                        if let Err(e) = self.mark_running(key, now, None, now) {
                            refused(&e);
                        }
                    }
                    self.resend_kill(&name, key);
                }
                Some(AttemptReport::Prepared { ip, .. }) => {
                    // A replica at the start barrier: its peers are sent (again) once all are.
                    if state == TaskState::Assigned {
                        if let Err(e) = self.prepared(key, ip) {
                            refused(&e);
                        }
                    }
                    self.resend_kill(&name, key);
                }
                Some(AttemptReport::Ended { result, .. }) => {
                    if let Err(e) = self.attempt_ended(&name, key, result, now, true) {
                        refused(&e);
                    }
                }
                None => {
                    let why = "the agent has no record of this attempt (it never started, or its supervisor vanished)";
                    if let Err(e) = self.attempt_ended(&name, key, lost_result(now, why), now, true)
                    {
                        refused(&e);
                    }
                }
            }
        }
        // Attempts the agent has that the core does not: stop them, or let them go.
        for (key, r) in reported {
            match r {
                AttemptReport::Running { .. } | AttemptReport::Prepared { .. } => {
                    self.fx.send(&name, ServerMsg::Kill { key })
                }
                AttemptReport::Ended { .. } => self.fx.send(&name, ServerMsg::Forget { key }),
            }
        }
    }

    /// Stream `conn` of `node` closed (a newer stream of the same node keeps it connected).
    pub(super) fn agent_gone(&mut self, conn: u64, node: &str) {
        self.fx.unlink(node, conn);
        if let Some(n) = self.nodes.get_mut(node) {
            if n.conn == conn {
                n.connected = false;
                self.send_networks();
            }
        }
    }

    /// A message on `node`'s stream `conn`.
    pub(super) fn agent_msg(
        &mut self,
        conn: u64,
        node: &str,
        msg: AgentMsg,
        now: UnixMs,
    ) -> Result<(), CoreError> {
        match self.nodes.get_mut(node) {
            Some(n) if n.conn == conn => {
                n.last_seen = now;
                if n.down && !n.reregister_asked {
                    n.reregister_asked = true;
                    self.fx.send(node, ServerMsg::Reregister);
                }
            }
            _ => return Ok(()), // a stale connection
        }
        match msg {
            AgentMsg::Register { .. } => Ok(()),
            AgentMsg::Heartbeat {
                memory_free,
                images,
                image_digests,
            } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.memory_free = memory_free;
                    n.info.images = images;
                    n.info.image_digests = image_digests;
                }
                self.prune_images(node);
                Ok(())
            }
            AgentMsg::Started { key, at, ip } => self.mark_running(key, at, ip, now),
            AgentMsg::Prepared { key, ip } => self.prepared(key, ip),
            AgentMsg::Ready { key, ready } => self.set_ready(key, ready, now),
            AgentMsg::Ended { key, result } => self.attempt_ended(node, key, result, now, true),
            // File and archive reads are answered by the gateway, never by the core.
            AgentMsg::FileData { .. }
            | AgentMsg::ReadBlob { .. }
            | AgentMsg::ExecOutput { .. }
            | AgentMsg::ExecExit { .. } => Ok(()),
        }
    }

    /// A kill of attempt `key` on `name` may have been lost while its agent was away: sends
    /// it again if one is due.
    fn resend_kill(&mut self, name: &str, key: AttemptKey) {
        let killing = self.migrating.contains(&key)
            || self.gang_stops.contains_key(&key)
            || self
                .jobs
                .get(&key.job)
                .is_some_and(|j| j.row.kill_requested);
        if killing {
            self.fx.send(name, ServerMsg::Kill { key });
        }
    }

    /// Stops placing tasks on `name`; with `migrate`, kills its attempts so they run elsewhere
    /// (without using up their retries).
    pub(super) fn drain(&mut self, name: &str, migrate: bool) -> Result<(), CoreError> {
        let n = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| CoreError::NoSuchNode(name.to_string()))?;
        n.draining = true;
        if migrate {
            for key in n.ledger.attempts() {
                self.migrating.insert(key);
                self.fx.send(name, ServerMsg::Kill { key });
            }
        }
        Ok(())
    }

    /// Undoes a drain.
    pub(super) fn enable(&mut self, name: &str) -> Result<(), CoreError> {
        let n = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| CoreError::NoSuchNode(name.to_string()))?;
        n.draining = false;
        Ok(())
    }

    /// Declares nodes silent for longer than the heartbeat timeout `down`; their attempts are
    /// lost (and retried by the usual rules).
    pub(super) fn check_nodes(&mut self, now: UnixMs) {
        let timeout = self.cfg.heartbeat_timeout.as_millis() as u64;
        let dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                !n.down
                    && (n.connected || !n.ledger.is_empty())
                    && now.saturating_sub(n.last_seen) > timeout
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in dead {
            let Some(n) = self.nodes.get_mut(&name) else {
                continue;
            };
            tracing::warn!(node = %name, silent_ms = now.saturating_sub(n.last_seen), "node is down");
            // The stream may still be open (a network cut the agent has not noticed): keep it,
            // and ask the agent to register again when it speaks, so that attempts placed
            // elsewhere meanwhile are killed there.
            n.down = true;
            n.reregister_asked = false;
            let why = format!(
                "node {name} stopped responding (no heartbeat for {})",
                gaffer_api::DurationSpec(timeout)
            );
            // The agent must keep reporting these attempts (so it is told to kill the ones
            // still running when it registers again): it is not told to forget them.
            for key in n.ledger.attempts() {
                if let Err(e) = self.attempt_ended(&name, key, lost_result(now, &why), now, false) {
                    refused(&e);
                }
            }
            // The others stop routing to it.
            self.send_networks();
        }
    }

    /// A new image catalog. Nodes' copies it no longer has leave the placement view at once
    /// (the API tells connected nodes to delete them), not at their next heartbeat, so that no
    /// task is placed on a copy that is about to go.
    pub(super) fn set_catalog(&mut self, catalog: BTreeMap<String, (String, u64)>) {
        self.catalog = catalog;
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in names {
            self.prune_images(&n);
        }
    }

    /// Hides from placement a node's copies of catalog images that the catalog no longer maps
    /// to that archive (the node was offline when the image was removed or replaced). A name
    /// the catalog still has is fetched anew when a task needs it. The copies are not deleted
    /// here: a server that lost its catalog (an HA fail-over without a shared --storage-dir)
    /// must not wipe the nodes' images; `gaffer image rm` and `gaffer agent image rm` delete.
    fn prune_images(&mut self, node: &str) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let catalog = &self.catalog;
        let stale: Vec<String> = n
            .info
            .image_digests
            .iter()
            .filter(|(name, digest)| catalog.get(*name).is_none_or(|(d, _)| d != *digest))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            n.info.image_digests.remove(&name);
            n.info.images.retain(|i| *i != name);
        }
    }
}
