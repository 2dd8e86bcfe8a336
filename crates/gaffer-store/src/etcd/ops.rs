//! The pieces under the etcd store: write operations and their fence, key ranges read in pages,
//! newest-first windows, and record encoding.

use super::*;
/// Task states kept in the active task index.
pub(super) fn task_active(s: TaskState) -> bool {
    matches!(
        s,
        TaskState::Pending | TaskState::Assigned | TaskState::Running
    )
}
/// `to` states of an event that ends an attempt, and whether it counts as success.
pub(super) fn ended_kind(to: &str) -> Option<&'static str> {
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
    pub(super) fn compare(&self) -> Compare {
        match &self.cond {
            FenceCond::CreateRevision(r) => {
                Compare::create_revision(self.key.as_bytes(), CompareOp::Equal, *r)
            }
            FenceCond::Value(v) => Compare::value(self.key.as_bytes(), CompareOp::Equal, v.clone()),
        }
    }
}

/// One write of a batch.
pub(super) enum Op {
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
    DelPrefix(Vec<u8>),
}

impl Op {
    pub(super) fn size(&self) -> usize {
        32 + match self {
            Op::Put(k, v) => k.len() + v.len(),
            Op::Del(k) | Op::DelPrefix(k) => 2 * k.len(),
        }
    }
    pub(super) fn txn_op(&self) -> TxnOp {
        match self {
            Op::Put(k, v) => TxnOp::put(k.clone(), v.clone(), None),
            Op::Del(k) => TxnOp::delete(k.clone(), None),
            Op::DelPrefix(k) => TxnOp::delete(k.clone(), Some(DeleteOptions::new().with_prefix())),
        }
    }
}

/// Puts and deletes with one operation per key (etcd refuses a transaction naming a key twice).
#[derive(Default)]
pub(super) struct Ops {
    pub(super) ops: Vec<Op>,
    at: HashMap<Vec<u8>, usize>,
}

impl Ops {
    pub(super) fn push(&mut self, op: Op) {
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
    pub(super) fn put(&mut self, k: String, v: Vec<u8>) {
        self.push(Op::Put(k.into_bytes(), v));
    }
    pub(super) fn del(&mut self, k: String) {
        self.push(Op::Del(k.into_bytes()));
    }
}

/// The smallest key greater than every key starting with `p`.
pub(super) fn prefix_end(p: &[u8]) -> Vec<u8> {
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
pub(super) async fn read_range(
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
pub(super) const WINDOW_PER_WANTED: u64 = 2;
/// The widest window [`newest`] reads at once, in ids.
pub(super) const MAX_WINDOW: u64 = 4 * PAGE as u64;

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
pub(super) async fn newest(
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

pub(super) fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

pub(super) fn from_json<'a, T: Deserialize<'a>>(kv: &'a KeyValue) -> Result<T> {
    decode(kv, serde_json::from_slice)
}

/// Reads `kv`'s value with `read` (a JSON decoder), a corrupt record if it fails.
pub(super) fn decode<'a, T>(
    kv: &'a KeyValue,
    read: impl FnOnce(&'a [u8]) -> serde_json::Result<T>,
) -> Result<T> {
    read(kv.value()).map_err(|e| StoreError::Corrupt {
        what: format!("etcd key {}", String::from_utf8_lossy(kv.key())),
        detail: e.to_string(),
    })
}

/// A job row from its etcd value.
pub(super) fn job_from(kv: &KeyValue) -> Result<JobRow> {
    decode(kv, JobRecord::from_etcd).map(JobRow::from)
}

/// A task row from its etcd value.
pub(super) fn task_from(kv: &KeyValue) -> Result<TaskRow> {
    decode(kv, TaskRecord::from_etcd).map(TaskRow::from)
}
