//! Reading attempt files (stdout, stderr, outputs) wherever they are.
//!
//! In order of preference: the server's own copy of an attempt's outputs (pulled from the agent
//! when the attempt ended), the attempt directory on this machine (the local agent of
//! `gaffer dev`, or a `--storage-dir` shared by all nodes), and finally the agent itself, over
//! its stream ([`Gateway::read_file`]), which works through NAT and without shared storage.

use crate::gateway::Gateway;
use bytes::Bytes;
use gaffer_api::AttemptKey;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Largest piece read at once.
pub const CHUNK: u32 = 256 * 1024;

/// A piece of a file.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The bytes (empty at the current end of the file).
    pub data: Bytes,
    /// The attempt has ended: the file will not grow.
    pub ended: bool,
}

/// See the module docs.
#[derive(Clone)]
pub struct Files {
    outputs_root: PathBuf,
    local: Option<(String, PathBuf)>,
    shared: Option<PathBuf>,
    gateway: Gateway,
}

/// The directory of an attempt under an agent's data (or storage) root.
pub fn attempt_dir(root: &Path, key: &AttemptKey) -> PathBuf {
    root.join("attempts").join(key.rel_dir())
}

impl Files {
    /// `outputs_root`: where pulled outputs are kept; `local`: a node whose data directory is
    /// on this machine; `shared`: a storage directory every agent writes into (`<dir>/<node>`).
    pub fn new(
        outputs_root: PathBuf,
        local: Option<(String, PathBuf)>,
        shared: Option<PathBuf>,
        gateway: Gateway,
    ) -> Self {
        Files {
            outputs_root,
            local,
            shared,
            gateway,
        }
    }

    /// The attempt's directory, if it can be read on this machine.
    pub fn local_dir(&self, node: &str, key: &AttemptKey) -> Option<PathBuf> {
        if let Some((n, root)) = &self.local {
            if n == node {
                return Some(attempt_dir(root, key));
            }
        }
        self.shared
            .as_ref()
            .map(|s| attempt_dir(&s.join(node), key))
    }

    /// Where the server keeps its copy of an output file.
    pub fn output_copy(&self, key: &AttemptKey, path: &str) -> PathBuf {
        self.outputs_root.join(key.rel_dir()).join(path)
    }

    /// Reads up to `max` bytes of `path` (`stdout`, `stderr` or `outputs/...`) from `offset`.
    pub async fn read(
        &self,
        node: &str,
        key: AttemptKey,
        path: &str,
        offset: u64,
        max: u32,
    ) -> Result<Chunk, String> {
        if let Some(rel) = path.strip_prefix("outputs/") {
            let copy = self.output_copy(&key, rel);
            if copy.exists() {
                return read_local(copy, offset, max, true).await;
            }
        }
        if let Some(dir) = self.local_dir(node, &key) {
            let ended = dir.join("status.json").exists();
            return read_local(dir.join(path), offset, max, ended).await;
        }
        let c = self
            .gateway
            .read_file(node, key, path, offset, max.min(CHUNK))
            .await?;
        Ok(Chunk {
            data: Bytes::from(c.data),
            ended: c.ended,
        })
    }

    /// Size of an output file, if known here.
    pub fn output_size(&self, node: &str, key: &AttemptKey, path: &str) -> Option<u64> {
        let copy = self.output_copy(key, path);
        std::fs::metadata(copy)
            .ok()
            .or_else(|| {
                self.local_dir(node, key)
                    .and_then(|d| std::fs::metadata(d.join("outputs").join(path)).ok())
            })
            .map(|m| m.len())
    }

    /// Copies an ended attempt's outputs from a remote agent into the server's data dir, so
    /// they stay downloadable when the node is gone.
    pub async fn pull_outputs(&self, node: &str, key: AttemptKey, outputs: &[String]) {
        if self.local_dir(node, &key).is_some() {
            return;
        }
        for path in outputs {
            let dest = self.output_copy(&key, path);
            let tmp = dest.with_extension("partial");
            if let Err(e) = self.pull_one(node, key, path, &tmp).await {
                tracing::warn!(attempt = %key, path, error = %e, "cannot copy an output file from its node");
                let _ = tokio::fs::remove_file(&tmp).await;
                continue;
            }
            if let Err(e) = tokio::fs::rename(&tmp, &dest).await {
                tracing::warn!(attempt = %key, path, error = %e, "cannot store an output file");
            }
        }
    }

    async fn pull_one(
        &self,
        node: &str,
        key: AttemptKey,
        path: &str,
        tmp: &Path,
    ) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        if let Some(p) = tmp.parent() {
            tokio::fs::create_dir_all(p)
                .await
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
        let mut f = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut offset = 0u64;
        loop {
            let c = self
                .gateway
                .read_file(node, key, &format!("outputs/{path}"), offset, CHUNK)
                .await?;
            if c.data.is_empty() {
                break;
            }
            offset += c.data.len() as u64;
            f.write_all(&c.data)
                .await
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        f.flush().await.map_err(|e| e.to_string())
    }
}

async fn read_local(path: PathBuf, offset: u64, max: u32, ended: bool) -> Result<Chunk, String> {
    tokio::task::spawn_blocking(move || {
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            // Not written yet (the task has printed nothing so far).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Chunk {
                    data: Bytes::new(),
                    ended,
                })
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut buf = vec![0u8; max as usize];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read(&mut buf))
            .map(|n| {
                buf.truncate(n);
                Chunk {
                    data: Bytes::from(buf),
                    ended,
                }
            })
            .map_err(|e| format!("{}: {e}", path.display()))
    })
    .await
    .map_err(|e| e.to_string())?
}
