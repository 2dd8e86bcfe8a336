//! `--storage-dir`: a directory shared by the server and the agents (an NFS/GlusterFS/CephFS
//! mount in production, a local directory here). Agents write attempts to `<dir>/<node>/` and
//! the server reads logs and outputs there directly, also after the agent is gone.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const GAFFER: &str = env!("CARGO_BIN_EXE_gaffer");

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn cli(addr: &str, args: &[&str]) -> Output {
    Command::new(GAFFER)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("GAFFER_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agents_write_attempts_to_the_shared_storage_dir_and_the_server_reads_them_there() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shared = d.join("shared");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
        String::from_utf8_lossy(&cli(&addr, &["nodes", "-o", "json"]).stdout).contains("\"s1\"")
    });
    let out = cli(
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
    assert!(cli(&addr, &["wait", &id]).status.success());
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
    let out = cli(&addr, &["logs", &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "shared\n");
    let dest = d.join("dl");
    let out = cli(&addr, &["output", &id, "--dest", dest.to_str().unwrap()]);
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
