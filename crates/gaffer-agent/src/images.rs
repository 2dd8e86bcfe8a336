//! The node's images as the server's catalog sees them, and fetching a catalog image the node
//! lacks.
//!
//! A task whose image is in the server's catalog comes with the archive's digest
//! ([`gaffer_api::proto::TaskLaunch::image_archive`]). Unless the node's image of that name
//! was imported from that very archive, the agent reads the archive from the server over its
//! own stream ([`AgentMsg::ReadBlob`], answered by [`ServerMsg::BlobData`]) into
//! `<data>/images/.fetch-<hex>`, checks its size and sha256, and imports it with the image
//! store (atomic: staged, then renamed into place). One fetch runs at a time; tasks waiting
//! for the same image find it present once the first fetch is done. A failed fetch leaves
//! nothing behind, and the task ends `spawn_failed` with the reason.

use gaffer_api::proto::{AgentMsg, ServerMsg};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

/// Bytes asked for per [`AgentMsg::ReadBlob`].
const CHUNK: u32 = 4 << 20;
/// How long one chunk may take to arrive.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// The image store of the agent whose data directory is `data_dir`, keeping the files of a
/// removed or replaced image while a container of this node may run on them
/// ([`gaffer_runtime::ImageStore::with_busy`], [`image_in_use`]).
pub fn node_store(data_dir: &Path) -> gaffer_runtime::ImageStore {
    let dir = data_dir.to_path_buf();
    gaffer_runtime::ImageStore::new(data_dir).with_busy(std::sync::Arc::new(move |name: &str| {
        image_in_use(&dir, name)
    }))
}

/// Whether an attempt of this node that has not ended runs (or is about to run) on the image
/// `name`: its launch spec names the image's root filesystem and it has no status yet. Read
/// from the journal and the attempt directories, so it holds for attempts of an earlier run of
/// the agent too, and from another process. Errors count as "in use".
pub fn image_in_use(data_dir: &Path, name: &str) -> bool {
    let Ok(live) = crate::journal::read_live(&data_dir.join("active.log")) else {
        return true;
    };
    let rootfs = gaffer_runtime::ImageStore::new(data_dir)
        .images_dir()
        .join(name)
        .join("rootfs");
    live.iter().any(|key| {
        let dir = crate::attempt_dir(data_dir, key.job, key.index, key.attempt);
        if dir.join("status.json").exists() {
            return false;
        }
        match std::fs::read(dir.join("spec.json")) {
            // Not prepared yet (fetching its image): it runs on nothing so far.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(_) => true,
            Ok(data) => serde_json::from_slice::<gaffer_runtime::LaunchSpec>(&data)
                .map(|spec| spec.container.is_some_and(|c| c.rootfs == rootfs))
                .unwrap_or(true),
        }
    })
}

/// Why a node could not get a catalog image.
#[derive(Debug)]
pub struct FetchFailed {
    /// In words, with the image's name and digest.
    pub message: String,
    /// The connection to the server failed (not the archive or the disk): the attempt ends
    /// `lost`, so the server places it again without using up its retries.
    pub transient: bool,
}

impl FetchFailed {
    fn transport(message: impl Into<String>) -> Self {
        FetchFailed {
            message: message.into(),
            transient: true,
        }
    }

    fn other(message: impl Into<String>) -> Self {
        FetchFailed {
            message: message.into(),
            transient: false,
        }
    }
}

/// Image bookkeeping of one agent.
pub struct Images {
    data_dir: PathBuf,
    next_req: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<ServerMsg>>>,
    fetching: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes a partly fetched archive unless it was consumed.
struct PartFile(PathBuf);

impl Drop for PartFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Images {
    /// The images of the agent whose data directory is `data_dir`. Archives left half
    /// fetched by an earlier run (killed mid-fetch) are deleted.
    pub fn new(data_dir: PathBuf) -> Self {
        let dir = gaffer_runtime::ImageStore::new(&data_dir).images_dir();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".fetch-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        node_store(&data_dir).purge_retired();
        Images {
            data_dir,
            next_req: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn store(&self) -> gaffer_runtime::ImageStore {
        node_store(&self.data_dir)
    }

    /// Deletes removed or replaced images that no container uses any more.
    pub fn purge_retired(&self) {
        let n = self.store().purge_retired();
        if n > 0 {
            tracing::info!(count = n, "deleted images no container uses any more");
        }
    }

    /// The names of the node's images, and the archive digest of those fetched from the
    /// server's catalog.
    pub fn held(&self) -> (Vec<String>, BTreeMap<String, String>) {
        match self.store().list() {
            Ok(images) => {
                let digests = images
                    .iter()
                    .filter_map(|i| Some((i.name.clone(), i.archive.clone()?)))
                    .collect();
                (images.into_iter().map(|i| i.name).collect(), digests)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list images");
                (Vec::new(), BTreeMap::new())
            }
        }
    }

    /// Whether the node's image `name` was imported from the archive `digest`.
    pub fn holds(&self, name: &str, digest: &str) -> bool {
        matches!(self.store().get(name), Ok(Some(i)) if i.archive.as_deref() == Some(digest))
    }

    /// Hands a [`ServerMsg::BlobData`] to the fetch waiting for it.
    pub fn answer(&self, msg: ServerMsg) {
        if let ServerMsg::BlobData { req, .. } = &msg {
            if let Some(w) = lock(&self.waiting).remove(req) {
                let _ = w.send(msg);
            }
        }
    }

    /// Makes sure the node's image `name` is the catalog's archive `digest` (`size` bytes),
    /// fetching it through `send` if not.
    pub async fn ensure(
        &self,
        name: &str,
        digest: &str,
        size: u64,
        send: &(dyn Fn(AgentMsg) -> bool + Sync),
    ) -> Result<(), FetchFailed> {
        if self.holds(name, digest) {
            return Ok(());
        }
        let _one_at_a_time = self.fetching.lock().await;
        if self.holds(name, digest) {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        tracing::info!(image = %name, %digest, bytes = size, "fetching an image from the server");
        let part = self
            .fetch(digest, size, send)
            .await
            .map_err(|e| FetchFailed {
                message: format!(
                    "cannot fetch image `{name}` ({digest}) from the server: {}",
                    e.message
                ),
                ..e
            })?;
        let store = self.store();
        let (n, d) = (name.to_string(), digest.to_string());
        tokio::task::spawn_blocking(move || {
            let imported = store.import_archive(&n, &part.0, &d);
            drop(part);
            imported
        })
        .await
        .map_err(|e| FetchFailed::other(format!("image import of `{name}` failed: {e}")))?
        .map_err(|e| {
            FetchFailed::other(format!(
                "cannot import image `{name}` fetched from the server: {e}"
            ))
        })?;
        tracing::info!(image = %name, %digest, secs = t0.elapsed().as_secs_f64(), "image fetched");
        Ok(())
    }

    /// Reads the archive into a part file and verifies it.
    async fn fetch(
        &self,
        digest: &str,
        size: u64,
        send: &(dyn Fn(AgentMsg) -> bool + Sync),
    ) -> Result<PartFile, FetchFailed> {
        use base64::Engine as _;
        let images = self.store().images_dir();
        std::fs::create_dir_all(&images)
            .map_err(|e| FetchFailed::other(format!("cannot create {}: {e}", images.display())))?;
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let part = PartFile(images.join(format!(".fetch-{hex}")));
        let mut file = tokio::fs::File::create(&part.0)
            .await
            .map_err(|e| FetchFailed::other(format!("cannot create {}: {e}", part.0.display())))?;
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        loop {
            let req = self.next_req.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            lock(&self.waiting).insert(req, tx);
            let asked = send(AgentMsg::ReadBlob {
                req,
                digest: digest.to_string(),
                offset,
                max: CHUNK,
            });
            if !asked {
                lock(&self.waiting).remove(&req);
                return Err(FetchFailed::transport("not connected to the server"));
            }
            let answer = tokio::time::timeout(CHUNK_TIMEOUT, rx).await;
            lock(&self.waiting).remove(&req);
            let (data, error) = match answer {
                Ok(Ok(ServerMsg::BlobData { data, error, .. })) => (data, error),
                Ok(_) => {
                    return Err(FetchFailed::transport(
                        "the connection to the server closed",
                    ))
                }
                Err(_) => {
                    return Err(FetchFailed::transport(format!(
                        "no answer from the server within {}s at byte {offset}",
                        CHUNK_TIMEOUT.as_secs()
                    )))
                }
            };
            if let Some(e) = error {
                return Err(FetchFailed::other(e));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| {
                    FetchFailed::other(format!("undecodable data from the server: {e}"))
                })?;
            if bytes.is_empty() {
                break;
            }
            hasher.update(&bytes);
            file.write_all(&bytes).await.map_err(|e| {
                FetchFailed::other(format!("cannot write {}: {e}", part.0.display()))
            })?;
            offset += bytes.len() as u64;
            if offset > size {
                break;
            }
        }
        file.flush()
            .await
            .map_err(|e| FetchFailed::other(format!("cannot write {}: {e}", part.0.display())))?;
        drop(file);
        let got = format!("sha256:{:x}", hasher.finalize());
        if offset != size || got != digest {
            return Err(FetchFailed::other(format!(
                "the archive received is corrupt ({offset} of {size} bytes, sha256 {got}); nothing was kept"
            )));
        }
        Ok(part)
    }

    /// The catalog dropped `name` (archive `digest`): remove the node's copy if it is that one.
    pub fn remove_if(&self, name: &str, digest: &str) {
        if !self.holds(name, digest) {
            return;
        }
        match self.store().remove(name) {
            Ok(_) => {
                tracing::info!(image = %name, %digest, "image removed (dropped from the catalog)")
            }
            Err(e) => tracing::warn!(image = %name, error = %e, "cannot remove an image"),
        }
    }
}
