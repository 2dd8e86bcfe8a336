//! End-to-end tests of the container driver and the image store, with real
//! namespaces, overlayfs and cgroups. They need root, overlayfs and a static
//! busybox (`apt-get install busybox-static`); without root or overlayfs
//! they print why and pass without checking anything.
//!
//! Every container test ends with [`Ctr::assert_clean`]: no mount under the
//! attempt directory, no cgroup directory of the attempt, no process
//! carrying the attempt's marker, no `<dir>/ctr` left.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gaffer_runtime::image::ImageStore;
use gaffer_runtime::{
    cleanup_attempt, container_id, kill_shim, prepare, read_status, shim_command, stderr_path,
    stdout_path, AttemptStatus, BindMount, ContainerSpec, EndReason, LaunchSpec, Network,
};

const SHIM: &str = env!("CARGO_BIN_EXE_gaffer-test-shim");
const MARKER_VAR: &str = "GAFFER_CT_TEST_MARKER";
const APPLETS: &[&str] = &[
    "sh", "ls", "ps", "cat", "echo", "hostname", "sleep", "dd", "head", "mkdir", "touch", "wc",
    "nc", "id", "true", "false", "grep", "rm", "seq", "env", "pwd", "tr", "cut", "yes",
];

/// Why container tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not running as root".into());
    }
    let fs = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        // Try loading the module once.
        let _ = Command::new("modprobe").arg("overlay").status();
        let fs = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !fs
            .lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
        {
            return Some("overlayfs is not available".into());
        }
    }
    None
}

macro_rules! require_containers {
    () => {
        if let Some(why) = skip_reason() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "container test needs root and overlayfs: {why} (CI=true: failing instead of skipping)"
            );
            eprintln!("SKIPPED: container test needs root and overlayfs: {why}");
            return;
        }
    };
}

fn is_static_busybox(p: &Path) -> bool {
    // A 64-bit little-endian ELF without a PT_INTERP program header.
    let Ok(d) = fs::read(p) else {
        return false;
    };
    if d.len() < 64 || !d.starts_with(b"\x7fELF") || d[4] != 2 || d[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([d[o], d[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(d[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= d.len() && u32::from_le_bytes(d[o..o + 4].try_into().unwrap()) != 3
    })
}

/// A static busybox binary; installs `busybox-static` with apt-get (once)
/// if there is none.
fn busybox() -> PathBuf {
    static BB: OnceLock<PathBuf> = OnceLock::new();
    BB.get_or_init(|| {
        let find = || {
            ["/bin/busybox", "/usr/bin/busybox"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| is_static_busybox(p))
        };
        if let Some(p) = find() {
            return p;
        }
        eprintln!("installing busybox-static with apt-get");
        let _ = Command::new("apt-get").arg("update").status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "busybox-static"])
            .status();
        find().expect("a static busybox is required: apt-get install busybox-static")
    })
    .clone()
}

/// Write a busybox root filesystem into `root`.
fn make_rootfs(root: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "dev", "sys", "data/old"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy(busybox(), root.join("bin/busybox")).unwrap();
    for a in APPLETS {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\napp:x:1234:2345::/:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\napp:x:2345:\n").unwrap();
    fs::write(root.join("etc/marker"), "pristine\n").unwrap();
    fs::write(root.join("data/old/a"), "old a\n").unwrap();
    fs::write(root.join("data/gone"), "to be deleted\n").unwrap();
}

/// A shared busybox rootfs for the container tests, built once into a
/// fixed place under the temp dir (atomically, so concurrent test processes
/// can share it) and reused by later runs.
fn test_rootfs() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join("gaffer-runtime-test-rootfs-v1");
        if root.join("etc/marker").exists() {
            return root;
        }
        let staging = std::env::temp_dir().join(format!(
            "gaffer-runtime-test-rootfs-tmp-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&staging);
        make_rootfs(&staging);
        if fs::rename(&staging, &root).is_err() {
            // Another process won the race.
            let _ = fs::remove_dir_all(&staging);
        }
        assert!(root.join("etc/marker").exists());
        root
    })
}

fn unique_marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "c{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

struct Ctr {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    marker: String,
    spec: LaunchSpec,
}

impl Ctr {
    fn sh(script: &str) -> Ctr {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("attempt");
        let marker = unique_marker();
        let spec = LaunchSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![
                ("PATH".into(), "/bin".into()),
                (MARKER_VAR.into(), marker.clone()),
            ],
            cwd: None,
            timeout_ms: Some(20_000),
            kill_grace_ms: 500,
            outputs: vec![],
            container: Some(ContainerSpec {
                rootfs: test_rootfs().to_path_buf(),
                hostname: "task-host".into(),
                uid: 0,
                gid: 0,
                network: Network::None,
                netns: None,
                files: Vec::new(),
                mounts: Vec::new(),
                cpus: None,
                memory: None,
                pids: None,
            }),
            log_files: Default::default(),
        };
        Ctr {
            _tmp: tmp,
            dir,
            marker,
            spec,
        }
    }

    fn c(&mut self) -> &mut ContainerSpec {
        self.spec.container.as_mut().unwrap()
    }

    fn start(&self) -> Child {
        prepare(&self.dir, &self.spec).unwrap();
        shim_command(Path::new(SHIM), &self.dir).spawn().unwrap()
    }

    fn finish(&self, mut child: Child) -> AttemptStatus {
        let code = child.wait().unwrap();
        assert!(code.success(), "shim exited with {code:?}");
        let st = read_status(&self.dir)
            .unwrap()
            .expect("status.json missing");
        self.assert_clean();
        st
    }

    fn run(&self) -> AttemptStatus {
        let child = self.start();
        self.finish(child)
    }

    fn stdout(&self) -> String {
        fs::read_to_string(stdout_path(&self.dir)).unwrap()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(stderr_path(&self.dir)).unwrap()
    }

    /// Pids of host processes whose environment carries this attempt's marker.
    fn survivors(&self) -> Vec<i32> {
        let needle = format!("{MARKER_VAR}={}\0", self.marker).into_bytes();
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if let Ok(env) = fs::read(format!("/proc/{pid}/environ")) {
                if env.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    found.push(pid);
                }
            }
        }
        found
    }

    fn assert_clean(&self) {
        let canon = self.dir.canonicalize().unwrap();
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounts: Vec<&str> = info
            .lines()
            .filter(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|m| m.starts_with(canon.to_str().unwrap()))
            })
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        let id = container_id(&self.dir);
        for c in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let p = c.path().join("gaffer").join(&id);
            assert!(!p.exists(), "cgroup left: {}", p.display());
        }
        assert!(!Path::new("/sys/fs/cgroup/gaffer").join(&id).exists());
        assert!(!self.dir.join("ctr").exists(), "ctr dir left");
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let s = self.survivors();
            if s.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "processes left: {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn runs_in_pid_namespace_with_hostname_and_workdir() {
    require_containers!();
    let mut t = Ctr::sh(
        "echo pid=$$; hostname; pwd; ps -o pid,comm | wc -l; ps -o pid,comm; \
         echo hello > out.txt; ls /dev; cat /proc/self/status | grep -E 'CapEff|CapBnd|NoNewPrivs'; \
         cat /sys/kernel/mm/transparent_hugepage/enabled >/dev/null && touch /sys/x 2>/dev/null || echo sys-ro",
    );
    t.spec.outputs = vec!["*.txt".into()];
    let st = t.run();
    let out = t.stdout();
    assert_eq!(
        st.reason,
        EndReason::Exited,
        "{st:?} {} {}",
        out,
        t.stderr()
    );
    assert_eq!(st.exit_code, Some(0), "{out} {}", t.stderr());
    let lines: Vec<&str> = out.lines().collect();
    // PID 1 is gaffer's init; the task is its first child.
    assert_eq!(lines[0], "pid=2", "{out}");
    assert_eq!(lines[1], "task-host");
    assert_eq!(lines[2], "/work");
    let nps: usize = lines[3].trim().parse().unwrap();
    // Header + init + sh + ps (+ wc), nothing from the host.
    assert!(nps <= 5, "ps saw {nps} lines: {out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "init"]),
        "{out}"
    );
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("sys-ro"), "{out}");
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
    ] {
        assert!(out.lines().any(|l| l == d), "/dev/{d} missing: {out}");
    }
    assert_eq!(st.outputs, vec!["out.txt".to_string()]);
    assert_eq!(
        fs::read_to_string(t.dir.join("outputs/out.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        fs::read_to_string(t.dir.join("work/out.txt")).unwrap(),
        "hello\n"
    );
    assert!(
        st.cpu_secs.is_some() && st.max_rss_bytes.unwrap() > 0,
        "{st:?}"
    );
}

#[test]
fn image_is_not_modified() {
    require_containers!();
    let t = Ctr::sh("echo changed > /etc/marker; rm /data/gone; cat /etc/marker");
    let st = t.run();
    assert_eq!(st.exit_code, Some(0), "{}", t.stderr());
    assert_eq!(t.stdout(), "changed\n");
    assert_eq!(
        fs::read_to_string(test_rootfs().join("etc/marker")).unwrap(),
        "pristine\n"
    );
    let t2 = Ctr::sh("cat /etc/marker /data/gone");
    let st2 = t2.run();
    assert_eq!(st2.exit_code, Some(0), "{}", t2.stderr());
    assert_eq!(t2.stdout(), "pristine\nto be deleted\n");
}

#[test]
fn runs_as_given_user() {
    require_containers!();
    let mut t = Ctr::sh("id -u; id -g; touch /work/mine && echo wrote; grep CapEff /proc/self/status; touch /etc/x 2>/dev/null || echo denied");
    t.c().uid = 1234;
    t.c().gid = 2345;
    let st = t.run();
    assert_eq!(st.exit_code, Some(0), "{}", t.stderr());
    assert_eq!(
        t.stdout(),
        "1234\n2345\nwrote\nCapEff:\t0000000000000000\ndenied\n"
    );
}

#[test]
fn network_none_and_host() {
    require_containers!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let script = format!("echo ping | nc -w 2 127.0.0.1 {port} && echo connected || echo refused");

    let t = Ctr::sh(&script);
    let st = t.run();
    assert_eq!(st.exit_code, Some(0), "{}", t.stderr());
    assert_eq!(t.stdout(), "refused\n", "{}", t.stderr());

    let mut t = Ctr::sh(&script);
    t.c().network = Network::Host;
    let child = t.start();
    // Accept (and read) the connection while the task runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = String::new();
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = s.read_to_string(&mut got);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let st = t.finish(child);
    assert_eq!(st.exit_code, Some(0), "{}", t.stderr());
    assert_eq!(got, "ping\n");
    assert_eq!(t.stdout(), "connected\n");
}

#[test]
fn fork_bomb_stops_at_pids_limit() {
    require_containers!();
    let mut t = Ctr::sh("b() { b | b & }; b; sleep 1; ps | wc -l");
    t.c().pids = Some(30);
    t.spec.timeout_ms = Some(3_000);
    t.spec.kill_grace_ms = 200;
    let t0 = Instant::now();
    let st = t.run();
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(
        matches!(st.reason, EndReason::Exited | EndReason::TimedOut),
        "{st:?}"
    );
    let err = t.stderr();
    assert!(
        err.contains("fork"),
        "no fork failure reported: {}",
        &err[..err.len().min(500)]
    );
}

#[test]
fn memory_hog_is_oom_killed() {
    require_containers!();
    let mut t = Ctr::sh("dd if=/dev/zero of=/dev/null bs=64M count=4; echo survived");
    t.c().memory = Some(32 << 20);
    let st = t.run();
    assert_eq!(st.reason, EndReason::OomKilled, "{st:?} {}", t.stderr());
    assert!(
        st.message.as_deref().unwrap_or("").contains("memory"),
        "{st:?}"
    );
    let peak = st.max_rss_bytes.unwrap();
    eprintln!("oom: {st:?}");
    assert!(peak <= 33 << 20 && peak > 16 << 20, "peak {peak}");
}

#[test]
fn cpu_quota_is_enforced() {
    require_containers!();
    let mut t = Ctr::sh("while :; do :; done");
    t.c().cpus = Some(0.5);
    t.spec.timeout_ms = Some(2_000);
    t.spec.kill_grace_ms = 100;
    let st = t.run();
    assert_eq!(st.reason, EndReason::TimedOut, "{st:?}");
    let wall = (st.ended_at_ms - st.started_at_ms) as f64 / 1000.0;
    let share = st.cpu_secs.unwrap() / wall;
    eprintln!("cpus 0.5: measured share {share:.3} over {wall} s");
    assert!(
        (0.35..=0.65).contains(&share),
        "cpu share {share:.3} ({:?} s over {wall} s)",
        st.cpu_secs
    );
}

#[test]
fn timeout_sends_sigterm_through_the_init() {
    require_containers!();
    // Neither process traps SIGTERM. As PID 1 the shell would ignore it and
    // only the SIGKILL after the grace period would end the attempt; under
    // the init, the SIGTERM of the timeout reaches both at once.
    let mut t = Ctr::sh("sleep 100 & sleep 100");
    t.spec.timeout_ms = Some(1_000);
    t.spec.kill_grace_ms = 5_000;
    let t0 = Instant::now();
    let st = t.run();
    let took = t0.elapsed();
    assert_eq!(st.reason, EndReason::TimedOut, "{st:?}");
    assert_eq!(st.signal, Some(libc::SIGTERM), "{st:?}");
    assert_eq!(st.exit_code, None, "{st:?}");
    // The SIGKILL would come only after 1 s + 5 s.
    assert!(
        took < Duration::from_secs(4),
        "took {took:?}: SIGTERM did not end the task"
    );
    let ran = st.ended_at_ms - st.started_at_ms;
    assert!((1_000..1_500).contains(&ran), "ran {ran} ms: {st:?}");

    // A plain `sleep` as the whole task, as in `gaffer submit --image busybox
    // --timeout 2s -- sleep 30`.
    let mut t = Ctr::sh("");
    t.spec.argv = vec!["sleep".into(), "30".into()];
    t.spec.timeout_ms = Some(500);
    t.spec.kill_grace_ms = 5_000;
    let st = t.run();
    assert_eq!(st.reason, EndReason::TimedOut, "{st:?}");
    assert_eq!(st.signal, Some(libc::SIGTERM), "{st:?}");
    let ran = st.ended_at_ms - st.started_at_ms;
    assert!((500..1_000).contains(&ran), "ran {ran} ms: {st:?}");
}

#[test]
fn kill_reaches_a_trap_once() {
    require_containers!();
    // The trap does not exit at once: a second SIGTERM in the next 300 ms would print again.
    let t = Ctr::sh("trap 'echo term' TERM; echo up; sleep 100 & wait; sleep 0.3; exit 7");
    let child = t.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.survivors().len() < 2 || t.stdout() != "up\n" {
        assert!(Instant::now() < deadline, "task did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(kill_shim(&t.dir).unwrap());
    let st = t.finish(child);
    assert_eq!(st.reason, EndReason::Killed, "{st:?}");
    assert_eq!(st.exit_code, Some(7), "{st:?}");
    assert_eq!(t.stdout(), "up\nterm\n");
}

#[test]
fn exit_codes_and_signals_are_the_tasks() {
    require_containers!();
    let st = Ctr::sh("exit 42").run();
    assert_eq!(
        (st.reason, st.exit_code, st.signal),
        (EndReason::Exited, Some(42), None)
    );
    let st = Ctr::sh("true").run();
    assert_eq!((st.exit_code, st.signal), (Some(0), None), "{st:?}");
    // Killed by a signal it sent itself: reported as the signal, not 128+N.
    let st = Ctr::sh("kill -USR1 $$; sleep 5").run();
    assert_eq!(
        (st.exit_code, st.signal),
        (None, Some(libc::SIGUSR1)),
        "{st:?}"
    );
    let st = Ctr::sh("kill -KILL $$").run();
    assert_eq!(
        (st.exit_code, st.signal),
        (None, Some(libc::SIGKILL)),
        "{st:?}"
    );
}

#[test]
fn orphans_are_reaped_by_the_init() {
    require_containers!();
    // The inner shell exits at once, so its `sleep` is re-parented to PID 1.
    // Once the sleep ends, an init that reaps makes its /proc entry vanish; a
    // PID 1 that does not would leave a zombie (state Z) there.
    let t = Ctr::sh(
        "echo self=$$; sh -c 'sleep 1 & echo $! > /work/orphan'; read p < /work/orphan; \
         grep PPid /proc/$p/status; \
         for i in $(seq 200); do [ -e /proc/$p ] || break; sleep 0.05; done; \
         if [ -e /proc/$p ]; then grep State /proc/$p/status; else echo reaped; fi",
    );
    let st = t.run();
    let out = t.stdout();
    assert_eq!(st.exit_code, Some(0), "{st:?} {out} {}", t.stderr());
    assert!(out.starts_with("self=2\n"), "{out}");
    assert!(out.contains("PPid:\t1\n"), "{out}");
    assert!(out.ends_with("reaped\n"), "{out}");
}

#[test]
fn host_directories_are_bound_read_write_or_read_only_and_never_through_a_symlink() {
    require_containers!();
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("in.txt"), "from the host\n").unwrap();
    let mut t = Ctr::sh(
        "cat /shared/in.txt; echo back > /shared/out.txt; cat /deep/ro/in.txt; \
         echo x > /deep/ro/y 2>/dev/null || echo read-only",
    );
    let bind = |target: &str, read_only| BindMount {
        source: host.path().to_path_buf(),
        target: target.into(),
        read_only,
    };
    t.c().mounts = vec![bind("/shared", false), bind("/deep/ro", true)];
    let st = t.run();
    assert_eq!(st.exit_code, Some(0), "{}", t.stderr());
    assert_eq!(t.stdout(), "from the host\nfrom the host\nread-only\n");
    assert_eq!(
        fs::read_to_string(host.path().join("out.txt")).unwrap(),
        "back\n"
    );
    assert!(!host.path().join("y").exists());

    // /bin/sh is a symlink in the image: a mount through it would land on the host.
    let mut t = Ctr::sh("true");
    t.c().mounts = vec![bind("/bin/sh/x", false)];
    let st = t.run();
    assert_eq!(st.reason, EndReason::SpawnFailed, "{st:?}");
    assert!(st.message.as_deref().unwrap().contains("symlink"), "{st:?}");
}

#[test]
fn missing_program_is_spawn_failed() {
    require_containers!();
    let mut t = Ctr::sh("");
    t.spec.argv = vec!["no-such-program".into()];
    let st = t.run();
    assert_eq!(st.reason, EndReason::SpawnFailed, "{st:?}");
    assert!(
        st.message.as_deref().unwrap().contains("no-such-program"),
        "{st:?}"
    );
}

#[test]
fn shim_crash_is_cleaned_up_by_cleanup_attempt() {
    require_containers!();
    let t = Ctr::sh("sleep 100 & sleep 100");
    let mut child = t.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.survivors().len() < 2 {
        assert!(Instant::now() < deadline, "task did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(read_status(&t.dir).unwrap().is_none());
    cleanup_attempt(&t.dir).unwrap();
    t.assert_clean();
}

// ---------------------------------------------------------------- images

/// Append a directory tree to a tar builder under `prefix` (sorted, so
/// parents come first).
fn tar_tree(b: &mut tar::Builder<impl Write>, dir: &Path, prefix: &str) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let meta = fs::symlink_metadata(e.path()).unwrap();
        if meta.is_dir() {
            b.append_dir(&name, e.path()).unwrap();
            tar_tree(b, &e.path(), &format!("{name}/"));
        } else {
            b.append_path_with_name(e.path(), &name).unwrap();
        }
    }
}

fn tar_bytes(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    tar_tree(&mut b, dir, "");
    b.into_inner().unwrap()
}

fn add_bytes(b: &mut tar::Builder<impl Write>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
}

fn add_dir(b: &mut tar::Builder<impl Write>, name: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_cksum();
    b.append_data(&mut h, name, &[][..]).unwrap();
}

/// Layer 2: deletes `data/gone` (whiteout), replaces `data/old` (opaque),
/// adds `data/new`.
fn layer2() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add_dir(&mut b, "data/");
    add_bytes(&mut b, "data/.wh.gone", b"");
    add_dir(&mut b, "data/old/");
    add_bytes(&mut b, "data/old/b", b"new b\n");
    add_bytes(&mut b, "data/old/.wh..wh..opq", b"");
    add_bytes(&mut b, "data/new", b"added\n");
    b.into_inner().unwrap()
}

const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin","IMG=1"],"User":"app","WorkingDir":"/srv","Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check_layered(store: &ImageStore, name: &str) {
    let img = store.get(name).unwrap().expect("image missing");
    let r = &img.rootfs;
    assert!(r.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(r.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(!r.join("data/gone").exists(), "whiteout not honoured");
    assert!(!r.join("data/old/a").exists(), "opaque dir not honoured");
    assert_eq!(fs::read_to_string(r.join("data/old/b")).unwrap(), "new b\n");
    assert_eq!(fs::read_to_string(r.join("data/new")).unwrap(), "added\n");
    assert!(!r.join("data/.wh.gone").exists());
    assert!(!r.join("data/old/.wh..wh..opq").exists());
    assert_eq!(img.config.env, vec!["PATH=/bin", "IMG=1"]);
    assert_eq!(img.config.user.as_deref(), Some("app"));
    assert_eq!(img.config.workdir.as_deref(), Some("/srv"));
    assert_eq!(img.config.cmd, vec!["sh"]);
    assert_eq!(img.config.resolve_user(r).unwrap(), Some((1234, 2345)));
}

#[test]
fn imports_rootfs_tarballs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_rootfs(&src);
    let plain = tar_bytes(&src);
    let store = ImageStore::new(tmp.path().join("data"));
    fs::write(tmp.path().join("r.tar"), &plain).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    fs::write(tmp.path().join("r.tar.gz"), gz.finish().unwrap()).unwrap();
    fs::write(
        tmp.path().join("r.tar.zst"),
        zstd::encode_all(&plain[..], 1).unwrap(),
    )
    .unwrap();
    for (name, file) in [("plain", "r.tar"), ("gz", "r.tar.gz"), ("zst", "r.tar.zst")] {
        let img = store.import(name, &tmp.path().join(file)).unwrap();
        assert_eq!(img.name, name);
        assert!(img.rootfs.join("bin/busybox").is_file());
        assert_eq!(
            fs::read_to_string(img.rootfs.join("etc/marker")).unwrap(),
            "pristine\n"
        );
        assert_eq!(
            fs::read_to_string(img.rootfs.join("data/gone")).unwrap(),
            "to be deleted\n"
        );
        let mode = fs::metadata(img.rootfs.join("tmp"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o1777);
    }
    let names: Vec<String> = store.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, vec!["gz", "plain", "zst"]);
    assert!(store.remove("gz").unwrap());
    assert!(!store.remove("gz").unwrap());
    assert!(store.get("gz").unwrap().is_none());
    assert!(store.import("Bad/Name", &tmp.path().join("r.tar")).is_err());
    assert!(store.import("../x", &tmp.path().join("r.tar")).is_err());
    assert!(store
        .import(&"a".repeat(129), &tmp.path().join("r.tar"))
        .is_err());
    // A failed import leaves nothing behind.
    fs::write(tmp.path().join("junk.tar"), b"not a tar at all, really not").unwrap();
    assert!(store.import("junk", &tmp.path().join("junk.tar")).is_err());
    assert!(store.get("junk").unwrap().is_none());
    let leftovers: Vec<_> = fs::read_dir(tmp.path().join("data/images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
}

#[test]
fn imports_docker_save_with_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_rootfs(&src);
    let l1 = tar_bytes(&src);
    let l2 = layer2();
    let mut b = tar::Builder::new(Vec::new());
    add_dir(&mut b, "aaa/");
    add_bytes(&mut b, "aaa/layer.tar", &l1);
    add_dir(&mut b, "bbb/");
    add_bytes(&mut b, "bbb/layer.tar", &l2);
    add_bytes(&mut b, "cfg.json", CONFIG.as_bytes());
    add_bytes(
        &mut b,
        "manifest.json",
        br#"[{"Config":"cfg.json","RepoTags":["busy:latest"],"Layers":["aaa/layer.tar","bbb/layer.tar"]}]"#,
    );
    add_bytes(&mut b, "repositories", br#"{"busy":{"latest":"bbb"}}"#);
    fs::write(tmp.path().join("save.tar"), b.into_inner().unwrap()).unwrap();
    let store = ImageStore::new(tmp.path().join("data"));
    store.import("busy", &tmp.path().join("save.tar")).unwrap();
    check_layered(&store, "busy");
}

/// Write an OCI image layout (gzip layer 1, plain layer 2) into `dir`.
fn write_oci_layout(dir: &Path, src: &Path) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha256_hex(data);
        fs::write(blobs.join(&d), data).unwrap();
        (format!("sha256:{d}"), data.len())
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes(src)).unwrap();
    let (l1, l1n) = put(&gz.finish().unwrap());
    let (l2, l2n) = put(&layer2());
    let (cfg, cfgn) = put(CONFIG.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg}","size":{cfgn}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{l1}","size":{l1n}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l2}","size":{l2n}}}]}}"#
    );
    let (m, mn) = put(manifest.as_bytes());
    fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{mn}}}]}}"#
        ),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn imports_oci_layout_dir_and_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_rootfs(&src);
    let layout = tmp.path().join("layout");
    write_oci_layout(&layout, &src);
    let store = ImageStore::new(tmp.path().join("data"));
    store.import("oci-dir", &layout).unwrap();
    check_layered(&store, "oci-dir");
    fs::write(tmp.path().join("oci.tar"), tar_bytes(&layout)).unwrap();
    store
        .import("oci-tar", &tmp.path().join("oci.tar"))
        .unwrap();
    check_layered(&store, "oci-tar");
    // A corrupted blob is refused.
    let blobs = layout.join("blobs/sha256");
    let victim = fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .find(|e| fs::metadata(e.path()).unwrap().len() > 100_000)
        .unwrap()
        .path();
    let mut data = fs::read(&victim).unwrap();
    let n = data.len();
    data[n - 100] ^= 0xff;
    fs::write(&victim, data).unwrap();
    let err = store.import("bad", &layout).unwrap_err().to_string();
    assert!(err.contains("digest"), "{err}");
}

#[test]
fn imported_image_runs_in_a_container() {
    require_containers!();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_rootfs(&src);
    let layout = tmp.path().join("layout");
    write_oci_layout(&layout, &src);
    let store = ImageStore::new(tmp.path().join("data"));
    let img = store.import("img", &layout).unwrap();
    let mut t = Ctr::sh("ls /data; cat /data/old/b; id -u");
    let (uid, gid) = img.config.resolve_user(&img.rootfs).unwrap().unwrap();
    t.c().rootfs = img.rootfs.clone();
    t.c().uid = uid;
    t.c().gid = gid;
    t.spec.env = img.config.merged_env(&t.spec.env);
    let st = t.run();
    assert_eq!(st.exit_code, Some(0), "{}", t.stderr());
    assert_eq!(t.stdout(), "new\nold\nnew b\n1234\n");
}

#[test]
fn container_start_is_fast() {
    require_containers!();
    let n = 10;
    for net in [Network::None, Network::Host] {
        let t0 = Instant::now();
        for _ in 0..n {
            let mut t = Ctr::sh("");
            t.spec.argv = vec!["true".into()];
            t.c().network = net;
            let st = t.run();
            assert_eq!(st.exit_code, Some(0), "{st:?}");
        }
        let per = t0.elapsed() / n;
        eprintln!("container attempt, network {net:?} (start + run true + cleanup): {per:?} each");
        assert!(per < Duration::from_millis(500), "{per:?} per container");
    }
}

#[test]
fn the_init_is_closed_to_the_task_even_as_root() {
    require_containers!();
    // The init is a fork of the shim: its environment is the agent's. A root task may not
    // read it (the init is not dumpable and the task has no CAP_SYS_PTRACE).
    let t = Ctr::sh(
        "cat /proc/1/environ >/dev/null 2>&1 && echo environ-readable || echo environ-closed; \
         cat /proc/1/comm; id -u",
    );
    let st = t.run();
    assert_eq!(st.exit_code, Some(0), "{st:?} {}", t.stderr());
    assert_eq!(t.stdout(), "environ-closed\ninit\n0\n");
}
