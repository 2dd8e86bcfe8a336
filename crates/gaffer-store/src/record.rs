//! The job, task and attempt records as they are kept on disk, in one place: the etcd backend
//! stores jobs and tasks as its values, and `gaffer admin snapshot` writes all three as lines of
//! its file (which `gaffer admin restore` reads back).
//!
//! # Version 1
//! There is one type per record, [`JobRecord`], [`TaskRecord`] and [`AttemptRecord`], converted
//! to and from what the core keeps ([`JobRow`], [`TaskRow`], an attempt as `(job, task index,
//! AttemptView)`) with `From`. Each record has two stored forms, and both stay exactly as they
//! were when the backend and the snapshot had a copy each, so that existing etcd data and
//! existing snapshot files read, and so that older gaffers read what this one writes:
//!
//! - The **snapshot form** is the records' own `Serialize`/`Deserialize`: fields named as in the
//!   rows, job ids written `"j-000042"`, the job's spec last, optional fields left out when
//!   absent (`finished_at`, `kill_requested` when false, `lost` when 0, `node`, ...), and unknown
//!   fields refused (`deny_unknown_fields`), so a file written by a newer gaffer fails loudly
//!   instead of losing what it holds. A job's `next_fresh` must be present.
//! - The **etcd form** is [`JobRecord::to_etcd`] / [`JobRecord::from_etcd`] and
//!   [`TaskRecord::to_etcd`] / [`TaskRecord::from_etcd`]: compact, as there is one value per
//!   task that ever ran. Job ids are bare numbers, the job's spec follows its name, task fields
//!   have one- or two-letter names (`j`ob, `i`ndex, `s`tate, `a`ttempts, `l`ost, `n`ode,
//!   `nb` = not before), unknown fields are ignored, and a job without `next_fresh` (written
//!   before arrays were stored lazily) reads as 0. Attempts are stored in etcd as `AttemptView`
//!   itself, so they have no etcd form here.
//!
//! The two forms name their fields and write job ids differently, so one serde derive cannot
//! give both without changing one of them: the etcd form is a private mirror next to each
//! record, and the tests below pin the exact bytes of both forms. Serde's error messages name
//! the records as before (`expected struct JobRec`, `struct TaskRec`, `struct AttemptRec`).
//!
//! A form may only change compatibly (a new field that defaults when absent and is left out
//! when empty). A change that older gaffers cannot read must raise [`VERSION`], which the
//! snapshot header carries, and keep reading every older form.

use crate::{JobRow, TaskRow};
use gaffer_api::state::TaskCounts;
use gaffer_api::views::AttemptView;
use gaffer_api::{JobId, JobSpec, JobState, TaskState, UnixMs};
use serde::{Deserialize, Deserializer, Serialize};
use std::borrow::Cow;

/// Version of the records' stored forms; a snapshot file names it in its header
/// (`"gaffer_snapshot":1`).
pub const VERSION: u64 = 1;

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A job: its spec, derived state, task counts and flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct JobRec")]
pub struct JobRecord {
    /// Id.
    pub id: JobId,
    /// Display name.
    pub name: String,
    /// Derived state.
    pub state: JobState,
    /// Counts by state.
    pub counts: TaskCounts,
    /// Submitted at.
    pub created_at: UnixMs,
    /// Finished at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<UnixMs>,
    /// Kill requested.
    #[serde(default, skip_serializing_if = "is_false")]
    pub kill_requested: bool,
    /// On hold.
    #[serde(default, skip_serializing_if = "is_false")]
    pub held: bool,
    /// Every task index below this has a task record.
    pub next_fresh: u32,
    /// The spec as submitted (validated).
    pub spec: JobSpec,
}

/// The etcd form of a [`JobRecord`]; borrows the name and spec when writing.
#[derive(Serialize, Deserialize)]
#[serde(expecting = "struct JobRec")]
struct EtcdJob<'a> {
    id: u64,
    name: Cow<'a, str>,
    spec: Cow<'a, JobSpec>,
    state: JobState,
    counts: TaskCounts,
    created_at: UnixMs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_at: Option<UnixMs>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    kill_requested: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    held: bool,
    #[serde(default)]
    next_fresh: u32,
}

impl JobRecord {
    /// This record in its etcd form (compact JSON).
    pub fn to_etcd(&self) -> Vec<u8> {
        let e = EtcdJob {
            id: self.id.0,
            name: Cow::Borrowed(&self.name),
            spec: Cow::Borrowed(&self.spec),
            state: self.state,
            counts: self.counts,
            created_at: self.created_at,
            finished_at: self.finished_at,
            kill_requested: self.kill_requested,
            held: self.held,
            next_fresh: self.next_fresh,
        };
        serde_json::to_vec(&e).expect("records serialise")
    }

    /// Reads a record in its etcd form.
    pub fn from_etcd(bytes: &[u8]) -> serde_json::Result<Self> {
        let e: EtcdJob = serde_json::from_slice(bytes)?;
        Ok(JobRecord {
            id: JobId(e.id),
            name: e.name.into_owned(),
            state: e.state,
            counts: e.counts,
            created_at: e.created_at,
            finished_at: e.finished_at,
            kill_requested: e.kill_requested,
            held: e.held,
            next_fresh: e.next_fresh,
            spec: e.spec.into_owned(),
        })
    }
}

impl From<JobRow> for JobRecord {
    fn from(j: JobRow) -> Self {
        JobRecord {
            id: j.id,
            name: j.name,
            state: j.state,
            counts: j.counts,
            created_at: j.created_at,
            finished_at: j.finished_at,
            kill_requested: j.kill_requested,
            held: j.held,
            next_fresh: j.next_fresh,
            spec: j.spec,
        }
    }
}

impl From<JobRecord> for JobRow {
    fn from(j: JobRecord) -> Self {
        JobRow {
            id: j.id,
            name: j.name,
            spec: j.spec,
            state: j.state,
            counts: j.counts,
            created_at: j.created_at,
            finished_at: j.finished_at,
            kill_requested: j.kill_requested,
            held: j.held,
            next_fresh: j.next_fresh,
        }
    }
}

/// A task that has been touched (tasks that never ran have no record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct TaskRec")]
pub struct TaskRecord {
    /// Job.
    pub job: JobId,
    /// Array index.
    pub index: u32,
    /// State.
    pub state: TaskState,
    /// Attempts made so far (the current or last one's number).
    pub attempts: u32,
    /// Retries consumed by `lost` attempts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u32,
    /// Node of the current or last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Earliest start of a pending retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<UnixMs>,
}

/// The etcd form of a [`TaskRecord`]; borrows the node's name when writing.
#[derive(Serialize, Deserialize)]
#[serde(expecting = "struct TaskRec")]
struct EtcdTask<'a> {
    j: u64,
    i: u32,
    s: TaskState,
    a: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    l: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nb: Option<UnixMs>,
}

impl TaskRecord {
    /// This record in its etcd form (compact JSON, short field names).
    pub fn to_etcd(&self) -> Vec<u8> {
        let e = EtcdTask {
            j: self.job.0,
            i: self.index,
            s: self.state,
            a: self.attempts,
            l: self.lost,
            n: self.node.as_deref().map(Cow::Borrowed),
            nb: self.not_before,
        };
        serde_json::to_vec(&e).expect("records serialise")
    }

    /// Reads a record in its etcd form.
    pub fn from_etcd(bytes: &[u8]) -> serde_json::Result<Self> {
        let e: EtcdTask = serde_json::from_slice(bytes)?;
        Ok(TaskRecord {
            job: JobId(e.j),
            index: e.i,
            state: e.s,
            attempts: e.a,
            lost: e.l,
            node: e.n.map(Cow::into_owned),
            not_before: e.nb,
        })
    }
}

impl From<TaskRow> for TaskRecord {
    fn from(t: TaskRow) -> Self {
        TaskRecord {
            job: t.job,
            index: t.index,
            state: t.state,
            attempts: t.attempts,
            lost: t.lost,
            node: t.node,
            not_before: t.not_before,
        }
    }
}

impl From<TaskRecord> for TaskRow {
    fn from(t: TaskRecord) -> Self {
        TaskRow {
            job: t.job,
            index: t.index,
            state: t.state,
            attempts: t.attempts,
            lost: t.lost,
            node: t.node,
            not_before: t.not_before,
        }
    }
}

/// An attempt of task `index` of `job`: the fields of `AttemptView` after those two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct AttemptRec")]
pub struct AttemptRecord {
    /// Job.
    pub job: JobId,
    /// Task index.
    pub index: u32,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Node it ran on.
    pub node: String,
    /// State of this attempt.
    pub state: TaskState,
    /// When its process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<UnixMs>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<UnixMs>,
    /// Exit status, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that ended it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why it ended, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Peak resident memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rss_bytes: Option<u64>,
    /// CPU time used, in seconds. Read back from its exact text: serde_json's default float
    /// parser may be one unit in the last place off, and a restore must give the very same
    /// number.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "exact_f64"
    )]
    pub cpu_secs: Option<f64>,
    /// Output files kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// Its address on the bridge network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Its mapped ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<gaffer_api::ports::PortMapping>,
    /// A replica's readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

fn exact_f64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    let raw: Option<Box<serde_json::value::RawValue>> = Option::deserialize(d)?;
    match raw {
        None => Ok(None),
        Some(r) => r.get().parse::<f64>().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("cpu_secs must be a number, not {}", r.get()))
        }),
    }
}

impl From<(JobId, u32, AttemptView)> for AttemptRecord {
    fn from((job, index, a): (JobId, u32, AttemptView)) -> Self {
        AttemptRecord {
            job,
            index,
            attempt: a.attempt,
            node: a.node,
            state: a.state,
            started_at: a.started_at,
            ended_at: a.ended_at,
            exit_code: a.exit_code,
            signal: a.signal,
            message: a.message,
            max_rss_bytes: a.max_rss_bytes,
            cpu_secs: a.cpu_secs,
            outputs: a.outputs,
            ip: a.ip,
            ports: a.ports,
            ready: a.ready,
        }
    }
}

impl From<AttemptRecord> for (JobId, u32, AttemptView) {
    fn from(a: AttemptRecord) -> Self {
        (
            a.job,
            a.index,
            AttemptView {
                attempt: a.attempt,
                node: a.node,
                state: a.state,
                started_at: a.started_at,
                ended_at: a.ended_at,
                exit_code: a.exit_code,
                signal: a.signal,
                message: a.message,
                max_rss_bytes: a.max_rss_bytes,
                cpu_secs: a.cpu_secs,
                outputs: a.outputs,
                ip: a.ip,
                ports: a.ports,
                ready: a.ready,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{"command":["true"],"resources":{},"retries":0,"priority":0}"#;
    const COUNTS: &str =
        r#"{"total":4,"pending":0,"running":1,"succeeded":0,"failed":0,"killed":0,"started":0}"#;

    fn job(full: bool) -> JobRecord {
        JobRecord {
            id: JobId(7),
            name: "n".into(),
            state: JobState::Running,
            counts: TaskCounts {
                total: 4,
                running: 1,
                ..Default::default()
            },
            created_at: 100,
            finished_at: full.then_some(200),
            kill_requested: full,
            held: false,
            next_fresh: if full { 3 } else { 0 },
            spec: JobSpec {
                command: vec!["true".into()],
                ..Default::default()
            },
        }
    }

    fn task(full: bool) -> TaskRecord {
        TaskRecord {
            job: JobId(7),
            index: 2,
            state: TaskState::Running,
            attempts: if full { 3 } else { 0 },
            lost: u32::from(full),
            node: full.then(|| "node-a".into()),
            not_before: full.then_some(500),
        }
    }

    fn attempt(full: bool) -> AttemptRecord {
        AttemptRecord {
            job: JobId(7),
            index: 2,
            attempt: 1,
            node: "node-a".into(),
            state: TaskState::Failed,
            started_at: full.then_some(1),
            ended_at: full.then_some(2),
            exit_code: full.then_some(0),
            signal: full.then_some(9),
            message: full.then(|| "m".into()),
            max_rss_bytes: full.then_some(10),
            cpu_secs: full.then_some(0.1),
            outputs: if full { vec!["a".into()] } else { vec![] },
            ip: None,
            ports: Vec::new(),
            ready: None,
        }
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    /// The bytes the etcd backend wrote before the records moved here.
    #[test]
    fn etcd_form_is_unchanged() {
        let full = format!(
            r#"{{"id":7,"name":"n","spec":{SPEC},"state":"running","counts":{COUNTS},"created_at":100,"finished_at":200,"kill_requested":true,"next_fresh":3}}"#
        );
        let bare = format!(
            r#"{{"id":7,"name":"n","spec":{SPEC},"state":"running","counts":{COUNTS},"created_at":100,"next_fresh":0}}"#
        );
        assert_eq!(text(job(true).to_etcd()), full);
        assert_eq!(text(job(false).to_etcd()), bare);
        assert_eq!(JobRecord::from_etcd(full.as_bytes()).unwrap(), job(true));
        assert_eq!(JobRecord::from_etcd(bare.as_bytes()).unwrap(), job(false));
        let full = r#"{"j":7,"i":2,"s":"running","a":3,"l":1,"n":"node-a","nb":500}"#;
        let bare = r#"{"j":7,"i":2,"s":"running","a":0}"#;
        assert_eq!(text(task(true).to_etcd()), full);
        assert_eq!(text(task(false).to_etcd()), bare);
        assert_eq!(TaskRecord::from_etcd(full.as_bytes()).unwrap(), task(true));
        assert_eq!(TaskRecord::from_etcd(bare.as_bytes()).unwrap(), task(false));
    }

    /// Older etcd values (no `next_fresh`) and unknown fields still read.
    #[test]
    fn etcd_form_reads_old_and_unknown_fields() {
        let old = format!(
            r#"{{"id":7,"name":"n","spec":{SPEC},"state":"running","counts":{COUNTS},"created_at":100,"later":1}}"#
        );
        assert_eq!(JobRecord::from_etcd(old.as_bytes()).unwrap(), job(false));
        let t = r#"{"j":7,"i":2,"s":"running","a":0,"later":1}"#;
        assert_eq!(TaskRecord::from_etcd(t.as_bytes()).unwrap(), task(false));
        let err = |r: serde_json::Result<()>| r.unwrap_err().to_string();
        assert_eq!(
            err(JobRecord::from_etcd(b"1").map(drop)),
            "invalid type: integer `1`, expected struct JobRec at line 1 column 1"
        );
        assert_eq!(
            err(TaskRecord::from_etcd(b"1").map(drop)),
            "invalid type: integer `1`, expected struct TaskRec at line 1 column 1"
        );
        assert_eq!(
            err(TaskRecord::from_etcd(b"{}").map(drop)),
            "missing field `j` at line 1 column 2"
        );
    }

    /// The bytes of snapshot format version 1.
    #[test]
    fn snapshot_form_is_unchanged() {
        let cases = [
            (
                serde_json::to_string(&job(true)).unwrap(),
                format!(
                    r#"{{"id":"j-000007","name":"n","state":"running","counts":{COUNTS},"created_at":100,"finished_at":200,"kill_requested":true,"next_fresh":3,"spec":{SPEC}}}"#
                ),
            ),
            (
                serde_json::to_string(&job(false)).unwrap(),
                format!(
                    r#"{{"id":"j-000007","name":"n","state":"running","counts":{COUNTS},"created_at":100,"next_fresh":0,"spec":{SPEC}}}"#
                ),
            ),
            (
                serde_json::to_string(&task(true)).unwrap(),
                r#"{"job":"j-000007","index":2,"state":"running","attempts":3,"lost":1,"node":"node-a","not_before":500}"#.into(),
            ),
            (
                serde_json::to_string(&task(false)).unwrap(),
                r#"{"job":"j-000007","index":2,"state":"running","attempts":0}"#.into(),
            ),
            (
                serde_json::to_string(&attempt(true)).unwrap(),
                r#"{"job":"j-000007","index":2,"attempt":1,"node":"node-a","state":"failed","started_at":1,"ended_at":2,"exit_code":0,"signal":9,"message":"m","max_rss_bytes":10,"cpu_secs":0.1,"outputs":["a"]}"#.into(),
            ),
            (
                serde_json::to_string(&attempt(false)).unwrap(),
                r#"{"job":"j-000007","index":2,"attempt":1,"node":"node-a","state":"failed"}"#.into(),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
        for full in [true, false] {
            let j = serde_json::to_string(&job(full)).unwrap();
            assert_eq!(serde_json::from_str::<JobRecord>(&j).unwrap(), job(full));
            let t = serde_json::to_string(&task(full)).unwrap();
            assert_eq!(serde_json::from_str::<TaskRecord>(&t).unwrap(), task(full));
            let a = serde_json::to_string(&attempt(full)).unwrap();
            assert_eq!(
                serde_json::from_str::<AttemptRecord>(&a).unwrap(),
                attempt(full)
            );
        }
    }

    /// A snapshot refuses what it does not know, with the messages it always gave.
    #[test]
    fn snapshot_form_refuses_unknown_fields() {
        fn err<T: serde::de::DeserializeOwned>(s: &str) -> String {
            serde_json::from_str::<T>(s).err().unwrap().to_string()
        }
        assert_eq!(
            err::<JobRecord>(r#"{"x":1}"#),
            "unknown field `x`, expected one of `id`, `name`, `state`, `counts`, `created_at`, \
             `finished_at`, `kill_requested`, `held`, `next_fresh`, `spec` at line 1 column 4"
        );
        assert_eq!(
            err::<TaskRecord>(r#"{"x":1}"#),
            "unknown field `x`, expected one of `job`, `index`, `state`, `attempts`, `lost`, \
             `node`, `not_before` at line 1 column 4"
        );
        assert_eq!(
            err::<AttemptRecord>(r#"{"x":1}"#),
            "unknown field `x`, expected one of `job`, `index`, `attempt`, `node`, `state`, \
             `started_at`, `ended_at`, `exit_code`, `signal`, `message`, `max_rss_bytes`, \
             `cpu_secs`, `outputs`, `ip`, `ports`, `ready` at line 1 column 4"
        );
        assert_eq!(
            err::<JobRecord>("1"),
            "invalid type: integer `1`, expected struct JobRec at line 1 column 1"
        );
        assert_eq!(
            err::<TaskRecord>("1"),
            "invalid type: integer `1`, expected struct TaskRec at line 1 column 1"
        );
        assert_eq!(
            err::<AttemptRecord>("1"),
            "invalid type: integer `1`, expected struct AttemptRec at line 1 column 1"
        );
        assert_eq!(
            err::<JobRecord>("{}"),
            "missing field `id` at line 1 column 2"
        );
        assert_eq!(
            err::<AttemptRecord>(
                r#"{"job":"j-1","index":0,"attempt":1,"node":"a","state":"failed","cpu_secs":"x"}"#
            ),
            r#"cpu_secs must be a number, not "x" at line 1 column 78"#
        );
    }

    #[test]
    fn rows_convert_both_ways() {
        let row = JobRow::from(job(true));
        assert_eq!(JobRecord::from(row), job(true));
        let row = TaskRow::from(task(true));
        assert_eq!(TaskRecord::from(row), task(true));
        let parts: (JobId, u32, AttemptView) = attempt(true).into();
        assert_eq!(AttemptRecord::from(parts), attempt(true));
    }
}
