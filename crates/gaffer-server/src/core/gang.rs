//! Cluster jobs (`replicas`): the start barrier, and every replica's peers.
//!
//! All replicas are placed in one decision (`placement`). Each one's agent prepares it (image,
//! namespace, address), reports [`AgentMsg::Prepared`](gaffer_api::proto::AgentMsg) and waits.
//! Once every replica's current attempt has an address, each is sent the list of all
//! (hostname, address) pairs: a waiting one writes its `/etc/hosts` and starts, a running one
//! rewrites its `/etc/hosts` (a peer came back somewhere else). So no replica's command runs
//! before every peer's name resolves.

use super::{Core, CoreError, Effects};
use gaffer_api::proto::ServerMsg;
use gaffer_api::{AttemptKey, JobId, TaskState};

impl<E: Effects> Core<E> {
    /// Replica attempt `key` is prepared, at `ip`.
    pub(super) fn prepared(&mut self, key: AttemptKey, ip: String) -> Result<(), CoreError> {
        let Some(job) = self.jobs.get_mut(&key.job) else {
            return Ok(());
        };
        let Some(t) = job.tasks.get_mut(&key.index) else {
            return Ok(());
        };
        // A report for an older attempt, or a repeated one.
        if t.attempt != key.attempt || t.state != TaskState::Assigned {
            return Ok(());
        }
        t.ip = Some(ip);
        self.release_peers(key.job);
        Ok(())
    }

    /// Tells every replica of `jid` its peers, if each has a placed attempt with an address.
    pub(super) fn release_peers(&mut self, jid: JobId) {
        let Some(job) = self.jobs.get(&jid) else {
            return;
        };
        let n = job.row.counts.total;
        let mut peers = Vec::with_capacity(n as usize);
        let mut to = Vec::with_capacity(n as usize);
        for index in 0..n {
            let Some(t) = job.tasks.get(&index) else {
                return;
            };
            let (TaskState::Assigned | TaskState::Running, Some(ip), Some(node)) =
                (t.state, &t.ip, &t.node)
            else {
                return;
            };
            peers.push((gaffer_api::spec::hostname(&job.row.name, index), ip.clone()));
            let key = AttemptKey {
                job: jid,
                index,
                attempt: t.attempt,
            };
            to.push((node.clone(), key));
        }
        for (node, key) in to {
            self.fx.send(
                &node,
                ServerMsg::Peers {
                    key,
                    peers: peers.clone(),
                },
            );
        }
    }
}
