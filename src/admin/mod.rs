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
//! time to commit it in bounded batches (a few hundred jobs, at most [`restore::BATCH_ROWS`] records).
//!
//! # Consistency
//! With SQLite the data directory's lock is held throughout, so no server can write meanwhile.
//! With etcd the servers must be stopped: a snapshot compares the counters and job counts before
//! and after and refuses when they moved, and every restore write is fenced on the leader key
//! being absent (see `gaffer_store::etcd`), so a restore is refused while a server leads.

mod check;
mod file;
mod report;
mod restore;
mod snapshot;
mod store;

use crate::cli::AdminCommand;
use crate::output::Output;
use anyhow::Result;
use restore::restore;
use snapshot::snapshot;

/// `gaffer admin ...`.
pub fn run(output: Output, cmd: AdminCommand) -> Result<i32> {
    match cmd {
        AdminCommand::Snapshot(a) => snapshot(output, a),
        AdminCommand::Restore(a) => restore(output, a),
    }
}
