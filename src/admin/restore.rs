//! `gaffer admin restore`: a checked snapshot into an empty store, in bounded batches.

use super::check::{check, open_input, SnapReader};
use super::file::{Counts, Rec};
use super::report::{job_states, print_summary, Progress, Summary};
use super::store::{open_store, Opened, Use};
use crate::cli::RestoreArgs;
use crate::output::Output;
use anyhow::{anyhow, bail, Context, Result};
use gaffer_api::{JobId, UnixMs};
use gaffer_store::{Batch, StoreError};
use std::io::{BufReader, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Jobs per restore batch.
const BATCH_JOBS: usize = 500;

/// Restore batches committed at once.
const COMMITTERS: usize = 2;

/// Records (of any kind) per restore batch.
pub const BATCH_ROWS: usize = 10_000;

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

pub(super) fn restore(output: Output, a: RestoreArgs) -> Result<i32> {
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
    print_summary(output, &s, human, false)?;
    Ok(0)
}

fn taken_at(ms: UnixMs) -> String {
    if ms == 0 {
        return "at an unknown time".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    format!("{}", humantime::format_rfc3339_seconds(t))
}
