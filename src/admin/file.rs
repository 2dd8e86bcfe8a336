//! The records of a snapshot file (see the format in the parent module) and its checksum.

use anyhow::{Context, Result};
use gaffer_api::views::EventView;
use gaffer_api::{JobId, UnixMs};
use gaffer_store::record::{AttemptRecord, JobRecord, TaskRecord};
use serde::{Deserialize, Serialize};

/// The format version this gaffer writes and reads: that of the records it holds.
pub(super) const VERSION: u64 = gaffer_store::record::VERSION;

/// First line.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Header {
    pub(super) gaffer_snapshot: u64,
    #[serde(default)]
    pub(super) created_at: UnixMs,
    #[serde(default)]
    pub(super) source: String,
    #[serde(default)]
    pub(super) gaffer_version: String,
    /// Jobs in the snapshot (for progress).
    #[serde(default)]
    pub(super) jobs: u64,
}

/// One line after the header.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Rec {
    Job(Box<JobRecord>),
    Task(TaskRecord),
    Attempt(Box<AttemptRecord>),
    Event(EventView),
    Idem(IdemRec),
    End(EndRec),
}

impl Rec {
    pub(super) fn kind(&self) -> &'static str {
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
pub(super) struct IdemRec {
    pub(super) key: String,
    pub(super) jobs: Vec<JobId>,
}

/// Last line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EndRec {
    pub(super) jobs: u64,
    pub(super) tasks: u64,
    pub(super) attempts: u64,
    pub(super) events: u64,
    pub(super) idempotency_keys: u64,
    pub(super) next_job_id: u64,
    pub(super) next_event_id: u64,
    /// FNV-1a 64 of every byte after the header line and before this one, 16 hex digits.
    pub(super) fnv1a64: String,
}

/// Records of each kind.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct Counts {
    pub(super) jobs: u64,
    pub(super) tasks: u64,
    pub(super) attempts: u64,
    pub(super) events: u64,
    pub(super) idempotency_keys: u64,
}

impl Counts {
    pub(super) fn add(&mut self, o: &Counts) {
        self.jobs += o.jobs;
        self.tasks += o.tasks;
        self.attempts += o.attempts;
        self.events += o.events;
        self.idempotency_keys += o.idempotency_keys;
    }

    pub(super) fn human(&self) -> String {
        format!(
            "{} jobs, {} tasks, {} attempts, {} events, {} idempotency keys",
            self.jobs, self.tasks, self.attempts, self.events, self.idempotency_keys
        )
    }
}

/// FNV-1a, 64 bits: a checksum against truncation and damage (not against tampering).
#[derive(Default)]
pub(super) struct Fnv(fnv::FnvHasher);

impl Fnv {
    pub(super) fn update(&mut self, bytes: &[u8]) {
        std::hash::Hasher::write(&mut self.0, bytes);
    }
    pub(super) fn hex(&self) -> String {
        format!("{:016x}", std::hash::Hasher::finish(&self.0))
    }
}

pub(super) fn push_line<T: Serialize>(buf: &mut Vec<u8>, v: &T) -> Result<()> {
    serde_json::to_writer(&mut *buf, v).context("cannot encode a snapshot record")?;
    buf.push(b'\n');
    Ok(())
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
