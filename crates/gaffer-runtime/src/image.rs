//! The node's image store: `<root>/images/<name>/rootfs/` (the unpacked root
//! filesystem, used read-only as the lower layer of every container's
//! overlay) plus `<root>/images/<name>/image.json` ([`ImageMeta`]).
//!
//! [`ImageStore::import`] accepts
//! - a root filesystem tarball (`.tar`, `.tar.gz`, `.tar.zst`; the
//!   compression is detected from the content, not the name),
//! - a `docker save` tarball (`manifest.json` + layer tars + config),
//! - an OCI image layout, as a directory or a tar of one (`oci-layout`,
//!   `index.json`, `blobs/`); blob digests (sha256) are verified.
//!
//! Layers are applied in order and honour whiteouts: `.wh.<name>` deletes
//! `<name>` from the lower layers and `.wh..wh..opq` empties its directory of
//! everything the lower layers put there. Ownership, permissions and mtimes
//! are preserved (imports run as root on agents).
//!
//! Imports are atomic: everything is written into a hidden staging directory
//! `<root>/images/.tmp-*` that is renamed into place at the end (or removed
//! on error). Re-importing an existing name replaces it. Pulling from a
//! registry ([`ImageStore::pull`]) is in [`crate::pull`]; unpacking is in [`crate::layers`]; it shares the
//! staging, layer application and config parsing of this module.

use gaffer_api::now_ms;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

pub use crate::config::ImageConfig;
use crate::error::{Error, Result};
pub(crate) use crate::layers::fmt_err;
use crate::layers::{apply_layer_file, import_docker, import_oci};

/// Content of `image.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageMeta {
    /// The image name.
    pub name: String,
    /// `rootfs-tar`, `docker-save`, `oci-layout` or `registry`.
    pub source: String,
    /// Import time, unix milliseconds.
    pub imported_at_ms: u64,
    /// Run configuration.
    pub config: ImageConfig,
    /// The registry reference it was pulled from (`registry` images only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The digest of the pulled manifest (`registry` images only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `sha256:<hex>` of the archive it was imported from, when that came from the server's
    /// image catalog: a node holds a cluster image when the digests match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The image name.
    pub name: String,
    /// `<root>/images/<name>/rootfs`.
    pub rootfs: PathBuf,
    /// How it was imported.
    pub source: String,
    /// Import time, unix milliseconds.
    pub imported_at_ms: u64,
    /// Run configuration.
    pub config: ImageConfig,
    /// See [`ImageMeta::archive`].
    pub archive: Option<String>,
}

/// Whether `name` is a valid image name: 1 to 128 characters from
/// `[a-z0-9._-]`, not starting with `.` (hidden names are staging dirs).
pub fn valid_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Tells whether a running container may be using the image of a name (see
/// [`ImageStore::with_busy`]).
pub type BusyFn = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The images of one node, under `<root>/images/`.
#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
    busy: Option<BusyFn>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .field("busy", &self.busy.is_some())
            .finish()
    }
}

/// Removes a staging directory unless disarmed.
pub(crate) struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

impl ImageStore {
    /// A store whose images live in `<root>/images/` (created on import).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageStore {
            root: root.into(),
            busy: None,
        }
    }

    /// A store that keeps a removed or replaced image's files while `busy(name)` says a
    /// container may still run on them: they are the lower layer of its overlay, and deleting
    /// them would pull files out from under it. Such an image is renamed out of the way at
    /// once (no new task sees it) and deleted by [`ImageStore::purge_retired`] later.
    pub fn with_busy(mut self, busy: BusyFn) -> Self {
        self.busy = Some(busy);
        self
    }

    /// Deletes a retired image directory now, unless a container may still use it.
    fn retire(&self, name: &str, dir: &Path) {
        if self.busy.as_ref().is_some_and(|busy| busy(name)) {
            return;
        }
        let _ = fs::remove_dir_all(dir);
    }

    /// Deletes the retired images (removed or replaced ones, `.rm-*` and `.old-*`) that no
    /// container uses any more. Returns how many were deleted.
    pub fn purge_retired(&self) -> usize {
        let Ok(entries) = fs::read_dir(self.images_dir()) else {
            return 0;
        };
        let mut purged = 0;
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            // `.{kind}-{name}-{pid}-{ms}-{n}`, see temp_name.
            let Some(rest) = file
                .strip_prefix(".rm-")
                .or_else(|| file.strip_prefix(".old-"))
            else {
                continue;
            };
            let name = rest.rsplitn(4, '-').nth(3).unwrap_or_default();
            if self.busy.as_ref().is_some_and(|busy| busy(name)) {
                continue;
            }
            if fs::remove_dir_all(e.path()).is_ok() {
                purged += 1;
            }
        }
        purged
    }

    /// `<root>/images`.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    fn check_name(name: &str) -> Result<()> {
        if valid_image_name(name) {
            Ok(())
        } else {
            Err(Error::InvalidImageName {
                name: name.to_string(),
            })
        }
    }

    fn temp_name(&self, kind: &str, name: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        self.images_dir().join(format!(
            ".{kind}-{name}-{}-{}-{}",
            std::process::id(),
            now_ms(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Create a staging directory `<root>/images/.tmp-*` with an empty
    /// `rootfs/`; it is removed when the returned guard is dropped unless
    /// [`ImageStore::commit`] moved it into place.
    pub(crate) fn stage(&self, name: &str) -> Result<(Staging, PathBuf)> {
        Self::check_name(name)?;
        let images = self.images_dir();
        fs::create_dir_all(&images).map_err(|e| Error::io("create directory", &images, e))?;
        let staging = self.temp_name("tmp", name);
        fs::create_dir(&staging).map_err(|e| Error::io("create directory", &staging, e))?;
        let guard = Staging(Some(staging.clone()));
        let rootfs = staging.join("rootfs");
        fs::create_dir(&rootfs).map_err(|e| Error::io("create directory", &rootfs, e))?;
        Ok((guard, staging))
    }

    /// Write `image.json` into the staging directory and rename it to
    /// `<root>/images/<name>`, replacing any image of that name. `origin`
    /// names what was imported in errors.
    pub(crate) fn commit(
        &self,
        mut guard: Staging,
        meta: ImageMeta,
        origin: &Path,
    ) -> Result<Image> {
        let staging = guard
            .0
            .clone()
            .expect("a staging directory is committed once");
        let rootfs = staging.join("rootfs");
        let empty = fs::read_dir(&rootfs)
            .map_err(|e| Error::io("read directory", &rootfs, e))?
            .next()
            .is_none();
        if empty {
            return Err(fmt_err(origin, "the image has an empty root filesystem"));
        }
        let json_path = staging.join("image.json");
        let data = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Json {
            path: json_path.clone(),
            source: e,
        })?;
        fs::write(&json_path, data).map_err(|e| Error::io("write", &json_path, e))?;

        let name = meta.name.as_str();
        let dest = self.images_dir().join(name);
        let old = self.temp_name("old", name);
        let replaced = match fs::rename(&dest, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io("rename", &dest, e)),
        };
        if let Err(e) = fs::rename(&staging, &dest) {
            if replaced {
                let _ = fs::rename(&old, &dest);
            }
            return Err(Error::io("rename", &staging, e));
        }
        guard.0 = None;
        if replaced {
            self.retire(name, &old);
        }
        Ok(Image {
            name: meta.name,
            rootfs: dest.join("rootfs"),
            source: meta.source,
            imported_at_ms: meta.imported_at_ms,
            config: meta.config,
            archive: meta.archive,
        })
    }

    /// Import the image at `path` (see the module doc for the formats) as
    /// `name`, replacing any image of that name.
    pub fn import(&self, name: &str, path: &Path) -> Result<Image> {
        self.import_as(name, path, None)
    }

    /// [`ImageStore::import`] of an archive from the server's image catalog, whose digest
    /// (`sha256:<hex>`, already verified by the caller) is recorded with the image.
    pub fn import_archive(&self, name: &str, path: &Path, digest: &str) -> Result<Image> {
        self.import_as(name, path, Some(digest.to_string()))
    }

    fn import_as(&self, name: &str, path: &Path, archive: Option<String>) -> Result<Image> {
        let (guard, staging) = self.stage(name)?;
        let rootfs = staging.join("rootfs");

        let meta = fs::metadata(path).map_err(|e| Error::io("read", path, e))?;
        let (source, config) = if meta.is_dir() {
            if !path.join("oci-layout").is_file() {
                return Err(fmt_err(
                    path,
                    "a directory must be an OCI image layout (no oci-layout file found)",
                ));
            }
            ("oci-layout", import_oci(path, &rootfs)?)
        } else {
            // Unpack as a root filesystem; if that turns out to be an image
            // archive, it becomes the source of the real import.
            apply_layer_file(path, &rootfs)?;
            let archive = staging.join("archive");
            let is_docker = rootfs.join("manifest.json").is_file();
            let is_oci = rootfs.join("oci-layout").is_file() && rootfs.join("index.json").is_file();
            if is_docker || is_oci {
                fs::rename(&rootfs, &archive).map_err(|e| Error::io("rename", &rootfs, e))?;
                fs::create_dir(&rootfs).map_err(|e| Error::io("create directory", &rootfs, e))?;
                let res = if is_docker {
                    ("docker-save", import_docker(&archive, &rootfs)?)
                } else {
                    ("oci-layout", import_oci(&archive, &rootfs)?)
                };
                fs::remove_dir_all(&archive).map_err(|e| Error::io("remove", &archive, e))?;
                res
            } else {
                ("rootfs-tar", ImageConfig::default())
            }
        };
        let meta = ImageMeta {
            name: name.to_string(),
            source: source.to_string(),
            imported_at_ms: now_ms(),
            config,
            reference: None,
            digest: None,
            archive,
        };
        self.commit(guard, meta, path)
    }

    /// The image called `name`, or `None`.
    pub fn get(&self, name: &str) -> Result<Option<Image>> {
        Self::check_name(name)?;
        let dir = self.images_dir().join(name);
        let json_path = dir.join("image.json");
        let data = match fs::read(&json_path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", json_path, e)),
        };
        let meta: ImageMeta = serde_json::from_slice(&data).map_err(|e| Error::Json {
            path: json_path,
            source: e,
        })?;
        Ok(Some(Image {
            name: name.to_string(),
            rootfs: dir.join("rootfs"),
            source: meta.source,
            imported_at_ms: meta.imported_at_ms,
            config: meta.config,
            archive: meta.archive,
        }))
    }

    /// Every image, sorted by name.
    pub fn list(&self) -> Result<Vec<Image>> {
        let dir = self.images_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read directory", dir, e)),
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| valid_image_name(n))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if let Some(img) = self.get(&n)? {
                out.push(img);
            }
        }
        Ok(out)
    }

    /// Delete the image called `name`; `Ok(false)` if there was none. With
    /// [`ImageStore::with_busy`], its files stay (hidden) while containers use them.
    pub fn remove(&self, name: &str) -> Result<bool> {
        Self::check_name(name)?;
        let dir = self.images_dir().join(name);
        let trash = self.temp_name("rm", name);
        match fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("rename", dir, e)),
        }
        if self.busy.as_ref().is_some_and(|busy| busy(name)) {
            return Ok(true);
        }
        fs::remove_dir_all(&trash).map_err(|e| Error::io("remove", trash, e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::entry_rel_path;

    #[test]
    fn validates_names() {
        for ok in ["busybox", "a", "ubuntu-22.04", "x_y", &"a".repeat(128)] {
            assert!(valid_image_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "A",
            "a/b",
            "a b",
            "é",
            &"a".repeat(129),
        ] {
            assert!(!valid_image_name(bad), "{bad}");
        }
    }

    #[test]
    fn merges_env_and_argv() {
        let c = ImageConfig {
            env: vec!["PATH=/bin".into(), "A=1".into(), "B=x=y".into()],
            entrypoint: vec!["/init".into()],
            cmd: vec!["run".into()],
            ..Default::default()
        };
        let env = c.merged_env(&[("A".into(), "2".into()), ("C".into(), "3".into())]);
        assert_eq!(
            env,
            vec![
                ("PATH".to_string(), "/bin".to_string()),
                ("B".to_string(), "x=y".to_string()),
                ("A".to_string(), "2".to_string()),
                ("C".to_string(), "3".to_string()),
            ]
        );
        assert_eq!(c.argv(&[]), vec!["/init", "run"]);
        assert_eq!(c.argv(&["x".into()]), vec!["/init", "x"]);
    }

    #[test]
    fn entry_paths_are_normalised() {
        assert!(entry_rel_path(Path::new("./")).is_none());
        assert_eq!(
            entry_rel_path(Path::new("./a/b")).map(Result::ok),
            Some(Some(PathBuf::from("a/b")))
        );
        assert_eq!(
            entry_rel_path(Path::new("/a")).map(Result::ok),
            Some(Some(PathBuf::from("a")))
        );
        assert!(matches!(
            entry_rel_path(Path::new("a/../../b")),
            Some(Err(crate::error::LayerError::Escapes(_)))
        ));
    }

    #[test]
    fn resolves_users() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("etc")).unwrap();
        fs::write(
            tmp.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        fs::write(tmp.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let r = |u: &str| {
            ImageConfig {
                user: Some(u.into()),
                ..Default::default()
            }
            .resolve_user(tmp.path())
        };
        assert_eq!(r("app").unwrap(), Some((1000, 1001)));
        assert_eq!(r("1000").unwrap(), Some((1000, 1001)));
        assert_eq!(r("4242").unwrap(), Some((4242, 0)));
        assert_eq!(r("app:staff").unwrap(), Some((1000, 50)));
        assert_eq!(r("5:7").unwrap(), Some((5, 7)));
        assert!(r("ghost").is_err());
        assert!(r("app:ghost").is_err());
        assert_eq!(
            ImageConfig::default().resolve_user(tmp.path()).unwrap(),
            None
        );
    }
}
