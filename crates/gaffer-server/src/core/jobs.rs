//! Rules for jobs: submit, kill, remove, retry, and dependencies between jobs.

use super::command::Reply;
use super::model::{ActiveJob, TaskRt};
use super::transition::{end_untouched, move_task};
use super::{refused, Core, CoreError, Effects};
use gaffer_api::batch::DepKind;
use gaffer_api::ports::FIRST_UNPRIVILEGED_PORT;
use gaffer_api::proto::ServerMsg;
use gaffer_api::state::TaskCounts;
use gaffer_api::{AttemptKey, FieldError, JobId, JobSpec, JobState, TaskState, UnixMs};
use gaffer_store::JobRow;

impl<E: Effects> Core<E> {
    pub(super) fn submit(
        &mut self,
        specs: Vec<JobSpec>,
        key: Option<String>,
        allow_unplaceable: bool,
        reply: Reply<Vec<JobId>>,
        now: UnixMs,
    ) {
        if let Some(k) = &key {
            match self.store.idempotent_ids(k) {
                Ok(Some(ids)) => return self.defer(reply, Ok(ids)),
                Ok(None) => {}
                Err(e) => return self.defer(reply, Err(CoreError::Unavailable(e.to_string()))),
            }
            if let Some(ids) = self
                .batch
                .idempotency
                .iter()
                .find(|(bk, _)| bk == k)
                .map(|(_, ids)| ids.clone())
            {
                return self.defer(reply, Ok(ids));
            }
        }
        let errors = match self.submit_errors(&specs, allow_unplaceable) {
            Ok(errors) => errors,
            Err(e) => return self.defer(reply, Err(e)),
        };
        if !errors.is_empty() {
            return self.defer(reply, Err(CoreError::Invalid(errors)));
        }
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = JobId(self.next_job_id);
            self.next_job_id += 1;
            let total = spec.task_count();
            let held = spec.hold;
            let row = JobRow {
                id,
                name: spec.display_name(),
                spec,
                state: JobState::Pending,
                counts: TaskCounts {
                    total,
                    pending: total,
                    ..Default::default()
                },
                created_at: now,
                finished_at: None,
                kill_requested: false,
                held,
                next_fresh: 0,
            };
            self.batch.insert_jobs.push(row.clone());
            self.event(now, id, None, None, "submitted", format!("{total} task(s)"));
            self.jobs.insert(id, ActiveJob::new(row));
            ids.push(id);
        }
        self.stats.jobs_submitted += ids.len() as u64;
        for id in &ids {
            if let Err(e) = self.link_dependencies(*id, now) {
                tracing::warn!(job = %id, error = %e, "cannot resolve dependencies");
            }
            self.requeue(*id);
        }
        self.batch.next_job_id = Some(self.next_job_id);
        if let Some(k) = key {
            self.batch.idempotency.push((k, ids.clone()));
        }
        self.defer(reply, Ok(ids));
    }

    /// What the cluster refuses in `specs` (all or nothing, like the rest of the batch).
    fn submit_errors(
        &self,
        specs: &[JobSpec],
        allow_unplaceable: bool,
    ) -> Result<Vec<FieldError>, CoreError> {
        let mut errors = Vec::new();
        let index = |i: usize| (specs.len() > 1).then_some(i);
        if !allow_unplaceable {
            for (i, spec) in specs.iter().enumerate() {
                if let Some(mut e) = self.unplaceable(spec) {
                    e.message.push_str(
                        " (to wait for such a node: gaffer submit --allow-unplaceable, \
                         or POST /v1/jobs?allow_unplaceable=true)",
                    );
                    e.index = index(i);
                    errors.push(e);
                }
            }
        }
        // A task without an image needs a node that runs host processes: refuse it when the
        // cluster has nodes and none of them does (with no node known yet, it waits).
        // Placeholders for nodes known only from running attempts (conn 0) do not count.
        let mut registered = self.nodes.values().filter(|n| n.conn != 0).peekable();
        let any_node = registered.peek().is_some();
        let host_nodes = registered.any(|n| n.info.allow_host_tasks);
        if any_node && !host_nodes {
            for (i, spec) in specs.iter().enumerate() {
                if spec.image.is_none() {
                    errors.push(FieldError {
                        index: index(i),
                        field: "image".into(),
                        message: "no node runs host processes (agents need --allow-host-tasks): give a container image".into(),
                    });
                }
            }
        }
        // Low host ports only where the server allows them.
        if !self.cfg.allow_privileged_ports {
            for (i, spec) in specs.iter().enumerate() {
                for (k, p) in spec.ports.iter().enumerate() {
                    if let Some(h) = p.host.filter(|h| *h < FIRST_UNPRIVILEGED_PORT) {
                        errors.push(FieldError {
                            index: index(i),
                            field: format!("ports[{k}]"),
                            message: format!("host port {h} is below {FIRST_UNPRIVILEGED_PORT}: the server allows that only with --allow-privileged-ports"),
                        });
                    }
                }
            }
        }
        // A service port: not below 1024 unless allowed, and one front door per port.
        for (i, spec) in specs.iter().enumerate() {
            let Some(svc) = spec.service else { continue };
            let mut problem = None;
            if svc.host < FIRST_UNPRIVILEGED_PORT && !self.cfg.allow_privileged_ports {
                problem = Some(format!("host port {} is below {FIRST_UNPRIVILEGED_PORT}: the server allows that only with --allow-privileged-ports", svc.host));
            }
            let taken = self
                .jobs
                .iter()
                .find(|(_, j)| j.row.spec.service.is_some_and(|s| s.host == svc.host));
            if let Some((other, _)) = taken {
                problem = Some(format!(
                    "host port {} is the front door of job {other}",
                    svc.host
                ));
            }
            let twice = specs[..i]
                .iter()
                .any(|s| s.service.is_some_and(|s| s.host == svc.host));
            if twice {
                problem = Some(format!(
                    "host port {} is the front door of another job in this submission",
                    svc.host
                ));
            }
            if let Some(message) = problem {
                errors.push(FieldError {
                    index: index(i),
                    field: "service".into(),
                    message,
                });
            }
        }
        // Every dependency must exist.
        for (i, spec) in specs.iter().enumerate() {
            let lists = [
                ("depends_on", &spec.depends_on),
                ("after_any", &spec.after_any),
                ("after_not_ok", &spec.after_not_ok),
            ];
            for (field, (k, d)) in lists
                .into_iter()
                .flat_map(|(f, l)| l.iter().enumerate().map(move |e| (f, e)))
            {
                let known = self.jobs.contains_key(d)
                    || self
                        .store
                        .get_job(*d)
                        .map_err(|e| CoreError::Unavailable(e.to_string()))?
                        .is_some();
                if !known {
                    errors.push(FieldError {
                        index: index(i),
                        field: format!("{field}[{k}]"),
                        message: format!("job {d} not found"),
                    });
                }
            }
        }
        Ok(errors)
    }

    pub(super) fn kill(&mut self, id: JobId, now: UnixMs) -> Result<JobState, CoreError> {
        if !self.jobs.contains_key(&id) {
            self.flush_for(id, now);
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return match self.store.get_job(id) {
                Ok(Some(row)) => Ok(row.state),
                Ok(None) => Err(CoreError::NotFound(id)),
                Err(e) => Err(CoreError::Unavailable(e.to_string())),
            };
        };
        if job.row.kill_requested {
            return Ok(job.row.state);
        }
        job.row.kill_requested = true;
        let mut rows = Vec::new();
        let mut kills = Vec::new();
        let mut task_events = Vec::new();
        for (&idx, t) in job.tasks.iter_mut() {
            match t.state {
                TaskState::Pending => {
                    if let Err(e) = move_task(&mut job.row.counts, id, idx, t, TaskState::Killed) {
                        refused(&e);
                        continue;
                    }
                    t.not_before = None;
                    rows.push(t.row(id, idx));
                    task_events.push((idx, t.attempt));
                }
                TaskState::Assigned | TaskState::Running => {
                    if let Some(n) = &t.node {
                        let key = AttemptKey {
                            job: id,
                            index: idx,
                            attempt: t.attempt,
                        };
                        kills.push((n.clone(), key));
                    }
                }
                // Ended tasks leave the map when they end.
                TaskState::Succeeded
                | TaskState::Failed
                | TaskState::TimedOut
                | TaskState::OomKilled
                | TaskState::Killed
                | TaskState::Lost
                | TaskState::DependencyFailed => {}
            }
        }
        job.tasks.retain(|_, t| t.state != TaskState::Killed);
        job.ready.clear();
        // Tasks that never started are killed too.
        end_untouched(&mut job.row.counts, TaskState::Killed);
        self.batch.tasks.extend(rows);
        for (n, key) in kills {
            self.fx.send(&n, ServerMsg::Kill { key });
        }
        self.event(now, id, None, None, "kill_requested", String::new());
        for (idx, attempt) in task_events {
            self.event(
                now,
                id,
                Some((idx, attempt)),
                Some("pending"),
                "killed",
                "killed before it started".into(),
            );
        }
        self.touch_job(id, now);
        Ok(self
            .jobs
            .get(&id)
            .map(|j| j.row.state)
            .unwrap_or(JobState::Killed))
    }

    pub(super) fn remove(&mut self, id: JobId, force: bool, now: UnixMs) -> Result<(), CoreError> {
        if let Some(job) = self.jobs.get(&id) {
            if !force {
                return Err(CoreError::Conflict(format!(
                    "job {id} is {}: kill it first, or remove it with --force",
                    job.row.state
                )));
            }
            self.kill(id, now)?;
            if let Some(job) = self.jobs.remove(&id) {
                if let Some(svc) = job.row.spec.service {
                    self.close_service(id, svc.host);
                }
                self.gang_since.remove(&id);
                self.gang_stops.retain(|k, _| k.job != id);
                // Jobs waiting on it see it end killed: a dependency on its success fails.
                self.dependency_ended(id, JobState::Killed, now);
                self.set_reason(id, None);
                self.queue.remove(&job.queue_key());
                for (idx, t) in &job.tasks {
                    if let Some(n) = t.node.as_ref().and_then(|n| self.nodes.get_mut(n)) {
                        n.ledger.release(AttemptKey {
                            job: id,
                            index: *idx,
                            attempt: t.attempt,
                        });
                    }
                }
            }
            self.dirty_jobs.remove(&id);
        } else {
            match self.store.get_job(id) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(CoreError::NotFound(id)),
                Err(e) => return Err(CoreError::Unavailable(e.to_string())),
            }
        }
        self.batch.update_jobs.retain(|j| j.id != id);
        self.batch.insert_jobs.retain(|j| j.id != id);
        self.batch.tasks.retain(|t| t.job != id);
        self.batch.attempts.retain(|(j, _, _)| *j != id);
        self.batch.events.retain(|e| e.job != id);
        self.batch.delete_jobs.push(id);
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            self.fx.send(&name, ServerMsg::Purge { job: id });
        }
        self.event(now, id, None, None, "removed", String::new());
        // The "removed" event is published but not stored: the job's events are gone. Keep the
        // counter so that the ids of deleted events are never handed out again.
        self.batch.events.retain(|e| e.job != id);
        self.batch.next_event_id = Some(self.next_event_id);
        Ok(())
    }

    pub(super) fn retry(&mut self, id: JobId, now: UnixMs) -> Result<u32, CoreError> {
        let unavailable = |e: gaffer_store::StoreError| CoreError::Unavailable(e.to_string());
        // The store must reflect this round's changes to the job before we read its tasks.
        self.flush_for(id, now);
        if self.broken {
            return Err(CoreError::Unavailable("the state store failed".into()));
        }
        if !self.jobs.contains_key(&id) {
            let row = self
                .store
                .get_job(id)
                .map_err(unavailable)?
                .ok_or(CoreError::NotFound(id))?;
            if self.batch.delete_jobs.contains(&id) {
                return Err(CoreError::NotFound(id));
            }
            self.jobs.insert(id, ActiveJob::new(row));
        }
        let job = self.jobs.get(&id).expect("inserted above");
        if job.row.kill_requested {
            return Err(CoreError::Conflict(format!(
                "job {id} was killed; submit it again instead"
            )));
        }
        let failed = [
            TaskState::Failed,
            TaskState::TimedOut,
            TaskState::OomKilled,
            TaskState::Lost,
        ];
        let rows = self
            .store
            .tasks_in_states(id, &failed)
            .map_err(unavailable)?;
        let job = self.jobs.get_mut(&id).expect("inserted above");
        let mut events = Vec::new();
        for r in rows {
            // Rows written earlier in this round are newer than the store's.
            if job.tasks.contains_key(&r.index) {
                continue;
            }
            let mut t = TaskRt::from_row(&r);
            if let Err(e) = move_task(&mut job.row.counts, id, r.index, &mut t, TaskState::Pending)
            {
                refused(&e);
                continue;
            }
            t.not_before = None;
            self.batch.tasks.push(t.row(id, r.index));
            job.tasks.insert(r.index, t);
            job.ready.push_back(r.index);
            events.push((r.index, r.attempts, r.state));
        }
        let n = events.len() as u32;
        if n > 0 {
            job.row.finished_at = None;
        }
        for (idx, attempt, from) in events {
            self.event(
                now,
                id,
                Some((idx, attempt)),
                Some(from.as_str()),
                "pending",
                "retry requested".into(),
            );
        }
        self.touch_job(id, now);
        if n == 0
            && self
                .jobs
                .get(&id)
                .is_some_and(|j| j.tasks.is_empty() && j.row.state.is_final())
        {
            self.jobs.remove(&id);
        }
        Ok(n)
    }

    /// Re-derives a job's state; writes it; drops it from memory once final.
    pub(super) fn touch_job(&mut self, id: JobId, now: UnixMs) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let old = job.row.state;
        let new = JobState::derive(&job.row.counts);
        job.row.state = new;
        if new.is_final() && job.row.finished_at.is_none() {
            job.row.finished_at = Some(now);
        }
        self.dirty_jobs.insert(id);
        if old != new {
            self.event(
                now,
                id,
                None,
                Some(old.as_str()),
                new.as_str(),
                String::new(),
            );
        }
        if !new.is_final() {
            self.requeue(id);
            return;
        }
        let mut job = self.jobs.remove(&id).expect("job present");
        // Nothing is left to hold back (a retry later starts at once).
        job.row.held = false;
        if let Some(svc) = job.row.spec.service {
            self.close_service(id, svc.host);
        }
        self.gang_since.remove(&id);
        self.queue.remove(&job.queue_key());
        self.batch.update_jobs.push(job.row);
        self.dirty_jobs.remove(&id);
        self.dependency_ended(id, new, now);
        self.set_reason(id, None);
    }

    /// Job `id` ended `state` (or was removed: `killed`): each job waiting on it runs or
    /// fails as the kind of its wait says.
    fn dependency_ended(&mut self, id: JobId, state: JobState, now: UnixMs) {
        for dependent in self.dependents.remove(&id).unwrap_or_default() {
            let Some(d) = self.jobs.get_mut(&dependent) else {
                continue;
            };
            let Some(kind) = d.waiting_on.remove(&id) else {
                continue;
            };
            if kind.satisfied_by(state == JobState::Succeeded) {
                // `requeue` says why, if it still waits (for another job, a hold, ...).
                self.set_reason(dependent, None);
                self.requeue(dependent);
            } else {
                self.fail_dependency(dependent, id, state, now);
            }
        }
    }

    /// Records what job `id` waits for; fails it at once if a dependency already failed.
    pub(super) fn link_dependencies(&mut self, id: JobId, now: UnixMs) -> Result<(), CoreError> {
        let (mut deps, singleton) = match self.jobs.get(&id) {
            // A job that has started had its dependencies met (one removed since then, seen
            // at a restart, must not fail it now).
            Some(j) if j.row.counts.started > 0 => return Ok(()),
            Some(j) => (j.row.spec.dependencies(), j.row.spec.singleton),
            None => return Ok(()),
        };
        // A singleton waits for every earlier job of its name that has not ended.
        if singleton {
            let name = &self.jobs[&id].row.name;
            deps.extend(
                self.jobs
                    .iter()
                    .filter(|(other, j)| **other < id && j.row.name == *name)
                    .map(|(other, _)| (*other, DepKind::Any)),
            );
        }
        let mut failed = None;
        for (d, kind) in deps {
            if d == id {
                continue;
            }
            if self.jobs.contains_key(&d) {
                if let Some(j) = self.jobs.get_mut(&id) {
                    // An explicit kind wins over the singleton's `any` for the same job.
                    j.waiting_on.entry(d).or_insert(kind);
                }
                self.dependents.entry(d).or_default().push(id);
                continue;
            }
            self.flush_for(d, now);
            let ended = match self.store.get_job(d) {
                Ok(Some(r)) if r.state.is_final() => r.state,
                // Not final but not active either: only possible while it is being removed.
                Ok(Some(_)) | Ok(None) => JobState::Killed,
                Err(e) => return Err(CoreError::Unavailable(e.to_string())),
            };
            if !kind.satisfied_by(ended == JobState::Succeeded) {
                failed = Some((d, ended));
            }
        }
        // Otherwise the caller's `requeue` gives the waiting reason.
        if let Some((d, st)) = failed {
            self.fail_dependency(id, d, st, now);
        }
        Ok(())
    }

    /// A dependency of `id` ended without success: its tasks that never ran fail.
    pub(super) fn fail_dependency(
        &mut self,
        id: JobId,
        dep: JobId,
        dep_state: JobState,
        now: UnixMs,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let mut rows = Vec::new();
        for (&idx, t) in job.tasks.iter_mut() {
            if t.state == TaskState::Pending {
                match move_task(&mut job.row.counts, id, idx, t, TaskState::DependencyFailed) {
                    Ok(_) => {
                        t.not_before = None;
                        rows.push(t.row(id, idx));
                    }
                    Err(e) => refused(&e),
                }
            }
        }
        job.tasks.retain(|_, t| !t.state.is_end());
        job.ready.clear();
        job.waiting_on.clear();
        end_untouched(&mut job.row.counts, TaskState::DependencyFailed);
        // Untouched tasks read as dependency_failed once the job is final.
        job.row.next_fresh = job.row.counts.total.max(job.row.next_fresh);
        self.batch.tasks.extend(rows);
        self.event(
            now,
            id,
            None,
            None,
            "dependency_failed",
            format!("{dep} ended {dep_state}"),
        );
        self.set_reason(id, None);
        self.touch_job(id, now);
    }
}
