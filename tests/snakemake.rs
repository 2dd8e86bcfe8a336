//! Snakemake on gaffer: the real Snakemake (from PyPI, with the executor plugin
//! snakemake-executor-plugin-cluster-generic) runs workflows through the profile in
//! `examples/snakemake` against a real `gaffer dev`, every job as a gaffer job.
//!
//! Snakemake is taken from `SNAKEMAKE`, else `target/snakemake-venv/bin/snakemake` (`.ci/run`
//! installs it there). Without it the workflow test says why it skips, and fails under CI=true;
//! the test of the profile's scripts needs only gaffer.

mod util;

use serde_json::Value;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use util::*;

/// How long one Snakemake run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// The Snakemake to run, if there is a usable one (an error under CI=true when not).
fn snakemake() -> Option<PathBuf> {
    let path = match std::env::var_os("SNAKEMAKE") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/snakemake-venv/bin/snakemake"),
    };
    let why = if !path.is_file() {
        format!(
            "no Snakemake at {} (set SNAKEMAKE, or run .ci/run, which installs it there)",
            path.display()
        )
    } else {
        // Its help lists the plugin's options only when the plugin is installed.
        let mut cmd = Command::new(&path);
        cmd.arg("--help");
        let out = run_cmd(cmd, Duration::from_secs(120));
        if out.code != 0 {
            format!("{} --help failed: {out:?}", path.display())
        } else if !out.stdout.contains("--cluster-generic-submit-cmd") {
            format!(
                "{} lacks snakemake-executor-plugin-cluster-generic",
                path.display()
            )
        } else {
            return Some(path);
        }
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the Snakemake workflow test cannot run here ({why}); CI=true: failing instead of skipping"
    );
    eprintln!("skipping the Snakemake test: {why}");
    None
}

/// `examples/snakemake`, absolute.
fn profile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/snakemake")
}

/// The PATH with the directory of the `gaffer` under test first.
fn path_with_bin() -> OsString {
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let mut dirs = vec![bin_dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).expect("PATH")
}

/// A `snakemake --profile examples/snakemake ARGS` in `dir` that finds the `gaffer` under test
/// first on the PATH and the dev server through GAFFER_ADDR.
fn snakemake_cmd(smk: &Path, dev: &Dev, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(smk);
    cmd.arg("--profile")
        .arg(profile())
        .args(args)
        .current_dir(dir)
        .env("PATH", path_with_bin())
        .env("GAFFER_ADDR", &dev.addr)
        .env_remove("SNAKEMAKE_PROFILE")
        .env_remove("GAFFER_TOKEN");
    cmd
}

/// A directory `name` under the dev's temporary directory holding `snakefile`.
fn workflow(dev: &Dev, name: &str, snakefile: &str) -> PathBuf {
    let dir = dev.root().join(name);
    std::fs::create_dir_all(&dir).expect("workflow dir");
    std::fs::write(dir.join("Snakefile"), snakefile).expect("write Snakefile");
    dir
}

/// The gaffer job ids in Snakemake's "Submitted job N with external jobid 'j-...'" lines.
fn submitted_ids(log: &str) -> BTreeSet<String> {
    log.lines().filter_map(external_id).collect()
}

fn external_id(line: &str) -> Option<String> {
    let rest = line.split("with external jobid '").nth(1)?;
    Some(rest.split('\'').next()?.to_string())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const PIPELINE: &str = r#"
SAMPLES = ["a", "b", "c"]

localrules: all

rule all:
    input: "merged.txt", "broken.txt"

rule part:
    output: "parts/{s}.txt"
    resources: mem_mb=200
    shell: "echo part-{wildcards.s} > {output}"

rule merge:
    input: expand("parts/{s}.txt", s=SAMPLES)
    output: "merged.txt"
    threads: 2
    shell: "cat {input} > {output}"

rule broken:
    output: "broken.txt"
    shell: "echo about to fail >&2; exit 3"
"#;

#[test]
fn a_workflow_runs_its_jobs_through_gaffer_and_reports_the_failed_rule() {
    let Some(smk) = snakemake() else { return };
    // Enough CPUs for the three parts and the failing rule at once, and for merge's 2 threads.
    let dev = Dev::start_with(&["--cpus", "4"]);
    let dir = workflow(&dev, "pipeline", PIPELINE);
    let run = run_cmd(
        snakemake_cmd(&smk, &dev, &dir, &["--keep-going"]),
        RUN_TIMEOUT,
    );
    let log = format!("{}{}", run.stdout, run.stderr);
    assert_ne!(run.code, 0, "a rule failed, so must Snakemake: {log}");

    // The parallel parts and their merge ran, with the right content.
    for s in ["a", "b", "c"] {
        assert_eq!(
            read(&dir.join(format!("parts/{s}.txt"))),
            format!("part-{s}\n")
        );
    }
    assert_eq!(read(&dir.join("merged.txt")), "part-a\npart-b\npart-c\n");
    assert!(!dir.join("broken.txt").exists(), "{log}");

    // Each job was a gaffer job: the ids Snakemake got are exactly the jobs gaffer lists
    // (`all` is local), with the rule's name, threads and mem_mb.
    let out = dev.gaffer(&["jobs", "-o", "json", "--limit", "100"]).ok();
    let page: Value = serde_json::from_str(&out.stdout).expect("gaffer jobs -o json");
    let jobs = page["jobs"].as_array().expect("jobs").clone();
    let listed: BTreeSet<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(submitted_ids(&log), listed, "{log}");
    let named = |name: &str| -> Vec<&Value> { jobs.iter().filter(|j| j["name"] == name).collect() };
    let (parts, merge, broken) = (named("part"), named("merge"), named("broken"));
    assert_eq!(
        (parts.len(), merge.len(), broken.len(), jobs.len()),
        (3, 1, 1, 5),
        "{jobs:?}"
    );
    for j in parts.iter().chain(&merge) {
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    // The parts were submitted together, each before any of them had finished.
    let time = |j: &Value, field: &str| j[field].as_u64().unwrap_or_else(|| panic!("{field}: {j}"));
    let first_end = parts.iter().map(|j| time(j, "finished_at")).min();
    for j in &parts {
        assert!(Some(time(j, "created_at")) < first_end, "{parts:?}");
    }
    for j in &parts {
        assert_eq!(j["spec"]["resources"]["cpus"], 1.0, "{j}");
        assert_eq!(j["spec"]["resources"]["memory"], 200 << 20, "{j}");
    }
    assert_eq!(merge[0]["spec"]["resources"]["cpus"], 2.0, "{}", merge[0]);
    // A rule without mem_mb gets the profile's default (at least 1000 MB).
    assert_eq!(
        broken[0]["spec"]["resources"]["memory"],
        1000 << 20,
        "{}",
        broken[0]
    );

    // The failing rule: Snakemake names it and its gaffer job, which failed; the job's
    // stderr has the rule's exit status.
    let broken_id = broken[0]["id"].as_str().expect("id");
    assert_eq!(broken[0]["state"], "failed", "{}", broken[0]);
    let error = log
        .split("Error in rule broken:")
        .nth(1)
        .unwrap_or_else(|| panic!("Snakemake did not report rule broken: {log}"));
    assert!(
        error.contains(&format!("external_jobid: {broken_id}")),
        "{log}"
    );
    assert!(
        !log.contains("Error in rule part") && !log.contains("Error in rule merge"),
        "{log}"
    );
    let state = dev.gaffer(&["status", broken_id, "-o", "state"]).ok();
    assert_eq!(state.stdout, "failed\n");
    let stderr = dev.gaffer(&["logs", broken_id, "--stderr"]).ok();
    assert!(
        stderr.stdout.contains("non-zero exit status 3"),
        "{stderr:?}"
    );
}

/// Runs a script of the profile (the `gaffer` under test first on the PATH).
fn script(dev: &Dev, name: &str, args: &[&str]) -> Out {
    let mut cmd = Command::new(profile().join(name));
    cmd.args(args)
        .env("PATH", path_with_bin())
        .env("GAFFER_ADDR", &dev.addr)
        .current_dir(dev.root());
    run_cmd(cmd, Duration::from_secs(60))
}

/// The profile's status and cancel scripts on their own, without Snakemake: Snakemake calls
/// them with job ids and reads one word from the status script. (Snakemake's own Ctrl-C
/// handling is left out: it misses the jobs it is checking at that moment.)
#[test]
fn the_profile_scripts_map_states_and_kill_jobs() {
    let dev = Dev::start();
    let ok = dev.submit_cli(&["--shell", "true"]);
    let bad = dev.submit_cli(&["--shell", "exit 3"]);
    let long: Vec<String> = (0..2)
        .map(|_| dev.submit_cli(&["--", "sleep", "600"]))
        .collect();
    assert_eq!(dev.gaffer(&["wait", &ok]).code, 0);
    assert_ne!(dev.gaffer(&["wait", &bad]).code, 0);
    let status = |id: &str| {
        let out = script(&dev, "gaffer-status", &[id]);
        assert_eq!(out.code, 0, "gaffer-status {id}: {out:?}");
        out.stdout
    };
    assert_eq!(status(&ok), "success\n");
    assert_eq!(status(&bad), "failed\n");
    // Pending or running, both are running to Snakemake.
    assert_eq!(status(&long[0]), "running\n");

    let out = script(&dev, "gaffer-cancel", &[&long[0], &long[1]]);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    for id in &long {
        assert_ne!(dev.gaffer(&["wait", id]).code, 0);
        let state = dev.gaffer(&["status", id, "-o", "state"]).ok();
        assert_eq!(state.stdout, "killed\n");
        assert_eq!(status(id), "failed\n");
    }

    // Misuse and unknown jobs: an error, and no word Snakemake could take for a state.
    for args in [&[][..], &[ok.as_str(), bad.as_str()][..], &["j-999999"][..]] {
        let out = script(&dev, "gaffer-status", args);
        assert_ne!(out.code, 0, "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: {out:?}");
    }
}
