//! The agent's journal of attempts the server has not yet confirmed: an append-only text file
//! of `+job.index.attempt` / `-job.index.attempt` lines.
//!
//! One short `O_APPEND` write per change instead of a marker file per attempt: creating and
//! deleting an inode per task was a measurable share of CPU on small tasks. The journal is not
//! fsync'ed: it must survive the agent being killed (the page cache does), and after a host
//! crash the attempts it names are gone anyway. It is compacted at start-up and whenever it
//! grows past [`COMPACT_BYTES`].

use gaffer_api::{AttemptKey, JobId};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Size after which the journal is rewritten with only the live entries.
pub const COMPACT_BYTES: u64 = 1 << 20;

struct State {
    file: File,
    live: BTreeSet<AttemptKey>,
    bytes: u64,
}

/// The journal; see the module docs.
pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
}

fn line(sign: char, k: &AttemptKey) -> String {
    format!("{sign}{}.{}.{}\n", k.job.0, k.index, k.attempt)
}

fn parse(l: &str) -> Option<(bool, AttemptKey)> {
    let (add, rest) = match l.as_bytes().first()? {
        b'+' => (true, &l[1..]),
        b'-' => (false, &l[1..]),
        _ => return None,
    };
    let mut it = rest.split('.');
    let key = AttemptKey {
        job: JobId(it.next()?.parse().ok()?),
        index: it.next()?.parse().ok()?,
        attempt: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some((add, key))
}

fn rewrite(path: &Path, live: &BTreeSet<AttemptKey>) -> io::Result<(File, u64)> {
    let tmp = path.with_extension("tmp");
    let mut data = String::new();
    for k in live {
        data.push_str(&line('+', k));
    }
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, path)?;
    let file = OpenOptions::new().append(true).open(path)?;
    Ok((file, data.len() as u64))
}

/// The attempts a journal file names, read without changing it (another process, such as
/// `gaffer agent image rm`, may look while the agent runs).
pub fn read_live(path: &Path) -> io::Result<BTreeSet<AttemptKey>> {
    let mut live = BTreeSet::new();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            // A torn last line (agent killed mid-write) is ignored.
            for (add, key) in text.lines().filter_map(parse) {
                if add {
                    live.insert(key);
                } else {
                    live.remove(&key);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(live)
}

impl Journal {
    /// Opens (or creates) the journal, compacts it and returns the attempts it names.
    pub fn open(path: &Path) -> io::Result<(Journal, Vec<AttemptKey>)> {
        let live = read_live(path)?;
        let (file, bytes) = rewrite(path, &live)?;
        let keys = live.iter().copied().collect();
        Ok((
            Journal {
                path: path.to_path_buf(),
                state: Mutex::new(State { file, live, bytes }),
            },
            keys,
        ))
    }

    /// The attempts recorded and not yet forgotten.
    pub fn keys(&self) -> Vec<AttemptKey> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.live.iter().copied().collect()
    }

    /// Whether an attempt is recorded and not yet forgotten.
    pub fn contains(&self, key: &AttemptKey) -> bool {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.live.contains(key)
    }

    /// Records a new attempt.
    pub fn add(&self, key: AttemptKey) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let l = line('+', &key);
        st.file.write_all(l.as_bytes())?;
        st.bytes += l.len() as u64;
        st.live.insert(key);
        Ok(())
    }

    /// Forgets an attempt the server has recorded.
    pub fn remove(&self, key: AttemptKey) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.live.remove(&key) {
            return Ok(());
        }
        if st.bytes > COMPACT_BYTES {
            let (file, bytes) = rewrite(&self.path, &st.live)?;
            st.file = file;
            st.bytes = bytes;
            return Ok(());
        }
        let l = line('-', &key);
        st.file.write_all(l.as_bytes())?;
        st.bytes += l.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(job: u64, index: u32, attempt: u32) -> AttemptKey {
        AttemptKey {
            job: JobId(job),
            index,
            attempt,
        }
    }

    #[test]
    fn survives_reopen_and_ignores_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("active.log");
        {
            let (j, known) = Journal::open(&path).unwrap();
            assert!(known.is_empty());
            j.add(k(1, 0, 1)).unwrap();
            j.add(k(1, 1, 1)).unwrap();
            j.add(k(2, 0, 3)).unwrap();
            j.remove(k(1, 0, 1)).unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"+9.9")
            .unwrap();
        let (j, known) = Journal::open(&path).unwrap();
        assert_eq!(known, vec![k(1, 1, 1), k(2, 0, 3)]);
        // Compaction keeps only live entries.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "+1.1.1\n+2.0.3\n");
        j.remove(k(2, 0, 3)).unwrap();
        drop(j);
        let (_, known) = Journal::open(&path).unwrap();
        assert_eq!(known, vec![k(1, 1, 1)]);
    }

    #[test]
    fn compacts_when_large() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("active.log");
        let (j, _) = Journal::open(&path).unwrap();
        for i in 0..60_000 {
            j.add(k(1, i, 1)).unwrap();
            j.remove(k(1, i, 1)).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= COMPACT_BYTES + 64);
    }
}
