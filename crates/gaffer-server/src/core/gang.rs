//! Cluster jobs (`replicas`): the start barrier, and every replica's peers.
//!
//! All replicas are placed in one decision (`placement`). Each one's agent prepares it (image,
//! namespace, address), reports [`AgentMsg::Prepared`](gaffer_api::proto::AgentMsg) and waits.
//! Once every replica's current attempt has an address, each is sent the list of all
//! (hostname, address) pairs: a waiting one writes its `/etc/hosts` and starts, a running one
//! rewrites its `/etc/hosts` (a peer came back somewhere else). So no replica's command runs
//! before every peer's name resolves.

use super::transition::{move_task, AfterEnd};
use super::{Core, CoreError, Effects};
use gaffer_api::cluster::Restart;
use gaffer_api::proto::ServerMsg;
use gaffer_api::{AttemptKey, JobId, JobSpec, TaskState, UnixMs};

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
        // A host replica has no address of its own: its node's.
        let ip = match ip.is_empty() {
            false => ip,
            true => {
                let address = t
                    .node
                    .as_ref()
                    .and_then(|n| self.nodes.get(n))
                    .map(|n| n.address.as_str())
                    .unwrap_or_default();
                node_ip(address)
            }
        };
        t.ip = Some(ip);
        self.release_peers(key.job);
        Ok(())
    }

    /// Tells every replica of `jid` its peers, if each that has not ended for good has a
    /// placed attempt with an address.
    pub(super) fn release_peers(&mut self, jid: JobId) {
        let Some(job) = self.jobs.get(&jid) else {
            return;
        };
        let n = job.row.counts.total;
        let mut peers = Vec::with_capacity(n as usize);
        let mut to = Vec::with_capacity(n as usize);
        for index in 0..n {
            if index >= job.row.next_fresh {
                return; // not placed yet
            }
            let Some(t) = job.tasks.get(&index) else {
                continue; // ended for good (succeeded): no longer a peer
            };
            let (TaskState::Assigned | TaskState::Running, Some(ip), Some(node)) =
                (t.state, &t.ip, &t.node)
            else {
                return;
            };
            peers.push((
                gaffer_api::cluster::hostname(&job.row.name, index),
                ip.clone(),
            ));
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

/// The IP address of a node connected from `address` (`IP:PORT`; an in-process agent is
/// `local`, on loopback).
fn node_ip(address: &str) -> String {
    match address.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => address
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.to_string())
            .unwrap_or_else(|_| "127.0.0.1".into()),
    }
}

/// Why the core stops a replica's attempt: another replica failed.
#[derive(Debug, Clone)]
pub(super) enum Stop {
    /// `--restart group`: it is placed again with the others, no earlier than `at`, without
    /// using a retry.
    Regroup {
        /// When the failed replica's retry is due.
        at: UnixMs,
        /// What failed, e.g. `replica 2 (ring-2) failed: exit code 1`.
        why: String,
    },
    /// The job fails: the failed replica is not restarted.
    Fail {
        /// What failed.
        why: String,
    },
}

/// What a replica's end means for it.
pub(super) enum Outcome {
    /// Not a replica, or it succeeded or was killed on request: nothing more.
    Plain,
    /// It failed on its own: its restart policy applies to the others; with `stay`, it is
    /// not retried itself (`--restart never`).
    Failed {
        /// Not retried.
        stay: bool,
    },
    /// The core stopped it: it ends as `end` with `message`, then `next`.
    Stopped {
        /// Its end state.
        end: TaskState,
        /// Its message.
        message: String,
        /// Retried with its group, or not.
        next: AfterEnd,
    },
}

/// Classifies the end `end` of a replica of `spec` (`stop`: why the core stopped it, if it did;
/// `failed_for_good`: another replica of the job has failed for good).
pub(super) fn after_replica_end(
    spec: &JobSpec,
    end: TaskState,
    stop: Option<&Stop>,
    kill_requested: bool,
    failed_for_good: bool,
    now: UnixMs,
) -> Outcome {
    if spec.replicas.is_none() || kill_requested || end == TaskState::Succeeded {
        return Outcome::Plain;
    }
    match stop {
        Some(Stop::Regroup { at, why }) => Outcome::Stopped {
            end: TaskState::Lost,
            message: format!("restarted with its group: {why}"),
            next: AfterEnd::Retry {
                delay: at.saturating_sub(now),
                free: true,
            },
        },
        Some(Stop::Fail { why }) => Outcome::Stopped {
            end: TaskState::Failed,
            message: format!("stopped: {why}"),
            next: AfterEnd::Stay,
        },
        // Killed, not on request and with no stop on record: the core stopped it before a
        // restart lost why (stops are kept in memory). A replica failed for good: the job
        // fails; else, under `group`, it goes back with its group.
        None if end == TaskState::Killed => {
            if !failed_for_good && spec.restart.unwrap_or_default() == Restart::Group {
                Outcome::Stopped {
                    end: TaskState::Lost,
                    message: "restarted with its group".into(),
                    next: AfterEnd::Retry {
                        delay: 0,
                        free: true,
                    },
                }
            } else {
                Outcome::Stopped {
                    end: TaskState::Failed,
                    message: "stopped: another replica failed".into(),
                    next: AfterEnd::Stay,
                }
            }
        }
        None => Outcome::Failed {
            stay: spec.restart == Some(Restart::Never),
        },
    }
}

impl<E: Effects> Core<E> {
    /// Replica `key` failed; `retry_at`: when it is retried, if it is. Under `group` the
    /// other replicas are stopped and placed again with it; if it is not retried, the others
    /// are stopped for good and the job fails; under `replica` the others keep running.
    pub(super) fn replica_failed(
        &mut self,
        key: AttemptKey,
        retry_at: Option<UnixMs>,
        now: UnixMs,
    ) {
        let Some(job) = self.jobs.get_mut(&key.job) else {
            return;
        };
        let policy = job.row.spec.restart.unwrap_or_default();
        let name = gaffer_api::cluster::hostname(&job.row.name, key.index);
        let stop = match (policy, retry_at) {
            (Restart::Replica, Some(_)) => return,
            (Restart::Group, Some(at)) => Stop::Regroup {
                at,
                why: format!("replica {} ({name}) failed", key.index),
            },
            (_, _) => Stop::Fail {
                why: format!(
                    "replica {} ({name}) failed and is not restarted (--restart {})",
                    key.index,
                    policy.as_str()
                ),
            },
        };
        let mut kills = Vec::new();
        let mut failed = Vec::new();
        for (&index, t) in job.tasks.iter_mut() {
            if index == key.index {
                continue;
            }
            match (t.state, &t.node) {
                (TaskState::Assigned | TaskState::Running, Some(node)) => {
                    let k = AttemptKey {
                        job: key.job,
                        index,
                        attempt: t.attempt,
                    };
                    kills.push((node.clone(), k));
                }
                (TaskState::Pending, _) if matches!(stop, Stop::Fail { .. }) => {
                    if let Err(e) =
                        move_task(&mut job.row.counts, key.job, index, t, TaskState::Failed)
                    {
                        super::refused(&e);
                        continue;
                    }
                    t.not_before = None;
                    failed.push((index, t.attempt, t.row(key.job, index)));
                }
                _ => {}
            }
        }
        if !failed.is_empty() {
            job.ready.retain(|i| !failed.iter().any(|(f, _, _)| f == i));
            job.tasks
                .retain(|i, _| !failed.iter().any(|(f, _, _)| f == i));
        }
        for (index, attempt, row) in failed {
            self.batch.tasks.push(row);
            let why = match &stop {
                Stop::Fail { why } | Stop::Regroup { why, .. } => why.clone(),
            };
            self.event(
                now,
                key.job,
                Some((index, attempt)),
                Some("pending"),
                "failed",
                format!("stopped: {why}"),
            );
        }
        for (node, k) in kills {
            self.gang_stops.insert(k, stop.clone());
            self.fx.send(&node, ServerMsg::Kill { key: k });
        }
    }
}
