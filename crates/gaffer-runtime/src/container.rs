//! The container driver: runs a task in its own namespaces, on an overlayfs
//! over an image's root filesystem, inside a per-attempt cgroup with limits.
//!
//! # Choice of mechanism
//!
//! This is implemented directly on `nix`/`libc` rather than with youki's
//! `libcontainer`/`libcgroups`. Measured on the 2-core build box:
//! `libcontainer` 0.5.7 (`default-features = false, features = ["v1",
//! "v2"]`) builds (97 crates, ~1 min clean), so building was not the issue.
//! Its launch path was: it wants an OCI bundle (config.json written and
//! parsed per attempt) and a state directory, and starts a container
//! through an intermediate process plus the container init, synchronised
//! over socket pairs; the overlay mount would still be ours to do, in the
//! host mount namespace (so visible and leakable there). The direct path
//! below costs **one fork** per container and a few dozen syscalls, keeps
//! all mounts inside the container's mount namespace, and fits the shim's
//! single-threaded signalfd loop unchanged: a full attempt running `true`
//! (cgroup create, start, reap, usage, cgroup removal) takes ~12-16 ms here.
//!
//! # How a container starts
//!
//! 1. The shim creates the cgroup(s) `gaffer/<id>` with the limits, and
//!    `<dir>/ctr/{root,upper,work}`, and calls `unshare(CLONE_NEWPID)` so that
//!    its next (and only) child is PID 1 of a new PID namespace.
//! 2. `fork()`. The child joins the cgroup, unshares mount, UTS, IPC, cgroup
//!    (and, for network `none`, net) namespaces, sets the host name, makes
//!    every mount private and, **inside its own mount namespace**, mounts the
//!    overlay (lower = image rootfs, upper/work = `<dir>/ctr/upper|work`) on
//!    `<dir>/ctr/root` (upper on a private tmpfs if the attempt directory's
//!    filesystem cannot hold one), binds `<dir>/work` on `/work`, mounts `/proc`, a
//!    minimal `/dev` (tmpfs + bind-mounted null, zero, full, random, urandom,
//!    tty; devpts, shm, mqueue), `/sys` read-only, masks a few `/proc`
//!    files, then `pivot_root`s into it and detaches the old root.
//! 3. It brings `lo` up (network `none`), drops the capability bounding set
//!    to Docker's default set, switches to `uid:gid` (supplementary groups =
//!    `[gid]`), sets the effective/permitted capabilities (the default set for
//!    uid 0, none otherwise), sets `no_new_privs` and arms
//!    `PR_SET_PDEATHSIG(SIGKILL)`.
//! 4. It becomes the container's init ([`crate::init`]): it forks the task,
//!    which restores the signal mask and SIGPIPE and `execve`s the program,
//!    while PID 1 forwards signals, reaps orphans and reports the task's exit
//!    status through a pipe. Setup and exec errors travel back to the shim
//!    over a close-on-exec pipe.
//!
//! The task is PID 2. A SIGTERM from the shim (timeout, kill) goes to the
//! init, which passes it to every container process once, so a program
//! that does not trap SIGTERM stops at once as on the host; SIGKILL after
//! the grace period goes to the whole cgroup. When the task's main process
//! exits, the init exits and the kernel kills the rest of the namespace.
//!
//! # Why nothing is left behind
//!
//! All mounts live only in the container's mount namespace: they disappear
//! with its last process and are never visible in the host's mount table.
//! If the shim dies, `PR_SET_PDEATHSIG` kills the init and hence the whole
//! PID namespace. What can remain after a shim crash is the cgroup directory
//! and `<dir>/ctr`, which [`cleanup_attempt`] removes (the shim itself does
//! the same on every normal exit path).

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, fork, ForkResult, Gid, Uid};
use sha2::{Digest, Sha256};

use crate::caps::drop_privileges;
use crate::cgroup::{Cgroup, Limits};
use crate::driver::{Driver, Finish, Launch, Task};
use crate::error::{DriverError, Error, Result};
use crate::init;
use crate::rootfs::{do_mount, loopback_up, mkdirs, setup_rootfs, RootfsPlan};
use crate::spec::{ContainerSpec, Network};

/// The name of the cgroup of the attempt in `dir`:
/// `<first 16 hex digits of sha256(canonical dir)>-<sanitized dir name>`.
/// Stable for a directory, so [`cleanup_attempt`] can find it again.
pub fn container_id(dir: &Path) -> String {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let hash = Sha256::digest(canon.as_os_str().as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let base: String = canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if base.is_empty() {
        hex
    } else {
        format!("{hex}-{base}")
    }
}

/// `<dir>/ctr`: the per-attempt container state (overlay mount point, upper
/// and work directories), removed after the attempt.
fn ctr_dir(dir: &Path) -> PathBuf {
    dir.join("ctr")
}

/// Remove whatever a container attempt in `dir` may have left behind: kill
/// every process still in its cgroup, remove the cgroup directories, detach
/// any mount under `dir` and delete `<dir>/ctr`. Meant for an attempt whose
/// shim is gone ([`crate::probe`] says `Gone`); calling it while the shim
/// runs kills the task. Harmless (and cheap) when nothing is left.
pub fn cleanup_attempt(dir: &Path) -> Result<()> {
    let mut errors = Vec::new();
    // No cgroup filesystem at all means no container ever ran here.
    if let Ok(cg) = Cgroup::locate(&container_id(dir)) {
        cg.signal(Signal::SIGKILL);
        if let Err(e) = cg.remove(Duration::from_secs(2)) {
            errors.push(e);
        }
    }
    if let Err(e) = unmount_under(dir) {
        errors.push(e);
    }
    let ctr = ctr_dir(dir);
    match fs::remove_dir_all(&ctr) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => errors.push(DriverError::io("remove", ctr, e)),
    }
    DriverError::all(errors).map_err(|source| Error::Cleanup {
        dir: dir.to_path_buf(),
        source: Box::new(source),
    })
}

/// Decode the octal escapes (`\040` etc.) of a mountinfo path field.
fn unescape_mount_path(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// Mount points at or below `dir` in the content of a mountinfo file.
pub(crate) fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Lazily unmount every mount at or below `dir` in the caller's namespace
/// (deepest first). Container mounts normally never appear there; this is
/// a safety net.
fn unmount_under(dir: &Path) -> Result<(), DriverError> {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| DriverError::io("read", "/proc/self/mountinfo", e))?;
    let mut found = mounts_under(&info, &canon);
    found.reverse();
    let mut errors = Vec::new();
    for m in found {
        if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
            if e != Errno::EINVAL && e != Errno::ENOENT {
                errors.push(DriverError::Unmount { path: m, source: e });
            }
        }
    }
    DriverError::all(errors)
}

/// Runs tasks in containers; one instance per attempt.
pub(crate) struct ContainerDriver {
    dir: PathBuf,
    spec: ContainerSpec,
    cgroup: Option<Cgroup>,
    /// Read end of the init's status pipe ([`init::read_task_status`]).
    status_pipe: Option<OwnedFd>,
}

impl ContainerDriver {
    /// The driver of the attempt in `dir`, running its task in a container as `spec` says.
    pub(crate) fn new(dir: &Path, spec: ContainerSpec) -> Self {
        ContainerDriver {
            dir: dir.to_path_buf(),
            spec,
            cgroup: None,
            status_pipe: None,
        }
    }
}

/// Everything the child needs, computed before the fork.
struct ChildPlan<'a> {
    spec: &'a ContainerSpec,
    cgroup: &'a Cgroup,
    rootfs: PathBuf,
    root: PathBuf,
    upper: PathBuf,
    ovl_work: PathBuf,
    workspace: PathBuf,
    cwd: PathBuf,
    argv: Vec<CString>,
    env: Vec<CString>,
    env_path: Option<String>,
    last_cap: u32,
    stdin: File,
    stdout: File,
    stderr: File,
}

fn check_option_path(p: &Path) -> Result<(), DriverError> {
    let s = p.as_os_str().as_bytes();
    if s.iter().any(|c| matches!(c, b',' | b':' | b'\\')) {
        return Err(DriverError::OverlayPath {
            path: p.to_path_buf(),
        });
    }
    Ok(())
}

fn cstring(s: &str, what: &'static str) -> Result<CString, DriverError> {
    CString::new(s).map_err(|_| DriverError::Nul {
        what,
        value: s.to_string(),
    })
}

impl Driver for ContainerDriver {
    fn start(&mut self, launch: Launch<'_>) -> Result<Task, DriverError> {
        let spec = launch.spec;
        let c = &self.spec;
        let rootfs = c.rootfs.clone();
        match fs::metadata(&rootfs) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(DriverError::RootfsNotDir { path: rootfs }),
            Err(source) => {
                return Err(DriverError::Rootfs {
                    path: rootfs,
                    source,
                })
            }
        }
        let cgroup = Cgroup::locate(&container_id(&self.dir))?;
        self.cgroup = Some(cgroup.clone());
        cgroup.create(&Limits {
            memory: c.memory,
            cpus: c.cpus,
            pids: c.pids,
        })?;

        let ctr = ctr_dir(&self.dir);
        let (root, upper, ovl_work) = (ctr.join("root"), ctr.join("upper"), ctr.join("work"));
        for d in [&root, &upper, &ovl_work] {
            fs::create_dir_all(d).map_err(|e| DriverError::io("create", d, e))?;
        }
        for p in [&rootfs, &upper, &ovl_work] {
            check_option_path(p)?;
        }
        let workspace = crate::work_dir(&self.dir);
        // The task user must be able to write its workspace.
        nix::unistd::chown(
            &workspace,
            Some(Uid::from_raw(c.uid)),
            Some(Gid::from_raw(c.gid)),
        )
        .map_err(|source| DriverError::Chown {
            path: workspace.clone(),
            uid: c.uid,
            gid: c.gid,
            source,
        })?;

        let argv = spec
            .argv
            .iter()
            .map(|a| cstring(a, "argument"))
            .collect::<Result<Vec<_>, _>>()?;
        let env = spec
            .env
            .iter()
            .map(|(k, v)| cstring(&format!("{k}={v}"), "environment variable"))
            .collect::<Result<Vec<_>, _>>()?;
        let last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        let stdin = File::open("/dev/null").map_err(|e| DriverError::io("open", "/dev/null", e))?;
        let plan = ChildPlan {
            spec: c,
            cgroup: &cgroup,
            rootfs,
            root,
            upper,
            ovl_work,
            workspace,
            cwd: launch.cwd.to_path_buf(),
            argv,
            env,
            env_path: spec
                .env
                .iter()
                .rev()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.clone()),
            last_cap,
            stdin,
            stdout: launch.stdout,
            stderr: launch.stderr,
        };

        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(DriverError::sys("pipe2", "cannot create pipe"))?;
        let (status_rd, status_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(DriverError::sys("pipe2", "cannot create pipe"))?;
        // Only the next child of the shim enters the new PID namespace; the
        // shim itself stays where it is (and never forks again).
        unshare(CloneFlags::CLONE_NEWPID)
            .map_err(DriverError::sys("unshare", "cannot create a PID namespace"))?;
        // SAFETY: fork(2) is unsafe because the child of a multi-threaded process may only make
        // async-signal-safe calls (another thread may have held a lock, the allocator's
        // included). The shim is single-threaded (a documented requirement of `shim_main`), so
        // the child is a consistent copy in which allocation and any libc call are sound. The
        // child never returns from this arm: it runs `child_main`, which ends in execve(2)
        // (through the init) or comes back with an error, and then `_exit`s.
        match unsafe { fork() } {
            Err(e) => Err(DriverError::sys("fork", "cannot fork")(e)),
            Ok(ForkResult::Child) => {
                drop(rd);
                drop(status_rd);
                let err = match child_main(&plan, status_wr, &wr) {
                    Ok(never) => match never {},
                    Err(e) => e,
                };
                // The error crosses the process boundary as text; the parent
                // turns it back into a DriverError::InContainer.
                let mut w = File::from(wr);
                let _ = w.write_all(err.to_string().as_bytes());
                // SAFETY: _exit(2) takes an integer and never returns, so it has no
                // precondition to break. It skips atexit handlers and destructors, which is
                // wanted: they belong to the shim's state, which this child must not flush or
                // free.
                unsafe { libc::_exit(127) }
            }
            Ok(ForkResult::Parent { child }) => {
                drop(wr);
                drop(status_wr);
                drop(plan);
                self.status_pipe = Some(status_rd);
                let mut msg = String::new();
                let _ = File::from(rd).read_to_string(&mut msg);
                if msg.is_empty() {
                    Ok(Task {
                        pid: child,
                        pgid: child,
                    })
                } else {
                    let _ = waitpid(child, None);
                    Err(DriverError::InContainer { message: msg })
                }
            }
        }
    }

    fn signal(&self, task: &Task, sig: Signal) {
        // SIGKILL goes to every process of the cgroup, the init included.
        // Any other signal goes to the init alone, which passes it on to every
        // other process of the container once (a second SIGTERM would re-run
        // a shell trap).
        match (&self.cgroup, sig) {
            (Some(cg), Signal::SIGKILL) => cg.signal(sig),
            _ => {
                let _ = nix::sys::signal::kill(task.pid, sig);
            }
        }
    }

    fn task_status(&mut self, task: &Task, init_status: WaitStatus) -> WaitStatus {
        self.status_pipe
            .take()
            .and_then(|pipe| init::read_task_status(&pipe, task.pid))
            .unwrap_or(init_status)
    }

    fn finish(&mut self) -> Finish {
        let mut fin = Finish::default();
        let mut errors = Vec::new();
        if let Some(cg) = self.cgroup.take() {
            let u = cg.usage();
            fin.usage = Some((u.max_memory, u.cpu_secs));
            if u.oom_kills > 0 {
                fin.oom = Some(match self.spec.memory {
                    Some(m) => format!(
                        "out of memory: the memory limit of {m} bytes was exceeded ({} process(es) OOM-killed)",
                        u.oom_kills
                    ),
                    None => format!("{} process(es) OOM-killed", u.oom_kills),
                });
            }
            cg.signal(Signal::SIGKILL);
            if let Err(e) = cg.remove(Duration::from_secs(2)) {
                errors.push(e);
            }
        }
        let ctr = ctr_dir(&self.dir);
        match fs::remove_dir_all(&ctr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => errors.push(DriverError::io("remove", ctr, e)),
        }
        if let Err(e) = DriverError::all(errors) {
            // Appended to the status message.
            fin.error = Some(format!("container cleanup: {e}"));
        }
        fin
    }
}

/// Moves the calling process into the network namespace at `path`.
fn join_netns(path: Option<&Path>) -> Result<(), DriverError> {
    let path = path.ok_or_else(|| DriverError::InContainer {
        message: "network `join` without a namespace path".into(),
    })?;
    let ns = fs::File::open(path).map_err(|source| DriverError::Io {
        op: "open the network namespace",
        path: path.to_path_buf(),
        source,
    })?;
    nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(DriverError::sys(
        "setns",
        "cannot join the network namespace",
    ))
}

/// Everything in the child between fork and exec. Returns only on error.
fn child_main(
    p: &ChildPlan<'_>,
    status_pipe: OwnedFd,
    setup_err: &OwnedFd,
) -> Result<Infallible, DriverError> {
    let c = p.spec;
    for (fd, target) in [
        (p.stdin.as_raw_fd(), 0),
        (p.stdout.as_raw_fd(), 1),
        (p.stderr.as_raw_fd(), 2),
    ] {
        nix::unistd::dup2(fd, target).map_err(DriverError::sys("dup2", "dup2"))?;
    }
    p.cgroup.join_self()?;
    if c.network == Network::Join {
        join_netns(c.netns.as_deref())?;
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    if c.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(DriverError::sys("unshare", "cannot create namespaces"))?;
    nix::unistd::sethostname(&c.hostname).map_err(|source| DriverError::Hostname {
        hostname: c.hostname.clone(),
        source,
    })?;
    do_mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    setup_rootfs(&RootfsPlan {
        rootfs: &p.rootfs,
        root: &p.root,
        upper: &p.upper,
        ovl_work: &p.ovl_work,
        workspace: &p.workspace,
        files: &c.files,
        mounts: &c.mounts,
    })?;
    if c.network == Network::None {
        loopback_up()?;
    }
    // Created as root so that a missing working directory does not stop the
    // task (as with Docker); entered after the switch to the task user.
    if fs::metadata(&p.cwd).is_err() {
        mkdirs(&p.cwd)?;
    }
    drop_privileges(c.uid, c.gid, p.last_cap)?;
    chdir(&p.cwd).map_err(|source| DriverError::Chdir {
        path: p.cwd.clone(),
        source,
    })?;
    // SAFETY: PR_SET_NO_NEW_PRIVS and PR_SET_PDEATHSIG take integers only (a flag, a signal
    // number) and read or write no memory of this process.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(DriverError::last_os("prctl", "cannot set no_new_privs"));
        }
        // Armed last: credential changes reset it. If the shim dies, the init
        // (and with it the whole PID namespace) is killed.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
    let argv0 = p.argv[0].to_string_lossy().into_owned();
    let env_vec: Vec<(String, String)> = p
        .env_path
        .as_ref()
        .map(|v| vec![("PATH".to_string(), v.clone())])
        .unwrap_or_else(|| {
            vec![(
                "PATH".to_string(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            )]
        });
    let program = crate::driver::resolve_program(&argv0, &env_vec, &p.cwd).map_err(|source| {
        DriverError::Exec {
            program: argv0.clone(),
            source,
        }
    })?;
    let path = CString::new(program.as_os_str().as_bytes()).map_err(|_| DriverError::Nul {
        what: "program path",
        value: program.display().to_string(),
    })?;
    // The signal mask the shim blocked stays blocked: the init takes those
    // signals with sigwait, and clears the mask in the task before its exec.
    init::run(
        &init::Program {
            path: &path,
            argv: &p.argv,
            env: &p.env,
            name: &argv0,
        },
        status_pipe,
        setup_err,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_id_is_stable_and_safe() {
        let a = container_id(Path::new("/nonexistent/attempts/j-1.0 x"));
        assert_eq!(a, container_id(Path::new("/nonexistent/attempts/j-1.0 x")));
        assert!(a.ends_with("-j-1.0_x"), "{a}");
        assert_ne!(a, container_id(Path::new("/nonexistent/other/j-1.0 x")));
    }

    #[test]
    fn finds_mounts_under_a_dir() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:40 / /tmp/a\\040b/ctr/root rw - overlay overlay rw
41 22 0:41 / /tmp/a\\040bc rw - tmpfs tmpfs rw
";
        let m = mounts_under(info, Path::new("/tmp/a b"));
        assert_eq!(m, vec![PathBuf::from("/tmp/a b/ctr/root")]);
    }
}
