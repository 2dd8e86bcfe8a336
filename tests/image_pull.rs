//! `gaffer agent image pull` (and `gaffer image pull` through a server) against a real registry: Debian's `docker-registry`
//! (the CNCF distribution server) started on a free loopback port with
//! filesystem storage in a temp dir. The test pushes a two-layer busybox image
//! (the second layer has a whiteout and an opaque directory), a
//! multi-platform index and a lone arm64 image through the distribution API
//! with plain HTTP calls, then pulls with the real `gaffer` binary and checks
//! the root filesystem, the stored config, the error for a missing tag and
//! that failed pulls leave nothing behind.
//!
//! Needs `/usr/bin/docker-registry` (installed with apt-get if missing) and a
//! busybox binary (`busybox-static`). Ownership is checked only as root.

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const GAFFER: &str = env!("CARGO_BIN_EXE_gaffer");
const REGISTRY: &str = "/usr/bin/docker-registry";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn apt_install(pkg: &str) {
    eprintln!("installing {pkg} with apt-get");
    let _ = Command::new("apt-get").arg("update").status();
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-q", pkg])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
}

fn busybox() -> PathBuf {
    let find = || {
        ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return p;
    }
    apt_install("busybox-static");
    find().expect("busybox is required: apt-get install busybox-static")
}

fn sha256(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry serve` process, killed on drop.
struct Registry {
    child: Child,
    host: String,
    storage: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        if !Path::new(REGISTRY).exists() {
            apt_install("docker-registry");
        }
        assert!(
            Path::new(REGISTRY).exists(),
            "{REGISTRY} is required: apt-get install docker-registry"
        );
        let tmp = tempfile::tempdir().unwrap();
        let storage = tmp.path().join("storage");
        fs::create_dir(&storage).unwrap();
        let port = free_port();
        let config = tmp.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let log = fs::File::create(tmp.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut reg = Registry {
            child,
            host: format!("127.0.0.1:{port}"),
            storage,
            _tmp: tmp,
        };
        let t0 = Instant::now();
        loop {
            if TcpStream::connect(&reg.host).is_ok()
                && ureq::get(&format!("http://{}/v2/", reg.host))
                    .call()
                    .is_ok()
            {
                break;
            }
            if let Ok(Some(st)) = reg.child.try_wait() {
                panic!("docker-registry exited with {st}: {}", reg.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "docker-registry did not come up: {}",
                reg.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    fn log(&self) -> String {
        fs::read_to_string(self._tmp.path().join("registry.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host)
    }

    /// Monolithic blob upload: POST an upload session, PUT the content.
    fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let r = ureq::post(&self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send_bytes(&[])
            .unwrap_or_else(|e| panic!("start upload: {e}"));
        assert_eq!(r.status(), 202);
        let loc = r.header("Location").expect("upload location").to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            self.url(&loc)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = ureq::put(&format!("{loc}{sep}digest={digest}"))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(data)
            .unwrap_or_else(|e| panic!("upload blob: {e}"));
        assert_eq!(r.status(), 201);
        digest
    }

    fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &Value) -> String {
        let data = serde_json::to_vec(body).unwrap();
        let r = ureq::put(&self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .set("Content-Type", media_type)
            .send_bytes(&data)
            .unwrap_or_else(|e| match e {
                ureq::Error::Status(code, r) => {
                    panic!(
                        "push manifest: {code}: {}",
                        r.into_string().unwrap_or_default()
                    )
                }
                e => panic!("push manifest: {e}"),
            });
        assert_eq!(r.status(), 201);
        sha256(&data)
    }

    /// `<storage>/docker/registry/v2/blobs/sha256/<2>/<hex>/data`.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pack the directory `dir` as a gzip'd layer tar (symlinks kept as links).
fn pack_layer(dir: &Path) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

/// Layer 1: a busybox rootfs, built like the container tests' one.
fn base_layer(root: &Path, bb: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "dev", "sys", "data/old"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy(bb, root.join("bin/busybox")).unwrap();
    for a in ["sh", "echo", "cat", "ls", "true", "id"] {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345::/:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\napp:x:2345:\n").unwrap();
    fs::write(root.join("etc/marker"), "layer1\n").unwrap();
    fs::write(root.join("data/old/a"), "old a\n").unwrap();
    fs::write(root.join("data/gone"), "to be deleted\n").unwrap();
    fs::write(root.join("data/owned"), "app's\n").unwrap();
    if nix::unistd::Uid::effective().is_root() {
        std::os::unix::fs::chown(root.join("data/owned"), Some(1234), Some(2345)).unwrap();
    }
}

/// Layer 2: changes a file, deletes one (whiteout), empties a directory
/// (opaque marker) and adds a file in it.
fn top_layer(root: &Path) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("data/old")).unwrap();
    fs::write(root.join("etc/marker"), "layer2\n").unwrap();
    fs::write(root.join("data/.wh.gone"), "").unwrap();
    fs::write(root.join("data/old/.wh..wh..opq"), "").unwrap();
    fs::write(root.join("data/old/b"), "new b\n").unwrap();
}

struct Pushed {
    reg: Registry,
    layer_digests: Vec<String>,
}

fn descriptor(media_type: &str, data: &[u8], digest: &str) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": data.len()})
}

/// Push `test/busybox:1` (amd64, two layers), `test/busybox:multi` (an index
/// of an arm64 image and the amd64 one) and `test/busybox:armonly`.
fn push_images() -> Pushed {
    let reg = Registry::start();
    let repo = "test/busybox";
    let tmp = tempfile::tempdir().unwrap();
    let (l1, l2) = (tmp.path().join("l1"), tmp.path().join("l2"));
    base_layer(&l1, &busybox());
    top_layer(&l2);
    let layers = [pack_layer(&l1), pack_layer(&l2)];
    let layer_digests: Vec<String> = layers.iter().map(|l| reg.push_blob(repo, l)).collect();

    let config = |arch: &str, layers: usize| {
        serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/bin", "GREETING=hello"],
                "User": "app",
                "WorkingDir": "/data",
                "Entrypoint": ["/bin/sh", "-c"],
                "Cmd": ["echo $GREETING"],
            },
            "rootfs": {"type": "layers", "diff_ids": vec!["sha256:00"; layers]},
        }))
        .unwrap()
    };
    let manifest = |arch: &str, n: usize| {
        let cfg = config(arch, n);
        let cfg_digest = reg.push_blob(repo, &cfg);
        let m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &cfg, &cfg_digest),
            "layers": layers[..n]
                .iter()
                .zip(&layer_digests)
                .map(|(l, d)| descriptor(OCI_LAYER, l, d))
                .collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&m).unwrap();
        (m, bytes)
    };
    let (amd, amd_bytes) = manifest("amd64", 2);
    let amd_digest = reg.push_manifest(repo, "1", OCI_MANIFEST, &amd);
    assert_eq!(amd_digest, sha256(&amd_bytes));
    // The arm64 image has only the base layer: pulling it by mistake shows.
    let (arm, arm_bytes) = manifest("arm64", 1);
    let arm_digest = reg.push_manifest(repo, "armonly", OCI_MANIFEST, &arm);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": arm_digest, "size": arm_bytes.len(),
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": amd_digest, "size": amd_bytes.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    });
    reg.push_manifest(repo, "multi", OCI_INDEX, &index);
    Pushed { reg, layer_digests }
}

fn gaffer(args: &[&str]) -> Output {
    let out = Command::new(GAFFER)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "$ gaffer {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Names under `<data>/images/`, hidden staging dirs included.
fn image_dirs(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(data.join("images"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn check_pulled_rootfs(data: &Path, name: &str) {
    let root = data.join("images").join(name).join("rootfs");
    assert_eq!(
        fs::read(root.join("bin/busybox")).unwrap(),
        fs::read(busybox()).unwrap()
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/marker")).unwrap(),
        "layer2\n"
    );
    assert!(!root.join("data/gone").exists(), "whiteout not applied");
    assert!(!root.join("data/old/a").exists(), "opaque dir not applied");
    assert_eq!(
        fs::read_to_string(root.join("data/old/b")).unwrap(),
        "new b\n"
    );
    assert!(!root.join("data/.wh.gone").exists());
    assert!(!root.join("data/old/.wh..wh..opq").exists());
    let tmp_mode = fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777;
    assert_eq!(tmp_mode, 0o1777);
    if nix::unistd::Uid::effective().is_root() {
        let m = fs::metadata(root.join("data/owned")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 2345));
    }
}

#[test]
fn pull_from_a_real_registry() {
    let p = push_images();
    let host = p.reg.host.clone();
    let data_tmp = tempfile::tempdir().unwrap();
    let data = data_tmp.path().join("agent");
    let data_s = data.to_str().unwrap();

    // A tag, with the name derived from the repository.
    let reference = format!("{host}/test/busybox:1");
    let out = gaffer(&[
        "agent",
        "image",
        "pull",
        "--insecure",
        &reference,
        "--data-dir",
        data_s,
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "pull failed");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(v["name"], "busybox");
    assert_eq!(v["reference"], reference.as_str());
    assert!(v["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(v["config"]["user"], "app");
    check_pulled_rootfs(&data, "busybox");
    let meta: Value =
        serde_json::from_slice(&fs::read(data.join("images/busybox/image.json")).unwrap()).unwrap();
    assert_eq!(meta["source"], "registry");
    assert_eq!(meta["reference"], reference.as_str());
    assert_eq!(
        meta["config"],
        json!({
            "env": ["PATH=/bin", "GREETING=hello"],
            "user": "app",
            "workdir": "/data",
            "entrypoint": ["/bin/sh", "-c"],
            "cmd": ["echo $GREETING"],
        })
    );
    // Human output names each layer with its size.
    let out = gaffer(&[
        "agent",
        "image",
        "pull",
        "--insecure",
        &reference,
        "--name",
        "again",
        "--data-dir",
        data_s,
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pulling layer 1/2 ("), "{err}");
    assert!(err.contains("pulling layer 2/2 ("), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("as `again`"));
    check_pulled_rootfs(&data, "again");

    // An index: the linux/amd64 image is chosen (the arm64 one lacks layer 2).
    let out = gaffer(&[
        "agent",
        "image",
        "pull",
        "--insecure",
        &format!("{host}/test/busybox:multi"),
        "--name",
        "multi",
        "--data-dir",
        data_s,
    ]);
    assert!(out.status.success());
    check_pulled_rootfs(&data, "multi");
    assert_eq!(image_dirs(&data), ["again", "busybox", "multi"]);

    // `gaffer agent image ls` shows the pulled images.
    let out = gaffer(&["agent", "image", "ls", "--data-dir", data_s, "-o", "json"]);
    let ls: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["again", "busybox", "multi"]);

    // A missing tag: a clear error, nothing left behind.
    let out = gaffer(&[
        "agent",
        "image",
        "pull",
        "--insecure",
        &format!("{host}/test/busybox:nope"),
        "--name",
        "missing",
        "--data-dir",
        data_s,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tag \"nope\" not found in repository \"test/busybox\""),
        "{err}"
    );
    assert_eq!(image_dirs(&data), ["again", "busybox", "multi"]);

    // A missing repository, too.
    let out = gaffer(&[
        "agent",
        "image",
        "pull",
        "--insecure",
        &format!("{host}/test/nothing:1"),
        "--data-dir",
        data_s,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    // Without --insecure the client speaks TLS to a plain-HTTP registry.
    let out = gaffer(&[
        "agent",
        "image",
        "pull",
        &reference,
        "--name",
        "tls",
        "--data-dir",
        data_s,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure"));
    assert_eq!(image_dirs(&data), ["again", "busybox", "multi"]);

    // A blob corrupted in the registry's storage (same size, other bytes):
    // the digest check fails and the existing image of that name is kept.
    let blob = p.reg.blob_file(&p.layer_digests[1]);
    let mut content = fs::read(&blob).unwrap();
    let last = content.len() - 1;
    content[last] ^= 0xff;
    fs::File::create(&blob)
        .unwrap()
        .write_all(&content)
        .unwrap();
    let out = gaffer(&[
        "agent",
        "image",
        "pull",
        "--insecure",
        &reference,
        "--data-dir",
        data_s,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("digest"), "{err}");
    assert_eq!(image_dirs(&data), ["again", "busybox", "multi"]);
    check_pulled_rootfs(&data, "busybox");
}

#[test]
fn pull_on_all_nodes_through_the_server() {
    let p = push_images();
    let host = p.reg.host.clone();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let mut dev = Command::new(GAFFER)
        .args([
            "dev",
            "--no-bridge",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let nodes = || gaffer(&["--addr", &addr, "nodes", "-o", "json"]);
    while !nodes().status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "gaffer dev did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let reference = format!("{host}/test/busybox:1");
    let out = gaffer(&[
        "--addr",
        &addr,
        "image",
        "pull",
        "--all-nodes",
        "--insecure",
        "--name",
        "fleet-box",
        &reference,
        "-o",
        "json",
    ]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "fleet-box");
    assert_eq!(v["nodes"].as_array().map(|a| a.len()), Some(1), "{v}");
    // The node reports the image within a heartbeat once it has pulled it.
    loop {
        let out = nodes();
        let n: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if n[0]["images"]
            .as_array()
            .is_some_and(|i| i.iter().any(|x| x == "fleet-box"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(30),
            "the node never reported the pulled image: {n}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    check_pulled_rootfs(&tmp.path().join("data/agent"), "fleet-box");
    let _ = dev.kill();
    let _ = dev.wait();
}
