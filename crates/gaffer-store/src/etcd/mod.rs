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

mod ops;
mod store;
use ops::*;
pub use ops::{Fence, FenceCond};
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
