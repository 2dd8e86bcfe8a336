//! Error types of this crate: [`Error`], returned by every public function; [`LayerError`], why
//! an image layer could not be unpacked; and [`DriverError`], why a task could not be started
//! (on the host or in a container) or its container not be removed.
//!
//! Each variant names the file, directory, cgroup file, mount, system call or process id
//! involved so that the caller (the agent) can log something a human can act on. This module
//! does not decide how errors are reported; the shim itself never returns these to a caller but
//! folds their text into the `message` of the attempt status.

use std::fmt;
use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

/// Errors returned by the attempt-directory helpers ([`crate::prepare`],
/// [`crate::read_status`], [`crate::kill_shim`], ...).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation on `path` failed.
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        /// Short description of the operation, e.g. "create directory".
        op: &'static str,
        /// The path the operation was applied to.
        path: PathBuf,
        /// The underlying OS error.
        source: io::Error,
    },
    /// A JSON file could not be encoded or decoded.
    #[error("invalid JSON in {}: {source}", .path.display())]
    Json {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying serde error.
        source: serde_json::Error,
    },
    /// The launch spec has no program to run.
    #[error("launch spec for attempt directory {} has an empty argv", .dir.display())]
    EmptyArgv {
        /// The attempt directory passed to `prepare`.
        dir: PathBuf,
    },
    /// `shim.pid` exists but does not contain `<pid> <starttime>`.
    #[error("malformed shim pid file {}: {content:?}", .path.display())]
    BadPidFile {
        /// Path of the pid file.
        path: PathBuf,
        /// What was found in it (truncated to a reasonable length).
        content: String,
    },
    /// Sending a signal to the shim failed for a reason other than "no such process".
    #[error("cannot signal shim pid {pid} (recorded in {}): {source}", .path.display())]
    Signal {
        /// Pid of the shim.
        pid: i32,
        /// The pid file it was read from.
        path: PathBuf,
        /// The errno returned by kill(2).
        source: nix::errno::Errno,
    },
    /// An image name outside `[a-z0-9._-]{1,128}` (or `.`/`..`-like).
    #[error("invalid image name {name:?}: use 1 to 128 characters from [a-z0-9._-], not starting with '.'")]
    InvalidImageName {
        /// The rejected name.
        name: String,
    },
    /// No image of that name in the store.
    #[error("image {name:?} not found in {}", .root.display())]
    ImageNotFound {
        /// The image name.
        name: String,
        /// The store's images directory.
        root: PathBuf,
    },
    /// The file or directory given to import is not a supported image, or
    /// its content is inconsistent.
    #[error("cannot import image from {}: {detail}", .path.display())]
    ImageFormat {
        /// What was being imported (or the file inside it at fault).
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Pulling an image from a registry failed (unreachable registry,
    /// unknown tag, refused access, corrupt blob, ...).
    #[error("cannot pull {reference}: {detail}")]
    Pull {
        /// The image reference being pulled.
        reference: String,
        /// What went wrong.
        detail: String,
    },
    /// A layer of an image could not be unpacked onto its root filesystem.
    #[error("cannot import image from {}: {source}", .path.display())]
    Layer {
        /// The layer file.
        path: PathBuf,
        /// What went wrong, and on which entry.
        source: LayerError,
    },
    /// A cgroup or mount of an attempt could not be removed.
    #[error("cannot clean up attempt {}: {source}", .dir.display())]
    Cleanup {
        /// The attempt directory.
        dir: PathBuf,
        /// What remained and why.
        source: Box<DriverError>,
    },
}

/// Result alias used throughout this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// [`Error::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Why one layer tar could not be applied to a root filesystem. Carried by [`Error::Layer`],
/// which names the layer file.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The file is not a tar archive.
    #[error("not a tar archive: {0}")]
    NotTar(#[source] io::Error),
    /// The file is a tar archive without a single entry.
    #[error("not a tar archive (no entries)")]
    Empty,
    /// An entry's header could not be read.
    #[error("bad tar entry: {0}")]
    Entry(#[source] io::Error),
    /// An entry's path could not be decoded.
    #[error("bad tar entry path: {0}")]
    EntryPath(#[source] io::Error),
    /// An entry's path leaves the root (`..`).
    #[error("entry {} escapes the root", .0.display())]
    Escapes(PathBuf),
    /// The content of a directory marked opaque (`.wh..wh..opq`) could not be removed.
    #[error("opaque directory {}: {source}", .dir.display())]
    Opaque {
        /// The directory, relative to the root filesystem.
        dir: PathBuf,
        /// The underlying OS error.
        source: io::Error,
    },
    /// The file a whiteout (`.wh.<name>`) hides could not be removed.
    #[error("whiteout {}: {source}", .path.display())]
    Whiteout {
        /// The file being removed.
        path: PathBuf,
        /// The underlying OS error.
        source: io::Error,
    },
    /// A file of a lower layer could not be removed to make room for the entry.
    #[error("replace {}: {source}", .path.display())]
    Replace {
        /// The file being replaced.
        path: PathBuf,
        /// The underlying OS error.
        source: io::Error,
    },
    /// An entry could not be written out.
    #[error("cannot unpack {}: {source}{}", .entry.display(), Cause(.source))]
    Unpack {
        /// The entry's path as written in the archive.
        entry: PathBuf,
        /// The error from the tar reader (its cause is shown too).
        source: io::Error,
    },
}

/// `": <cause>"` for an error that has a source, nothing otherwise: the tar crate's unpack
/// errors say which file failed and keep the OS error as their source.
struct Cause<'a>(&'a io::Error);

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::error::Error::source(self.0) {
            Some(c) => write!(f, ": {c}"),
            None => Ok(()),
        }
    }
}

/// Why a driver could not start a task (as a host process or in a container), or could not
/// remove what a container left. Each variant names the path, cgroup file, mount or system call
/// at fault; the text is what the attempt's status message says.
///
/// Errors of the container's own process (between the fork and the exec) reach the shim as
/// text over a pipe and come back as [`DriverError::InContainer`].
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The launch spec has no program to run.
    #[error("launch spec has an empty argv")]
    EmptyArgv,
    /// A host task's program could not be found or started.
    #[error("failed to start `{program}`: {source}")]
    Spawn {
        /// The program as the user named it (`argv[0]`).
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// A host task could not start because its working directory is unusable.
    #[error("failed to start `{program}`: working directory {}: {source}", .cwd.display())]
    SpawnCwd {
        /// The program as the user named it (`argv[0]`).
        program: String,
        /// The working directory.
        cwd: PathBuf,
        /// Why it cannot be used.
        source: io::Error,
    },
    /// A container task's program could not be found or executed in the container.
    #[error("failed to start `{program}` in the container: {source}")]
    Exec {
        /// The program as the user named it (`argv[0]`).
        program: String,
        /// The OS error of the lookup or of execve(2).
        source: io::Error,
    },
    /// The image's root filesystem is missing or unreadable.
    #[error("image rootfs {}: {source}", .path.display())]
    Rootfs {
        /// The image's rootfs directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The image's root filesystem is not a directory.
    #[error("image rootfs {} is not a directory", .path.display())]
    RootfsNotDir {
        /// The image's rootfs path.
        path: PathBuf,
    },
    /// A path cannot be passed in overlayfs mount options.
    #[error("path {} contains ',', ':' or '\\', which overlayfs options cannot carry", .path.display())]
    OverlayPath {
        /// The offending path.
        path: PathBuf,
    },
    /// An argument, environment variable or path cannot be passed to execve(2).
    #[error("{what} contains a NUL byte: {value:?}")]
    Nul {
        /// What it is: "argument", "environment variable", "program path".
        what: &'static str,
        /// Its value.
        value: String,
    },
    /// A file or directory operation failed.
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        /// The operation, e.g. "create", "remove", "read".
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The workspace could not be handed to the task's user.
    #[error("cannot chown {} to {uid}:{gid}: {source}", .path.display())]
    Chown {
        /// The workspace directory.
        path: PathBuf,
        /// The task's uid.
        uid: u32,
        /// The task's gid.
        gid: u32,
        /// The errno of chown(2).
        source: Errno,
    },
    /// A system call of the container's setup failed.
    #[error("{what}: {source}")]
    Syscall {
        /// The system call, e.g. "pipe2", "unshare", "pivot_root".
        call: &'static str,
        /// What it was for, as the message says it, e.g. "cannot create a PID namespace".
        what: &'static str,
        /// Its errno.
        source: Errno,
    },
    /// The container's host name could not be set.
    #[error("cannot set hostname {hostname:?}: {source}")]
    Hostname {
        /// The host name.
        hostname: String,
        /// The errno of sethostname(2).
        source: Errno,
    },
    /// A directory could not be entered.
    #[error("cannot enter {}: {source}", .path.display())]
    Chdir {
        /// The directory.
        path: PathBuf,
        /// The errno of chdir(2).
        source: Errno,
    },
    /// A capability could not be dropped from the bounding set.
    #[error("cannot drop capability {cap}: {source}")]
    DropCapability {
        /// The capability number.
        cap: u32,
        /// The errno of prctl(PR_CAPBSET_DROP).
        source: Errno,
    },
    /// The switch to the task's group or user failed.
    #[error("{call} {id}: {source}")]
    SetId {
        /// "setresgid" or "setresuid".
        call: &'static str,
        /// The gid or uid.
        id: u32,
        /// The errno.
        source: Errno,
    },
    /// The container's init could not install its handler for a signal it forwards.
    #[error("container init: cannot handle signal {signal}: {source}")]
    InitSignal {
        /// The signal number.
        signal: i32,
        /// The errno of sigaction(2).
        source: Errno,
    },
    /// A mount of the container's root filesystem failed.
    #[error(
        "cannot mount {} on {} (type {}, options {:?}): {source}",
        .from.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
        .target.display(),
        .fstype.as_deref().unwrap_or("bind"),
        .options.as_deref().unwrap_or("")
    )]
    Mount {
        /// What is mounted: a device name, a file system name or a bound path.
        from: Option<PathBuf>,
        /// The mount point.
        target: PathBuf,
        /// The file system type; `None` for a bind mount or a remount.
        fstype: Option<String>,
        /// The mount options.
        options: Option<String>,
        /// The errno of mount(2).
        source: Errno,
    },
    /// The overlay could not be mounted, neither directly nor with its upper layer on a tmpfs.
    #[error("{overlay}; tmpfs fallback: {fallback}")]
    OverlayFallback {
        /// Why the overlay on the attempt directory failed.
        overlay: Box<DriverError>,
        /// Why the tmpfs fallback failed.
        fallback: Box<DriverError>,
    },
    /// A mount left in the caller's namespace could not be detached.
    #[error("cannot unmount {}: {source}", .path.display())]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The errno of umount2(2).
        source: Errno,
    },
    /// Neither a cgroup v2 hierarchy nor any of the v1 controllers used is mounted.
    #[error("no cgroup v1 controller (memory, cpu, cpuacct, pids) is mounted and /sys/fs/cgroup is not cgroup v2")]
    NoCgroup,
    /// A cgroup directory could not be created.
    #[error("cannot create cgroup {}: {source}", .path.display())]
    CgroupCreate {
        /// The cgroup directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A cgroup control file could not be written (a limit, `cgroup.procs`, ...).
    #[error("cannot write {value:?} to {}: {source}", .path.display())]
    CgroupWrite {
        /// The control file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// The OS error.
        source: io::Error,
    },
    /// A cgroup directory could not be removed before the deadline (members remain).
    #[error("cannot remove cgroup {}: {source}", .path.display())]
    CgroupRemove {
        /// The cgroup directory.
        path: PathBuf,
        /// The error of the last attempt.
        source: io::Error,
    },
    /// The container's process failed before the task's exec; its message came over the
    /// setup pipe.
    #[error("{message}")]
    InContainer {
        /// The message, as the container's process wrote it.
        message: String,
    },
    /// Several clean-up steps failed.
    #[error("{}", Joined(.0))]
    Several(Vec<DriverError>),
}

impl DriverError {
    /// [`DriverError::Syscall`] for `call`, done for `what`.
    pub(crate) fn sys(call: &'static str, what: &'static str) -> impl FnOnce(Errno) -> Self {
        move |source| DriverError::Syscall { call, what, source }
    }

    /// [`DriverError::Syscall`] with the errno of the last failed libc call.
    pub(crate) fn last_os(call: &'static str, what: &'static str) -> Self {
        DriverError::Syscall {
            call,
            what,
            source: Errno::last(),
        }
    }

    /// [`DriverError::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        DriverError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// `Ok` for no error, the one error, or [`DriverError::Several`] (flat: the errors of a
    /// nested `Several` are taken one by one).
    pub(crate) fn all(errors: Vec<DriverError>) -> Result<(), DriverError> {
        let mut errors: Vec<DriverError> = errors
            .into_iter()
            .flat_map(|e| match e {
                DriverError::Several(v) => v,
                e => vec![e],
            })
            .collect();
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(DriverError::Several(errors)),
        }
    }
}

/// The errors of [`DriverError::Several`], separated by `; `.
struct Joined<'a>(&'a [DriverError]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts are those of the status messages before the driver errors were typed.
    #[test]
    fn driver_errors_read_as_before() {
        let mount = DriverError::Mount {
            from: Some(PathBuf::from("overlay")),
            target: PathBuf::from("/a/ctr/root"),
            fstype: Some("overlay".into()),
            options: Some("lowerdir=/l".into()),
            source: Errno::EINVAL,
        };
        assert_eq!(
            mount.to_string(),
            "cannot mount overlay on /a/ctr/root (type overlay, options \"lowerdir=/l\"): EINVAL: Invalid argument"
        );
        let bind = DriverError::Mount {
            from: None,
            target: PathBuf::from("/sys"),
            fstype: None,
            options: None,
            source: Errno::EPERM,
        };
        assert_eq!(
            bind.to_string(),
            "cannot mount  on /sys (type bind, options \"\"): EPERM: Operation not permitted"
        );
        let fallback = DriverError::OverlayFallback {
            overlay: Box::new(mount),
            fallback: Box::new(bind),
        };
        assert!(fallback.to_string().contains(
            "\"lowerdir=/l\"): EINVAL: Invalid argument; tmpfs fallback: cannot mount  on /sys"
        ));
        let several = DriverError::all(vec![
            DriverError::Unmount {
                path: PathBuf::from("/x"),
                source: Errno::EBUSY,
            },
            DriverError::Several(vec![
                DriverError::NoCgroup,
                DriverError::Syscall {
                    call: "pipe2",
                    what: "cannot create pipe",
                    source: Errno::EMFILE,
                },
            ]),
        ])
        .unwrap_err();
        assert!(matches!(&several, DriverError::Several(v) if v.len() == 3));
        assert_eq!(
            several.to_string(),
            "cannot unmount /x: EBUSY: Device or resource busy; no cgroup v1 controller (memory, cpu, cpuacct, pids) is mounted and /sys/fs/cgroup is not cgroup v2; cannot create pipe: EMFILE: Too many open files"
        );
        assert!(DriverError::all(Vec::new()).is_ok());
        assert_eq!(
            DriverError::OverlayPath {
                path: PathBuf::from("/a,b")
            }
            .to_string(),
            "path /a,b contains ',', ':' or '\\', which overlayfs options cannot carry"
        );
    }
}
