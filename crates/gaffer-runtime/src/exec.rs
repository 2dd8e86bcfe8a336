//! Running a command inside a live container (a replica's readiness check): a child process
//! that joins the namespaces of the container's init and becomes the container's user, like
//! `docker exec`, without a shell on the host.

use crate::fsutil::SPEC_FILE;
use crate::spec::LaunchSpec;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The namespaces joined, in order (the mount namespace last: after it, host paths are gone).
const NAMESPACES: [(&str, nix::sched::CloneFlags); 6] = [
    ("ipc", nix::sched::CloneFlags::CLONE_NEWIPC),
    ("uts", nix::sched::CloneFlags::CLONE_NEWUTS),
    ("net", nix::sched::CloneFlags::CLONE_NEWNET),
    ("pid", nix::sched::CloneFlags::CLONE_NEWPID),
    ("cgroup", nix::sched::CloneFlags::CLONE_NEWCGROUP),
    ("mnt", nix::sched::CloneFlags::CLONE_NEWNS),
];

/// Why a command could not be run in a container.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The attempt has no live container (not started yet, or ended).
    #[error("attempt {dir}: no running container")]
    NotRunning {
        /// The attempt directory.
        dir: String,
    },
    /// Reading the attempt's files or the container's namespaces failed.
    #[error("attempt {dir}: {what}: {source}")]
    Io {
        /// The attempt directory.
        dir: String,
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A command that runs `sh -c line` inside the container of the attempt in `dir`, as its
/// user, with its environment's `PATH`, stdin and stdout on /dev/null. Spawn it and wait
/// (with a time limit: it is the caller's).
pub fn command_in(dir: &Path, line: &str) -> Result<Command, ExecError> {
    let mut cmd = prepare(
        dir,
        &["/bin/sh".into(), "-c".into(), line.into()],
        false,
        false,
    )?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(cmd)
}

/// A command that runs `argv` in the container of the attempt in `dir` the way `docker exec`
/// does: in all of its namespaces (a forked child joins its pid namespace) and its cgroup,
/// as its user, with its environment, in its working directory. With `tty`, the process
/// leads a new session whose controlling terminal is its stdin (give it a pty's slave). The
/// caller sets the standard streams. Kill the whole process group (`-pid`) to stop it.
pub fn exec_in(dir: &Path, argv: &[String], tty: bool) -> Result<Command, ExecError> {
    prepare(dir, argv, true, tty)
}

/// The command for `argv` in the container of `dir`; `full` gives it the task's environment,
/// working directory and cgroup, and a fork into the pid namespace.
fn prepare(dir: &Path, argv: &[String], full: bool, tty: bool) -> Result<Command, ExecError> {
    let d = dir.display().to_string();
    let io = |what: &str| {
        let (d, what) = (d.clone(), what.to_string());
        move |source| ExecError::Io {
            dir: d,
            what,
            source,
        }
    };
    let spec: LaunchSpec = std::fs::read(dir.join(SPEC_FILE))
        .and_then(|b| serde_json::from_slice(&b).map_err(std::io::Error::other))
        .map_err(io("read the attempt's spec"))?;
    let Some(c) = spec.container else {
        return Err(ExecError::NotRunning { dir: d });
    };
    let Some((program, args)) = argv.split_first() else {
        return Err(ExecError::Io {
            dir: d,
            what: "start the command".into(),
            source: std::io::Error::other("no command given"),
        });
    };
    let init = container_init(dir).ok_or_else(|| ExecError::NotRunning { dir: d.clone() })?;
    let mut fds = Vec::with_capacity(NAMESPACES.len());
    for (ns, flag) in NAMESPACES {
        let f = File::open(format!("/proc/{init}/ns/{ns}"))
            .map_err(io(&format!("open the container's {ns} namespace")))?;
        fds.push((f, flag));
    }
    // Its cgroup: every hierarchy the container's init is in.
    let mut cgroups = Vec::new();
    if full {
        let text = std::fs::read_to_string(format!("/proc/{init}/cgroup"))
            .map_err(io("read the container's cgroups"))?;
        for path in cgroup_procs(&text) {
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
                cgroups.push(f);
            }
        }
    }
    let path = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let (uid, gid) = (c.uid, c.gid);
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear();
    if full {
        cmd.envs(spec.env.iter().cloned());
        if tty && !spec.env.iter().any(|(k, _)| k == "TERM") {
            cmd.env("TERM", "xterm");
        }
    }
    cmd.env("PATH", path).env("HOSTNAME", &c.hostname);
    let cwd = match (full, &spec.cwd) {
        (true, Some(w)) => std::ffi::CString::new(w.as_os_str().as_encoded_bytes()).ok(),
        _ => None,
    }
    .unwrap_or_else(|| c"/".to_owned());
    // SAFETY: the closure runs in the forked child before exec and calls only write, setsid,
    // ioctl, setns, fork, waitpid, _exit, chdir, setgroups, setgid and setuid
    // (async-signal-safe system calls) on descriptors and strings made before the fork; it
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for f in &cgroups {
                nix::unistd::write(f, b"0")?;
            }
            if full {
                // A session (and process group) of its own, so that a kill takes the
                // forked command too; with a terminal, that terminal controls it.
                nix::unistd::setsid()?;
                if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (f, flag) in &fds {
                nix::sched::setns(f.as_fd(), *flag)?;
            }
            if full {
                // Joining a pid namespace places only children in it: fork, and let this
                // process wait and exit as the command does.
                match nix::unistd::fork()? {
                    nix::unistd::ForkResult::Child => {}
                    nix::unistd::ForkResult::Parent { child } => {
                        // Not holding std's exec-error pipe open: the spawner reads it
                        // until the command has exec'd.
                        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                        let code = match nix::sys::wait::waitpid(child, None) {
                            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                            Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                            _ => 255,
                        };
                        libc::_exit(code);
                    }
                }
            }
            if libc::chdir(cwd.as_ptr()) != 0 {
                nix::unistd::chdir("/")?;
            }
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            Ok(())
        });
    }
    Ok(cmd)
}

/// The `cgroup.procs` files of the hierarchies in a `/proc/PID/cgroup` text (v1 and v2).
fn cgroup_procs(text: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let mount = match controllers {
                // v2: alone, or beside v1 hierarchies ("hybrid").
                "" if root.join("unified").is_dir() => root.join("unified"),
                "" => root.to_path_buf(),
                c => root.join(c.strip_prefix("name=").unwrap_or(c)),
            };
            Some(
                mount
                    .join(path.trim_start_matches('/'))
                    .join("cgroup.procs"),
            )
        })
        .collect()
}

/// The host pid of the container's init: the shim's first descendant in another mount
/// namespace.
fn container_init(dir: &Path) -> Option<i32> {
    let shim = crate::live_shim(dir).ok()??;
    let own = std::fs::read_link(format!("/proc/{shim}/ns/mnt")).ok()?;
    crate::procfs::descendants(shim)
        .into_iter()
        .find(|p| std::fs::read_link(format!("/proc/{p}/ns/mnt")).is_ok_and(|ns| ns != own))
}
