//! For the tests of the bridge network: what this machine lacks to run them, a thread in a
//! network namespace of its own, and shell commands.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Why the bridge network cannot be tested here (`tests` names them in messages), or `None`.
/// Under `CI=true` a missing piece fails the test instead of skipping it.
pub fn unsupported(tests: &str, need_nsenter: bool) -> Option<String> {
    let why = if !nix::unistd::geteuid().is_root() {
        "not root"
    } else if !std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay")) {
        "no overlayfs"
    } else if !Path::new("/bin/busybox").exists() {
        "no /bin/busybox (apt-get install busybox-static)"
    } else if Command::new("nft").arg("--version").output().is_err() {
        "no nft (apt-get install nftables)"
    } else if need_nsenter && Command::new("nsenter").arg("--version").output().is_err() {
        "no nsenter (apt-get install util-linux)"
    } else {
        return None;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{tests} cannot run here ({why}); CI=true: failing instead of skipping"
    );
    eprintln!("SKIPPED ({tests}): {why}");
    Some(why.into())
}

/// Runs `f` on a thread inside a new network namespace with loopback up: every process and
/// socket it starts lives there.
pub fn isolated(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        sh("ip link set lo up");
        f()
    })
    .join()
    .expect("the test in its network namespace passed");
}

/// Runs `cmd` (through `sh -c`), panicking with its stderr unless it succeeds; its stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A busybox image with an httpd root holding `index.html` (`/www`, one folder per node
/// name too), imported into `dev` as `web`.
pub fn import_web(dev: &super::Dev) {
    let root = dev.root().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::write(root.join("www/index.html"), "hello from the bridge\n").unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in [
        "sh", "httpd", "wget", "ip", "cat", "sleep", "hostname", "nslookup", "ping", "echo",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    let tarball = dev.root().join("web.tar");
    super::tar_dir(&root, &tarball);
    dev.gaffer(&["image", "import", "web", tarball.to_str().unwrap()])
        .ok();
}

/// A plain HTTP GET over TCP (from this thread's namespace); `None` if nothing answers.
pub fn http_get(addr: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// How many DNAT rules (mapped ports) gaffer's `inet gaffer` table holds in this namespace.
pub fn dnat_rules() -> usize {
    Command::new("nft")
        .args(["list", "table", "inet", "gaffer"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .matches("dnat ip to")
                .count()
        })
        .unwrap_or(0)
}
