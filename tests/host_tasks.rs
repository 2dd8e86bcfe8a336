//! Host processes run only on agents started with `--allow-host-tasks`: without such a node, a
//! spec without an image is refused at submit with a message naming the field.

mod small;
use small::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn host_tasks_are_refused_when_no_agent_allows_them() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(GAFFER)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(d.join("server"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    procs.0.push(
        Command::new(GAFFER)
            .args([
                "agent",
                "--no-bridge",
                "--server",
                &addr,
                "--name",
                "locked",
            ])
            .arg("--data-dir")
            .arg(d.join("agent"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&cli_at(&addr, &["nodes", "-o", "json"]).stdout)
        .contains("locked")
    {
        assert!(Instant::now() < deadline, "the agent never joined");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = cli_at(&addr, &["submit", "--", "echo", "on the host"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("image") && err.contains("--allow-host-tasks"),
        "{err}"
    );
    let jobs = cli_at(&addr, &["jobs", "-o", "json"]);
    assert!(String::from_utf8_lossy(&jobs.stdout).contains("\"jobs\": []"));
    // A container task whose image no node has is refused, naming the image...
    let out = cli_at(&addr, &["submit", "-q", "--image", "busybox", "--", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no node has image `busybox`"), "{err}");
    // ...unless the submit means to wait for a node that has it.
    let out = cli_at(
        &addr,
        &[
            "submit",
            "-q",
            "--allow-unplaceable",
            "--image",
            "busybox",
            "--",
            "true",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
