//! etcd v3 backend, for HA: several servers share one etcd cluster and only the leader writes.
//!
//! # Keys
//! Every key lives under a prefix (`P`), so several gaffer clusters can share one etcd. Numbers are
//! zero-padded (ids to 20 digits, task indices and attempt numbers to 10) so keys sort as numbers.
//! Values are compact JSON; jobs and task rows in the etcd form of [`crate::record`].
//!
//! | key | value |
//! |-----|-------|
//! | `P/meta/next_job_id` | decimal |
//! | `P/jobs/{job}` | the job record (spec included) |
//! | `P/state/{state}/{job}` | index by state: the full record for `pending`/`running` (so [`Store::load_active`] reads only this index, never history), the name for final states (so a name filter needs no extra read) |
//! | `P/tasks/{job}/{idx}` | task row |
//! | `P/atasks/{job}/{idx}` | copy of the task row while it is pending, assigned or running |
//! | `P/attempts/{job}/{idx}/{attempt}` | attempt |
//! | `P/events/{id}` | event |
//! | `P/jevents/{job}/{id}` | copy of the event, for per-job reads |
//! | `P/ended/{time}/{id}` | `s`/`f` for task events that end an attempt ([`Store::ended_per_minute`]) |
//! | `P/idem/{key}` | JSON array of job ids |
//! | `P/subnets/{node}` | the node's container subnet, e.g. `10.88.3.0/24` |
//!
//! `list_jobs` reads `P/jobs/` or `P/state/{state}/` newest first in ascending windows of ids
//! that move backwards from the cursor (see [`newest`]): etcd ignores the limit of a descending
//! range and would read every job. A name filter is a substring test applied to each window, so a
//! rare name costs a scan of the jobs older than the cursor, as SQLite's `instr` does.
//!
//! # Batches
//! [`Store::commit`] first reads the current records of updated and deleted jobs (an update keeps
//! name, spec and creation time, and moves the state index entry; an update of a missing job is a
//! no-op, as in SQLite), then turns the batch into a list of puts and deletes, one per key (a later
//! write of the same key in the batch wins). A batch that fits in one etcd transaction (at most
//! [`EtcdStore::with_limits`] operations, default 128 as etcd's `--max-txn-ops`, and ~1 MiB, below
//! the 1.5 MiB request limit) is committed atomically in one transaction. A larger batch is split
//! into several bounded transactions sent a few at a time: **atomicity is then per transaction**.
//! The keys of different transactions are disjoint, so a crash in the middle leaves every key either
//! old or new; the core's start-up reconciliation with the agents repairs task and count drift, as
//! it does for the tasks that changed while no leader was up. Big batches only come from large
//! scheduling rounds (many tasks starting or ending at once); a submit of one job with its events
//! fits in one transaction.
//!
//! # Fencing
//! [`EtcdStore::with_fence`] / [`EtcdStore::set_fence`] add a comparison on a leader key to every
//! write transaction; when it does not hold, nothing of that transaction is written and
//! [`StoreError::Fenced`] is returned.
//!
//! # Threads
//! The [`Store`] trait is synchronous. The store owns a small tokio runtime; each call is spawned
//! on it and the calling thread waits on a channel, so calls work from plain threads, from
//! `spawn_blocking` closures and even from inside another runtime's worker (where they block it).

use crate::record::{JobRecord, TaskRecord};
use crate::{ActiveState, Batch, JobHistory, JobQuery, JobRow, Result, Store, StoreError, TaskRow};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, KvClient, Txn,
    TxnOp, TxnOpResponse,
};
use gaffer_api::views::{AttemptView, EventView, JobPage, TaskView};
use gaffer_api::{JobId, JobState, TaskState, UnixMs};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Keys read per range request when scanning.
pub const PAGE: i64 = 2000;
/// Transactions of one split batch in flight at once.
const IN_FLIGHT: usize = 8;
/// Task states kept in the active task index.
fn task_active(s: TaskState) -> bool {
    matches!(
        s,
        TaskState::Pending | TaskState::Assigned | TaskState::Running
    )
}
/// `to` states of an event that ends an attempt, and whether it counts as success.
fn ended_kind(to: &str) -> Option<&'static str> {
    match to {
        "succeeded" => Some("s"),
        "failed" | "timed_out" | "oom_killed" | "lost" => Some("f"),
        _ => None,
    }
}

/// Condition a write transaction must satisfy: the writer still holds leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceCond {
    /// The key's create revision equals this (the leader key this server created).
    CreateRevision(i64),
    /// The key's value equals this (e.g. the leader's id).
    Value(Vec<u8>),
}

/// A fence: a key and the condition every write compares it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// Full etcd key (not under the store's prefix unless you put it there).
    pub key: String,
    /// What must hold.
    pub cond: FenceCond,
}

impl Fence {
    fn compare(&self) -> Compare {
        match &self.cond {
            FenceCond::CreateRevision(r) => {
                Compare::create_revision(self.key.as_bytes(), CompareOp::Equal, *r)
            }
            FenceCond::Value(v) => Compare::value(self.key.as_bytes(), CompareOp::Equal, v.clone()),
        }
    }
}

/// One write of a batch.
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
    DelPrefix(Vec<u8>),
}

impl Op {
    fn size(&self) -> usize {
        32 + match self {
            Op::Put(k, v) => k.len() + v.len(),
            Op::Del(k) | Op::DelPrefix(k) => 2 * k.len(),
        }
    }
    fn txn_op(&self) -> TxnOp {
        match self {
            Op::Put(k, v) => TxnOp::put(k.clone(), v.clone(), None),
            Op::Del(k) => TxnOp::delete(k.clone(), None),
            Op::DelPrefix(k) => TxnOp::delete(k.clone(), Some(DeleteOptions::new().with_prefix())),
        }
    }
}

/// Puts and deletes with one operation per key (etcd refuses a transaction naming a key twice).
#[derive(Default)]
struct Ops {
    ops: Vec<Op>,
    at: HashMap<Vec<u8>, usize>,
}

impl Ops {
    fn push(&mut self, op: Op) {
        let key = match &op {
            Op::Put(k, _) | Op::Del(k) | Op::DelPrefix(k) => k.clone(),
        };
        match self.at.get(&key) {
            Some(&i) => self.ops[i] = op,
            None => {
                self.at.insert(key, self.ops.len());
                self.ops.push(op);
            }
        }
    }
    fn put(&mut self, k: String, v: Vec<u8>) {
        self.push(Op::Put(k.into_bytes(), v));
    }
    fn del(&mut self, k: String) {
        self.push(Op::Del(k.into_bytes()));
    }
}

/// The smallest key greater than every key starting with `p`.
fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Every key-value in `[start, end)`, ascending, read in pages of [`PAGE`].
async fn read_range(
    kv: &mut KvClient,
    start: Vec<u8>,
    end: Vec<u8>,
    keys_only: bool,
) -> std::result::Result<Vec<KeyValue>, etcd_client::Error> {
    let mut out = Vec::new();
    let mut from = start;
    loop {
        let mut o = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if keys_only {
            o = o.with_keys_only();
        }
        let mut r = kv.get(from.clone(), Some(o)).await?;
        let more = r.more();
        let kvs = r.take_kvs();
        if let Some(last) = kvs.last() {
            from = last.key().to_vec();
            from.push(0);
        }
        let n = kvs.len();
        out.extend(kvs);
        if !more || n == 0 {
            return Ok(out);
        }
    }
}

/// Ids in the first window [`newest`] reads, per wanted entry.
const WINDOW_PER_WANTED: u64 = 2;
/// The widest window [`newest`] reads at once, in ids.
const MAX_WINDOW: u64 = 4 * PAGE as u64;

/// Up to `want` entries of the keys `space{n:020}` with `n < below` that pass `keep`, greatest
/// `n` first.
///
/// etcd ignores the limit of a range sorted in descending order: it reads the whole range and
/// sorts it, so "the newest 50 jobs" would cost a read of every job. Instead this reads
/// ascending windows of numbers backwards from `below`: `[below - w, below)`, then the window
/// below that, each `w` four times the previous one (up to [`MAX_WINDOW`]), until enough
/// entries are found or number 0 is reached. With dense numbers (job ids) the first window
/// usually suffices; a sparse index or a rare name costs more windows, but never a read of keys
/// above `below` or a sort.
async fn newest(
    kv: &mut KvClient,
    space: &str,
    below: u64,
    want: usize,
    keep: impl Fn(&KeyValue) -> bool,
) -> std::result::Result<Vec<KeyValue>, etcd_client::Error> {
    let mut out = Vec::new();
    let mut hi = below;
    let mut w = (want as u64 * WINDOW_PER_WANTED).clamp(64, MAX_WINDOW);
    while hi > 0 {
        let lo = hi.saturating_sub(w);
        let window = read_range(
            kv,
            format!("{space}{lo:020}").into_bytes(),
            format!("{space}{hi:020}").into_bytes(),
            false,
        )
        .await?;
        for kv in window.into_iter().rev().filter(|kv| keep(kv)) {
            out.push(kv);
            if out.len() >= want {
                return Ok(out);
            }
        }
        hi = lo;
        w = (w * 4).min(MAX_WINDOW);
    }
    Ok(out)
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

fn from_json<'a, T: Deserialize<'a>>(kv: &'a KeyValue) -> Result<T> {
    decode(kv, serde_json::from_slice)
}

/// Reads `kv`'s value with `read` (a JSON decoder), a corrupt record if it fails.
fn decode<'a, T>(
    kv: &'a KeyValue,
    read: impl FnOnce(&'a [u8]) -> serde_json::Result<T>,
) -> Result<T> {
    read(kv.value()).map_err(|e| StoreError::Corrupt {
        what: format!("etcd key {}", String::from_utf8_lossy(kv.key())),
        detail: e.to_string(),
    })
}

/// A job row from its etcd value.
fn job_from(kv: &KeyValue) -> Result<JobRow> {
    decode(kv, JobRecord::from_etcd).map(JobRow::from)
}

/// A task row from its etcd value.
fn task_from(kv: &KeyValue) -> Result<TaskRow> {
    decode(kv, TaskRecord::from_etcd).map(TaskRow::from)
}

/// The etcd store.
pub struct EtcdStore {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    endpoints: String,
    p: String,
    fence: Arc<Mutex<Option<Fence>>>,
    max_ops: usize,
    max_bytes: usize,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks; inside another runtime that panics, so shut down in the
        // background.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl EtcdStore {
    /// Connects to an etcd cluster. Every key lives under `prefix` (a trailing `/` is optional).
    pub fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        let joined = endpoints.join(",");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gaffer-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Etcd {
                endpoints: joined.clone(),
                op: "start the etcd client runtime".into(),
                source: Box::new(etcd_client::Error::IoError(e)),
            })?;
        let eps = endpoints.to_vec();
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client =
            run_on(&rt, async move { Client::connect(eps, Some(opts)).await }).map_err(|e| {
                StoreError::Etcd {
                    endpoints: joined.clone(),
                    op: "connect".into(),
                    source: Box::new(e),
                }
            })?;
        let s = EtcdStore {
            rt: Some(rt),
            client,
            endpoints: joined,
            p: prefix.trim_end_matches('/').to_string(),
            fence: Arc::new(Mutex::new(None)),
            max_ops: 128,
            max_bytes: 1 << 20,
        };
        // Fail now, with the endpoints in the message, when etcd is not reachable.
        s.run("reach etcd", |mut kv| {
            let key = s.k("meta/next_job_id");
            async move { kv.get(key, None).await.map(|_| ()) }
        })?;
        Ok(s)
    }

    /// Whether `P/{rest}` exists (e.g. `leader`: a server of this cluster leads).
    pub fn exists(&self, rest: &str) -> Result<bool> {
        Ok(self.get_one(self.k(rest))?.is_some())
    }

    /// Every write transaction will compare `key` with `cond` and fail with
    /// [`StoreError::Fenced`] when it does not hold.
    pub fn with_fence(self, key: String, cond: FenceCond) -> Self {
        self.set_fence(Some(Fence { key, cond }));
        self
    }

    /// Sets or clears the fence of later writes (e.g. after winning an election again).
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = fence;
    }

    /// Bounds of one write transaction: operations (etcd's `--max-txn-ops`, default 128) and
    /// bytes (keep below etcd's `--max-request-bytes`, default 1.5 MiB).
    pub fn with_limits(mut self, max_ops: usize, max_bytes: usize) -> Self {
        self.max_ops = max_ops.max(1);
        self.max_bytes = max_bytes.max(1024);
        self
    }

    /// The key prefix (without trailing `/`).
    pub fn prefix(&self) -> &str {
        &self.p
    }

    fn k(&self, rest: &str) -> String {
        format!("{}/{rest}", self.p)
    }
    fn job_key(&self, id: u64) -> String {
        format!("{}/jobs/{id:020}", self.p)
    }
    fn state_key(&self, s: JobState, id: u64) -> String {
        format!("{}/state/{}/{id:020}", self.p, s.as_str())
    }
    fn task_key(&self, job: u64, idx: u32) -> String {
        format!("{}/tasks/{job:020}/{idx:010}", self.p)
    }
    fn atask_key(&self, job: u64, idx: u32) -> String {
        format!("{}/atasks/{job:020}/{idx:010}", self.p)
    }
    fn attempt_key(&self, job: u64, idx: u32, attempt: u32) -> String {
        format!("{}/attempts/{job:020}/{idx:010}/{attempt:010}", self.p)
    }
    fn event_key(&self, id: u64) -> String {
        format!("{}/events/{id:020}", self.p)
    }
    fn jevent_key(&self, job: u64, id: u64) -> String {
        format!("{}/jevents/{job:020}/{id:020}", self.p)
    }
    fn ended_key(&self, time: u64, id: u64) -> String {
        format!("{}/ended/{time:020}/{id:020}", self.p)
    }

    fn etcd_err(&self, op: &str, e: etcd_client::Error) -> StoreError {
        StoreError::Etcd {
            endpoints: self.endpoints.clone(),
            op: op.to_string(),
            source: Box::new(e),
        }
    }

    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// Runs one etcd operation on the private runtime and waits for it.
    fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(KvClient) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let rt = self
            .rt
            .as_ref()
            .expect("runtime lives as long as the store");
        run_on(rt, f(self.kv())).map_err(|e| self.etcd_err(what, e))
    }

    /// Every key-value in `[start, end)`, ascending, read in pages.
    fn scan(&self, start: Vec<u8>, end: Vec<u8>, keys_only: bool) -> Result<Vec<KeyValue>> {
        self.run("range read", move |mut kv| async move {
            read_range(&mut kv, start, end, keys_only).await
        })
    }

    fn scan_prefix(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>> {
        let p = prefix.as_bytes().to_vec();
        let end = prefix_end(&p);
        self.scan(p, end, keys_only)
    }

    /// Values of many single keys (missing ones are `None`), read in transactions of gets.
    fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<KeyValue>>> {
        let max = self.max_ops;
        self.run("read records", move |mut kv| async move {
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(max) {
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|k| TxnOp::get(k.as_bytes(), None))
                    .collect();
                let r = kv.txn(Txn::new().and_then(ops)).await?;
                for resp in r.op_responses() {
                    match resp {
                        TxnOpResponse::Get(mut g) => out.push(g.take_kvs().into_iter().next()),
                        _ => out.push(None),
                    }
                }
            }
            Ok(out)
        })
    }

    fn get_one(&self, key: String) -> Result<Option<KeyValue>> {
        self.run("read", move |mut kv| async move {
            let mut r = kv.get(key, None).await?;
            Ok(r.take_kvs().into_iter().next())
        })
    }

    /// The greatest zero-padded number under `prefix` that is at least `hint`, if any: the keys
    /// at or above the counter, which is normally none. (A descending range would find the
    /// greatest key in one request, but etcd ignores the limit of a sorted range and reads all
    /// of it: every event key.)
    fn last_number_from(&self, prefix: String, hint: u64) -> Result<Option<u64>> {
        let start = format!("{prefix}{hint:020}").into_bytes();
        let kvs = self.scan(start, prefix_end(prefix.as_bytes()), true)?;
        Ok(kvs.last().and_then(|kv| {
            std::str::from_utf8(&kv.key()[prefix.len()..])
                .ok()?
                .parse()
                .ok()
        }))
    }

    /// A decimal counter under `meta/` (0 when absent).
    fn counter(&self, name: &str) -> Result<u64> {
        let key = self.k(&format!("meta/{name}"));
        match self.get_one(key.clone())? {
            Some(kv) => String::from_utf8_lossy(kv.value())
                .parse::<u64>()
                .map_err(|e| StoreError::Corrupt {
                    what: key,
                    detail: e.to_string(),
                }),
            None => Ok(0),
        }
    }

    /// Writes `ops` in bounded transactions, each fenced.
    fn write(&self, ops: Vec<Op>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let fence = self.fence.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut txns: Vec<Txn> = Vec::new();
        let mut cur: Vec<TxnOp> = Vec::new();
        let mut bytes = 0;
        let mk = |ops: Vec<TxnOp>| {
            let t = Txn::new();
            let t = match &fence {
                Some(f) => t.when(vec![f.compare()]),
                None => t,
            };
            t.and_then(ops)
        };
        for op in &ops {
            let sz = op.size();
            if !cur.is_empty() && (cur.len() >= self.max_ops || bytes + sz > self.max_bytes) {
                txns.push(mk(std::mem::take(&mut cur)));
                bytes = 0;
            }
            bytes += sz;
            cur.push(op.txn_op());
        }
        if !cur.is_empty() {
            txns.push(mk(cur));
        }
        let fenced = self.run("write transaction", move |kv| async move {
            let mut fenced = false;
            let mut set = tokio::task::JoinSet::new();
            let mut txns = txns.into_iter();
            loop {
                while set.len() < IN_FLIGHT {
                    match txns.next() {
                        Some(t) => {
                            let mut kv = kv.clone();
                            set.spawn(async move { kv.txn(t).await.map(|r| r.succeeded()) });
                        }
                        None => break,
                    }
                }
                match set.join_next().await {
                    None => return Ok(fenced),
                    Some(Ok(r)) => fenced |= !r?,
                    Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
                }
                if fenced {
                    // Send nothing more; the ones in flight are refused too.
                    txns = Vec::new().into_iter();
                }
            }
        })?;
        if fenced {
            let f = fence.expect("a refused transaction had a fence");
            return Err(StoreError::Fenced {
                key: f.key,
                detail: match f.cond {
                    FenceCond::CreateRevision(r) => format!("create revision is no longer {r}"),
                    FenceCond::Value(v) => {
                        format!("value is no longer {:?}", String::from_utf8_lossy(&v))
                    }
                },
            });
        }
        Ok(())
    }

    fn jobs_from(&self, kvs: &[KeyValue]) -> Result<Vec<JobRow>> {
        kvs.iter().map(job_from).collect()
    }

    fn id_of(&self, kv: &KeyValue) -> Result<u64> {
        let key = kv.key();
        let tail = key.rsplit(|b| *b == b'/').next().unwrap_or(key);
        std::str::from_utf8(tail)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("etcd key {}", String::from_utf8_lossy(key)),
                detail: "no job id at its end".into(),
            })
    }
}

/// Runs `fut` on `rt` and waits for it from any thread (also inside another runtime).
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("etcd call task ended without an answer")
}

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
