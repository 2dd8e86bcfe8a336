//! `--mount HOST:CONTAINER[:ro]` on `gaffer dev`: only under the agent's `--allow-mount`
//! directories, read-only when asked, never through `..` or a symlink out of them.

mod util;

use std::time::Duration;
use util::Dev;

#[test]
fn mounts_only_what_the_agent_allows_read_only_when_asked() {
    if let Some(why) = util::net::unsupported("mounts", false) {
        eprintln!("skipped: {why}");
        return;
    }
    let host = tempfile::tempdir().unwrap();
    let (allowed, outside) = (host.path().join("allowed"), host.path().join("outside"));
    std::fs::create_dir_all(allowed.join("rw")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(allowed.join("in.txt"), "from the host\n").unwrap();
    // The task runs as nobody: its writable mount must let it write.
    std::fs::set_permissions(
        allowed.join("rw"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("escape")).unwrap();
    let a = allowed.to_str().unwrap();
    let dev = Dev::start_with(&["--allow-mount", a]);
    util::net::import_web(&dev);

    let id = dev.submit_cli(&[
        "--image",
        "web",
        "--mount",
        &format!("{a}:/in:ro"),
        "--mount",
        &format!("{a}/rw:/out"),
        "--shell",
        "cat /in/in.txt; (echo x > /in/y) 2>/dev/null || echo read-only; echo hi > /out/f",
    ]);
    let j = dev.wait_final(&id, Duration::from_secs(60));
    assert_eq!(j["state"], "succeeded", "{j}");
    let out = dev.gaffer(&["logs", &id]).ok().stdout;
    assert_eq!(out, "from the host\nread-only\n");
    assert_eq!(
        std::fs::read_to_string(allowed.join("rw/f")).unwrap(),
        "hi\n"
    );
    assert!(!allowed.join("y").exists());

    // Outside the allowed directories: no node takes it, and it says why.
    let o = outside.to_str().unwrap();
    let id = dev.submit_cli(&[
        "--image",
        "web",
        "--mount",
        &format!("{o}:/x"),
        "--",
        "true",
    ]);
    let j = dev.wait_job(&id, "a pending reason", |j| j["pending_reason"].is_string());
    let why = j["pending_reason"].as_str().unwrap();
    assert!(
        why.contains(&format!("no ready node lets tasks mount {o}"))
            && why.contains("--allow-mount"),
        "{why}"
    );
    dev.gaffer(&["kill", &id]).ok();

    // Through a symlink out of them: the node refuses it when the attempt starts.
    let id = dev.submit_cli(&[
        "--image",
        "web",
        "--mount",
        &format!("{a}/escape:/x"),
        "--",
        "true",
    ]);
    let j = dev.wait_final(&id, Duration::from_secs(60));
    assert_eq!(j["state"], "failed", "{j}");
    let msg = util::attempts(&j, 0)[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("not under a directory the agent allows") && msg.contains(o),
        "{msg}"
    );

    // Through `..`: refused at submit, naming the field.
    let out = dev.gaffer(&[
        "submit",
        "--image",
        "web",
        "--mount",
        &format!("{a}/../outside:/x"),
        "--",
        "true",
    ]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("mounts[0]") && out.stderr.contains("`.` or `..`"),
        "{}",
        out.stderr
    );
}
