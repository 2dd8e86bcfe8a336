//! Rules for attempts: one starts, one ends (and is retried or not), a retry's back-off passes.

use super::transition::{after_end, check, classify, move_task, AfterEnd, Ended};
use super::{gang, Core, CoreError, Effects};
use gaffer_api::proto::{AttemptResult, ServerMsg};
use gaffer_api::views::AttemptView;
use gaffer_api::{AttemptKey, TaskState, UnixMs};
use std::cmp::Reverse;

impl<E: Effects> Core<E> {
    /// The agent started attempt `key` at `at` (on the bridge network at `ip`).
    pub(super) fn mark_running(
        &mut self,
        key: AttemptKey,
        at: UnixMs,
        ip: Option<String>,
        now: UnixMs,
    ) -> Result<(), CoreError> {
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
        move_task(
            &mut job.row.counts,
            key.job,
            key.index,
            t,
            TaskState::Running,
        )?;
        t.started_at = Some(at);
        if ip.is_some() {
            t.ip = ip;
        }
        // A replica without a readiness check is ready while it runs.
        t.ready = match (&job.row.spec.replicas, &job.row.spec.ready_cmd) {
            (None, _) => None,
            (Some(_), Some(_)) => Some(false),
            (Some(_), None) => Some(true),
        };
        self.batch.tasks.push(t.row(key.job, key.index));
        self.batch
            .attempts
            .push((key.job, key.index, t.running_view()));
        self.stats.tasks_started += 1;
        if t.ready == Some(true) {
            self.send_service(key.job);
        }
        self.event(
            now,
            key.job,
            Some((key.index, key.attempt)),
            Some("assigned"),
            "running",
            String::new(),
        );
        self.touch_job(key.job, now);
        Ok(())
    }

    /// Attempt `key` on `node` ended with `result`. With `forget`, the agent is told to drop
    /// its record of the attempt (it keeps reporting it until then).
    pub(super) fn attempt_ended(
        &mut self,
        node: &str,
        key: AttemptKey,
        result: AttemptResult,
        now: UnixMs,
        forget: bool,
    ) -> Result<(), CoreError> {
        if forget {
            self.fx.send(node, ServerMsg::Forget { key });
        }
        let Some(job) = self.jobs.get_mut(&key.job) else {
            return Ok(());
        };
        let Some(t) = job.tasks.get_mut(&key.index) else {
            return Ok(());
        };
        // A report for an older attempt, or a repeated one.
        if t.attempt != key.attempt || !t.is_placed() {
            return Ok(());
        }
        let (mut end, mut message) = classify(&result);
        let migrated = self.migrating.contains(&key);
        let stop = self.gang_stops.get(&key).cloned();
        if job.row.kill_requested && end != TaskState::Succeeded {
            end = TaskState::Killed;
        } else if migrated && end != TaskState::Succeeded {
            end = TaskState::Lost;
            message = format!("moved off draining node {node}");
        }
        let mut next = after_end(
            &job.row.spec,
            Ended {
                end,
                attempt: t.attempt,
                lost: t.lost,
                kill_requested: job.row.kill_requested,
                migrated,
            },
            self.cfg.max_lost,
        );
        // A replica's end: one that failed (restart policy applies), or one the core stopped
        // because another failed.
        let outcome = gang::after_replica_end(
            &job.row.spec,
            end,
            stop.as_ref(),
            job.row.kill_requested,
            job.row.counts.failed > 0,
            now,
        );
        let replica_failed = match outcome {
            gang::Outcome::Plain => false,
            gang::Outcome::Failed { stay } => {
                if stay {
                    next = AfterEnd::Stay;
                }
                true
            }
            gang::Outcome::Stopped {
                end: e,
                message: m,
                next: n,
            } => {
                (end, message, next) = (e, m, n);
                false
            }
        };
        // Both moves are checked before anything changes.
        check(key.job, key.index, t.state, end)?;
        if let AfterEnd::Retry { .. } = next {
            check(key.job, key.index, end, TaskState::Pending)?;
        }
        self.migrating.remove(&key);
        self.gang_stops.remove(&key);
        if let Some(n) = t.node.as_ref().and_then(|n| self.nodes.get_mut(n)) {
            n.ledger.release(key);
        }
        let from = move_task(&mut job.row.counts, key.job, key.index, t, end)?;
        let attempt = AttemptView {
            attempt: key.attempt,
            node: t.node.clone().unwrap_or_default(),
            state: end,
            started_at: result.started_at.or(t.started_at),
            ended_at: Some(result.ended_at),
            exit_code: result.exit_code,
            signal: result.signal,
            message: Some(message.clone()),
            max_rss_bytes: result.max_rss_bytes,
            cpu_secs: result.cpu_secs,
            outputs: result.outputs.clone(),
            ip: t.ip.take(),
            ports: std::mem::take(&mut t.ports),
            ready: None,
        };
        let was_ready = t.ready.take() == Some(true);
        self.batch.attempts.push((key.job, key.index, attempt));
        if !result.outputs.is_empty() {
            self.fx
                .pull_outputs((node.to_string(), key, result.outputs.clone()));
        }
        self.stats.tasks_finished += 1;
        t.node = Some(node.to_string());
        t.started_at = None;
        let at = Some((key.index, key.attempt));
        match next {
            AfterEnd::Retry { delay, free } => {
                move_task(
                    &mut job.row.counts,
                    key.job,
                    key.index,
                    t,
                    TaskState::Pending,
                )?;
                if free {
                    t.lost += 1;
                }
                t.not_before = Some(now + delay);
                self.timers.push(Reverse((now + delay, key.job, key.index)));
                self.batch.tasks.push(t.row(key.job, key.index));
                self.event(now, key.job, at, Some(from.as_str()), end.as_str(), message);
                self.event(
                    now,
                    key.job,
                    at,
                    Some(end.as_str()),
                    "pending",
                    format!("retry in {}", gaffer_api::DurationSpec(delay)),
                );
            }
            AfterEnd::Stay => {
                t.not_before = None;
                let row = t.row(key.job, key.index);
                job.tasks.remove(&key.index);
                self.batch.tasks.push(row);
                self.event(now, key.job, at, Some(from.as_str()), end.as_str(), message);
            }
        }
        if was_ready {
            self.send_service(key.job);
        }
        if replica_failed {
            let retry_at = match next {
                AfterEnd::Retry { delay, .. } => Some(now + delay),
                AfterEnd::Stay => None,
            };
            self.replica_failed(key, retry_at, now);
        }
        self.touch_job(key.job, now);
        Ok(())
    }

    /// Retries whose back-off has passed become placeable.
    pub(super) fn fire_timers(&mut self, now: UnixMs) {
        while let Some(Reverse((at, jid, idx))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(job) = self.jobs.get_mut(&jid) else {
                continue;
            };
            let Some(t) = job.tasks.get_mut(&idx) else {
                continue;
            };
            if t.state == TaskState::Pending
                && t.not_before.unwrap_or(0) <= now
                && !job.ready.contains(&idx)
            {
                job.ready.push_back(idx);
                self.requeue(jid);
            }
        }
    }

    /// When the next retry timer is due.
    pub(super) fn next_timer(&self) -> Option<UnixMs> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }
}
