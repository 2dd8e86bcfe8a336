//! `gaffer status JOB -o state` against a real `gaffer dev`: the job's state as one word and
//! nothing else (what a workflow manager's status command reads), and `-o state` refused as a
//! usage error by every other command.

mod util;

use util::*;

/// `gaffer status JOB -o state`, expecting exit 0 and nothing on stderr: the stdout.
fn state(dev: &Dev, id: &str) -> String {
    let out = dev.gaffer(&["status", id, "-o", "state"]).ok();
    assert!(out.stderr.is_empty(), "stderr: {out:?}");
    out.stdout
}

/// Runs `gaffer wait` on a job, which answers when it ends; returns its exit code.
fn wait(dev: &Dev, id: &str) -> i32 {
    dev.gaffer(&["wait", id]).code
}

#[test]
fn state_is_one_word_for_succeeded_failed_running_and_killed_jobs() {
    let dev = Dev::start();
    let ok = dev.submit_cli(&["--name", "ok", "--shell", "true"]);
    let bad = dev.submit_cli(&["--name", "bad", "--shell", "exit 3"]);
    assert_eq!(wait(&dev, &ok), 0);
    assert_ne!(wait(&dev, &bad), 0);
    assert_eq!(state(&dev, &ok), "succeeded\n");
    assert_eq!(state(&dev, &bad), "failed\n");
    // The global flag may come before the command, too.
    let out = dev.gaffer(&["-o", "state", "status", &bad]).ok();
    assert_eq!(out.stdout, "failed\n");

    // A job that has not ended: pending or running, whichever it is by now.
    let long = dev.submit_cli(&["--name", "long", "--", "sleep", "600"]);
    let s = state(&dev, &long);
    assert!(s == "pending\n" || s == "running\n", "{s:?}");
    dev.gaffer(&["kill", &long]).ok();
    assert_ne!(wait(&dev, &long), 0);
    assert_eq!(state(&dev, &long), "killed\n");
}

#[test]
fn state_of_an_unknown_job_is_an_error_without_output() {
    let dev = Dev::start();
    let out = dev.gaffer(&["status", "j-999999", "-o", "state"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(out.stderr.contains("j-999999"), "{out:?}");
}

#[test]
fn other_commands_refuse_state_output() {
    let dev = Dev::start();
    let id = dev.submit_cli(&["--shell", "true"]);
    assert_eq!(wait(&dev, &id), 0);
    let refused: [&[&str]; 6] = [
        &["jobs", "-o", "state"],
        &["-o", "state", "submit", "--", "true"],
        &["wait", &id, "-o", "state"],
        &["logs", &id, "-o", "state"],
        &["nodes", "-o", "state"],
        &["events", "-o", "state"],
    ];
    for args in refused {
        let out = dev.gaffer(args);
        assert_eq!(out.code, 2, "{args:?} should be a usage error: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("-o state is only for `gaffer status`"),
            "{args:?}: {out:?}"
        );
    }
    // The refused submit created nothing.
    assert_eq!(dev.job_count(), 1);
}
