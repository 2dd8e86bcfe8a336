//! SQLite backend: one file, WAL journal, one writer connection and a small pool of readers so
//! API reads never wait for a commit. Every [`Store::commit`] is one transaction (one fsync).

use crate::{ActiveState, Batch, JobHistory, JobQuery, JobRow, Result, Store, StoreError, TaskRow};

use gaffer_api::views::{AttemptView, EventView, JobPage, TaskView};
use gaffer_api::{JobId, JobState, TaskState, UnixMs};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod rows;
use rows::{
    attempt_at, attempt_from_row, conv_err, event_from_row, job_from_row, migrate, net_col,
    parse_ids, task_from_row, task_state, ATTEMPT_COLS, JOB_COLS, SCHEMA, TASK_COLS,
};

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let s = SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(Connection::open(path).map_err(|e| err(path, e))?),
            readers: Mutex::new(Vec::new()),
        };
        {
            let w = s.writer.lock().unwrap_or_else(|p| p.into_inner());
            w.execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000;",
            )
            .map_err(|e| s.err(e))?;
            w.execute_batch(SCHEMA).map_err(|e| s.err(e))?;
            migrate(&w).map_err(|e| s.err(e))?;
        }
        Ok(s)
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        err(&self.path, e)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open(&self.path).map_err(|e| self.err(e))?;
                c.execute_batch("PRAGMA busy_timeout=10000; PRAGMA query_only=1;")
                    .map_err(|e| self.err(e))?;
                c
            }
        };
        let out = f(&conn).map_err(|e| self.err(e));
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 8 {
            pool.push(conn);
        }
        out
    }
}

fn err(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

impl Store for SqliteStore {
    fn load_active(&self) -> Result<ActiveState> {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let run = || -> rusqlite::Result<ActiveState> {
            let mut st = ActiveState::default();
            let mut q = w.prepare(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE state IN ('pending', 'running') ORDER BY id"
            ))?;
            st.jobs = q
                .query_map([], job_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            let mut q = w.prepare(&format!(
                "SELECT {TASK_COLS} FROM tasks WHERE state IN ('pending', 'assigned', 'running')"
            ))?;
            st.tasks = q
                .query_map([], task_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            let next_job: Option<i64> = w
                .query_row(
                    "SELECT value FROM meta WHERE key = 'next_job_id'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let max_job: Option<i64> = w.query_row("SELECT max(id) FROM jobs", [], |r| r.get(0))?;
            st.next_job_id = next_job.unwrap_or(1).max(max_job.unwrap_or(0) + 1) as u64;
            let max_ev: Option<i64> =
                w.query_row("SELECT max(id) FROM events", [], |r| r.get(0))?;
            let next_ev: Option<i64> = w
                .query_row(
                    "SELECT value FROM meta WHERE key = 'next_event_id'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            st.next_event_id = (max_ev.unwrap_or(0) + 1).max(next_ev.unwrap_or(1)) as u64;
            let mut q = w.prepare("SELECT node, subnet FROM node_subnets ORDER BY node")?;
            st.node_subnets = q
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(st)
        };
        run().map_err(|e| self.err(e))
    }

    fn commit(&self, b: &Batch) -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = w.transaction().map_err(|e| self.err(e))?;
        let apply = |tx: &rusqlite::Transaction| -> rusqlite::Result<()> {
            if !b.insert_jobs.is_empty() {
                let mut q = tx.prepare_cached(&format!(
                    "INSERT INTO jobs ({JOB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
                ))?;
                for j in &b.insert_jobs {
                    let spec =
                        serde_json::to_string(&j.spec).map_err(|e| conv_err(2, e.to_string()))?;
                    q.execute(params![
                        j.id.0 as i64,
                        j.name,
                        spec,
                        j.state.as_str(),
                        j.created_at as i64,
                        j.finished_at.map(|v| v as i64),
                        j.kill_requested as i64,
                        j.next_fresh as i64,
                        j.counts.total,
                        j.counts.pending,
                        j.counts.running,
                        j.counts.succeeded,
                        j.counts.failed,
                        j.counts.killed,
                        j.counts.started,
                        j.held as i64,
                    ])?;
                }
            }
            if !b.update_jobs.is_empty() {
                let mut q = tx.prepare_cached(
                    "UPDATE jobs SET state = ?2, finished_at = ?3, kill_requested = ?4, next_fresh = ?5, \
                     n_total = ?6, n_pending = ?7, n_running = ?8, n_succeeded = ?9, n_failed = ?10, \
                     n_killed = ?11, n_started = ?12, held = ?13 WHERE id = ?1",
                )?;
                for j in &b.update_jobs {
                    q.execute(params![
                        j.id.0 as i64,
                        j.state.as_str(),
                        j.finished_at.map(|v| v as i64),
                        j.kill_requested as i64,
                        j.next_fresh as i64,
                        j.counts.total,
                        j.counts.pending,
                        j.counts.running,
                        j.counts.succeeded,
                        j.counts.failed,
                        j.counts.killed,
                        j.counts.started,
                        j.held as i64,
                    ])?;
                }
            }
            if !b.tasks.is_empty() {
                let mut q = tx.prepare_cached(
                    "INSERT OR REPLACE INTO tasks (job_id, idx, state, attempts, lost, node, not_before) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for t in &b.tasks {
                    q.execute(params![
                        t.job.0 as i64,
                        t.index,
                        t.state.as_str(),
                        t.attempts,
                        t.lost,
                        t.node,
                        t.not_before.map(|v| v as i64),
                    ])?;
                }
            }
            if !b.attempts.is_empty() {
                let mut q = tx.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO attempts (job_id, idx, {ATTEMPT_COLS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                ))?;
                for (job, idx, a) in &b.attempts {
                    let outputs = if a.outputs.is_empty() {
                        None
                    } else {
                        Some(
                            serde_json::to_string(&a.outputs)
                                .map_err(|e| conv_err(12, e.to_string()))?,
                        )
                    };
                    q.execute(params![
                        job.0 as i64,
                        idx,
                        a.attempt,
                        a.node,
                        a.state.as_str(),
                        a.started_at.map(|v| v as i64),
                        a.ended_at.map(|v| v as i64),
                        a.exit_code,
                        a.signal,
                        a.message,
                        a.max_rss_bytes.map(|v| v as i64),
                        a.cpu_secs,
                        outputs,
                        net_col(a).map_err(|e| conv_err(13, e))?,
                    ])?;
                }
            }
            if !b.events.is_empty() {
                let mut q = tx.prepare_cached(
                    "INSERT INTO events (id, time, job_id, task, attempt, from_state, to_state, detail) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for e in &b.events {
                    q.execute(params![
                        e.id as i64,
                        e.time as i64,
                        e.job.0 as i64,
                        e.task,
                        e.attempt,
                        e.from,
                        e.to,
                        e.detail,
                    ])?;
                }
            }
            for id in &b.delete_jobs {
                let id = id.0 as i64;
                tx.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
                tx.execute("DELETE FROM tasks WHERE job_id = ?1", [id])?;
                tx.execute("DELETE FROM attempts WHERE job_id = ?1", [id])?;
                tx.execute("DELETE FROM events WHERE job_id = ?1", [id])?;
            }
            for (key, ids) in &b.idempotency {
                let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                let now = b.insert_jobs.first().map(|j| j.created_at).unwrap_or(0);
                tx.execute(
                    "INSERT OR REPLACE INTO idempotency (key, ids, created_at) VALUES (?1, ?2, ?3)",
                    params![key, ids.join(","), now as i64],
                )?;
            }
            if let Some(n) = b.next_job_id {
                tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_job_id', ?1)",
                    [n as i64],
                )?;
            }
            if let Some(n) = b.next_event_id {
                tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_event_id', ?1)",
                    [n as i64],
                )?;
            }
            for (node, subnet) in &b.node_subnets {
                tx.execute(
                    "INSERT OR REPLACE INTO node_subnets (node, subnet) VALUES (?1, ?2)",
                    params![node, subnet],
                )?;
            }
            Ok(())
        };
        apply(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn list_jobs(&self, q: &JobQuery) -> Result<JobPage> {
        let limit = q.limit.clamp(1, 10_000);
        self.read(|c| {
            let mut sql = format!("SELECT {JOB_COLS} FROM jobs WHERE id < ?1");
            if q.state.is_some() {
                sql.push_str(" AND state = ?2");
            }
            if q.name.is_some() {
                sql.push_str(" AND instr(name, ?3) > 0");
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?4");
            let mut stmt = c.prepare_cached(&sql)?;
            let before = q.before.map(|b| b.0 as i64).unwrap_or(i64::MAX);
            let state = q.state.map(|s| s.as_str()).unwrap_or("");
            let name = q.name.clone().unwrap_or_default();
            let mut params_vec: Vec<&dyn rusqlite::ToSql> = vec![&before];
            let limit_plus = limit as i64 + 1;
            // Positional parameters must all be bound; bind unused ones too.
            params_vec.push(&state);
            params_vec.push(&name);
            params_vec.push(&limit_plus);
            let mut rows: Vec<JobRow> = stmt
                .query_map(params_vec.as_slice(), job_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            let next = if rows.len() > limit as usize {
                rows.truncate(limit as usize);
                rows.last().map(|j| j.id)
            } else {
                None
            };
            Ok(JobPage {
                jobs: rows.iter().map(JobRow::view).collect(),
                next,
            })
        })
    }

    fn get_job(&self, id: JobId) -> Result<Option<JobRow>> {
        self.read(|c| {
            c.prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"))?
                .query_row([id.0 as i64], job_from_row)
                .optional()
        })
    }

    fn list_tasks(&self, job: &JobRow, from: u32, limit: u32) -> Result<Vec<TaskView>> {
        let end = from.saturating_add(limit).min(job.counts.total);
        let mut tasks = job.untouched_tasks(from, limit);
        if tasks.is_empty() {
            return Ok(tasks);
        }
        self.read(|c| {
            let mut q = c.prepare_cached(
                "SELECT idx, state, not_before FROM tasks WHERE job_id = ?1 AND idx >= ?2 AND idx < ?3",
            )?;
            let rows = q.query_map(params![job.id.0 as i64, from, end], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u32,
                    task_state(1, r.get(1)?)?,
                    r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                ))
            })?;
            for row in rows {
                let (idx, state, nb) = row?;
                let t = &mut tasks[(idx - from) as usize];
                t.state = state;
                t.not_before = nb;
            }
            let mut q = c.prepare_cached(&format!(
                "SELECT idx, {ATTEMPT_COLS} FROM attempts WHERE job_id = ?1 AND idx >= ?2 AND idx < ?3 \
                 ORDER BY idx, attempt"
            ))?;
            let rows = q.query_map(params![job.id.0 as i64, from, end], |r| {
                let a = attempt_at(r, 1)?;
                Ok((r.get::<_, i64>(0)? as u32, a))
            })?;
            for row in rows {
                let (idx, a) = row?;
                tasks[(idx - from) as usize].attempts.push(a);
            }
            Ok(tasks)
        })
    }

    fn attempts(&self, job: JobId, index: u32) -> Result<Vec<AttemptView>> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {ATTEMPT_COLS} FROM attempts WHERE job_id = ?1 AND idx = ?2 ORDER BY attempt"
            ))?
            .query_map(params![job.0 as i64, index], attempt_from_row)?
            .collect()
        })
    }

    fn events(&self, after: u64, job: Option<JobId>, limit: u32) -> Result<Vec<EventView>> {
        self.read(|c| {
            let cols = "id, time, job_id, task, attempt, from_state, to_state, detail";
            match job {
                Some(j) => c
                    .prepare_cached(&format!(
                        "SELECT {cols} FROM events WHERE job_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
                    ))?
                    .query_map(params![j.0 as i64, after as i64, limit], event_from_row)?
                    .collect(),
                None => c
                    .prepare_cached(&format!(
                        "SELECT {cols} FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"
                    ))?
                    .query_map(params![after as i64, limit], event_from_row)?
                    .collect(),
            }
        })
    }

    fn count_jobs(&self) -> Result<Vec<(JobState, u64)>> {
        self.read(|c| {
            let mut out = Vec::new();
            let mut q = c.prepare_cached("SELECT count(*) FROM jobs WHERE state = ?1")?;
            for s in JobState::ALL {
                let n: i64 = q.query_row([s.as_str()], |r| r.get(0))?;
                out.push((s, n as u64));
            }
            Ok(out)
        })
    }

    fn job_histories(&self, ids: &[JobId]) -> Result<Vec<Option<JobHistory>>> {
        let (Some(lo), Some(hi)) = (ids.iter().min(), ids.iter().max()) else {
            return Ok(Vec::new());
        };
        let span = params![lo.0 as i64, hi.0 as i64];
        let mut found: HashMap<u64, JobHistory> = self.read(|c| {
            let mut found = HashMap::new();
            let mut q = c.prepare_cached(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE id >= ?1 AND id <= ?2"
            ))?;
            for job in q.query_map(span, job_from_row)? {
                let job = job?;
                let history = JobHistory {
                    job,
                    tasks: Vec::new(),
                    attempts: Vec::new(),
                };
                found.insert(history.job.id.0, history);
            }
            let mut q = c.prepare_cached(&format!(
                "SELECT {TASK_COLS} FROM tasks WHERE job_id >= ?1 AND job_id <= ?2 \
                 ORDER BY job_id, idx"
            ))?;
            for t in q.query_map(span, task_from_row)? {
                let t = t?;
                if let Some(h) = found.get_mut(&t.job.0) {
                    h.tasks.push(t);
                }
            }
            let mut q = c.prepare_cached(&format!(
                "SELECT job_id, idx, {ATTEMPT_COLS} FROM attempts \
                 WHERE job_id >= ?1 AND job_id <= ?2 ORDER BY job_id, idx, attempt"
            ))?;
            let rows = q.query_map(span, |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u32,
                    attempt_at(r, 2)?,
                ))
            })?;
            for row in rows {
                let (job, index, a) = row?;
                if let Some(h) = found.get_mut(&job) {
                    h.attempts.push((index, a));
                }
            }
            Ok(found)
        })?;
        Ok(ids.iter().map(|id| found.remove(&id.0)).collect())
    }

    fn tasks_in_states(&self, job: JobId, states: &[TaskState]) -> Result<Vec<TaskRow>> {
        let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        self.read(|c| {
            let mut q = c.prepare_cached(&format!(
                "SELECT {TASK_COLS} FROM tasks WHERE job_id = ?1 ORDER BY idx"
            ))?;
            let rows = q.query_map([job.0 as i64], task_from_row)?;
            let mut out = Vec::new();
            for row in rows {
                let row = row?;
                if names.contains(&row.state.as_str()) {
                    out.push(row);
                }
            }
            Ok(out)
        })
    }

    fn ended_per_minute(&self, since: UnixMs) -> Result<Vec<(UnixMs, u64, u64)>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT time / 60000 * 60000 AS minute, \
                 sum(to_state = 'succeeded'), \
                 sum(to_state IN ('failed', 'timed_out', 'oom_killed', 'lost')) \
                 FROM events WHERE time >= ?1 AND task IS NOT NULL \
                 AND to_state IN ('succeeded', 'failed', 'timed_out', 'oom_killed', 'lost') \
                 GROUP BY minute ORDER BY minute",
            )?
            .query_map([since as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })?
            .collect()
        })
    }

    fn idempotent_ids(&self, key: &str) -> Result<Option<Vec<JobId>>> {
        let ids: Option<String> = self.read(|c| {
            c.query_row("SELECT ids FROM idempotency WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
        })?;
        ids.map(|s| parse_ids(key, &s)).transpose()
    }

    fn idempotency_keys(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<JobId>)>> {
        // The primary key's BINARY collation compares bytes: the order etcd keeps keys in.
        let rows: Vec<(String, String)> = self.read(|c| match after {
            Some(a) => c
                .prepare_cached(
                    "SELECT key, ids FROM idempotency WHERE key > ?1 ORDER BY key LIMIT ?2",
                )?
                .query_map(params![a, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect(),
            None => c
                .prepare_cached("SELECT key, ids FROM idempotency ORDER BY key LIMIT ?1")?
                .query_map(params![limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect(),
        })?;
        rows.into_iter()
            .map(|(key, ids)| {
                let ids = parse_ids(&key, &ids)?;
                Ok((key, ids))
            })
            .collect()
    }
}

// Tests: the same scenarios run against every backend in tests/conformance.rs.
