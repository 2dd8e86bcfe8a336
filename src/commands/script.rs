//! `gaffer submit SCRIPT [ARGS]`: a batch script's directives become flags (the command
//! line's own flags win), the script itself is stored with the job, and a Slurm-style script
//! gets the environment `sbatch` would give it.

use crate::cli::{Cli, Command, SubmitArgs};
use crate::directives::{self, Directives, Export};
use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use gaffer_api::batch::{Script, SlurmCompat};
use std::ffi::OsString;
use std::path::Path;

/// A batch script named as the command.
pub(super) struct Batch {
    pub(super) script: Script,
    pub(super) slurm: Option<SlurmCompat>,
    /// Variables from the submitting shell (`#SBATCH --export`); the job's `--env` wins.
    pub(super) env: Vec<(String, String)>,
}

/// When the command names a batch script: the flags with its directives applied, and the
/// script. Otherwise `a` as it is.
pub(super) fn batch_script(a: SubmitArgs) -> Result<(SubmitArgs, Option<Batch>)> {
    let path = match a.command.first() {
        Some(p) if !a.no_script && a.shell.is_none() && directives::is_script(Path::new(p)) => {
            p.clone()
        }
        _ => return Ok((a, None)),
    };
    let shown = path.as_str();
    let size = std::fs::metadata(&path)
        .with_context(|| format!("cannot read {shown}"))?
        .len();
    if size > directives::MAX_SCRIPT {
        bail!(
            "{shown} is {size} bytes: a script stored with a job is at most {} (run a bigger one in place with --no-script)",
            directives::MAX_SCRIPT
        );
    }
    let body = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {shown} as a text script"))?;
    let d = directives::parse(&body).map_err(|e| anyhow!("{shown}: {e}"))?;
    // The directives alone first, so that a bad one is reported as the script's.
    let alone = ["gaffer", "submit"]
        .into_iter()
        .map(String::from)
        .chain(d.args.iter().cloned())
        .chain(["--".to_string(), "true".to_string()]);
    let first_line = |e: clap::Error| {
        let text = e.to_string();
        text.lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string()
    };
    match Cli::try_parse_from(alone) {
        Err(e) => bail!(
            "{shown}: in its #GAFFER/#SBATCH directives ({}): {}",
            d.args.join(" "),
            first_line(e)
        ),
        // A word that is no flag's value would become the command: refuse it.
        Ok(Cli {
            command: Command::Submit(s),
            ..
        }) if s.command != ["true"] => bail!(
            "{shown}: in its #GAFFER/#SBATCH directives ({}): `{}` is not a flag or a flag's value",
            d.args.join(" "),
            s.command[0]
        ),
        Ok(_) => {}
    }
    let a = match Cli::try_parse_from(with_directives(&d.args)) {
        Ok(Cli {
            command: Command::Submit(a),
            ..
        }) => *a,
        Ok(_) => bail!("internal error: the directives of {shown} changed the subcommand"),
        Err(e) => e.exit(),
    };
    if a.command.first() != Some(&path) {
        bail!("internal error: the directives of {shown} moved the script out of the command");
    }
    if !d.unsupported.is_empty() {
        let list = d.unsupported.join(", ");
        if a.strict {
            bail!("{shown}: gaffer does not support these #SBATCH options: {list} (without --strict they are ignored with a warning)");
        }
        eprintln!(
            "gaffer: warning: {shown}: ignoring #SBATCH options gaffer does not support: {list}"
        );
    }
    let name = Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "script".into());
    let batch = Batch {
        script: Script { name, body },
        slurm: d.slurm.then(|| {
            let (array_first, array_step) = d.array_ids.unwrap_or((0, 1));
            SlurmCompat {
                array_first,
                array_step,
            }
        }),
        env: if d.slurm { exported(&d) } else { Vec::new() },
    };
    Ok((a, Some(batch)))
}

/// This process's arguments with `args` put right after the `submit` subcommand, so that the
/// command line's own flags, which come later, override them.
fn with_directives(args: &[String]) -> Vec<OsString> {
    let raw: Vec<OsString> = std::env::args_os().collect();
    // The global flags that take a separate value, as they may precede the subcommand.
    const VALUED: [&str; 5] = ["--addr", "--ca", "--token", "-o", "--format"];
    let mut i = 1;
    while i < raw.len() {
        let w = raw[i].to_string_lossy();
        if VALUED.contains(&w.as_ref()) {
            i += 2;
        } else if w.starts_with('-') {
            i += 1;
        } else {
            break;
        }
    }
    let at = (i + 1).min(raw.len());
    let mut out = raw[..at].to_vec();
    out.extend(args.iter().map(OsString::from));
    out.extend(raw[at..].iter().cloned());
    out
}

/// The submitting shell's variables a Slurm-style script gets: never gaffer's own, and, of
/// the whole environment, none whose name looks like a secret (the spec is readable by every
/// API client): those only when named in `--export`. A warning lists what was left out.
fn exported(d: &Directives) -> Vec<(String, String)> {
    let mut withheld = Vec::new();
    let mut all = || -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(k, _)| !k.starts_with("GAFFER_") && !k.starts_with("SLURM_"))
            .filter(|(k, _)| {
                let secret = looks_secret(k);
                if secret {
                    withheld.push(k.clone());
                }
                !secret
            })
            .collect()
    };
    let named = |items: &[String]| -> Vec<(String, String)> {
        items
            .iter()
            .filter_map(|item| match item.split_once('=') {
                Some((k, v)) => Some((k.to_string(), v.to_string())),
                None => std::env::var(item).ok().map(|v| (item.clone(), v)),
            })
            .collect()
    };
    let env = match &d.export {
        Export::All => all(),
        Export::AllAnd(items) => all().into_iter().chain(named(items)).collect(),
        Export::Only(items) => named(items),
    };
    if !withheld.is_empty() {
        withheld.sort();
        eprintln!(
            "gaffer: warning: not copying {} into the job (it looks like a secret; name it in #SBATCH --export=ALL,NAME to pass it)",
            withheld.join(", ")
        );
    }
    env
}

/// A variable name like `AWS_SECRET_ACCESS_KEY`, `VAULT_TOKEN` or `DB_PASSWORD`.
fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "API_KEY",
        "PRIVATE_KEY",
        "ACCESS_KEY",
    ]
    .iter()
    .any(|w| n.contains(w))
        || n.ends_with("_KEY")
}
