//! `--storage-dir`: a directory shared by the server and the agents (an NFS/GlusterFS/CephFS
//! mount in production, a local directory here). Agents write attempts to `<dir>/<node>/` and
//! the server reads logs and outputs there directly, also after the agent is gone.

mod small;
use small::*;

use std::process::{Command, Stdio};

#[test]
fn agents_write_attempts_to_the_shared_storage_dir_and_the_server_reads_them_there() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shared = d.join("shared");
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(GAFFER)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(d.join("server"))
            .arg("--storage-dir")
            .arg(&shared)
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
                "s1",
                "--allow-host-tasks",
            ])
            .arg("--data-dir")
            .arg(d.join("agent"))
            .arg("--storage-dir")
            .arg(&shared)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the agent to join", || {
        String::from_utf8_lossy(&cli_at(&addr, &["nodes", "-o", "json"]).stdout).contains("\"s1\"")
    });
    let out = cli_at(
        &addr,
        &[
            "submit",
            "-q",
            "--output",
            "r.txt",
            "--shell",
            "echo shared; echo kept > r.txt",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(cli_at(&addr, &["wait", &id]).status.success());
    // The attempt lives in the shared directory, under the node's name.
    let dir = shared.join("s1/attempts").join(&id).join("0/1");
    assert_eq!(
        std::fs::read_to_string(dir.join("stdout")).unwrap(),
        "shared\n"
    );
    // With the agent gone, the server still serves logs and outputs from the shared storage.
    let mut agent = procs.0.pop().unwrap();
    agent.kill().unwrap();
    agent.wait().unwrap();
    let out = cli_at(&addr, &["logs", &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "shared\n");
    let dest = d.join("dl");
    let out = cli_at(&addr, &["output", &id, "--dest", dest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("r.txt")).unwrap(),
        "kept\n"
    );
}
