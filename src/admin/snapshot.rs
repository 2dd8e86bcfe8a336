//! `gaffer admin snapshot`: the store, read page by page on several threads, into one file.

use super::file::{push_line, Counts, EndRec, Fnv, Header, IdemRec, Rec, VERSION};
use super::report::{job_states, print_summary, size, Progress, Summary};
use super::store::{open_store, Use};
use crate::cli::SnapshotArgs;
use crate::output::Output;
use anyhow::{anyhow, bail, Context, Result};
use gaffer_api::JobId;
use gaffer_store::record::AttemptRecord;
use gaffer_store::{JobQuery, Store};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Jobs per listing page while taking a snapshot.
const PAGE: u32 = 5_000;

/// Jobs one reader thread handles at a time.
const CHUNK: usize = 64;

/// Reader threads (the SQLite store pools 8 read connections).
const READERS: usize = 8;

/// Events and idempotency keys per read.
const READ_BATCH: u32 = 10_000;

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

pub(super) fn snapshot(output: Output, a: SnapshotArgs) -> Result<i32> {
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
    print_summary(output, &s, human, to_stderr)?;
    Ok(0)
}
