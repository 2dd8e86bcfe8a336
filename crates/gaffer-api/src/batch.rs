//! What batch-system users bring along: a script stored with the job, log files written where
//! they ask (`slurm-%j.out`), dependency kinds beyond "after success", a cap on running tasks,
//! and Slurm's environment variables. The checks of those spec fields live here too.

use crate::spec::{FieldError, JobSpec};
use crate::JobId;
use serde::{Deserialize, Serialize};

/// Largest script stored with a job.
pub const MAX_SCRIPT_BYTES: usize = 256 * 1024;

/// Where a script is bound inside a container (on the host it is in the attempt directory).
pub const CONTAINER_SCRIPT: &str = "/etc/gaffer/script";

/// A batch script stored with its job: it runs with the job's `command` as its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// The file name it was submitted as (for display and `$0`), e.g. `align.sh`.
    pub name: String,
    /// Its text. Without a `#!` line it runs under `/bin/sh`.
    pub body: String,
}

impl Script {
    /// The interpreter a script without `#!` runs under.
    pub fn needs_shell(&self) -> bool {
        !self.body.starts_with("#!")
    }
}

/// Slurm compatibility for a job submitted from a script with `#SBATCH` directives: its tasks
/// see `SLURM_JOB_ID`, `SLURM_ARRAY_TASK_ID`, ... and array ids may start elsewhere than 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SlurmCompat {
    /// `SLURM_ARRAY_TASK_ID` of task 0 (`--array 1-10` starts at 1).
    #[serde(default)]
    pub array_first: u32,
    /// Step between array ids (`--array 0-20:5`); at least 1.
    #[serde(default = "one")]
    pub array_step: u32,
}

fn one() -> u32 {
    1
}

impl SlurmCompat {
    /// The Slurm array id of task `index`.
    pub fn array_id(&self, index: u32) -> u64 {
        self.array_first as u64 + index as u64 * self.array_step.max(1) as u64
    }
}

/// When a dependent job may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepKind {
    /// After the job succeeded; fails as `dependency_failed` if it ends otherwise.
    Ok,
    /// After the job ended, however it ended.
    Any,
    /// After the job ended without success; fails as `dependency_failed` if it succeeds.
    NotOk,
}

impl DepKind {
    /// Whether a dependency that ended with `succeeded` lets the dependent run.
    pub fn satisfied_by(self, succeeded: bool) -> bool {
        match self {
            DepKind::Ok => succeeded,
            DepKind::Any => true,
            DepKind::NotOk => !succeeded,
        }
    }

    /// What the dependent waits for, e.g. "to succeed".
    pub fn waits_for(self) -> &'static str {
        match self {
            DepKind::Ok => "to succeed",
            DepKind::Any => "to end",
            DepKind::NotOk => "to fail",
        }
    }
}

impl JobSpec {
    /// Every job this one waits for, with the kind of wait.
    pub fn dependencies(&self) -> Vec<(JobId, DepKind)> {
        let ok = self.depends_on.iter().map(|d| (*d, DepKind::Ok));
        let any = self.after_any.iter().map(|d| (*d, DepKind::Any));
        let not_ok = self.after_not_ok.iter().map(|d| (*d, DepKind::NotOk));
        ok.chain(any).chain(not_ok).collect()
    }
}

/// Expands a log-file pattern the way Slurm does: `%j` the job's number (`%A` too), `%a` the
/// array id, `%x` the job name, `%%` a `%`. Other `%` sequences stay as they are.
pub fn log_path(pattern: &str, job: JobId, array_id: u64, name: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('j' | 'A') => out.push_str(&job.0.to_string()),
            Some('a') => out.push_str(&array_id.to_string()),
            Some('x') => out.push_str(&name.replace('/', "_")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Problems with a spec's batch fields.
pub fn check(spec: &JobSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut err = |field: &str, message: String| errs.push(FieldError::new(field, message));
    if let Some(s) = &spec.script {
        if spec.shell.is_some() {
            err("script", "give either `script` or `shell`, not both".into());
        }
        if s.body.len() > MAX_SCRIPT_BYTES {
            err(
                "script.body",
                format!("is {} bytes: at most {MAX_SCRIPT_BYTES}", s.body.len()),
            );
        }
        if s.body.trim().is_empty() {
            err("script.body", "is empty".into());
        }
        if s.body.contains('\0') {
            err(
                "script.body",
                "contains a NUL byte (not a text file)".into(),
            );
        }
        if s.name.is_empty() || s.name.contains(['/', '\0']) || s.name.len() > 200 {
            err(
                "script.name",
                "must be a file name (1 to 200 characters, no `/`)".into(),
            );
        }
    }
    for (field, p) in [
        ("stdout_file", &spec.stdout_file),
        ("stderr_file", &spec.stderr_file),
    ] {
        if let Some(p) = p {
            if !p.starts_with('/') || p.contains('\0') || p.ends_with('/') {
                err(field, format!("`{p}` must be an absolute path to a file"));
            }
            if spec.replicas.is_some() {
                err(field, "does not apply to cluster jobs".into());
            }
            if spec.image.is_some() {
                err(
                    field,
                    "applies to host processes only: a container's logs stay in gaffer (gaffer logs)"
                        .into(),
                );
            }
        }
    }
    if let Some(d) = &spec.submit_dir {
        if !d.starts_with('/') || d.contains('\0') {
            err("submit_dir", format!("`{d}` must be an absolute path"));
        }
    }
    if let Some(m) = spec.max_running {
        if m == 0 {
            err("max_running", "must be at least 1".into());
        }
        if spec.replicas.is_some() {
            err(
                "max_running",
                "does not apply to cluster jobs (their replicas run together)".into(),
            );
        }
    }
    if let Some(s) = &spec.slurm {
        if s.array_step == 0 {
            err("slurm.array_step", "must be at least 1".into());
        }
    }
    let deps = spec.dependencies();
    if deps.len() > 1000 {
        err("depends_on", "at most 1000 dependencies in all".into());
    }
    let mut seen = std::collections::HashSet::new();
    for (d, _) in &deps {
        if !seen.insert(*d) {
            err(
                "depends_on",
                format!("job {d} is named twice among depends_on, after_any and after_not_ok"),
            );
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_patterns_expand_like_slurm() {
        let p = log_path("/out/%x-%A_%a.%j.log%%%q%", JobId(42), 7, "a/b");
        assert_eq!(p, "/out/a_b-42_7.42.log%%q%");
    }

    #[test]
    fn dependency_kinds() {
        assert!(DepKind::Ok.satisfied_by(true));
        assert!(!DepKind::Ok.satisfied_by(false));
        assert!(DepKind::Any.satisfied_by(false));
        assert!(DepKind::NotOk.satisfied_by(false));
        assert!(!DepKind::NotOk.satisfied_by(true));
    }

    #[test]
    fn checks_name_the_field() {
        let spec = JobSpec {
            command: vec!["x".into()],
            stdout_file: Some("rel.out".into()),
            max_running: Some(0),
            depends_on: vec![JobId(1)],
            after_any: vec![JobId(1)],
            script: Some(Script {
                name: "a/b".into(),
                body: String::new(),
            }),
            ..Default::default()
        };
        let fields: Vec<String> = check(&spec).into_iter().map(|e| e.field).collect();
        for f in [
            "stdout_file",
            "max_running",
            "depends_on",
            "script.body",
            "script.name",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} missing in {fields:?}");
        }
    }
}
