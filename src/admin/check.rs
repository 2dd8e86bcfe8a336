//! Reading a snapshot line by line, and checking a whole one before anything is restored.

use super::file::{Counts, EndRec, Fnv, Header, Rec, VERSION};
use anyhow::{anyhow, bail, Context, Result};
use gaffer_api::{JobId, TaskState};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, IsTerminal, Seek, SeekFrom};
use std::path::Path;

/// Line-by-line reader of a snapshot that names the line in every error.
pub(super) struct SnapReader<R> {
    r: R,
    name: String,
    line: u64,
    buf: Vec<u8>,
    pub(super) hash: Fnv,
    bytes: u64,
}

impl<R: BufRead> SnapReader<R> {
    pub(super) fn new(r: R, name: String) -> Self {
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

    pub(super) fn header(&mut self) -> Result<Header> {
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
    pub(super) fn next(&mut self) -> Result<Option<Rec>> {
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
pub(super) struct Checked {
    pub(super) header: Header,
    pub(super) end: EndRec,
    /// Jobs per state.
    pub(super) states: BTreeMap<&'static str, u64>,
    /// Jobs pending or running, and task rows pending, assigned or running: what
    /// `load_active` must give after the restore.
    pub(super) active_jobs: u64,
    pub(super) active_tasks: u64,
    pub(super) bytes: u64,
}

fn task_active(s: TaskState) -> bool {
    matches!(
        s,
        TaskState::Pending | TaskState::Assigned | TaskState::Running
    )
}

/// Reads the whole snapshot and checks its structure, counts and checksum.
pub(super) fn check<R: BufRead>(r: &mut SnapReader<R>) -> Result<Checked> {
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
pub(super) fn open_input(file: &Path) -> Result<(File, String)> {
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
