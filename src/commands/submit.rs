//! `gaffer submit`.

use super::script::{batch_script, Batch};
use super::util::job_id;
use super::wait::wait_ids;
use crate::cli::SubmitArgs;
use crate::client::Client;
use crate::output::Output;
use anyhow::{bail, Context, Result};
use gaffer_api::views::SubmitResponse;
use gaffer_api::{JobSpec, Resources};
use std::path::{Component, Path, PathBuf};

/// `gaffer submit`.
pub fn submit(c: &Client, out: Output, a: SubmitArgs) -> Result<i32> {
    let (a, batch) = match &a.file {
        Some(_) => (a, None),
        None => batch_script(a)?,
    };
    let body: serde_json::Value = match &a.file {
        Some(path) => spec_file(path)?,
        None => {
            if a.command.is_empty() && a.shell.is_none() {
                bail!("nothing to run: give a command after `--`, --shell 'LINE', or -f FILE (see gaffer submit --help)");
            }
            serde_json::to_value(spec_of(&a, batch)?)?
        }
    };
    // Always send a key, so that a submit retried after a lost answer (a leader change) is
    // never applied twice.
    let key = a
        .idempotency_key
        .clone()
        .unwrap_or_else(crate::client::idempotency_key);
    let headers = [("Idempotency-Key", key.as_str())];
    let path = if a.allow_unplaceable {
        "/v1/jobs?allow_unplaceable=true"
    } else {
        "/v1/jobs"
    };
    let resp: SubmitResponse = c.post(path, &body, &headers)?;
    out.print(&resp, || {
        for id in &resp.ids {
            if a.quiet {
                println!("{id}");
            } else {
                println!("submitted {id}");
            }
        }
    })?;
    if a.wait {
        return wait_ids(c, &resp.ids, None, out.is_human() && !a.quiet);
    }
    Ok(0)
}

/// A spec file (JSON or TOML; `-` reads stdin) as JSON.
fn spec_file(path: &Path) -> Result<serde_json::Value> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    let is_toml = path.extension().is_some_and(|e| e == "toml")
        || (!text.trim_start().starts_with('{') && !text.trim_start().starts_with('['));
    if is_toml {
        let v: toml::Value = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        Ok(serde_json::to_value(v)?)
    } else {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
    }
}

/// The spec the flags describe (with a batch script's copy and environment, if any).
fn spec_of(a: &SubmitArgs, batch: Option<Batch>) -> Result<JobSpec> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let ids = |l: &[String]| l.iter().map(|j| job_id(j)).collect::<Result<Vec<_>>>();
    // A relative workdir is the submit directory's, on the node's host: not for containers
    // (their paths are inside; the server refuses a relative one).
    let workdir = match a.image {
        None => a.workdir.as_ref().map(|w| absolute(&cwd, w)),
        Some(_) => a.workdir.clone(),
    };
    let base = workdir.clone().unwrap_or_else(|| cwd.display().to_string());
    let log = |p: &Option<String>| p.as_ref().map(|p| absolute(Path::new(&base), p));
    let (command, script, slurm, mut env) = match batch {
        // The script's path is not an argument: its copy takes its place.
        Some(b) => (
            a.command[1..].to_vec(),
            Some(b.script),
            b.slurm,
            b.env
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        ),
        None => (a.command.clone(), None, None, Default::default()),
    };
    env.extend(a.env.iter().cloned());
    Ok(JobSpec {
        name: a.name.clone(),
        command,
        shell: a.shell.clone(),
        env,
        workdir,
        image: a.image.clone(),
        resources: Resources {
            cpus: a.cpus,
            memory: a.memory,
            pids: a.pids,
        },
        timeout: a.timeout,
        kill_grace: a.kill_grace,
        retries: a.retries,
        retry_backoff: a.retry_backoff,
        outputs: a.outputs.clone(),
        array: a.array.map(|(n, _)| n),
        max_running: a.array.and_then(|(_, k)| k),
        priority: a.priority,
        constraints: a.constraints.iter().cloned().collect(),
        strategy: a.strategy,
        user: a.user.clone(),
        network: a.network,
        ports: a.ports.clone(),
        depends_on: ids(&a.after)?,
        after_any: ids(&a.after_any)?,
        after_not_ok: ids(&a.after_not_ok)?,
        singleton: a.singleton,
        hold: a.hold,
        replicas: a.replicas,
        restart: a.restart,
        service: a.service,
        ready_cmd: a.ready_cmd.clone(),
        shared_dir: a.shared_dir.clone(),
        mounts: a.mounts.clone(),
        script,
        submit_dir: Some(cwd.display().to_string()),
        stdout_file: log(&a.stdout),
        stderr_file: log(&a.stderr),
        slurm,
    })
}

/// `p` made absolute against `base`, without `.` and `..` components.
fn absolute(base: &Path, p: &str) -> String {
    let mut out = PathBuf::new();
    for c in base.join(p).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out.display().to_string()
}
