//! Small filesystem helpers: plain single-write files and the names of the
//! files inside an attempt directory.
//!
//! Nothing here knows about processes or JSON; callers serialize first and
//! pass bytes.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub(crate) const SPEC_FILE: &str = "spec.json";
pub(crate) const STATUS_FILE: &str = "status.json";
pub(crate) const PID_FILE: &str = "shim.pid";

pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Writes `dir/name` with one `write(2)` of `data` (created or truncated).
pub(crate) fn write_plain(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(name))?;
    f.write_all(data)
}
