//! Small filesystem helpers: atomic file replacement and the names of the
//! files inside an attempt directory.
//!
//! Nothing here knows about processes or JSON; callers serialize first and
//! pass bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub(crate) const SPEC_FILE: &str = "spec.json";
pub(crate) const STATUS_FILE: &str = "status.json";
pub(crate) const PID_FILE: &str = "shim.pid";
pub(crate) const SHIM_LOG_FILE: &str = "shim.log";

/// Replace `dir/name` with `data` via a temporary file and `rename(2)`, so a
/// reader sees either the old content or the complete new content.
///
/// With `durable`, the data is fsync'ed before the rename and the directory
/// afterwards, so the new file also survives a host crash.
pub(crate) fn write_atomic(dir: &Path, name: &str, data: &[u8], durable: bool) -> io::Result<()> {
    let final_path = dir.join(name);
    let tmp_path = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp_path)?;
    f.write_all(data)?;
    if durable {
        f.sync_data()?;
    }
    drop(f);
    fs::rename(&tmp_path, &final_path)?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
