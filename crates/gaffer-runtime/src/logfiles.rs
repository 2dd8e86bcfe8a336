//! A task's logs written where the user asked as well (`--stdout`, Slurm's `--output`): the
//! user's path becomes a second name (a hard link) of the attempt's own log file, so it fills
//! while the task runs; across filesystems, the log is copied there once the task has ended.

use crate::spec::LogFiles;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Copies to make once the task has ended: the attempt's log, and the user's file (opened
/// at the start, without following a symlink) with its path.
pub(crate) type Copies = Vec<(PathBuf, File, PathBuf)>;

/// Gives the attempt's logs (`stdout_at`, `stderr_at`, already open as `stdout`, `stderr`) the
/// names `files` asks for. Without its own stderr file, standard error goes to the stdout
/// file too (the attempt's stderr log stays empty). Returns the files the task writes to and
/// the copies left for its end; an error names the path that cannot be written.
pub(crate) fn attach(
    files: &LogFiles,
    (stdout_at, stderr_at): (&Path, &Path),
    (stdout, stderr): (File, File),
) -> Result<(File, File, Copies), String> {
    let mut copies = Copies::new();
    let Some(out) = &files.stdout else {
        if let Some(err) = &files.stderr {
            link_or_copy(stderr_at, err, &mut copies)?;
        }
        return Ok((stdout, stderr, copies));
    };
    link_or_copy(stdout_at, out, &mut copies)?;
    match &files.stderr {
        Some(err) if err != out => {
            link_or_copy(stderr_at, err, &mut copies)?;
            Ok((stdout, stderr, copies))
        }
        _ => {
            let merged = stdout
                .try_clone()
                .map_err(|e| format!("cannot share {} with stderr: {e}", out.display()))?;
            Ok((stdout, merged, copies))
        }
    }
}

/// Makes `to` a name of `from` (replacing what was at `to`, as Slurm truncates its output
/// file); across filesystems, leaves a copy for later.
fn link_or_copy(from: &Path, to: &Path, copies: &mut Copies) -> Result<(), String> {
    let cannot = |e: io::Error| format!("cannot write the task's log to {}: {e}", to.display());
    match std::fs::remove_file(to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(cannot(e)),
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        // Another filesystem, or one without hard links.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV) | Some(libc::EPERM)) => {
            // Opened now and written through this descriptor at the end: a symlink put at
            // the path meanwhile is never followed.
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(to)
                .map_err(cannot)?;
            copies.push((from.to_path_buf(), file, to.to_path_buf()));
            Ok(())
        }
        Err(e) => Err(cannot(e)),
    }
}

/// Makes the copies left by [`attach`]; returns what failed.
pub(crate) fn finish(copies: Copies) -> Option<String> {
    let failed: Vec<String> = copies
        .into_iter()
        .filter_map(|(from, mut file, to)| {
            File::open(&from)
                .and_then(|mut src| io::copy(&mut src, &mut file))
                .err()
                .map(|e| format!("cannot copy the task's log to {}: {e}", to.display()))
        })
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn stdout_file_is_a_second_name_and_takes_stderr_too() {
        let d = tempfile::tempdir().unwrap();
        let (o, e) = (d.path().join("stdout"), d.path().join("stderr"));
        let user = d.path().join("slurm-1.out");
        std::fs::write(&user, "old contents").unwrap();
        let files = LogFiles {
            stdout: Some(user.clone()),
            stderr: None,
        };
        let (mut out, mut err, copies) = attach(
            &files,
            (&o, &e),
            (File::create(&o).unwrap(), File::create(&e).unwrap()),
        )
        .unwrap();
        assert!(copies.is_empty());
        out.write_all(b"out\n").unwrap();
        err.write_all(b"err\n").unwrap();
        assert_eq!(std::fs::read_to_string(&user).unwrap(), "out\nerr\n");
        assert_eq!(std::fs::read_to_string(&o).unwrap(), "out\nerr\n");
    }

    #[test]
    fn across_filesystems_the_log_is_copied_at_the_end_without_following_a_symlink() {
        let shm = Path::new("/dev/shm");
        let d = tempfile::tempdir().unwrap();
        let Ok(other) = tempfile::tempdir_in(shm) else {
            eprintln!("skipped: no /dev/shm");
            return;
        };
        let (o, e) = (d.path().join("stdout"), d.path().join("stderr"));
        let user = other.path().join("job.out");
        let files = LogFiles {
            stdout: Some(user.clone()),
            stderr: None,
        };
        let (mut out, _err, copies) = attach(
            &files,
            (&o, &e),
            (File::create(&o).unwrap(), File::create(&e).unwrap()),
        )
        .unwrap();
        if copies.is_empty() {
            eprintln!("skipped: /dev/shm is on the same filesystem");
            return;
        }
        out.write_all(b"done\n").unwrap();
        // A symlink swapped in while the task runs is not followed at the end.
        let victim = other.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let moved = other.path().join("moved");
        std::fs::rename(&user, &moved).unwrap();
        std::os::unix::fs::symlink(&victim, &user).unwrap();
        assert_eq!(finish(copies), None);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&moved).unwrap(), "done\n");
    }

    #[test]
    fn a_missing_directory_names_the_path() {
        let d = tempfile::tempdir().unwrap();
        let (o, e) = (d.path().join("stdout"), d.path().join("stderr"));
        let files = LogFiles {
            stdout: None,
            stderr: Some(d.path().join("no/such/dir/err")),
        };
        let r = attach(
            &files,
            (&o, &e),
            (File::create(&o).unwrap(), File::create(&e).unwrap()),
        );
        let msg = r.err().unwrap();
        assert!(msg.contains("no/such/dir/err"), "{msg}");
    }
}
