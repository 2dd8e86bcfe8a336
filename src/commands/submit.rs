//! `gaffer submit`.

use super::util::job_id;
use super::wait::wait_ids;
use crate::cli::SubmitArgs;
use crate::client::Client;
use crate::output::Output;
use anyhow::{bail, Context, Result};
use gaffer_api::views::SubmitResponse;
use gaffer_api::{JobSpec, Resources};

/// `gaffer submit`.
pub fn submit(c: &Client, out: Output, a: SubmitArgs) -> Result<i32> {
    let body: serde_json::Value = match &a.file {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
            };
            let is_toml = path.extension().is_some_and(|e| e == "toml")
                || (!text.trim_start().starts_with('{') && !text.trim_start().starts_with('['));
            if is_toml {
                let v: toml::Value = toml::from_str(&text)
                    .with_context(|| format!("{} is not valid TOML", path.display()))?;
                serde_json::to_value(v)?
            } else {
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid JSON", path.display()))?
            }
        }
        None => {
            if a.command.is_empty() && a.shell.is_none() {
                bail!("nothing to run: give a command after `--`, --shell 'LINE', or -f FILE (see gaffer submit --help)");
            }
            let spec = JobSpec {
                name: a.name,
                command: a.command,
                shell: a.shell,
                env: a.env.into_iter().collect(),
                workdir: a.workdir,
                image: a.image,
                resources: Resources {
                    cpus: a.cpus,
                    memory: a.memory,
                    pids: a.pids,
                },
                timeout: a.timeout,
                kill_grace: a.kill_grace,
                retries: a.retries,
                retry_backoff: a.retry_backoff,
                outputs: a.outputs,
                array: a.array,
                priority: a.priority,
                constraints: a.constraints.into_iter().collect(),
                strategy: a.strategy,
                user: a.user,
                network: a.network,
                ports: a.ports,
                depends_on: a.after.iter().map(|j| job_id(j)).collect::<Result<_>>()?,
                replicas: a.replicas,
                restart: a.restart,
                service: a.service,
                ready_cmd: a.ready_cmd,
                shared_dir: a.shared_dir,
                mounts: a.mounts,
            };
            serde_json::to_value(spec)?
        }
    };
    // Always send a key, so that a submit retried after a lost answer (a leader change) is
    // never applied twice.
    let key = a
        .idempotency_key
        .clone()
        .unwrap_or_else(crate::client::idempotency_key);
    let headers = [("Idempotency-Key", key.as_str())];
    let resp: SubmitResponse = c.post("/v1/jobs", &body, &headers)?;
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
