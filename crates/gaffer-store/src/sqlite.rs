//! SQLite backend: one file, WAL journal, one writer connection and a small pool of readers so
//! API reads never wait for a commit. Every [`Store::commit`] is one transaction (one fsync).

use crate::{ActiveState, Batch, JobHistory, JobQuery, JobRow, Result, Store, StoreError, TaskRow};
use gaffer_api::state::TaskCounts;
use gaffer_api::views::{AttemptView, EventView, JobPage, TaskView};
use gaffer_api::{JobId, JobSpec, JobState, TaskState, UnixMs};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    kill_requested INTEGER NOT NULL DEFAULT 0,
    next_fresh INTEGER NOT NULL DEFAULT 0,
    n_total INTEGER NOT NULL, n_pending INTEGER NOT NULL, n_running INTEGER NOT NULL,
    n_succeeded INTEGER NOT NULL, n_failed INTEGER NOT NULL, n_killed INTEGER NOT NULL,
    n_started INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);
CREATE TABLE IF NOT EXISTS tasks (
    job_id INTEGER NOT NULL, idx INTEGER NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL, lost INTEGER NOT NULL DEFAULT 0, node TEXT, not_before INTEGER,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_active ON tasks (state) WHERE state IN ('pending', 'assigned', 'running');
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL, idx INTEGER NOT NULL, attempt INTEGER NOT NULL,
    node TEXT NOT NULL, state TEXT NOT NULL, started_at INTEGER, ended_at INTEGER,
    exit_code INTEGER, signal INTEGER, message TEXT, max_rss INTEGER, cpu_secs REAL, outputs TEXT, net TEXT,
    PRIMARY KEY (job_id, idx, attempt)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, time INTEGER NOT NULL, job_id INTEGER NOT NULL, task INTEGER,
    attempt INTEGER, from_state TEXT, to_state TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, id);
CREATE INDEX IF NOT EXISTS events_by_time ON events (time);
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, ids TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS node_subnets (node TEXT PRIMARY KEY, subnet TEXT NOT NULL);
"#;

const JOB_COLS: &str =
    "id, name, spec, state, created_at, finished_at, kill_requested, next_fresh, \
     n_total, n_pending, n_running, n_succeeded, n_failed, n_killed, n_started";

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

fn conv_err(col: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        Box::new(StoreError::Corrupt {
            what: format!("column {col}"),
            detail: msg,
        }),
    )
}

fn job_from_row(r: &Row) -> rusqlite::Result<JobRow> {
    let spec: String = r.get(2)?;
    let spec: JobSpec = serde_json::from_str(&spec).map_err(|e| conv_err(2, e.to_string()))?;
    let state: String = r.get(3)?;
    Ok(JobRow {
        id: JobId(r.get::<_, i64>(0)? as u64),
        name: r.get(1)?,
        spec,
        state: state.parse().map_err(|e: String| conv_err(3, e))?,
        created_at: r.get::<_, i64>(4)? as u64,
        finished_at: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        kill_requested: r.get::<_, i64>(6)? != 0,
        next_fresh: r.get::<_, i64>(7)? as u32,
        counts: TaskCounts {
            total: r.get::<_, i64>(8)? as u32,
            pending: r.get::<_, i64>(9)? as u32,
            running: r.get::<_, i64>(10)? as u32,
            succeeded: r.get::<_, i64>(11)? as u32,
            failed: r.get::<_, i64>(12)? as u32,
            killed: r.get::<_, i64>(13)? as u32,
            started: r.get::<_, i64>(14)? as u32,
        },
    })
}

fn task_state(col: usize, s: String) -> rusqlite::Result<TaskState> {
    s.parse().map_err(|e: String| conv_err(col, e))
}

/// Brings a database made by an older gaffer up to the current schema.
fn migrate(w: &Connection) -> rusqlite::Result<()> {
    let has_net: bool = w
        .prepare("SELECT 1 FROM pragma_table_info('attempts') WHERE name = 'net'")?
        .exists([])?;
    if !has_net {
        w.execute_batch("ALTER TABLE attempts ADD COLUMN net TEXT")?;
    }
    Ok(())
}

/// The `net` column of an attempt: `NULL` off the bridge network.
fn net_col(a: &AttemptView) -> std::result::Result<Option<String>, String> {
    if a.ip.is_none() && a.ports.is_empty() {
        return Ok(None);
    }
    let net = NetCol {
        ip: a.ip.clone(),
        ports: a.ports.clone(),
    };
    serde_json::to_string(&net)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn attempt_from_row(r: &Row) -> rusqlite::Result<AttemptView> {
    attempt_at(r, 0)
}

/// The attempt in columns `base..` (in the order of `ATTEMPT_COLS`).
fn attempt_at(r: &Row, base: usize) -> rusqlite::Result<AttemptView> {
    let outputs: Option<String> = r.get(base + 10)?;
    let net: Option<String> = r.get(base + 11)?;
    let net: NetCol = match net {
        Some(n) => serde_json::from_str(&n).map_err(|e| conv_err(base + 11, e.to_string()))?,
        None => NetCol {
            ip: None,
            ports: Vec::new(),
        },
    };
    Ok(AttemptView {
        attempt: r.get::<_, i64>(base)? as u32,
        node: r.get(base + 1)?,
        state: task_state(base + 2, r.get(base + 2)?)?,
        started_at: r.get::<_, Option<i64>>(base + 3)?.map(|v| v as u64),
        ended_at: r.get::<_, Option<i64>>(base + 4)?.map(|v| v as u64),
        exit_code: r.get(base + 5)?,
        signal: r.get(base + 6)?,
        message: r.get(base + 7)?,
        max_rss_bytes: r.get::<_, Option<i64>>(base + 8)?.map(|v| v as u64),
        cpu_secs: r.get(base + 9)?,
        outputs: match outputs {
            Some(o) => serde_json::from_str(&o).map_err(|e| conv_err(base + 10, e.to_string()))?,
            None => Vec::new(),
        },
        ip: net.ip,
        ports: net.ports,
    })
}

/// A task row from `TASK_COLS`.
fn task_from_row(r: &Row) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        job: JobId(r.get::<_, i64>(0)? as u64),
        index: r.get::<_, i64>(1)? as u32,
        state: task_state(2, r.get(2)?)?,
        attempts: r.get::<_, i64>(3)? as u32,
        lost: r.get::<_, i64>(4)? as u32,
        node: r.get(5)?,
        not_before: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
    })
}

fn event_from_row(r: &Row) -> rusqlite::Result<EventView> {
    Ok(EventView {
        id: r.get::<_, i64>(0)? as u64,
        time: r.get::<_, i64>(1)? as u64,
        job: JobId(r.get::<_, i64>(2)? as u64),
        task: r.get::<_, Option<i64>>(3)?.map(|v| v as u32),
        attempt: r.get::<_, Option<i64>>(4)?.map(|v| v as u32),
        from: r.get(5)?,
        to: r.get(6)?,
        detail: r.get(7)?,
    })
}

const TASK_COLS: &str = "job_id, idx, state, attempts, lost, node, not_before";
const ATTEMPT_COLS: &str =
    "attempt, node, state, started_at, ended_at, exit_code, signal, message, max_rss, cpu_secs, outputs, net";

/// An attempt's bridge network in the `net` column: its address and mapped ports.
#[derive(serde::Serialize, serde::Deserialize)]
struct NetCol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<gaffer_api::ports::PortMapping>,
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
                    "INSERT INTO jobs ({JOB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
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
                    ])?;
                }
            }
            if !b.update_jobs.is_empty() {
                let mut q = tx.prepare_cached(
                    "UPDATE jobs SET state = ?2, finished_at = ?3, kill_requested = ?4, next_fresh = ?5, \
                     n_total = ?6, n_pending = ?7, n_running = ?8, n_succeeded = ?9, n_failed = ?10, \
                     n_killed = ?11, n_started = ?12 WHERE id = ?1",
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

/// The job ids of an idempotency key, stored comma-separated.
fn parse_ids(key: &str, s: &str) -> Result<Vec<JobId>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse()
                .map_err(|e: gaffer_api::ids::BadJobId| StoreError::Corrupt {
                    what: format!("idempotency key {key}"),
                    detail: e.to_string(),
                })
        })
        .collect()
}

// Tests: the same scenarios run against every backend in tests/conformance.rs.
