//! Error type shared by every public function of this crate.
//!
//! Each variant names the file, directory or process id involved so that the
//! caller (the agent) can log something a human can act on. This module does
//! not decide how errors are reported; the shim itself never returns these to
//! a caller but folds them into the `message` of the attempt status.

use std::io;
use std::path::PathBuf;

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
    /// A cgroup or mount of an attempt could not be removed.
    #[error("cannot clean up attempt {}: {detail}", .dir.display())]
    Cleanup {
        /// The attempt directory.
        dir: PathBuf,
        /// What remained and why.
        detail: String,
    },
}

/// Result alias used throughout this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
