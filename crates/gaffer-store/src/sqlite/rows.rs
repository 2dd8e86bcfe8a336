//! The SQLite schema, its migrations and the column lists, and decoding rows into the
//! store's types.

use crate::{JobRow, Result, StoreError, TaskRow};
use gaffer_api::state::TaskCounts;
use gaffer_api::views::{AttemptView, EventView};
use gaffer_api::{JobId, JobSpec, TaskState};
use rusqlite::{Connection, Row};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    kill_requested INTEGER NOT NULL DEFAULT 0,
    held INTEGER NOT NULL DEFAULT 0,
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

pub(super) const JOB_COLS: &str =
    "id, name, spec, state, created_at, finished_at, kill_requested, next_fresh, \
     n_total, n_pending, n_running, n_succeeded, n_failed, n_killed, n_started, held";

pub(super) fn conv_err(col: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        Box::new(StoreError::Corrupt {
            what: format!("column {col}"),
            detail: msg,
        }),
    )
}

pub(super) fn job_from_row(r: &Row) -> rusqlite::Result<JobRow> {
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
        held: r.get::<_, i64>(15)? != 0,
    })
}

pub(super) fn task_state(col: usize, s: String) -> rusqlite::Result<TaskState> {
    s.parse().map_err(|e: String| conv_err(col, e))
}

/// Brings a database made by an older gaffer up to the current schema.
pub(super) fn migrate(w: &Connection) -> rusqlite::Result<()> {
    let has_net: bool = w
        .prepare("SELECT 1 FROM pragma_table_info('attempts') WHERE name = 'net'")?
        .exists([])?;
    if !has_net {
        w.execute_batch("ALTER TABLE attempts ADD COLUMN net TEXT")?;
    }
    let has_held: bool = w
        .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'held'")?
        .exists([])?;
    if !has_held {
        w.execute_batch("ALTER TABLE jobs ADD COLUMN held INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// The `net` column of an attempt: `NULL` off the bridge network.
pub(super) fn net_col(a: &AttemptView) -> std::result::Result<Option<String>, String> {
    if a.ip.is_none() && a.ports.is_empty() && a.ready.is_none() {
        return Ok(None);
    }
    let net = NetCol {
        ip: a.ip.clone(),
        ports: a.ports.clone(),
        ready: a.ready,
    };
    serde_json::to_string(&net)
        .map(Some)
        .map_err(|e| e.to_string())
}

pub(super) fn attempt_from_row(r: &Row) -> rusqlite::Result<AttemptView> {
    attempt_at(r, 0)
}

/// The attempt in columns `base..` (in the order of `ATTEMPT_COLS`).
pub(super) fn attempt_at(r: &Row, base: usize) -> rusqlite::Result<AttemptView> {
    let outputs: Option<String> = r.get(base + 10)?;
    let net: Option<String> = r.get(base + 11)?;
    let net: NetCol = match net {
        Some(n) => serde_json::from_str(&n).map_err(|e| conv_err(base + 11, e.to_string()))?,
        None => NetCol {
            ip: None,
            ports: Vec::new(),
            ready: None,
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
        ready: net.ready,
    })
}

/// A task row from `TASK_COLS`.
pub(super) fn task_from_row(r: &Row) -> rusqlite::Result<TaskRow> {
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

pub(super) fn event_from_row(r: &Row) -> rusqlite::Result<EventView> {
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

pub(super) const TASK_COLS: &str = "job_id, idx, state, attempts, lost, node, not_before";
pub(super) const ATTEMPT_COLS: &str =
    "attempt, node, state, started_at, ended_at, exit_code, signal, message, max_rss, cpu_secs, outputs, net";

/// An attempt's bridge network in the `net` column: its address and mapped ports, and a
/// replica's readiness.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct NetCol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<gaffer_api::ports::PortMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ready: Option<bool>,
}

/// The job ids of an idempotency key, stored comma-separated.
pub(super) fn parse_ids(key: &str, s: &str) -> Result<Vec<JobId>> {
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
