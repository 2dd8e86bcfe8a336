//! The cluster's image catalog: image archives uploaded with `gaffer image import`, kept by the
//! server content-addressed, and fetched by agents when a task needs one.
//!
//! Layout under `<data-dir>/images` (or `<storage-dir>/images`):
//!
//! | path | content |
//! |---|---|
//! | `blobs/sha256/<hex>` | an archive, named by the sha256 of its bytes; shared by every name that points at it |
//! | `catalog.json` | name → digest, size, format, import time; replaced atomically |
//! | `uploads/` | uploads in progress; emptied at start |
//!
//! An upload is streamed to `uploads/`, hashed on the way, and kept only once its length, its
//! digest (when the client gave one) and its content (an image archive, see
//! [`gaffer_runtime::archive::inspect`]) all check out: a refused or broken upload leaves
//! nothing behind. Importing the same archive again under any name stores nothing new. The
//! archive is fetched by agents as is and unpacked by each node's image store.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use gaffer_api::UnixMs;
use gaffer_runtime::archive;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

/// How much of a refused upload's body is read before answering (see [`Catalog::upload`]).
const DRAIN_LIMIT: usize = 64 << 20;

/// One image of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogImage {
    /// Image name.
    pub name: String,
    /// `sha256:<hex>` of the archive.
    pub digest: String,
    /// Archive size, bytes.
    pub size: u64,
    /// `rootfs-tar`, `docker-save` or `oci-layout`.
    pub format: String,
    /// When it was imported (Unix ms).
    pub imported_at: UnixMs,
}

/// Why an upload or a removal was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The name cannot be stored on nodes.
    #[error(
        "invalid image name `{0}`: use 1 to 128 characters from [a-z0-9._-], not starting with '.'"
    )]
    BadName(String),
    /// Not `sha256:` and 64 hex digits.
    #[error("invalid digest `{0}`: expected sha256: followed by 64 lowercase hex digits")]
    BadDigest(String),
    /// The bytes received hash to something else.
    #[error("digest mismatch: the client announced {want} but the {size} bytes received hash to {got}; nothing was stored")]
    DigestMismatch {
        /// Announced digest.
        want: String,
        /// Digest of what arrived.
        got: String,
        /// Bytes received.
        size: u64,
    },
    /// The body ended early or broke off.
    #[error("the upload broke off after {received} bytes{}: {detail}; nothing was stored", .expected.map(|e| format!(" of {e}")).unwrap_or_default())]
    Truncated {
        /// Bytes received.
        received: u64,
        /// Bytes announced (Content-Length).
        expected: Option<u64>,
        /// What the transport said.
        detail: String,
    },
    /// The archive is not an image.
    #[error("not an image archive: {0}; nothing was stored")]
    NotAnImage(String),
    /// No image of that name.
    #[error("no image `{0}` in the cluster's catalog")]
    NotFound(String),
    /// A server-side failure.
    #[error("image catalog: {0}")]
    Io(String),
}

impl ImageError {
    /// True for a mistake in the request (a 4xx), false for the server's own failure.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, ImageError::Io(_))
    }
}

fn io_err(what: &str, path: &Path, e: io::Error) -> ImageError {
    ImageError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// Whether `d` is `sha256:` followed by 64 lowercase hex digits.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The catalog; cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    root: PathBuf,
    images: Arc<Mutex<BTreeMap<String, CatalogImage>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Catalog {
    /// Opens (or creates) the catalog in `root`, dropping unfinished uploads.
    pub fn open(root: PathBuf) -> Result<Catalog, ImageError> {
        let uploads = root.join("uploads");
        match std::fs::remove_dir_all(&uploads) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("clean", &uploads, e)),
        }
        for d in [root.join("blobs/sha256"), uploads] {
            std::fs::create_dir_all(&d).map_err(|e| io_err("create", &d, e))?;
        }
        let path = root.join("catalog.json");
        let images: Vec<CatalogImage> = match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|e| ImageError::Io(format!("{} is corrupt: {e}", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("read", &path, e)),
        };
        let images: BTreeMap<String, CatalogImage> =
            images.into_iter().map(|i| (i.name.clone(), i)).collect();
        // An archive stored just before a crash, whose name never reached catalog.json.
        let blobs = root.join("blobs/sha256");
        for e in std::fs::read_dir(&blobs).into_iter().flatten().flatten() {
            let digest = format!("sha256:{}", e.file_name().to_string_lossy());
            if !images.values().any(|i| i.digest == digest) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Catalog {
            root,
            images: Arc::new(Mutex::new(images)),
        })
    }

    /// Every image, by name.
    pub fn list(&self) -> Vec<CatalogImage> {
        lock(&self.images).values().cloned().collect()
    }

    /// The image called `name`.
    pub fn get(&self, name: &str) -> Option<CatalogImage> {
        lock(&self.images).get(name).cloned()
    }

    /// Name → (digest, size) of every image: what the scheduler may place on a node without
    /// the image.
    pub fn snapshot(&self) -> BTreeMap<String, (String, u64)> {
        lock(&self.images)
            .values()
            .map(|i| (i.name.clone(), (i.digest.clone(), i.size)))
            .collect()
    }

    /// Where the archive with `digest` is kept.
    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs/sha256").join(hex)
    }

    /// The size of the archive with `digest`, if the catalog keeps it.
    pub fn blob_size(&self, digest: &str) -> Option<u64> {
        if !valid_digest(digest) {
            return None;
        }
        std::fs::metadata(self.blob_path(digest))
            .ok()
            .map(|m| m.len())
    }

    /// Up to `max` bytes of the archive `digest` from `offset` (empty at its end).
    pub fn read_blob(&self, digest: &str, offset: u64, max: u32) -> Result<Vec<u8>, String> {
        if !valid_digest(digest) {
            return Err(format!("invalid digest `{digest}`"));
        }
        let path = self.blob_path(digest);
        let mut f = std::fs::File::open(&path)
            .map_err(|e| format!("the server has no image archive {digest}: {e}"))?;
        f.seek(io::SeekFrom::Start(offset))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut buf = Vec::with_capacity(max as usize);
        f.take(u64::from(max))
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(buf)
    }

    /// Stores an uploaded archive as `name`. `digest`: what the client says the bytes hash to;
    /// `expected`: the Content-Length. An empty body re-tags an archive the catalog already
    /// keeps (`digest` required), so a retried or repeated import sends nothing twice.
    pub async fn upload<S, E>(
        &self,
        name: &str,
        digest: Option<&str>,
        expected: Option<u64>,
        mut body: S,
    ) -> Result<CatalogImage, ImageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let refused = if !gaffer_runtime::image::valid_image_name(name) {
            Some(ImageError::BadName(name.to_string()))
        } else {
            digest
                .filter(|d| !valid_digest(d))
                .map(|d| ImageError::BadDigest(d.to_string()))
        };
        if let Some(e) = refused {
            // Read (and drop) a bounded part of the body first: a client still sending when
            // the answer comes and the connection closes sees a broken pipe, not this error.
            let mut skipped = 0usize;
            while let Some(Ok(chunk)) = body.next().await {
                skipped += chunk.len();
                if skipped > DRAIN_LIMIT {
                    break;
                }
            }
            return Err(e);
        }
        static N: AtomicU64 = AtomicU64::new(0);
        let part = self.root.join("uploads").join(format!(
            "{}-{}.part",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let guard = RemoveOnDrop(part.clone());
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| io_err("create", &part, e))?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ImageError::Truncated {
                received,
                expected,
                detail: e.to_string(),
            })?;
            hasher.update(&chunk);
            received += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| io_err("write", &part, e))?;
        }
        file.sync_all()
            .await
            .map_err(|e| io_err("sync", &part, e))?;
        drop(file);
        if expected.is_some_and(|e| e != received) {
            return Err(ImageError::Truncated {
                received,
                expected,
                detail: "the body is shorter than its Content-Length".into(),
            });
        }
        if received == 0 {
            // An empty body names an archive the catalog already keeps (a repeated import).
            return match digest {
                Some(d) => {
                    let (this, name, d) = (self.clone(), name.to_string(), d.to_string());
                    blocking(move || this.retag(&name, &d)).await
                }
                None => Err(ImageError::NotAnImage("the upload is empty".into())),
            };
        }
        let got = format!("sha256:{:x}", hasher.finalize());
        if let Some(want) = digest.filter(|w| *w != got) {
            return Err(ImageError::DigestMismatch {
                want: want.to_string(),
                got,
                size: received,
            });
        }
        let checked = part.clone();
        let format = blocking(move || {
            archive::inspect(&checked).map_err(|e| {
                ImageError::NotAnImage(match e {
                    gaffer_runtime::Error::ImageFormat { detail, .. } => detail,
                    other => other
                        .to_string()
                        .replace(&*checked.to_string_lossy(), "the upload"),
                })
            })
        })
        .await?;
        let (this, name) = (self.clone(), name.to_string());
        let image = blocking(move || {
            let r = this.store(&name, &got, received, format.as_str(), &part);
            drop(guard);
            r
        })
        .await?;
        Ok(image)
    }

    /// Moves a checked upload into `blobs/` (unless that archive is kept already) and points
    /// `name` at it, all under the catalog's lock, so that no concurrent removal can delete the
    /// archive between the two.
    fn store(
        &self,
        name: &str,
        digest: &str,
        size: u64,
        format: &str,
        part: &Path,
    ) -> Result<CatalogImage, ImageError> {
        let mut images = lock(&self.images);
        let blob = self.blob_path(digest);
        let fresh = !blob.exists();
        if fresh {
            std::fs::rename(part, &blob).map_err(|e| io_err("store", &blob, e))?;
        }
        let r = self.tag(&mut images, name, digest, size, format.to_string());
        if r.is_err() && fresh && !images.values().any(|i| i.digest == digest) {
            let _ = std::fs::remove_file(&blob);
        }
        r
    }

    /// Points `name` at an archive the catalog keeps already.
    fn retag(&self, name: &str, digest: &str) -> Result<CatalogImage, ImageError> {
        let mut images = lock(&self.images);
        let (size, format) = match (
            self.blob_size(digest),
            images.values().find(|i| i.digest == digest),
        ) {
            (Some(size), Some(known)) => (size, known.format.clone()),
            _ => {
                return Err(ImageError::NotAnImage(format!(
                    "the upload is empty, and the catalog keeps no archive {digest} to name"
                )))
            }
        };
        self.tag(&mut images, name, digest, size, format)
    }

    /// Points `name` at the stored archive `digest` and saves the catalog (the caller holds the
    /// lock); an archive no name points at any more is deleted.
    fn tag(
        &self,
        images: &mut BTreeMap<String, CatalogImage>,
        name: &str,
        digest: &str,
        size: u64,
        format: String,
    ) -> Result<CatalogImage, ImageError> {
        let image = CatalogImage {
            name: name.to_string(),
            digest: digest.to_string(),
            size,
            format,
            imported_at: gaffer_api::now_ms(),
        };
        let old = images.insert(name.to_string(), image.clone());
        if let Err(e) = self.save(images) {
            match old {
                Some(o) => images.insert(name.to_string(), o),
                None => images.remove(name),
            };
            return Err(e);
        }
        if let Some(o) = old {
            self.drop_unused(images, &o.digest);
        }
        Ok(image)
    }

    /// Removes `name` from the catalog (blocking: it rewrites catalog.json with an fsync).
    pub fn remove(&self, name: &str) -> Result<CatalogImage, ImageError> {
        let mut images = lock(&self.images);
        let Some(old) = images.remove(name) else {
            return Err(ImageError::NotFound(name.to_string()));
        };
        if let Err(e) = self.save(&images) {
            images.insert(name.to_string(), old);
            return Err(e);
        }
        self.drop_unused(&images, &old.digest);
        Ok(old)
    }

    fn drop_unused(&self, images: &BTreeMap<String, CatalogImage>, digest: &str) {
        if !images.values().any(|i| i.digest == digest) {
            let _ = std::fs::remove_file(self.blob_path(digest));
        }
    }

    /// Writes `catalog.json` with a temporary file, fsync and rename.
    fn save(&self, images: &BTreeMap<String, CatalogImage>) -> Result<(), ImageError> {
        let list: Vec<&CatalogImage> = images.values().collect();
        let data = serde_json::to_vec_pretty(&list)
            .map_err(|e| ImageError::Io(format!("cannot encode the catalog: {e}")))?;
        let path = self.root.join("catalog.json");
        let tmp = self.root.join("catalog.json.tmp");
        let write = || -> io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.root)?.sync_all()
        };
        write().map_err(|e| io_err("write", &path, e))
    }
}

/// Runs blocking file work (fsync, rename, reading a whole archive) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Io(format!("a catalog task failed: {e}")))?
}

/// Deletes a file when dropped, unless it was moved away first.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
