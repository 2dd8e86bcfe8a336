//! TLS end to end: a server with a certificate from a test CA (made with the openssl CLI), an
//! agent and the CLI trusting that CA with `--ca`, and clients without it refused.

mod small;
use small::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1, as the README documents.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=gaffer test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

#[test]
fn tls_server_serves_clients_and_agents_that_trust_its_ca_and_refuses_others() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_certs(d);
    let port = free_port();
    let addr = format!("https://127.0.0.1:{port}");
    let ca = d.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(GAFFER)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(d.join("server"))
            .arg("--tls-cert")
            .arg(d.join("server.pem"))
            .arg("--tls-key")
            .arg(d.join("server.key"))
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
                "tls-node",
                "--allow-host-tasks",
                "--ca",
                ca,
            ])
            .arg("--data-dir")
            .arg(d.join("agent"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Wait for the agent to have joined over wss://.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cli(&["--addr", &addr, "--ca", ca, "nodes", "-o", "json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && text.contains("tls-node") && text.contains("ready") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent never joined over TLS: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = cli(&[
        "--addr", &addr, "--ca", ca, "submit", "-q", "--", "echo", "over tls",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = cli(&["--addr", &addr, "--ca", ca, "wait", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = cli(&["--addr", &addr, "--ca", ca, "logs", &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over tls\n");

    // Without the CA the certificate is not trusted.
    let out = cli(&["--addr", &addr, "jobs"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Plain HTTP to the TLS port gets nowhere.
    let out = cli(&["--addr", &format!("http://127.0.0.1:{port}"), "jobs"]);
    assert!(!out.status.success());
}
