//! Cluster jobs' front doors (`service`): which replicas are ready, and telling every node
//! where connections to a job's service port go.

use super::{Core, CoreError, Effects};
use gaffer_api::proto::ServerMsg;
use gaffer_api::{AttemptKey, JobId, TaskState, UnixMs};

impl<E: Effects> Core<E> {
    /// The agent says replica attempt `key` became ready (or stopped being).
    pub(super) fn set_ready(
        &mut self,
        key: AttemptKey,
        ready: bool,
        now: UnixMs,
    ) -> Result<(), CoreError> {
        let Some(job) = self.jobs.get_mut(&key.job) else {
            return Ok(());
        };
        let Some(t) = job.tasks.get_mut(&key.index) else {
            return Ok(());
        };
        if t.attempt != key.attempt || t.state != TaskState::Running || t.ready == Some(ready) {
            return Ok(());
        }
        t.ready = Some(ready);
        self.batch
            .attempts
            .push((key.job, key.index, t.running_view()));
        let what = if ready { "ready" } else { "not ready" };
        self.event(
            now,
            key.job,
            Some((key.index, key.attempt)),
            Some("running"),
            "running",
            what.to_string(),
        );
        self.send_service(key.job);
        Ok(())
    }

    /// Tells every connected node where job `jid`'s service connections go now (no-op for a
    /// job without a service).
    pub(super) fn send_service(&mut self, jid: JobId) {
        if let Some(msg) = self.service_msg(jid) {
            self.broadcast(msg);
        }
    }

    /// Tells every connected node to close job `jid`'s front door on port `host`.
    pub(super) fn close_service(&mut self, jid: JobId, host: u16) {
        self.broadcast(ServerMsg::Service {
            job: jid,
            host,
            backends: Vec::new(),
            open: false,
        });
    }

    /// Sends every active job's service to node `name` (it just connected).
    pub(super) fn send_services_to(&mut self, name: &str) {
        let msgs: Vec<ServerMsg> = self
            .jobs
            .keys()
            .filter_map(|id| self.service_msg(*id))
            .collect();
        for msg in msgs {
            self.fx.send(name, msg);
        }
    }

    /// Job `jid`'s front door: its ready replicas' addresses, in replica order.
    fn service_msg(&self, jid: JobId) -> Option<ServerMsg> {
        let job = self.jobs.get(&jid)?;
        let svc = job.row.spec.service?;
        let mut ready: Vec<(u32, String)> = job
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Running && t.ready == Some(true))
            .filter_map(|(i, t)| Some((*i, format!("{}:{}", t.ip.as_ref()?, svc.port))))
            .collect();
        ready.sort();
        Some(ServerMsg::Service {
            job: jid,
            host: svc.host,
            backends: ready.into_iter().map(|(_, b)| b).collect(),
            open: true,
        })
    }

    fn broadcast(&mut self, msg: ServerMsg) {
        let to: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.connected && !n.down)
            .map(|(name, _)| name.clone())
            .collect();
        for name in to {
            self.fx.send(&name, msg.clone());
        }
    }
}
