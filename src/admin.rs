//! `gaffer admin snapshot` and `gaffer admin restore`: the whole state of a store as one file,
//! so it can move between the SQLite and the etcd backends (either way), or be kept as a backup.
//!
//! Everything is read and written through the [`Store`] trait, so both backends are handled
//! alike: jobs (spec, counts, flags, `next_fresh`), task rows, attempts, events, idempotency keys
//! and the job-id and event-id counters. Logs and output files live in the data directories of
//! the servers and agents, not in the store, and are not part of a snapshot.
//!
//! # Format, version 1
//! JSON lines (UTF-8, one record per line, each ending with `\n`):
//! 1. a header: `{"gaffer_snapshot":1,"created_at":MS,"source":"...","gaffer_version":"...","jobs":N}`;
//! 2. every job, newest first, as `{"job":{...}}`, each followed by its task rows
//!    (`{"task":{...}}`) and then its attempts (`{"attempt":{...}}`), each in the snapshot form
//!    of `gaffer_store::record`;
//! 3. every event, oldest first: `{"event":{...}}` (the `GET /v1/events` shape);
//! 4. every idempotency key, in byte order: `{"idem":{"key":"...","jobs":["j-000001"]}}`;
//! 5. the end record `{"end":{...}}`: how many records of each kind precede it, the two id
//!    counters, and an FNV-1a 64-bit checksum of every byte between the header and the end
//!    record (so two snapshots of the same state differ only in their header).
//!
//! A file without its end record is truncated; one whose counts or checksum differ is damaged.
//! `restore` reads the whole file once to check it before it writes anything, then a second
//! time to commit it in bounded batches (a few hundred jobs, at most [`BATCH_ROWS`] records).
//!
//! # Consistency
//! With SQLite the data directory's lock is held throughout, so no server can write meanwhile.
//! With etcd the servers must be stopped: a snapshot compares the counters and job counts before
//! and after and refuses when they moved, and every restore write is fenced on the leader key
//! being absent (see `gaffer_store::etcd`), so a restore is refused while a server leads.

use crate::cli::{AdminCommand, AdminStoreArgs, Format, RestoreArgs, SnapshotArgs, StoreKind};
use anyhow::{anyhow, bail, Context, Result};
use gaffer_api::views::EventView;
use gaffer_api::{JobId, JobState, TaskState, UnixMs};
use gaffer_store::etcd::{EtcdStore, FenceCond};
use gaffer_store::record::{AttemptRecord, JobRecord, TaskRecord};
use gaffer_store::sqlite::SqliteStore;
use gaffer_store::{Batch, JobQuery, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The format version this gaffer writes and reads: that of the records it holds.
const VERSION: u64 = gaffer_store::record::VERSION;
/// Jobs per listing page while taking a snapshot.
const PAGE: u32 = 5_000;
/// Jobs one reader thread handles at a time.
const CHUNK: usize = 64;
/// Reader threads (the SQLite store pools 8 read connections).
const READERS: usize = 8;
/// Events and idempotency keys per read.
const READ_BATCH: u32 = 10_000;
/// Jobs per restore batch.
const BATCH_JOBS: usize = 500;
/// Restore batches committed at once.
const COMMITTERS: usize = 2;
/// Records (of any kind) per restore batch.
pub const BATCH_ROWS: usize = 10_000;
/// Progress is reported every this many jobs...
const PROGRESS_JOBS: u64 = 10_000;
/// ... and every this many events.
const PROGRESS_EVENTS: u64 = 100_000;

/// `gaffer admin ...`.
pub fn run(fmt: Format, cmd: AdminCommand) -> Result<i32> {
    match cmd {
        AdminCommand::Snapshot(a) => snapshot(fmt, a),
        AdminCommand::Restore(a) => restore(fmt, a),
    }
}

// ---------------------------------------------------------------- records

/// First line.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    gaffer_snapshot: u64,
    #[serde(default)]
    created_at: UnixMs,
    #[serde(default)]
    source: String,
    #[serde(default)]
    gaffer_version: String,
    /// Jobs in the snapshot (for progress).
    #[serde(default)]
    jobs: u64,
}

/// One line after the header.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Rec {
    Job(Box<JobRecord>),
    Task(TaskRecord),
    Attempt(Box<AttemptRecord>),
    Event(EventView),
    Idem(IdemRec),
    End(EndRec),
}

impl Rec {
    fn kind(&self) -> &'static str {
        match self {
            Rec::Job(_) => "job",
            Rec::Task(_) => "task",
            Rec::Attempt(_) => "attempt",
            Rec::Event(_) => "event",
            Rec::Idem(_) => "idem",
            Rec::End(_) => "end",
        }
    }
}

/// An idempotency key and the jobs its submit created.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdemRec {
    key: String,
    jobs: Vec<JobId>,
}

/// Last line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndRec {
    jobs: u64,
    tasks: u64,
    attempts: u64,
    events: u64,
    idempotency_keys: u64,
    next_job_id: u64,
    next_event_id: u64,
    /// FNV-1a 64 of every byte after the header line and before this one, 16 hex digits.
    fnv1a64: String,
}

/// Records of each kind.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counts {
    jobs: u64,
    tasks: u64,
    attempts: u64,
    events: u64,
    idempotency_keys: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.jobs += o.jobs;
        self.tasks += o.tasks;
        self.attempts += o.attempts;
        self.events += o.events;
        self.idempotency_keys += o.idempotency_keys;
    }

    fn human(&self) -> String {
        format!(
            "{} jobs, {} tasks, {} attempts, {} events, {} idempotency keys",
            self.jobs, self.tasks, self.attempts, self.events, self.idempotency_keys
        )
    }
}

/// FNV-1a, 64 bits: a checksum against truncation and damage (not against tampering).
#[derive(Default)]
struct Fnv(fnv::FnvHasher);

impl Fnv {
    fn update(&mut self, bytes: &[u8]) {
        std::hash::Hasher::write(&mut self.0, bytes);
    }
    fn hex(&self) -> String {
        format!("{:016x}", std::hash::Hasher::finish(&self.0))
    }
}

fn push_line<T: Serialize>(buf: &mut Vec<u8>, v: &T) -> Result<()> {
    serde_json::to_writer(&mut *buf, v).context("cannot encode a snapshot record")?;
    buf.push(b'\n');
    Ok(())
}

// ---------------------------------------------------------------- stores

/// An open store, with the data-directory lock held as long as it lives.
struct Opened {
    store: Box<dyn Store>,
    /// For messages: "SQLite /x/state.db" or "etcd http://... (prefix gaffer)".
    desc: String,
    /// How to empty it, for messages.
    empty_hint: String,
    /// etcd prefix (for the fence message).
    etcd_prefix: Option<String>,
    /// A server leads the cluster whose state this is (etcd only: SQLite is locked instead).
    led: bool,
    _lock: Option<nix::fcntl::Flock<File>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Use {
    Snapshot,
    Restore,
}

fn open_store(a: &AdminStoreArgs, what: Use) -> Result<Opened> {
    let verb = match what {
        Use::Snapshot => "snapshot",
        Use::Restore => "restore",
    };
    match a.store.kind {
        StoreKind::Sqlite => {
            let dir = &a.data_dir;
            let dir = match what {
                Use::Snapshot => {
                    let db = dir.join("state.db");
                    if !db.is_file() {
                        bail!(
                            "there is no state database {}: pass the data directory of the \
                             server with --data-dir (gaffer server uses .gaffer-server, gaffer dev \
                             uses .gaffer), or --store etcd",
                            db.display()
                        );
                    }
                    std::fs::canonicalize(dir)
                        .with_context(|| format!("cannot resolve {}", dir.display()))?
                }
                Use::Restore => crate::toolbox::prepare_dir(dir)?,
            };
            let lock = crate::toolbox::lock_data_dir(&dir).with_context(|| {
                format!(
                    "cannot {verb} while another process uses the data directory (stop the \
                     gaffer server or gaffer dev running on it first)"
                )
            })?;
            let db = dir.join("state.db");
            let store = SqliteStore::open(&db)
                .with_context(|| format!("cannot open the state database {}", db.display()))?;
            Ok(Opened {
                store: Box::new(store),
                desc: format!("SQLite {}", db.display()),
                empty_hint: format!(
                    "move {} (and its -wal and -shm files) away, or pass another --data-dir",
                    db.display()
                ),
                etcd_prefix: None,
                led: false,
                _lock: Some(lock),
            })
        }
        StoreKind::Etcd => {
            let endpoints = &a.store.etcd_endpoints;
            if endpoints.is_empty() {
                bail!(
                    "--store etcd needs --etcd-endpoints http://HOST:2379[,...] (or \
                     GAFFER_ETCD_ENDPOINTS)"
                );
            }
            let prefix = a.store.etcd_prefix.trim_end_matches('/').to_string();
            if prefix.is_empty() {
                bail!("--etcd-prefix must not be empty");
            }
            let desc = format!("etcd {} (prefix {prefix})", endpoints.join(","));
            let mut store = EtcdStore::connect(endpoints, &prefix)
                .with_context(|| format!("cannot open the store in {desc}"))?;
            let led = store
                .exists("leader")
                .with_context(|| format!("cannot read the leader key in {desc}"))?;
            if what == Use::Restore {
                // Every write requires that no server leads this cluster: a leader's core
                // would not see the restored rows, and would overwrite them.
                store = store.with_fence(format!("{prefix}/leader"), FenceCond::CreateRevision(0));
            }
            Ok(Opened {
                store: Box::new(store),
                desc,
                empty_hint: format!(
                    "pick another --etcd-prefix, or delete the old keys (etcdctl del --prefix \
                     '{prefix}/') with every server of that cluster stopped"
                ),
                etcd_prefix: Some(prefix),
                led,
                _lock: None,
            })
        }
    }
}

impl Opened {
    /// A store error with what to do about it.
    fn explain(&self, e: StoreError) -> anyhow::Error {
        match (&e, &self.etcd_prefix) {
            (StoreError::Fenced { .. }, Some(p)) => anyhow!(
                "a gaffer server is leader of the cluster on etcd prefix {p} (the key {p}/leader \
                 exists): stop every server of that cluster before restoring"
            ),
            _ => anyhow::Error::new(e),
        }
    }
}

// ---------------------------------------------------------------- progress

struct Progress {
    what: &'static str,
    t0: Instant,
    total_jobs: u64,
    jobs_shown: u64,
    events_shown: u64,
}

impl Progress {
    fn new(what: &'static str, total_jobs: u64) -> Self {
        Progress {
            what,
            t0: Instant::now(),
            total_jobs,
            jobs_shown: 0,
            events_shown: 0,
        }
    }

    fn jobs(&mut self, n: u64) {
        if n / PROGRESS_JOBS > self.jobs_shown / PROGRESS_JOBS {
            eprintln!(
                "{}: {n}/{} jobs ({:.1} s)",
                self.what,
                self.total_jobs,
                self.t0.elapsed().as_secs_f64()
            );
        }
        self.jobs_shown = n;
    }

    fn events(&mut self, n: u64) {
        if n / PROGRESS_EVENTS > self.events_shown / PROGRESS_EVENTS {
            eprintln!(
                "{}: {n} events ({:.1} s)",
                self.what,
                self.t0.elapsed().as_secs_f64()
            );
        }
        self.events_shown = n;
    }
}

/// The closing line (human or JSON); on stderr when stdout carries the snapshot.
#[derive(Serialize)]
struct Summary {
    command: &'static str,
    file: String,
    store: String,
    jobs: u64,
    tasks: u64,
    attempts: u64,
    events: u64,
    idempotency_keys: u64,
    next_job_id: u64,
    next_event_id: u64,
    bytes: u64,
    seconds: f64,
}

fn print_summary(fmt: Format, s: &Summary, human: String, to_stderr: bool) -> Result<()> {
    let line = match fmt {
        Format::Json => serde_json::to_string(s)?,
        Format::Human => human,
    };
    if to_stderr {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(())
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

// ---------------------------------------------------------------- snapshot

/// Where the snapshot goes: standard output, or a temporary file renamed over FILE at the end.
enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    File {
        w: BufWriter<File>,
        tmp: TempPath,
        dest: PathBuf,
    },
}

/// A path removed on drop unless kept.
struct TempPath(Option<PathBuf>);

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

struct SnapshotOut {
    sink: Sink,
    name: String,
    hash: Fnv,
    bytes: u64,
}

impl SnapshotOut {
    fn create(file: &Path) -> Result<Self> {
        if file == Path::new("-") {
            return Ok(SnapshotOut {
                sink: Sink::Stdout(BufWriter::with_capacity(1 << 20, std::io::stdout())),
                name: "standard output".into(),
                hash: Fnv::default(),
                bytes: 0,
            });
        }
        if file.is_dir() {
            bail!("{} is a directory: name the snapshot file", file.display());
        }
        let name = file
            .file_name()
            .ok_or_else(|| anyhow!("{} does not name a file", file.display()))?
            .to_string_lossy()
            .into_owned();
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| {
                format!(
                    "cannot create the temporary file {} for the snapshot {}",
                    tmp.display(),
                    file.display()
                )
            })?;
        Ok(SnapshotOut {
            sink: Sink::File {
                w: BufWriter::with_capacity(1 << 20, f),
                tmp: TempPath(Some(tmp)),
                dest: file.to_path_buf(),
            },
            name: file.display().to_string(),
            hash: Fnv::default(),
            bytes: 0,
        })
    }

    fn write_raw(&mut self, bytes: &[u8], hashed: bool) -> Result<()> {
        let r = match &mut self.sink {
            Sink::Stdout(w) => w.write_all(bytes),
            Sink::File { w, .. } => w.write_all(bytes),
        };
        r.with_context(|| format!("cannot write the snapshot to {}", self.name))?;
        if hashed {
            self.hash.update(bytes);
        }
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Flushes and, for a file, syncs it and renames it over the destination.
    fn finish(self) -> Result<u64> {
        let name = self.name;
        match self.sink {
            Sink::Stdout(mut w) => w
                .flush()
                .with_context(|| format!("cannot write the snapshot to {name}"))?,
            Sink::File { w, mut tmp, dest } => {
                let f = w
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("cannot write the snapshot to {name}"))?;
                f.sync_all()
                    .with_context(|| format!("cannot sync the snapshot {name}"))?;
                let from = tmp.0.clone().expect("temporary path is set until kept");
                std::fs::rename(&from, &dest).with_context(|| {
                    format!("cannot rename {} to {}", from.display(), dest.display())
                })?;
                tmp.0 = None;
                if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                    if let Ok(d) = File::open(dir) {
                        let _ = d.sync_all();
                    }
                } else if let Ok(d) = File::open(".") {
                    let _ = d.sync_all();
                }
            }
        }
        Ok(self.bytes)
    }
}

/// Jobs read by one worker, already encoded.
#[derive(Default)]
struct Chunk {
    text: Vec<u8>,
    counts: Counts,
}

/// Reads jobs `ids` with their tasks and attempts and encodes them.
fn read_jobs(store: &dyn Store, ids: &[JobId]) -> Result<Chunk> {
    let mut c = Chunk::default();
    let histories = store
        .job_histories(ids)
        .with_context(|| match (ids.first(), ids.last()) {
            (Some(a), Some(b)) => {
                format!("cannot read jobs {a} to {b} with their tasks and attempts")
            }
            _ => "cannot read jobs".to_string(),
        })?;
    for (&id, h) in ids.iter().zip(histories) {
        let h = h.ok_or_else(|| {
            anyhow!(
                "job {id} was deleted while the snapshot was being taken: stop every gaffer \
                 server using this store and take the snapshot again"
            )
        })?;
        c.counts.jobs += 1;
        push_line(&mut c.text, &Rec::Job(Box::new(h.job.into())))?;
        c.counts.tasks += h.tasks.len() as u64;
        for t in h.tasks {
            push_line(&mut c.text, &Rec::Task(t.into()))?;
        }
        c.counts.attempts += h.attempts.len() as u64;
        for (index, a) in h.attempts {
            push_line(
                &mut c.text,
                &Rec::Attempt(Box::new(AttemptRecord::from((id, index, a)))),
            )?;
        }
    }
    Ok(c)
}

/// `f` over `items` on `workers` threads; results in the order of `items`, or the first error.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<R>>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    return;
                }
                let r = f(&items[i]);
                let failed = r.is_err();
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                if failed {
                    // Stop the others early: the whole call fails anyway.
                    next.store(items.len(), Ordering::Relaxed);
                    return;
                }
            });
        }
    });
    let results: Vec<Option<Result<R>>> = slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect();
    // The first error wins, wherever it is: slots after a failure may be empty.
    let mut out = Vec::with_capacity(results.len());
    let mut missing = false;
    for r in results {
        match r {
            Some(Err(e)) => return Err(e),
            Some(Ok(v)) => out.push(v),
            None => missing = true,
        }
    }
    if missing {
        bail!("a snapshot reader stopped without a result");
    }
    Ok(out)
}

fn job_states(counts: &[(JobState, u64)]) -> BTreeMap<&'static str, u64> {
    counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (s.as_str(), *n))
        .collect()
}

fn snapshot(fmt: Format, a: SnapshotArgs) -> Result<i32> {
    let t0 = Instant::now();
    let src = open_store(&a.store, Use::Snapshot)?;
    if src.led && !a.force {
        bail!(
            "a gaffer server leads the cluster in {} and may write while the snapshot is taken: \
             stop every server of that cluster first (or pass --force to take it anyway; it is \
             refused if the state changes meanwhile)",
            src.desc
        );
    }
    let store = &*src.store;
    let read_err = |what: &str| format!("cannot read {what} from {}", src.desc);
    let active = store
        .load_active()
        .with_context(|| read_err("the active state"))?;
    let states = store
        .count_jobs()
        .with_context(|| read_err("the job counts"))?;
    let total: u64 = states.iter().map(|(_, n)| n).sum();
    if total == 0 && active.next_job_id <= 1 && active.next_event_id <= 1 {
        let hint = match &src.etcd_prefix {
            Some(p) => format!("is --etcd-prefix {p} the one the servers use?"),
            None => "is --data-dir the server's data directory?".to_string(),
        };
        eprintln!(
            "warning: {} holds no gaffer state (no jobs, no events): {hint}",
            src.desc
        );
    }

    let mut out = SnapshotOut::create(&a.file)?;
    let header = Header {
        gaffer_snapshot: VERSION,
        created_at: gaffer_api::now_ms(),
        source: src.desc.clone(),
        gaffer_version: env!("CARGO_PKG_VERSION").into(),
        jobs: total,
    };
    let mut buf = Vec::new();
    push_line(&mut buf, &header)?;
    out.write_raw(&buf, false)?;

    let mut counts = Counts::default();
    let mut progress = Progress::new("snapshot", total);
    // Jobs, newest first, a page at a time; each page read by several threads.
    let mut before = None;
    loop {
        let page = store
            .list_jobs(&JobQuery {
                limit: PAGE,
                before,
                ..Default::default()
            })
            .with_context(|| read_err("the job list"))?;
        let ids: Vec<JobId> = page.jobs.iter().map(|j| j.id).collect();
        let chunks: Vec<&[JobId]> = ids.chunks(CHUNK).collect();
        for c in parallel_map(&chunks, READERS, |ids| read_jobs(store, ids))? {
            out.write_raw(&c.text, true)?;
            counts.add(&c.counts);
            progress.jobs(counts.jobs);
        }
        match page.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    // Events, oldest first.
    let mut after = 0;
    loop {
        let events = store
            .events(after, None, READ_BATCH)
            .with_context(|| read_err("the events"))?;
        let Some(last) = events.last() else { break };
        after = last.id;
        buf.clear();
        counts.events += events.len() as u64;
        for e in events {
            push_line(&mut buf, &Rec::Event(e))?;
        }
        out.write_raw(&buf, true)?;
        progress.events(counts.events);
    }
    // Idempotency keys, in byte order.
    let mut after_key: Option<String> = None;
    loop {
        let keys = store
            .idempotency_keys(after_key.as_deref(), READ_BATCH)
            .with_context(|| read_err("the idempotency keys"))?;
        let Some((last, _)) = keys.last() else { break };
        after_key = Some(last.clone());
        buf.clear();
        counts.idempotency_keys += keys.len() as u64;
        for (key, jobs) in keys {
            push_line(&mut buf, &Rec::Idem(IdemRec { key, jobs }))?;
        }
        out.write_raw(&buf, true)?;
    }

    // Refuse a snapshot of a store that changed underneath (a server still running on etcd).
    let active2 = store
        .load_active()
        .with_context(|| read_err("the active state"))?;
    let states2 = store
        .count_jobs()
        .with_context(|| read_err("the job counts"))?;
    let mut moved = Vec::new();
    if active2.next_job_id != active.next_job_id {
        moved.push(format!(
            "next job id {} -> {}",
            active.next_job_id, active2.next_job_id
        ));
    }
    if active2.next_event_id != active.next_event_id {
        moved.push(format!(
            "next event id {} -> {}",
            active.next_event_id, active2.next_event_id
        ));
    }
    if states2 != states {
        moved.push(format!(
            "jobs by state {:?} -> {:?}",
            job_states(&states),
            job_states(&states2)
        ));
    }
    if counts.jobs != total {
        moved.push(format!("{total} jobs counted, {} listed", counts.jobs));
    }
    if !moved.is_empty() {
        bail!(
            "{} changed while the snapshot was being taken ({}): stop every gaffer server using \
             it and take the snapshot again; nothing was written to {}",
            src.desc,
            moved.join(", "),
            out.name
        );
    }

    let end = EndRec {
        jobs: counts.jobs,
        tasks: counts.tasks,
        attempts: counts.attempts,
        events: counts.events,
        idempotency_keys: counts.idempotency_keys,
        next_job_id: active.next_job_id,
        next_event_id: active.next_event_id,
        fnv1a64: out.hash.hex(),
    };
    buf.clear();
    push_line(&mut buf, &Rec::End(end))?;
    out.write_raw(&buf, false)?;
    let name = out.name.clone();
    let to_stderr = matches!(out.sink, Sink::Stdout(_));
    let bytes = out.finish()?;
    let secs = t0.elapsed().as_secs_f64();
    let human = format!(
        "snapshot: {} → {name} ({}) in {secs:.1} s",
        counts.human(),
        size(bytes)
    );
    let s = Summary {
        command: "snapshot",
        file: name,
        store: src.desc.clone(),
        jobs: counts.jobs,
        tasks: counts.tasks,
        attempts: counts.attempts,
        events: counts.events,
        idempotency_keys: counts.idempotency_keys,
        next_job_id: active.next_job_id,
        next_event_id: active.next_event_id,
        bytes,
        seconds: secs,
    };
    print_summary(fmt, &s, human, to_stderr)?;
    Ok(0)
}

// ---------------------------------------------------------------- reading a snapshot

/// Line-by-line reader of a snapshot that names the line in every error.
struct SnapReader<R> {
    r: R,
    name: String,
    line: u64,
    buf: Vec<u8>,
    hash: Fnv,
    bytes: u64,
}

impl<R: BufRead> SnapReader<R> {
    fn new(r: R, name: String) -> Self {
        SnapReader {
            r,
            name,
            line: 0,
            buf: Vec::new(),
            hash: Fnv::default(),
            bytes: 0,
        }
    }

    /// An error about the current line.
    fn err(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{} line {}: {msg}", self.name, self.line)
    }

    /// The next line without its newline; `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<&[u8]>> {
        self.buf.clear();
        let n = self
            .r
            .read_until(b'\n', &mut self.buf)
            .with_context(|| format!("cannot read {}", self.name))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        self.bytes += n as u64;
        if self.buf.last() != Some(&b'\n') {
            return Err(
                self.err("the line is cut off (no newline at its end): the snapshot is truncated")
            );
        }
        Ok(Some(&self.buf[..n - 1]))
    }

    fn decode_err(&self, e: serde_json::Error) -> anyhow::Error {
        // serde_json counts lines and columns within the one line it was given.
        let msg = e.to_string();
        let msg = msg
            .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
            .unwrap_or(&msg)
            .to_string();
        if e.is_eof() {
            self.err(format!("the record is cut off ({msg})"))
        } else {
            anyhow!(
                "{} line {}, column {}: {msg}",
                self.name,
                self.line,
                e.column()
            )
        }
    }

    fn header(&mut self) -> Result<Header> {
        let name = self.name.clone();
        let Some(line) = self.next_line()? else {
            bail!("{name} is empty: it is not a gaffer snapshot");
        };
        let v: serde_json::Value = serde_json::from_slice(line).map_err(|_| {
            self.err("not a gaffer snapshot (the first line must be a header like {\"gaffer_snapshot\":1,...})")
        })?;
        let Some(version) = v.get("gaffer_snapshot") else {
            return Err(self.err(
                "not a gaffer snapshot (the first line must be a header like {\"gaffer_snapshot\":1,...})",
            ));
        };
        if version.as_u64() != Some(VERSION) {
            return Err(self.err(format!(
                "snapshot format version {version} is not supported: this gaffer reads version \
                 {VERSION}"
            )));
        }
        serde_json::from_value(v).map_err(|e| self.err(format!("bad header: {e}")))
    }

    /// The next record; `None` at the end of the file. Every line but the end record goes into
    /// the checksum.
    fn next(&mut self) -> Result<Option<Rec>> {
        let Some(line) = self.next_line()? else {
            return Ok(None);
        };
        let rec: Rec = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => return Err(self.decode_err(e)),
        };
        if !matches!(rec, Rec::End(_)) {
            self.hash.update(&self.buf);
        }
        Ok(Some(rec))
    }
}

/// What checking a whole snapshot found.
struct Checked {
    header: Header,
    end: EndRec,
    /// Jobs per state.
    states: BTreeMap<&'static str, u64>,
    /// Jobs pending or running, and task rows pending, assigned or running: what
    /// `load_active` must give after the restore.
    active_jobs: u64,
    active_tasks: u64,
    bytes: u64,
}

fn task_active(s: TaskState) -> bool {
    matches!(
        s,
        TaskState::Pending | TaskState::Assigned | TaskState::Running
    )
}

/// Reads the whole snapshot and checks its structure, counts and checksum.
fn check<R: BufRead>(r: &mut SnapReader<R>) -> Result<Checked> {
    let header = r.header()?;
    #[derive(PartialEq, PartialOrd, Clone, Copy, Debug)]
    enum Section {
        Jobs,
        Events,
        Idem,
    }
    let mut section = Section::Jobs;
    let mut counts = Counts::default();
    let mut job_ids: HashSet<u64> = HashSet::new();
    // The job whose tasks and attempts may follow: (id, task count).
    let mut current: Option<(JobId, u32)> = None;
    let mut seen_tasks: HashSet<u32> = HashSet::new();
    let mut seen_attempts: HashSet<(u32, u32)> = HashSet::new();
    let mut last_event = 0u64;
    let mut last_key: Option<String> = None;
    let mut states: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut active_jobs, mut active_tasks) = (0u64, 0u64);
    let mut max_job = 0u64;
    let end = loop {
        let Some(rec) = r.next()? else {
            bail!(
                "{} ends at line {} without its end record: the snapshot is truncated (was it \
                 copied completely?)",
                r.name,
                r.line
            );
        };
        let want = match &rec {
            Rec::Job(_) | Rec::Task(_) | Rec::Attempt(_) => Section::Jobs,
            Rec::Event(_) => Section::Events,
            Rec::Idem(_) => Section::Idem,
            Rec::End(_) => section,
        };
        if want < section {
            return Err(r.err(format!(
                "a {} record after the {section:?} section: records must come as jobs (with \
                 their tasks and attempts), then events, then idempotency keys",
                rec.kind()
            )));
        }
        section = want;
        match rec {
            Rec::Job(j) => {
                if j.id.0 == 0 || !job_ids.insert(j.id.0) {
                    return Err(r.err(format!("job {} appears twice or has id 0", j.id)));
                }
                max_job = max_job.max(j.id.0);
                *states.entry(j.state.as_str()).or_default() += 1;
                if !j.state.is_final() {
                    active_jobs += 1;
                }
                current = Some((j.id, j.counts.total));
                seen_tasks.clear();
                seen_attempts.clear();
                counts.jobs += 1;
            }
            Rec::Task(t) => {
                match current {
                    Some((id, total)) if id == t.job => {
                        if t.index >= total {
                            return Err(r.err(format!(
                                "task {} of job {id} is out of range: the job has {total} task(s)",
                                t.index
                            )));
                        }
                    }
                    _ => {
                        return Err(r.err(format!(
                            "a task of job {} that does not follow the job's record",
                            t.job
                        )))
                    }
                }
                if !seen_tasks.insert(t.index) {
                    return Err(r.err(format!("task {} of job {} appears twice", t.index, t.job)));
                }
                if task_active(t.state) {
                    active_tasks += 1;
                }
                counts.tasks += 1;
            }
            Rec::Attempt(a) => {
                if !matches!(current, Some((id, _)) if id == a.job) {
                    return Err(r.err(format!(
                        "an attempt of job {} that does not follow the job's record",
                        a.job
                    )));
                }
                if a.attempt == 0 || !seen_attempts.insert((a.index, a.attempt)) {
                    return Err(r.err(format!(
                        "attempt {} of task {} of job {} appears twice or is numbered 0",
                        a.attempt, a.index, a.job
                    )));
                }
                counts.attempts += 1;
            }
            Rec::Event(e) => {
                if e.id <= last_event {
                    return Err(r.err(format!(
                        "event {} comes after event {last_event}: events must be in increasing id order",
                        e.id
                    )));
                }
                if !job_ids.contains(&e.job.0) {
                    return Err(r.err(format!(
                        "event {} belongs to job {}, which is not in the snapshot",
                        e.id, e.job
                    )));
                }
                last_event = e.id;
                counts.events += 1;
            }
            Rec::Idem(i) => {
                if last_key.as_ref().is_some_and(|k| *k >= i.key) {
                    return Err(r.err(format!(
                        "idempotency key {:?} is out of order or appears twice",
                        i.key
                    )));
                }
                last_key = Some(i.key);
                counts.idempotency_keys += 1;
            }
            Rec::End(e) => break e,
        }
    };
    let end_line = r.line;
    let hash = r.hash.hex();
    if let Some(_extra) = r.next_line()? {
        return Err(r.err("data after the end record"));
    }
    let found = Counts {
        jobs: end.jobs,
        tasks: end.tasks,
        attempts: end.attempts,
        events: end.events,
        idempotency_keys: end.idempotency_keys,
    };
    if found != counts {
        bail!(
            "{} line {end_line}: the end record announces {}, but the file holds {}: the \
             snapshot is damaged",
            r.name,
            found.human(),
            counts.human()
        );
    }
    if end.fnv1a64 != hash {
        bail!(
            "{} line {end_line}: checksum mismatch (the end record says {}, the content gives \
             {hash}): the snapshot is damaged",
            r.name,
            end.fnv1a64
        );
    }
    if end.next_job_id <= max_job || end.next_event_id <= last_event {
        bail!(
            "{} line {end_line}: the counters (next job id {}, next event id {}) are not above \
             the largest ids in the file (job {max_job}, event {last_event})",
            r.name,
            end.next_job_id,
            end.next_event_id
        );
    }
    Ok(Checked {
        header,
        end,
        states,
        active_jobs,
        active_tasks,
        bytes: r.bytes,
    })
}

/// The snapshot to restore, as a file that can be read twice.
fn open_input(file: &Path) -> Result<(File, String)> {
    if file != Path::new("-") {
        let f = File::open(file)
            .with_context(|| format!("cannot open the snapshot {}", file.display()))?;
        if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            bail!("{} is a directory, not a snapshot file", file.display());
        }
        return Ok((f, file.display().to_string()));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!("restore -: standard input is a terminal; pipe a snapshot into it, or name the file");
    }
    // Spool standard input to an unlinked temporary file: the snapshot is checked completely
    // before anything is written, then read again.
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "gaffer-restore-{}-{}",
        std::process::id(),
        gaffer_api::now_ms()
    ));
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot create {} to hold the snapshot read from standard input",
                    path.display()
                )
            })?
    };
    let _ = std::fs::remove_file(&path);
    std::io::copy(&mut stdin.lock(), &mut f).with_context(|| {
        format!(
            "cannot copy standard input to a temporary file in {}",
            dir.display()
        )
    })?;
    f.seek(SeekFrom::Start(0))
        .context("cannot read back the snapshot copied from standard input")?;
    Ok((f, "standard input".into()))
}

// ---------------------------------------------------------------- restore

fn ensure_empty(dst: &Opened) -> Result<()> {
    let s = &*dst.store;
    let ctx = || format!("cannot read {}", dst.desc);
    let jobs: u64 = s
        .count_jobs()
        .with_context(ctx)?
        .iter()
        .map(|(_, n)| n)
        .sum();
    let active = s.load_active().with_context(ctx)?;
    let events = s.events(0, None, 1).with_context(ctx)?;
    let keys = s.idempotency_keys(None, 1).with_context(ctx)?;
    if jobs > 0
        || !events.is_empty()
        || !keys.is_empty()
        || active.next_job_id > 1
        || active.next_event_id > 1
    {
        let what = if jobs > 0 {
            format!("it holds {jobs} job(s)")
        } else {
            format!(
                "it has no jobs but has been used (next job id {}, next event id {})",
                active.next_job_id, active.next_event_id
            )
        };
        bail!(
            "{} is not empty ({what}): restore only fills an empty store and never merges; {}",
            dst.desc,
            dst.empty_hint
        );
    }
    Ok(())
}

fn restore(fmt: Format, a: RestoreArgs) -> Result<i32> {
    let t0 = Instant::now();
    let (mut file, name) = open_input(&a.file)?;
    // Pass 1: check everything before touching the destination.
    let checked = {
        let mut r = SnapReader::new(BufReader::with_capacity(1 << 20, &mut file), name.clone());
        check(&mut r)?
    };
    let end = checked.end.clone();
    let dst = open_store(&a.store, Use::Restore)?;
    ensure_empty(&dst)?;
    file.seek(SeekFrom::Start(0))
        .with_context(|| format!("cannot read {name} again"))?;

    // Pass 2: batches of a few hundred jobs, parsed by this thread and committed by
    // COMMITTERS others (etcd gains from more transactions in flight; SQLite serialises them).
    // The keys of different batches are disjoint, so their order does not matter, except that
    // the counters go last.
    let store = &*dst.store;
    let committed = AtomicUsize::new(0);
    let fenced = AtomicBool::new(false);
    let progress = Mutex::new((Progress::new("restore", end.jobs), 0u64, 0u64));
    let commit = |batch: &Batch, nj: u64, ne: u64| -> Result<()> {
        store.commit(batch).map_err(|e| {
            if matches!(e, StoreError::Fenced { .. }) {
                fenced.store(true, Ordering::Relaxed);
            }
            dst.explain(e)
        })?;
        committed.fetch_add(1, Ordering::Relaxed);
        let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
        p.1 += nj;
        p.2 += ne;
        let (jobs, events) = (p.1, p.2);
        p.0.jobs(jobs);
        p.0.events(events);
        Ok(())
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Batch, u64, u64)>(COMMITTERS);
    let rx = Mutex::new(rx);
    let result = std::thread::scope(|s| -> Result<()> {
        let committers: Vec<_> = (0..COMMITTERS)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((batch, nj, ne)) = next else {
                            return Ok(());
                        };
                        commit(&batch, nj, ne)?;
                    }
                })
            })
            .collect();
        let produced = (|| -> Result<Batch> {
            let mut r = SnapReader::new(BufReader::with_capacity(1 << 20, &mut file), name.clone());
            r.header()?;
            let mut b = Batch::default();
            let mut rows = 0usize;
            let (mut nj, mut ne) = (0u64, 0u64);
            let mut complete = false;
            while let Some(rec) = r.next()? {
                match rec {
                    Rec::Job(j) => {
                        b.insert_jobs.push((*j).into());
                        nj += 1;
                    }
                    Rec::Task(t) => b.tasks.push(t.into()),
                    Rec::Attempt(at) => b.attempts.push((*at).into()),
                    Rec::Event(e) => {
                        b.events.push(e);
                        ne += 1;
                    }
                    Rec::Idem(i) => b.idempotency.push((i.key, i.jobs)),
                    Rec::End(e) => {
                        complete = e == end && r.hash.hex() == end.fnv1a64;
                        break;
                    }
                }
                rows += 1;
                if b.insert_jobs.len() >= BATCH_JOBS || rows >= BATCH_ROWS {
                    let full = (std::mem::take(&mut b), nj, ne);
                    (rows, nj, ne) = (0, 0, 0);
                    if tx.send(full).is_err() {
                        // A committer failed: its error is the one to report.
                        return Ok(Batch::default());
                    }
                }
            }
            if !complete {
                bail!("{name} changed while it was being restored (it no longer matches what was checked)");
            }
            // Whatever is left goes with the counters, after everything else.
            b.next_job_id = Some(end.next_job_id);
            b.next_event_id = Some(end.next_event_id);
            Ok(b)
        })();
        drop(tx);
        let mut failed = None;
        for c in committers {
            let r = c
                .join()
                .unwrap_or_else(|_| Err(anyhow!("a restore commit thread panicked")));
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let last = produced?;
        let (nj, ne) = (last.insert_jobs.len() as u64, last.events.len() as u64);
        commit(&last, nj, ne)
    });
    if let Err(e) = result {
        // A fenced first batch is refused as a whole: nothing was written.
        if committed.load(Ordering::Relaxed) == 0 && fenced.load(Ordering::Relaxed) {
            return Err(e.context(format!("restore into {} refused", dst.desc)));
        }
        return Err(e.context(format!(
            "restore into {} failed: the destination may hold a partial state; {} before \
             restoring again",
            dst.desc, dst.empty_hint
        )));
    }

    // The restored store must answer as the snapshot says.
    let ctx = || format!("cannot read {} after the restore", dst.desc);
    let states = job_states(&store.count_jobs().with_context(ctx)?);
    let active = store.load_active().with_context(ctx)?;
    let mut diff = Vec::new();
    if states != checked.states {
        diff.push(format!(
            "jobs by state {:?}, expected {:?}",
            states, checked.states
        ));
    }
    if active.jobs.len() as u64 != checked.active_jobs
        || active.tasks.len() as u64 != checked.active_tasks
    {
        diff.push(format!(
            "{} active jobs and {} active tasks, expected {} and {}",
            active.jobs.len(),
            active.tasks.len(),
            checked.active_jobs,
            checked.active_tasks
        ));
    }
    if active.next_job_id != end.next_job_id || active.next_event_id != end.next_event_id {
        diff.push(format!(
            "next job id {} and next event id {}, expected {} and {}",
            active.next_job_id, active.next_event_id, end.next_job_id, end.next_event_id
        ));
    }
    if !diff.is_empty() {
        bail!(
            "restore into {} finished, but the store does not match the snapshot: {}",
            dst.desc,
            diff.join("; ")
        );
    }

    let secs = t0.elapsed().as_secs_f64();
    let counts = Counts {
        jobs: end.jobs,
        tasks: end.tasks,
        attempts: end.attempts,
        events: end.events,
        idempotency_keys: end.idempotency_keys,
    };
    let human = format!(
        "restore: {} from {name} (taken {} from {}) → {} in {secs:.1} s; next job id {}",
        counts.human(),
        taken_at(checked.header.created_at),
        if checked.header.source.is_empty() {
            "an unnamed store"
        } else {
            &checked.header.source
        },
        dst.desc,
        JobId(end.next_job_id)
    );
    let s = Summary {
        command: "restore",
        file: name,
        store: dst.desc.clone(),
        jobs: end.jobs,
        tasks: end.tasks,
        attempts: end.attempts,
        events: end.events,
        idempotency_keys: end.idempotency_keys,
        next_job_id: end.next_job_id,
        next_event_id: end.next_event_id,
        bytes: checked.bytes,
        seconds: secs,
    };
    print_summary(fmt, &s, human, false)?;
    Ok(0)
}

fn taken_at(ms: UnixMs) -> String {
    if ms == 0 {
        return "at an unknown time".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    format!("{}", humantime::format_rfc3339_seconds(t))
}

#[cfg(test)]
mod tests {
    use super::Fnv;

    /// The snapshot format names FNV-1a 64: published test vectors keep old files readable
    /// whatever computes it.
    #[test]
    fn checksum_is_fnv1a_64() {
        let hex = |parts: &[&[u8]]| {
            let mut h = Fnv::default();
            for p in parts {
                h.update(p);
            }
            h.hex()
        };
        assert_eq!(hex(&[]), "cbf29ce484222325");
        assert_eq!(hex(&[b"a"]), "af63dc4c8601ec8c");
        assert_eq!(hex(&[b"foo", b"bar"]), "85944171f73967e8");
    }
}
