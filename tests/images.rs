//! Images as a cluster-level thing: `gaffer image import` uploads to the server (never to the
//! current directory), the server keeps archives content-addressed, nodes fetch them when a
//! task needs them, and bad uploads (not an image, wrong digest, broken off, bad name) are
//! refused with a 4xx and leave nothing behind, on the server or on any node.
//!
//! The upload checks run anywhere; running the image needs root and overlayfs, and the
//! three-node test network namespaces (CI runs as root; elsewhere those parts say why they
//! skip, and fail under CI=true).

mod cluster_util;
mod util;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use util::Dev;

/// Why containers cannot run here, if they cannot (an error under CI=true).
fn no_containers() -> Option<String> {
    let why = if !nix::unistd::geteuid().is_root() {
        "not root"
    } else if !std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay")) {
        "no overlayfs"
    } else if !Path::new("/bin/busybox").exists() {
        "no /bin/busybox (apt-get install busybox-static)"
    } else {
        return None;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "container tests cannot run here ({why}); CI=true: failing instead of skipping"
    );
    eprintln!("SKIPPED (containers): {why}");
    Some(why.into())
}

/// A gzipped rootfs tarball in `dir`: busybox when it is there, else one small file.
fn rootfs_tarball(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    if Path::new("/bin/busybox").exists() {
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for a in ["sh", "echo", "cat", "hostname", "sleep", "ls"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
    }
    let tarball = dir.join("rootfs.tar.gz");
    util::tar_dir(&root, &tarball);
    tarball
}

fn sha256_of(p: &Path) -> String {
    format!("sha256:{:x}", Sha256::digest(std::fs::read(p).unwrap()))
}

/// The names in a directory, sorted (hidden ones included).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Files under `dir` (recursively), relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// A PUT whose body breaks off: announces `len` bytes, sends `sent`, then closes.
fn broken_put(addr: &str, path: &str, len: usize, sent: &[u8]) {
    let host = addr.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    s.write_all(sent).unwrap();
    s.flush().unwrap();
}

fn put(addr: &str, path: &str, body: &[u8]) -> (u16, String) {
    util::http_result(
        util::agent()
            .put(&format!("{addr}{path}"))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(body),
    )
}

/// The server's catalog directory holds exactly these archives and no upload in progress.
fn assert_server_keeps(images: &Path, digests: &[&str]) {
    util::wait_until(
        "unfinished uploads to be removed",
        Duration::from_secs(10),
        || {
            files_under(&images.join("uploads"))
                .is_empty()
                .then_some(())
        },
    );
    let mut want: Vec<String> = digests
        .iter()
        .map(|d| format!("sha256/{}", d.trim_start_matches("sha256:")))
        .collect();
    want.sort();
    assert_eq!(files_under(&images.join("blobs")), want);
}

/// Every bad upload is refused with a 4xx and leaves the catalog and its directory as they
/// were. Returns nothing; panics with what was wrong.
fn refuse_bad_uploads(addr: &str, cli: &dyn Fn(&[&str]) -> util::Out, scratch: &Path) {
    let text = scratch.join("notes.txt");
    std::fs::write(&text, "these are notes, not an image\n").unwrap();
    let out = cli(&["image", "import", "notes", text.to_str().unwrap()]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("not an image archive"), "{out:?}");

    let tarball = rootfs_tarball(&scratch.join("bad"));
    let data = std::fs::read(&tarball).unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let (code, body) = put(addr, &format!("/v1/images/corrupt?digest={wrong}"), &data);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("digest mismatch"), "{body}");
    // A corrupted copy (one byte flipped) under the true digest.
    let mut flipped = data.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    let (code, body) = put(
        addr,
        &format!("/v1/images/corrupt?digest={}", sha256_of(&tarball)),
        &flipped,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("digest mismatch"), "{body}");
    // Truncated: a complete request whose body is a prefix, and a connection that breaks off.
    let (code, body) = put(addr, "/v1/images/truncated", &data[..data.len() / 2]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not an image archive"), "{body}");
    broken_put(
        addr,
        "/v1/images/broken",
        data.len(),
        &data[..data.len() / 3],
    );
    let out = cli(&["image", "import", "Not/A/Name", tarball.to_str().unwrap()]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("invalid image name"), "{out:?}");
    let (code, body) = put(addr, "/v1/images/Not%20A%20Name", &data);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid image name"), "{body}");
    let (code, body) = put(addr, "/v1/images/empty", b"");
    assert_eq!(code, 400, "{body}");
}

#[test]
fn dev_image_import_goes_to_the_server_and_bad_uploads_leave_nothing() {
    let dev = Dev::start();
    let images = dev.data.join("images");
    let tarball = rootfs_tarball(&dev.tmp.path().join("good"));
    let digest = sha256_of(&tarball);
    // Only GAFFER_ADDR is set, and the dev runs on a non-default data dir.
    let out = dev
        .gaffer(&["image", "import", "tool", tarball.to_str().unwrap()])
        .ok();
    assert!(out.stdout.contains("imported"), "{out:?}");
    assert!(!dev.tmp.path().join(".gaffer").exists());
    let ls: Value =
        serde_json::from_str(&dev.gaffer(&["image", "ls", "-o", "json"]).ok().stdout).unwrap();
    let tool = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "tool")
        .unwrap_or_else(|| panic!("{ls}"));
    assert_eq!(tool["digest"], digest.as_str(), "{tool}");
    assert_eq!(
        tool["size"].as_u64(),
        Some(std::fs::metadata(&tarball).unwrap().len())
    );
    assert_eq!(tool["format"], "rootfs-tar");
    let human = dev.gaffer(&["image", "ls"]).ok().stdout;
    assert!(
        human.contains("tool") && human.contains(&digest[..19]),
        "{human}"
    );

    // The same archive under a second name is stored once, and says so.
    let again = dev
        .gaffer(&["image", "import", "tool2", tarball.to_str().unwrap()])
        .ok();
    assert!(again.stdout.contains("already had"), "{again:?}");
    assert_server_keeps(&images, &[&digest]);
    // The same without a Content-Length (an HA follower forwards bodies chunked).
    let host = dev.addr.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "PUT /v1/images/tool3?digest={digest} HTTP/1.1\r\nHost: {host}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    dev.gaffer(&["image", "rm", "tool3"]).ok();

    refuse_bad_uploads(&dev.addr, &|a| dev.gaffer(a), dev.tmp.path());
    assert_server_keeps(&images, &[&digest]);
    let names: Vec<String> = dev
        .get_json("/v1/images")
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["tool", "tool2"]);

    // Removing one name keeps the archive the other still uses; removing both drops it.
    dev.gaffer(&["image", "rm", "tool2"]).ok();
    assert_server_keeps(&images, &[&digest]);
    dev.gaffer(&["image", "rm", "tool"]).ok();
    assert_server_keeps(&images, &[]);
    let gone = dev.gaffer(&["image", "rm", "tool"]);
    assert_ne!(gone.code, 0);
    assert!(gone.stderr.contains("no image `tool`"), "{gone:?}");
}

#[test]
fn dev_task_runs_an_image_imported_through_the_server_and_rm_removes_the_nodes_copy() {
    if no_containers().is_some() {
        return;
    }
    let dev = Dev::start();
    let tarball = rootfs_tarball(dev.tmp.path());
    dev.gaffer(&["image", "import", "box", tarball.to_str().unwrap()])
        .ok();
    let id = dev.submit_cli(&[
        "--image",
        "box",
        "--",
        "sh",
        "-c",
        "echo in-box; cat /proc/1/comm",
    ]);
    let job = dev.wait_final(&id, Duration::from_secs(60));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(dev.gaffer(&["logs", &id]).ok().stdout, "in-box\ninit\n");
    // The node now holds that very archive, and says so.
    let node_image = dev.data.join("agent/images/box/image.json");
    let meta: Value = serde_json::from_slice(&std::fs::read(&node_image).unwrap()).unwrap();
    assert_eq!(meta["archive"], sha256_of(&tarball).as_str(), "{meta}");
    util::wait_until("the node to be listed", Duration::from_secs(20), || {
        let ls = dev.get_json("/v1/images");
        (ls[0]["nodes"].as_array()?.len() == 1).then_some(())
    });
    // No fetch leftovers on the node.
    let node_images = dev.data.join("agent/images");
    assert_eq!(names_in(&node_images), ["box"]);

    dev.gaffer(&["image", "rm", "box"]).ok();
    util::wait_until(
        "the node to remove its copy",
        Duration::from_secs(20),
        || (!node_image.exists()).then_some(()),
    );
    // A task with a removed image waits, and says which image it needs.
    let id = dev.submit_cli(&["--allow-unplaceable", "--image", "box", "--", "true"]);
    let job = dev.wait_job(&id, "a pending reason", |j| {
        j["pending_reason"]
            .as_str()
            .is_some_and(|r| r.contains("box"))
    });
    assert_eq!(job["state"], "pending");
    dev.gaffer(&["kill", &id]).ok();
}

#[test]
fn an_image_removed_while_a_container_runs_on_it_stays_until_the_container_ends() {
    if no_containers().is_some() {
        return;
    }
    let dev = Dev::start();
    let tarball = rootfs_tarball(dev.tmp.path());
    dev.gaffer(&["image", "import", "box", tarball.to_str().unwrap()])
        .ok();
    let id = dev.submit_cli(&[
        "--image",
        "box",
        "--shell",
        "echo up; while [ ! -e /work/go ]; do sleep 0.05; done; cat /etc/passwd; ls /bin/busybox",
    ]);
    let work = dev.attempt_dir(&id, 0, 1).join("work");
    util::wait_until("the task to run", Duration::from_secs(60), || {
        (dev.gaffer(&["logs", &id]).ok().stdout == "up\n").then_some(())
    });
    dev.gaffer(&["image", "rm", "box"]).ok();
    let images = dev.data.join("agent/images");
    util::wait_until("the node to drop `box`", Duration::from_secs(20), || {
        (!images.join("box").exists()).then_some(())
    });
    let retired = || -> Vec<String> {
        names_in(&images)
            .into_iter()
            .filter(|n| n.starts_with(".rm-box-"))
            .collect()
    };
    assert_eq!(
        retired().len(),
        1,
        "the files stay while the container runs"
    );
    std::fs::write(work.join("go"), "").unwrap();
    let job = dev.wait_final(&id, Duration::from_secs(60));
    assert_eq!(job["state"], "succeeded", "{job}");
    let out = dev.gaffer(&["logs", &id]).ok().stdout;
    assert!(
        out.contains("root:x:0:0") && out.contains("/bin/busybox"),
        "the image's files were still there: {out}"
    );
    util::wait_until(
        "the retired image to be deleted",
        Duration::from_secs(20),
        || retired().is_empty().then_some(()),
    );
}

#[test]
fn one_import_runs_on_three_nodes_and_bad_uploads_reach_no_node() {
    use cluster_util::{AgentSpec, Cluster, ClusterOpts, JOB_TIMEOUT};
    if no_containers().is_some() {
        return;
    }
    let mut opts = ClusterOpts::new(
        ["n1", "n2", "n3"]
            .iter()
            .map(|n| AgentSpec::new(n, 1.0, "1G"))
            .collect(),
    );
    opts.strategy = Some("spread".into());
    let c = Cluster::start(opts);
    let tarball = rootfs_tarball(c.root());
    let digest = sha256_of(&tarball);
    c.gaffer(&["image", "import", "box", tarball.to_str().unwrap()])
        .ok();

    // One task per node (1 CPU each), all three running the imported image.
    let id = c.submit(&[
        "--image",
        "box",
        "--array",
        "3",
        "--shell",
        "echo task $GAFFER_TASK_INDEX",
    ]);
    let job = c.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(job["state"], "succeeded", "{job}");
    let mut nodes: Vec<String> = cluster_util::tasks(&job)
        .iter()
        .map(|t| t["attempts"][0]["node"].as_str().unwrap().to_string())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"], "{job}");
    util::wait_until("every node to be listed", JOB_TIMEOUT, || {
        let ls = c.get_json("/v1/images");
        let box_ = ls.as_array()?.iter().find(|i| i["name"] == "box")?.clone();
        (box_["nodes"] == serde_json::json!(["n1", "n2", "n3"])).then_some(())
    });

    refuse_bad_uploads(&c.addr, &|a| c.gaffer(a), c.root());
    assert_server_keeps(&c.server_dir().join("images"), &[&digest]);
    // Nothing reached a node: each holds `box` and nothing else, and no partial fetch.
    for i in 0..3 {
        let dir = c.agent_dir(i).join("images");
        assert_eq!(names_in(&dir), ["box"], "node {i}: {}", dir.display());
    }
    // --all-nodes: a second image reaches every node without a task.
    let second = c.root().join("second");
    std::fs::create_dir_all(second.join("rootfs/etc")).unwrap();
    std::fs::write(second.join("rootfs/etc/extra"), "a different archive").unwrap();
    let tarball2 = rootfs_tarball(&second);
    c.gaffer(&[
        "image",
        "import",
        "box2",
        tarball2.to_str().unwrap(),
        "--all-nodes",
    ])
    .ok();
    util::wait_until("every node to fetch box2", JOB_TIMEOUT, || {
        (0..3)
            .all(|i| c.agent_dir(i).join("images/box2/image.json").exists())
            .then_some(())
    });
}
