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
    let init = container_init(dir).ok_or_else(|| ExecError::NotRunning { dir: d.clone() })?;
    let mut fds = Vec::with_capacity(NAMESPACES.len());
    for (ns, flag) in NAMESPACES {
        let f = File::open(format!("/proc/{init}/ns/{ns}"))
            .map_err(io(&format!("open the container's {ns} namespace")))?;
        fds.push((f, flag));
    }
    let path = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let (uid, gid) = (c.uid, c.gid);
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", line])
        .env_clear()
        .env("PATH", path)
        .env("HOSTNAME", &c.hostname)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and calls only setns, chdir,
    // setgroups, setgid and setuid (async-signal-safe system calls) on descriptors opened
    // before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for (f, flag) in &fds {
                nix::sched::setns(f.as_fd(), *flag)?;
            }
            nix::unistd::chdir("/")?;
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            Ok(())
        });
    }
    Ok(cmd)
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
