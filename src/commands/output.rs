//! `gaffer output`: downloads a job's output files.

use super::util::job_id;
use crate::cli::OutputArgs;
use crate::client::{enc, Client};
use crate::output::Output;
use anyhow::{Context, Result};
use gaffer_api::views::{JobDetail, OutputFile};

/// `gaffer output`.
pub fn output(c: &Client, out: Output, a: OutputArgs) -> Result<i32> {
    let id = job_id(&a.job)?;
    let mut q = format!("/v1/jobs/{id}/outputs");
    if let Some(t) = a.task {
        q.push_str(&format!("?task={t}"));
    }
    let files: Vec<OutputFile> = c.get(&q)?;
    let d: JobDetail = c.get(&format!("/v1/jobs/{id}?tasks_limit=0"))?;
    let single = d.job.tasks.total == 1;
    if files.is_empty() {
        out.print(&files, || {
            println!("job {id} has no output files (declare them with --output GLOB)")
        })?;
        return Ok(0);
    }
    for f in &files {
        let dest = if single {
            a.dest.join(&f.path)
        } else {
            a.dest.join(f.task.to_string()).join(&f.path)
        };
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        let path_q: String = f.path.split('/').map(enc).collect::<Vec<_>>().join("/");
        let mut r = c.get_reader(&format!(
            "/v1/jobs/{id}/outputs/{}/{path_q}?attempt={}",
            f.task, f.attempt
        ))?;
        let mut file = std::fs::File::create(&dest)
            .with_context(|| format!("cannot write {}", dest.display()))?;
        std::io::copy(&mut r, &mut file)
            .with_context(|| format!("download of {} failed", f.path))?;
        out.human(|| println!("{}", dest.display()));
    }
    out.json(&files)?;
    Ok(0)
}
