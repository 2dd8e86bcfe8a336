//! Container tasks end to end through `gaffer dev`: `gaffer image import` of a busybox rootfs
//! tarball built here from Debian's `busybox-static`, then `gaffer submit --image`: isolation,
//! limits, OOM, outputs from /work, scheduling by image, and nothing left behind.
//! Needs root and overlayfs (CI runs as root); elsewhere the tests say why they skip.

mod util;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use util::Dev;

const APPLETS: &[&str] = &[
    "sh", "ps", "cat", "echo", "hostname", "sleep", "dd", "mkdir", "wc", "id", "head", "touch",
    "ls", "stty",
];

fn skip() -> Option<String> {
    let why = if !nix::unistd::geteuid().is_root() {
        "not root"
    } else if !std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay")) {
        "no overlayfs"
    } else {
        return None;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "container tests cannot run here ({why}); CI=true: failing instead of skipping"
    );
    Some(why.into())
}

/// A 64-bit ELF without a PT_INTERP program header: runs without a libc in the rootfs.
fn is_static_elf(p: &Path) -> bool {
    let Ok(d) = std::fs::read(p) else {
        return false;
    };
    if d.len() < 64 || !d.starts_with(b"\x7fELF") || d[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([d[o], d[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(d[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).all(|i| {
        let o = phoff + i * size;
        o + 4 <= d.len() && u32::from_le_bytes(d[o..o + 4].try_into().unwrap()) != 3
    })
}

/// Debian's static busybox (installed with apt-get if missing).
fn busybox() -> PathBuf {
    let find = || {
        ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| is_static_elf(p))
    };
    if let Some(p) = find() {
        return p;
    }
    let _ = Command::new("apt-get").arg("update").status();
    let _ = Command::new("apt-get")
        .args(["install", "-y", "busybox-static"])
        .status();
    find().expect("a static busybox is required: apt-get install busybox-static")
}

/// A busybox rootfs packed as a tarball, imported into the cluster's catalog as `busybox`; the
/// dev's agent fetches it when the first task needs it.
fn import_busybox(dev: &Dev) {
    let root = dev.tmp.path().join("rootfs");
    for d in ["bin", "etc", "tmp", "proc", "dev", "sys"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox(), root.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/marker"), "pristine\n").unwrap();
    let tarball = dev.tmp.path().join("busybox.tar.gz");
    util::tar_dir(&root, &tarball);
    // Through the server, with only GAFFER_ADDR set: the dev runs on a non-default data dir.
    let out = dev
        .gaffer(&["image", "import", "busybox", tarball.to_str().unwrap()])
        .ok();
    assert!(out.stdout.contains("imported"), "{out:?}");
    assert!(
        !dev.tmp.path().join(".gaffer").exists(),
        "the import wrote into the current directory"
    );
}

fn task0(job: &Value) -> &Value {
    &job["task_list"][0]
}

fn assert_no_leftovers(dev: &Dev, job: &str) {
    let dir = dev.attempt_dir(job, 0, 1);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "a mount of {} is left",
        dir.display()
    );
    let id = gaffer_runtime::container_id(&dir);
    for ctl in ["memory", "cpu", "pids", "cpuacct"] {
        let cg = Path::new("/sys/fs/cgroup")
            .join(ctl)
            .join("gaffer")
            .join(&id);
        assert!(!cg.exists(), "cgroup {} is left", cg.display());
    }
}

#[test]
fn container_task_is_isolated_limited_and_leaves_nothing_behind() {
    if let Some(why) = skip() {
        eprintln!("skipped: {why}");
        return;
    }
    let dev = Dev::start();
    import_busybox(&dev);
    let id = dev.submit_cli(&[
        "--name",
        "boxed",
        "--image",
        "busybox",
        "--cpus",
        "0.5",
        "--memory",
        "64M",
        "--pids",
        "32",
        "--output",
        "out/*",
        "--shell",
        "hostname; id -u; ps | wc -l; echo changed > /etc/marker 2>/dev/null || echo ro; \
         mkdir -p out; echo result > out/r.txt; pwd",
    ]);
    let job = dev.wait_final(&id, Duration::from_secs(60));
    assert_eq!(job["state"], "succeeded", "{job}");
    let out = dev.gaffer(&["logs", &id]).ok().stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "boxed-0",
        "hostname is the job name and index: {out}"
    );
    assert_eq!(lines[1], "65534", "runs as nobody by default: {out}");
    let ps: usize = lines[2].trim().parse().unwrap();
    assert!(ps <= 5, "sees only its own processes: {out}");
    assert_eq!(
        lines[3], "ro",
        "the image layer is read-only for the task: {out}"
    );
    assert_eq!(lines[4], "/work", "{out}");
    let attempt = &task0(&job)["attempts"][0];
    assert!(attempt["max_rss_bytes"].as_u64().unwrap() > 0, "{attempt}");
    assert!(attempt["cpu_secs"].as_f64().is_some(), "{attempt}");
    assert_eq!(attempt["outputs"][0], "out/r.txt");
    let dest = dev.tmp.path().join("dl");
    dev.gaffer(&["output", &id, "--dest", dest.to_str().unwrap()])
        .ok();
    assert_eq!(
        std::fs::read_to_string(dest.join("out/r.txt")).unwrap(),
        "result\n"
    );
    // The image itself is untouched.
    let marker = dev.data.join("agent/images/busybox/rootfs/etc/marker");
    assert_eq!(std::fs::read_to_string(marker).unwrap(), "pristine\n");
    assert_no_leftovers(&dev, &id);
}

#[test]
fn memory_hog_ends_oom_killed_and_unknown_images_wait_with_a_reason() {
    if let Some(why) = skip() {
        eprintln!("skipped: {why}");
        return;
    }
    let dev = Dev::start();
    import_busybox(&dev);
    let id = dev.submit_cli(&[
        "--image",
        "busybox",
        "--memory",
        "16M",
        "--shell",
        "dd if=/dev/zero bs=1M count=64 | cat > /dev/shm/fill; sleep 5",
    ]);
    let job = dev.wait_final(&id, Duration::from_secs(60));
    assert_eq!(task0(&job)["state"], "oom_killed", "{job}");
    assert_eq!(job["state"], "failed");
    assert_no_leftovers(&dev, &id);

    let out = dev.gaffer(&["submit", "--image", "nosuch", "--", "true"]);
    assert_ne!(out.code, 0, "an image nobody has is refused: {out:?}");
    assert!(
        out.stderr.contains("image: no node has image `nosuch`"),
        "{out:?}"
    );
    let id = dev.submit_cli(&["--allow-unplaceable", "--image", "nosuch", "--", "true"]);
    let job = dev.wait_job(&id, "a pending reason", |j| {
        j["pending_reason"]
            .as_str()
            .is_some_and(|r| r.contains("nosuch"))
    });
    assert_eq!(job["state"], "pending");
    dev.gaffer(&["kill", &id]).ok();
}

#[test]
fn a_container_timeout_stops_the_task_with_sigterm_through_its_init() {
    if let Some(why) = skip() {
        eprintln!("skipped: {why}");
        return;
    }
    let dev = Dev::start();
    import_busybox(&dev);
    // busybox `sleep` has no SIGTERM handler: as PID 1 it would ignore the timeout's SIGTERM
    // and end only by the SIGKILL after --kill-grace (here 10 s).
    let id = dev.submit_cli(&[
        "--image",
        "busybox",
        "--timeout",
        "2s",
        "--kill-grace",
        "10s",
        "--",
        "sleep",
        "30",
    ]);
    let job = dev.wait_final(&id, Duration::from_secs(60));
    let a = &task0(&job)["attempts"][0];
    assert_eq!(a["state"], "timed_out", "{job}");
    assert_eq!(a["signal"], 15, "ended by SIGTERM: {job}");
    let ran = a["ended_at"].as_u64().unwrap() - a["started_at"].as_u64().unwrap();
    assert!(
        (2_000..2_500).contains(&ran),
        "ran {ran} ms: the timeout plus at most 0.5 s: {job}"
    );
    // An orphan of the task is reaped inside the container, and exit codes pass through.
    let id = dev.submit_cli(&[
        "--image",
        "busybox",
        "--shell",
        "sh -c 'sleep 0.2 & echo $! > /work/p'; read p < /work/p; \
         i=0; while [ $i -lt 100 ] && [ -e /proc/$p ]; do sleep 0.05; i=$((i + 1)); done; \
         [ -e /proc/$p ] && exit 9; exit 3",
    ]);
    let job = dev.wait_final(&id, Duration::from_secs(60));
    let a = &task0(&job)["attempts"][0];
    assert_eq!(a["exit_code"], 3, "the orphan was not reaped: {job}");
    assert_no_leftovers(&dev, &id);
}

#[test]
fn exec_runs_a_command_in_a_running_containers_namespaces_cgroup_and_terminal() {
    if let Some(why) = skip() {
        eprintln!("skipped: {why}");
        return;
    }
    let dev = Dev::start();
    import_busybox(&dev);
    let id = dev.submit_cli(&[
        "--name", "box", "--image", "busybox", "--env", "WHO=task", "--", "sleep", "300",
    ]);
    dev.wait_job(&id, "running", |j| task0(j)["state"] == "running");
    let exec = |args: &[&str], stdin: &[u8]| {
        use std::io::Write;
        let mut cmd = Command::new(util::BIN);
        cmd.arg("exec")
            .args(args)
            .env("GAFFER_ADDR", &dev.addr)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // On pipes: its output, its stderr, its exit status; the task's hostname, environment,
    // pid namespace (the container's init is pid 1), user and cgroup.
    let (code, out, err) = exec(
        &[
            &id,
            "-T",
            "--",
            "sh",
            "-c",
            "hostname; echo $WHO; ps -o pid,args | head -2 | tail -1; id -u; cat /proc/self/cgroup; echo oops >&2; exit 5",
        ],
        b"",
    );
    assert_eq!(code, Some(5), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "box-0", "{out}");
    assert_eq!(lines[1], "task", "{out}");
    assert!(
        lines[2].trim_start().starts_with("1 "),
        "pid 1 is the container's init: {out}"
    );
    assert_eq!(lines[3], "65534", "the container's user: {out}");
    // In the container's cgroup namespace, its own cgroup reads `/` (another would read
    // `/../..`).
    let memory = lines
        .iter()
        .find(|l| l.contains(":memory:"))
        .expect("a memory cgroup");
    assert!(memory.ends_with(":memory:/"), "in the task's cgroup: {out}");
    assert_eq!(err, "oops\n");
    // Standard input reaches it, and its end ends `cat`.
    let (code, out, _) = exec(&[&id, "-T", "--", "cat"], b"line one\nline two\n");
    assert_eq!((code, out.as_str()), (Some(0), "line one\nline two\n"));

    // On a terminal: the command gets one, of the client's size.
    let size = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = Command::new(util::BIN)
        .args([
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "[ -t 0 ] && [ -t 1 ] && echo on-a-terminal; stty size; exit 3",
        ])
        .env("GAFFER_ADDR", &dev.addr)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    let mut master = std::fs::File::from(pty.master);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Everything written is there to read; a read past it fails (EIO) once no slave is open.
    while let Ok(n @ 1..) = std::io::Read::read(&mut master, &mut buf) {
        seen.extend_from_slice(&buf[..n]);
    }
    let seen = String::from_utf8_lossy(&seen);
    assert_eq!(status.code(), Some(3), "{seen}");
    assert!(seen.contains("on-a-terminal"), "a terminal inside: {seen}");
    assert!(seen.contains("33 101"), "of the client's size: {seen}");

    // Nothing to exec into: a task that is not running, or one without a container.
    dev.gaffer(&["kill", &id]).ok();
    dev.wait_final(&id, Duration::from_secs(60));
    let (code, _, err) = exec(&[&id, "-T", "--", "true"], b"");
    assert_ne!(code, Some(0));
    assert!(err.contains("not running"), "{err}");
    let host = dev.submit_cli(&["--", "sleep", "300"]);
    dev.wait_job(&host, "running", |j| task0(j)["state"] == "running");
    let (code, _, err) = exec(&[&host, "-T", "--", "true"], b"");
    assert_ne!(code, Some(0));
    assert!(err.contains("no running container"), "{err}");
    dev.gaffer(&["kill", &host]).ok();
}
