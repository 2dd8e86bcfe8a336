//! [`Store`] on etcd: the reads and the commit of a batch (see the module docs of
//! [`super`] for the keys and how a batch is split).

use super::*;

impl Store for EtcdStore {
    fn load_active(&self) -> Result<ActiveState> {
        let mut st = ActiveState::default();
        for s in [JobState::Pending, JobState::Running] {
            let kvs = self.scan_prefix(&format!("{}/state/{}/", self.p, s.as_str()), false)?;
            st.jobs.extend(self.jobs_from(&kvs)?);
        }
        st.jobs.sort_by_key(|j| j.id);
        for kv in self.scan_prefix(&self.k("atasks/"), false)? {
            st.tasks.push(task_from(&kv)?);
        }
        let next = self.counter("next_job_id")?.max(1);
        let max_job = self.last_number_from(self.k("jobs/"), next)?.unwrap_or(0);
        st.next_job_id = next.max(max_job + 1);
        let next_ev = self.counter("next_event_id")?.max(1);
        let max_ev = self
            .last_number_from(self.k("events/"), next_ev)?
            .unwrap_or(0);
        st.next_event_id = next_ev.max(max_ev + 1);
        let prefix = self.k("subnets/");
        for kv in self.scan_prefix(&prefix, false)? {
            let node = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
            st.node_subnets
                .push((node, String::from_utf8_lossy(kv.value()).into_owned()));
        }
        st.node_subnets.sort();
        Ok(st)
    }

    fn commit(&self, b: &Batch) -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let deleted: HashSet<u64> = b.delete_jobs.iter().map(|j| j.0).collect();
        // Current records of updated and deleted jobs that this batch does not insert.
        let inserted: HashSet<u64> = b.insert_jobs.iter().map(|j| j.id.0).collect();
        let mut want: Vec<u64> = b
            .update_jobs
            .iter()
            .map(|j| j.id.0)
            .filter(|id| !inserted.contains(id))
            .collect();
        want.sort_unstable();
        want.dedup();
        let got = self.get_many(want.iter().map(|&id| self.job_key(id)).collect())?;
        // id -> (state in etcd now, record after this batch)
        let mut jobs: BTreeMap<u64, (Option<JobState>, JobRecord)> = BTreeMap::new();
        for (id, kv) in want.iter().zip(got) {
            if let Some(kv) = kv {
                let rec = decode(&kv, JobRecord::from_etcd)?;
                jobs.insert(*id, (Some(rec.state), rec));
            }
        }
        for j in &b.insert_jobs {
            jobs.insert(j.id.0, (None, JobRecord::from(j.clone())));
        }
        for j in &b.update_jobs {
            if let Some((_, rec)) = jobs.get_mut(&j.id.0) {
                rec.state = j.state;
                rec.finished_at = j.finished_at;
                rec.kill_requested = j.kill_requested;
                rec.held = j.held;
                rec.next_fresh = j.next_fresh;
                rec.counts = j.counts;
            }
        }
        let mut ops = Ops::default();
        for (id, (old, rec)) in &jobs {
            if deleted.contains(id) {
                continue;
            }
            let json = rec.to_etcd();
            ops.put(self.job_key(*id), json.clone());
            if let Some(old) = old {
                if *old != rec.state {
                    ops.del(self.state_key(*old, *id));
                }
            }
            let idx = if rec.state.is_final() {
                rec.name.as_bytes().to_vec()
            } else {
                json
            };
            ops.put(self.state_key(rec.state, *id), idx);
        }
        for t in &b.tasks {
            if deleted.contains(&t.job.0) {
                continue;
            }
            let json = TaskRecord::from(t.clone()).to_etcd();
            let ak = self.atask_key(t.job.0, t.index);
            if task_active(t.state) {
                ops.put(ak, json.clone());
            } else {
                ops.del(ak);
            }
            ops.put(self.task_key(t.job.0, t.index), json);
        }
        for (job, idx, a) in &b.attempts {
            if deleted.contains(&job.0) {
                continue;
            }
            ops.put(self.attempt_key(job.0, *idx, a.attempt), to_json(a));
        }
        for e in &b.events {
            if deleted.contains(&e.job.0) {
                continue;
            }
            let json = to_json(e);
            ops.put(self.event_key(e.id), json.clone());
            ops.put(self.jevent_key(e.job.0, e.id), json);
            if let (Some(_), Some(kind)) = (e.task, ended_kind(&e.to)) {
                ops.put(self.ended_key(e.time, e.id), kind.as_bytes().to_vec());
            }
        }
        for &id in &deleted {
            ops.del(self.job_key(id));
            for s in JobState::ALL {
                ops.del(self.state_key(s, id));
            }
            for kv in self.scan_prefix(&format!("{}/jevents/{id:020}/", self.p), false)? {
                let e: EventView = from_json(&kv)?;
                ops.del(self.event_key(e.id));
                ops.del(self.ended_key(e.time, e.id));
            }
            for space in ["tasks", "atasks", "attempts", "jevents"] {
                ops.push(Op::DelPrefix(
                    format!("{}/{space}/{id:020}/", self.p).into_bytes(),
                ));
            }
        }
        for (key, ids) in &b.idempotency {
            let ids: Vec<u64> = ids.iter().map(|i| i.0).collect();
            ops.put(self.k(&format!("idem/{key}")), to_json(&ids));
        }
        if let Some(n) = b.next_job_id {
            ops.put(self.k("meta/next_job_id"), n.to_string().into_bytes());
        }
        if let Some(n) = b.next_event_id {
            ops.put(self.k("meta/next_event_id"), n.to_string().into_bytes());
        }
        for (node, subnet) in &b.node_subnets {
            ops.put(
                self.k(&format!("subnets/{node}")),
                subnet.clone().into_bytes(),
            );
        }
        self.write(ops.ops)
    }

    fn list_jobs(&self, q: &JobQuery) -> Result<JobPage> {
        let limit = q.limit.clamp(1, 10_000) as usize;
        let space = match q.state {
            Some(s) => format!("{}/state/{}/", self.p, s.as_str()),
            None => self.k("jobs/"),
        };
        // Full records in the range, or only names (final states' index).
        let full = !matches!(q.state, Some(s) if s.is_final());
        // Job ids below which to look: one past the greatest id in the space, or the cursor
        // if lower (a cursor far above every id would otherwise cost a read per empty window).
        let next = self.counter("next_job_id")?.max(1);
        let last = self.last_number_from(space.clone(), next)?.unwrap_or(0);
        let top = next.max(last + 1);
        let below = q.before.map_or(top, |b| b.0.min(top));
        let name = q.name.clone();
        let want = limit + 1;
        let hits: Vec<KeyValue> = self.run("list jobs", move |mut kv| async move {
            let keep = |kv: &KeyValue| match &name {
                None => true,
                Some(name) => {
                    let text = if full {
                        JobRecord::from_etcd(kv.value())
                            .map(|r| r.name)
                            .unwrap_or_default()
                    } else {
                        String::from_utf8_lossy(kv.value()).into_owned()
                    };
                    text.contains(name.as_str())
                }
            };
            newest(&mut kv, &space, below, want, keep).await
        })?;
        let mut rows = if full {
            self.jobs_from(&hits)?
        } else {
            let ids = hits
                .iter()
                .map(|kv| self.id_of(kv))
                .collect::<Result<Vec<_>>>()?;
            let got = self.get_many(ids.iter().map(|&id| self.job_key(id)).collect())?;
            let mut rows = Vec::new();
            for kv in got.into_iter().flatten() {
                rows.push(job_from(&kv)?);
            }
            rows
        };
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|j| j.id)
        } else {
            None
        };
        Ok(JobPage {
            jobs: rows.iter().map(JobRow::view).collect(),
            next,
        })
    }

    fn get_job(&self, id: JobId) -> Result<Option<JobRow>> {
        match self.get_one(self.job_key(id.0))? {
            Some(kv) => Ok(Some(job_from(&kv)?)),
            None => Ok(None),
        }
    }

    fn list_tasks(&self, job: &JobRow, from: u32, limit: u32) -> Result<Vec<TaskView>> {
        let mut tasks = job.untouched_tasks(from, limit);
        if tasks.is_empty() {
            return Ok(tasks);
        }
        let end = from + tasks.len() as u32;
        let id = job.id.0;
        for kv in self.scan(
            self.task_key(id, from).into_bytes(),
            self.task_key(id, end).into_bytes(),
            false,
        )? {
            let t = task_from(&kv)?;
            if let Some(v) = tasks.get_mut((t.index - from) as usize) {
                v.state = t.state;
                v.not_before = t.not_before;
            }
        }
        for kv in self.scan(
            format!("{}/attempts/{id:020}/{from:010}/", self.p).into_bytes(),
            format!("{}/attempts/{id:020}/{end:010}", self.p).into_bytes(),
            false,
        )? {
            let a: AttemptView = from_json(&kv)?;
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let idx: Option<u32> = key.rsplit('/').nth(1).and_then(|s| s.parse().ok());
            if let Some(v) = idx.and_then(|i| tasks.get_mut((i - from) as usize)) {
                v.attempts.push(a);
            }
        }
        Ok(tasks)
    }

    fn attempts(&self, job: JobId, index: u32) -> Result<Vec<AttemptView>> {
        self.scan_prefix(
            &format!("{}/attempts/{:020}/{index:010}/", self.p, job.0),
            false,
        )?
        .iter()
        .map(from_json)
        .collect()
    }

    fn events(&self, after: u64, job: Option<JobId>, limit: u32) -> Result<Vec<EventView>> {
        if limit == 0 || after == u64::MAX {
            return Ok(Vec::new());
        }
        let (start, space) = match job {
            Some(j) => (
                self.jevent_key(j.0, after + 1),
                format!("{}/jevents/{:020}/", self.p, j.0),
            ),
            None => (self.event_key(after + 1), self.k("events/")),
        };
        let end = prefix_end(space.as_bytes());
        let kvs = self.run("read events", move |mut kv| async move {
            let o = GetOptions::new()
                .with_range(end)
                .with_limit(i64::from(limit));
            Ok(kv.get(start, Some(o)).await?.take_kvs())
        })?;
        kvs.iter().map(from_json).collect()
    }

    fn count_jobs(&self) -> Result<Vec<(JobState, u64)>> {
        let spaces: Vec<(JobState, String)> = JobState::ALL
            .iter()
            .map(|&s| (s, format!("{}/state/{}/", self.p, s.as_str())))
            .collect();
        self.run("count jobs", move |mut kv| async move {
            let mut out = Vec::new();
            for (s, p) in spaces {
                let r = kv
                    .get(p, Some(GetOptions::new().with_prefix().with_count_only()))
                    .await?;
                out.push((s, r.count() as u64));
            }
            Ok(out)
        })
    }

    fn tasks_in_states(&self, job: JobId, states: &[TaskState]) -> Result<Vec<TaskRow>> {
        let mut out = Vec::new();
        for kv in self.scan_prefix(&format!("{}/tasks/{:020}/", self.p, job.0), false)? {
            let t = task_from(&kv)?;
            if states.contains(&t.state) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Three range reads over the ids' span (jobs, task rows, attempts) instead of three round
    /// trips per job: a snapshot of 100,000 jobs took minutes job by job.
    fn job_histories(&self, ids: &[JobId]) -> Result<Vec<Option<JobHistory>>> {
        let (Some(lo), Some(hi)) = (ids.iter().min(), ids.iter().max()) else {
            return Ok(Vec::new());
        };
        let (lo, end) = (lo.0, hi.0 + 1);
        let span = |space: &str| {
            (
                format!("{}/{space}/{lo:020}", self.p).into_bytes(),
                format!("{}/{space}/{end:020}", self.p).into_bytes(),
            )
        };
        let mut found: HashMap<u64, JobHistory> = HashMap::new();
        let (from, to) = span("jobs");
        for kv in self.scan(from, to, false)? {
            let job = job_from(&kv)?;
            let history = JobHistory {
                job,
                tasks: Vec::new(),
                attempts: Vec::new(),
            };
            found.insert(history.job.id.0, history);
        }
        let (from, to) = span("tasks");
        for kv in self.scan(from, to, false)? {
            let t = task_from(&kv)?;
            if let Some(h) = found.get_mut(&t.job.0) {
                h.tasks.push(t);
            }
        }
        let (from, to) = span("attempts");
        for kv in self.scan(from, to, false)? {
            // P/attempts/{job}/{index}/{attempt}
            let mut parts = kv.key().rsplit(|b| *b == b'/').skip(1);
            let number = |part: Option<&[u8]>| -> Option<u64> {
                std::str::from_utf8(part?).ok()?.parse().ok()
            };
            let (Some(index), Some(job)) = (number(parts.next()), number(parts.next())) else {
                return Err(StoreError::Corrupt {
                    what: format!("etcd key {}", String::from_utf8_lossy(kv.key())),
                    detail: "not attempts/JOB/INDEX/ATTEMPT".into(),
                });
            };
            if let Some(h) = found.get_mut(&job) {
                h.attempts.push((index as u32, from_json(&kv)?));
            }
        }
        Ok(ids.iter().map(|id| found.remove(&id.0)).collect())
    }

    fn idempotent_ids(&self, key: &str) -> Result<Option<Vec<JobId>>> {
        match self.get_one(self.k(&format!("idem/{key}")))? {
            None => Ok(None),
            Some(kv) => {
                let ids: Vec<u64> = from_json(&kv)?;
                Ok(Some(ids.into_iter().map(JobId).collect()))
            }
        }
    }

    fn idempotency_keys(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<JobId>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let space = self.k("idem/");
        let start = match after {
            // The smallest key after `space + after`.
            Some(a) => {
                let mut k = format!("{space}{a}").into_bytes();
                k.push(0);
                k
            }
            None => space.clone().into_bytes(),
        };
        let end = prefix_end(space.as_bytes());
        let kvs = self.run("read idempotency keys", move |mut kv| async move {
            let o = GetOptions::new()
                .with_range(end)
                .with_limit(i64::from(limit));
            Ok(kv.get(start, Some(o)).await?.take_kvs())
        })?;
        kvs.iter()
            .map(|kv| {
                let key = std::str::from_utf8(&kv.key()[space.len()..])
                    .map_err(|e| StoreError::Corrupt {
                        what: format!("etcd key {}", String::from_utf8_lossy(kv.key())),
                        detail: format!("idempotency key is not UTF-8: {e}"),
                    })?
                    .to_string();
                let ids: Vec<u64> = from_json(kv)?;
                Ok((key, ids.into_iter().map(JobId).collect()))
            })
            .collect()
    }

    fn ended_per_minute(&self, since: UnixMs) -> Result<Vec<(UnixMs, u64, u64)>> {
        let start = format!("{}/ended/{since:020}", self.p).into_bytes();
        let end = prefix_end(self.k("ended/").as_bytes());
        let mut per: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for kv in self.scan(start, end, false)? {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let time: u64 = key
                .rsplit('/')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::Corrupt {
                    what: format!("etcd key {key}"),
                    detail: "no time in the key".into(),
                })?;
            let e = per.entry(time / 60_000 * 60_000).or_default();
            if kv.value() == b"s" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        Ok(per.into_iter().map(|(m, (s, f))| (m, s, f)).collect())
    }
}
