//! Batch scripts and the habits of Slurm users against a real `gaffer dev`: `#GAFFER` and
//! `#SBATCH` directives, Slurm's variables, log files, array throttles, dependency kinds,
//! hold and release, and relative working directories.

mod util;

use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use util::*;

const FINAL: Duration = Duration::from_secs(60);

fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    name.to_string()
}

fn submitted(out: &Out) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("submitted "))
        .unwrap_or_else(|| panic!("no job id in {out:?}"))
        .trim()
        .to_string()
}

fn state(j: &Value) -> &str {
    j["state"].as_str().unwrap_or_default()
}

#[test]
fn an_sbatch_script_runs_unchanged_with_slurm_variables_and_log_files() {
    let dev = Dev::start_with(&["--cpus", "4"]);
    // Two tasks inside the lock at once would make one of them fail: the throttle (%1) is
    // what keeps them apart.
    let name = script(
        dev.root(),
        "align.sh",
        "#!/bin/sh\n\
         #SBATCH --job-name=align\n\
         #SBATCH --array=1-5:2%1\n\
         #SBATCH --cpus-per-task=1 --mem=64\n\
         #SBATCH --time=00:01:00\n\
         #SBATCH --output=logs/%x-%A_%a.out\n\
         #SBATCH --partition=gpu --mail-type=END\n\
         mkdir lock || { echo overlap >&2; exit 9; }\n\
         echo \"id=$SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT job=$SLURM_JOB_ID \
         array=$SLURM_ARRAY_JOB_ID name=$SLURM_JOB_NAME cpus=$SLURM_CPUS_PER_TASK \
         dir=$SLURM_SUBMIT_DIR args=$* from_shell=$FROM_SHELL\"\n\
         echo to-stderr >&2\n\
         sleep 0.2\n\
         rmdir lock\n",
    );
    std::fs::create_dir(dev.root().join("logs")).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["submit", &name, "one", "two"])
        .env("GAFFER_ADDR", &dev.addr)
        .env("FROM_SHELL", "exported")
        .env("AWS_SECRET_ACCESS_KEY", "hunter2")
        .current_dir(dev.root());
    let out = run_cmd(cmd, Duration::from_secs(30)).ok();
    assert!(
        out.stderr.contains(
            "ignoring #SBATCH options gaffer does not support: --partition=gpu, --mail-type=END"
        ),
        "one warning lists what is ignored: {out:?}"
    );
    assert!(
        out.stderr.contains("not copying AWS_SECRET_ACCESS_KEY"),
        "secrets stay out of the stored spec: {out:?}"
    );
    let id = submitted(&out);
    let j = dev.wait_final(&id, FINAL);
    assert_eq!(state(&j), "succeeded", "{j}");
    let spec = &j["spec"];
    assert!(spec["env"].get("AWS_SECRET_ACCESS_KEY").is_none(), "{spec}");
    assert_eq!(spec["env"]["FROM_SHELL"], "exported");
    assert_eq!(spec["name"], "align");
    assert_eq!(spec["array"], 3);
    assert_eq!(spec["max_running"], 1);
    assert_eq!(spec["timeout"], "1m");
    assert_eq!(spec["script"]["name"], "align.sh");
    assert!(spec["script"]["body"]
        .as_str()
        .unwrap()
        .contains("#SBATCH --job-name=align"));
    let number = id.trim_start_matches("j-").trim_start_matches('0');
    let root = dev.root().display().to_string();
    for (index, array_id) in [(0, 1), (1, 3), (2, 5)] {
        let log = dev
            .root()
            .join(format!("logs/align-{number}_{array_id}.out"));
        let text =
            std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        assert_eq!(
            text,
            format!(
                "id={array_id} of 3 job={number} array={number} name=align cpus=1 dir={root} \
                 args=one two from_shell=exported\nto-stderr\n"
            ),
            "task {index}'s log file holds stdout and stderr, as Slurm's --output does"
        );
        let logs = dev
            .gaffer(&["logs", &id, "--task", &index.to_string()])
            .ok();
        assert!(logs.stdout.contains(&format!("id={array_id} ")), "{logs:?}");
    }
}

#[test]
fn gaffer_directives_apply_first_and_the_command_line_wins() {
    let dev = Dev::start();
    let name = script(
        dev.root(),
        "job.sh",
        "#!/bin/sh\n#GAFFER --name from-script --retries 2\n#GAFFER --env WHO=script\necho \"$WHO $0 $1\"\n",
    );
    let out = dev
        .gaffer(&["submit", "--name", "from-cli", &name, "arg1"])
        .ok();
    let id = submitted(&out);
    let j = dev.wait_final(&id, FINAL);
    assert_eq!(state(&j), "succeeded", "{j}");
    assert_eq!(j["spec"]["name"], "from-cli");
    assert_eq!(j["spec"]["retries"], 2);
    assert!(
        j["spec"].get("slurm").is_none(),
        "no #SBATCH, no Slurm variables"
    );
    let logs = dev.gaffer(&["logs", &id]).ok();
    assert!(logs.stdout.starts_with("script /"), "{logs:?}");
    assert!(logs.stdout.trim_end().ends_with(" arg1"), "{logs:?}");

    // The stored copy runs, not the file as it is later.
    std::fs::write(dev.root().join(&name), "#!/bin/sh\necho changed\n").unwrap();
    let logs = dev.gaffer(&["logs", &id]).ok();
    assert!(!logs.stdout.contains("changed"));

    // A bad directive is reported as the script's; --strict refuses unsupported options.
    let bad = script(
        dev.root(),
        "bad.sh",
        "#!/bin/sh\n#GAFFER --retires 3\ntrue\n",
    );
    let out = dev.gaffer(&["submit", &bad]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("bad.sh") && out.stderr.contains("directives"),
        "{out:?}"
    );
    // A word that is no flag's value is refused, not taken as the command.
    let stray = script(
        dev.root(),
        "stray.sh",
        "#!/bin/sh\n#GAFFER --env A=1 B=2\ntrue\n",
    );
    let out = dev.gaffer(&["submit", &stray]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("`B=2` is not a flag"), "{out:?}");
    let slurm = script(dev.root(), "s.sh", "#!/bin/sh\n#SBATCH --qos=high\ntrue\n");
    let out = dev.gaffer(&["submit", "--strict", &slurm]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("--qos=high"), "{out:?}");
    let path = dev.root().join(&slurm).display().to_string();
    let out = dev.gaffer(&["submit", "--no-script", "--", &path]).ok();
    let j = dev.wait_final(&submitted(&out), FINAL);
    assert!(j["spec"].get("script").is_none(), "{j}");
    assert_eq!(state(&j), "succeeded");
}

#[test]
fn dependency_kinds_afterany_and_afternotok() {
    let dev = Dev::start_with(&["--cpus", "4"]);
    let failing = dev.submit_cli(&["--shell", "exit 3"]);
    let good = dev.submit_cli(&["--", "true"]);
    let any = dev.submit_cli(&["--after-any", &failing, "--", "true"]);
    let not_ok = dev.submit_cli(&["--after-not-ok", &failing, "--", "true"]);
    let ok = dev.submit_cli(&["--after", &failing, "--", "true"]);
    let not_ok_of_good = dev.submit_cli(&["--after-not-ok", &good, "--", "true"]);
    let expect = [
        (&failing, "failed"),
        (&good, "succeeded"),
        (&any, "succeeded"),
        (&not_ok, "succeeded"),
        (&ok, "failed"),
        (&not_ok_of_good, "failed"),
    ];
    for (id, want) in expect {
        let j = dev.wait_final(id, FINAL);
        assert_eq!(state(&j), want, "{j}");
    }
    let j = dev.job(&ok);
    assert_eq!(j["task_list"][0]["state"], "dependency_failed", "{j}");
    // A Slurm dependency list in a script.
    let name = script(
        dev.root(),
        "dep.sh",
        &format!(
            "#!/bin/sh\n#SBATCH --dependency=afterany:{good}:{any},afternotok:{failing}\ntrue\n"
        ),
    );
    let id = submitted(&dev.gaffer(&["submit", &name]).ok());
    let j = dev.wait_final(&id, FINAL);
    assert_eq!(state(&j), "succeeded", "{j}");
    assert_eq!(j["spec"]["after_any"], json!([good, any]));
    assert_eq!(j["spec"]["after_not_ok"], json!([failing]));
}

#[test]
fn hold_release_and_singleton() {
    let mut dev = Dev::start_with(&["--cpus", "4"]);
    let held = dev.submit_cli(&["--hold", "--", "true"]);
    let is_held = |j: &Value| {
        j["pending_reason"]
            .as_str()
            .is_some_and(|r| r.contains("held"))
    };
    let j = dev.wait_job(&held, "a held reason", is_held);
    assert_eq!(state(&j), "pending");
    assert_eq!(j["held"], true);
    // A hold is stored: it outlives a crash of the server.
    dev.kill9();
    dev.launch();
    let j = dev.wait_job(&held, "still held after a restart", is_held);
    assert_eq!(j["task_list"][0]["attempts"], json!([]), "{j}");
    let out = dev.gaffer(&["release", &held]).ok();
    assert!(out.stdout.contains("released"), "{out:?}");
    assert_eq!(state(&dev.wait_final(&held, FINAL)), "succeeded");

    // Holding a pending job keeps it from starting; releasing lets it run.
    let gate = dev.root().join("go");
    let blocker = dev.submit_cli(&[
        "--name",
        "single",
        "--singleton",
        "--shell",
        &format!("while [ ! -e {} ]; do sleep 0.02; done", gate.display()),
    ]);
    let second = dev.submit_cli(&["--name", "single", "--singleton", "--", "true"]);
    let j = dev.wait_job(&second, "waiting for the singleton", |j| {
        j["pending_reason"]
            .as_str()
            .is_some_and(|r| r.contains(&blocker) && r.contains("to end"))
    });
    assert_eq!(state(&j), "pending");
    let out = dev.gaffer(&["hold", &second]).ok();
    assert!(out.stdout.contains("held"), "{out:?}");
    std::fs::write(&gate, "").unwrap();
    let b = dev.wait_final(&blocker, FINAL);
    assert_eq!(state(&b), "succeeded");
    let j = dev.wait_job(&second, "held after its singleton ended", |j| {
        j["pending_reason"]
            .as_str()
            .is_some_and(|r| r.contains("held"))
    });
    assert_eq!(state(&j), "pending", "held: it does not start");
    assert_eq!(
        j["task_list"][0]["attempts"],
        json!([]),
        "no attempt although its singleton ended: {j}"
    );
    dev.gaffer(&["release", &second]).ok();
    let s = dev.wait_final(&second, FINAL);
    assert_eq!(state(&s), "succeeded");
    let started = s["task_list"][0]["attempts"][0]["started_at"]
        .as_u64()
        .unwrap();
    assert!(started >= b["finished_at"].as_u64().unwrap());
    // Nothing to hold once a job has ended.
    let out = dev.gaffer(&["hold", &second]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("nothing to hold"), "{out:?}");
}

#[test]
fn relative_workdir_and_log_paths_come_from_the_submit_directory() {
    let dev = Dev::start();
    std::fs::create_dir_all(dev.root().join("proj/run")).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "submit",
        "--name",
        "rel",
        "--workdir",
        "run",
        "--stdout",
        "%x.%j.out",
        "--stderr",
        "../%x.err",
        "--shell",
        "pwd; echo oops >&2",
    ])
    .env("GAFFER_ADDR", &dev.addr)
    .current_dir(dev.root().join("proj"));
    let id = submitted(&run_cmd(cmd, Duration::from_secs(30)).ok());
    let j = dev.wait_final(&id, FINAL);
    assert_eq!(state(&j), "succeeded", "{j}");
    let proj = dev.root().join("proj");
    assert_eq!(j["spec"]["workdir"], proj.join("run").display().to_string());
    let number = id.trim_start_matches("j-").trim_start_matches('0');
    let out = std::fs::read_to_string(proj.join(format!("run/rel.{number}.out"))).unwrap();
    assert_eq!(out.trim(), proj.join("run").display().to_string());
    let err = std::fs::read_to_string(proj.join("rel.err")).unwrap();
    assert_eq!(err, "oops\n");

    // A log file where none can be written fails the attempt, naming the path.
    let id = dev.submit_cli(&["--stdout", "/nonexistent-dir/x.out", "--", "true"]);
    let j = dev.wait_final(&id, FINAL);
    assert_eq!(state(&j), "failed");
    let msg = j["task_list"][0]["attempts"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("/nonexistent-dir/x.out"), "{j}");
    // Containers keep their logs in gaffer.
    let (code, body) = dev.post(
        "/v1/jobs",
        &json!({"command": ["true"], "image": "busybox", "stdout_file": "/tmp/x"}),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("stdout_file"), "{body}");
}
