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
//! registry ([`ImageStore::pull`]) is in [`crate::pull`]; it shares the
//! staging, layer application and config parsing of this module.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The run configuration of an image (from its OCI/Docker config, empty for
/// a plain rootfs tarball).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`; `None` if unset.
    #[serde(default)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Entrypoint argv prefix.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Default command (arguments to the entrypoint).
    #[serde(default)]
    pub cmd: Vec<String>,
}

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

impl ImageConfig {
    /// The task environment: the image's variables overridden by the task's.
    pub fn merged_env(&self, task: &[(String, String)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        for e in &self.env {
            let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        for (k, v) in task {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// The argv of a task: entrypoint followed by `command`, or by the
    /// image's `cmd` when `command` is empty.
    pub fn argv(&self, command: &[String]) -> Vec<String> {
        let mut argv = self.entrypoint.clone();
        argv.extend_from_slice(if command.is_empty() {
            &self.cmd
        } else {
            command
        });
        argv
    }

    /// `(uid, gid)` of the image's user, looked up in `rootfs/etc/passwd` and
    /// `rootfs/etc/group` when given by name. `Ok(None)` when the image sets
    /// no user (the caller then uses 65534).
    pub fn resolve_user(&self, rootfs: &Path) -> Result<Option<(u32, u32)>> {
        let Some(user) = self.user.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let passwd_path = rootfs.join("etc/passwd");
        let passwd = fs::read_to_string(&passwd_path).unwrap_or_default();
        let entry = |name_or_id: &str| {
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && (f[0] == name_or_id || f[2] == name_or_id))
                    .then(|| Some((f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?)))?
            })
        };
        let (uid, default_gid) = match u.parse::<u32>() {
            Ok(uid) => (uid, entry(u).map(|(_, g)| g).unwrap_or(0)),
            Err(_) => entry(u).ok_or_else(|| Error::ImageFormat {
                path: passwd_path.clone(),
                detail: format!("user {u:?} of the image is not in /etc/passwd"),
            })?,
        };
        let gid = match g {
            None | Some("") => default_gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    let group_path = rootfs.join("etc/group");
                    let groups = fs::read_to_string(&group_path).unwrap_or_default();
                    groups
                        .lines()
                        .find_map(|l| {
                            let f: Vec<&str> = l.split(':').collect();
                            (f.len() >= 3 && f[0] == g).then(|| f[2].parse::<u32>().ok())?
                        })
                        .ok_or_else(|| Error::ImageFormat {
                            path: group_path,
                            detail: format!("group {g:?} of the image is not in /etc/group"),
                        })?
                }
            },
        };
        Ok(Some((uid, gid)))
    }
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

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn fmt_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::ImageFormat {
        path: path.to_path_buf(),
        detail: detail.into(),
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

/// Open `path`, transparently decompressing gzip or zstd (by magic number).
pub(crate) fn open_decompressed(path: &Path) -> Result<Box<dyn Read>> {
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let head = r.fill_buf().map_err(|e| Error::io("read", path, e))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = zstd::stream::read::Decoder::with_buffer(r)
            .map_err(|e| Error::io("decompress (zstd)", path, e))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(r))
    }
}

/// A relative, normalised path of a tar entry, or `None` for the root
/// entry; an error for absolute escapes or `..`.
pub(crate) fn entry_rel_path(raw: &Path) -> Option<std::result::Result<PathBuf, String>> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Some(Err(format!("entry {} escapes the root", raw.display())))
            }
        }
    }
    (!out.as_os_str().is_empty()).then_some(Ok(out))
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Remove everything below `dir` (relative path `rel` in the image) that the
/// current layer did not create (`touched`).
fn make_opaque(dest: &Path, rel: &Path, touched: &HashSet<PathBuf>) -> io::Result<()> {
    let dir = dest.join(rel);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let child_rel = rel.join(e.file_name());
        if !touched.contains(&child_rel) {
            remove_any(&e.path())?;
        } else if e.file_type()?.is_dir() {
            make_opaque(dest, &child_rel, touched)?;
        }
    }
    Ok(())
}

/// Apply the (possibly compressed) layer tar at `path` onto `dest`.
pub(crate) fn apply_layer_file(path: &Path, dest: &Path) -> Result<()> {
    let reader = open_decompressed(path)?;
    apply_layer(reader, dest).map_err(|detail| fmt_err(path, detail))
}

/// Unpack one layer onto `dest`, honouring whiteouts and opaque markers.
fn apply_layer(reader: impl Read, dest: &Path) -> std::result::Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut touched: HashSet<PathBuf> = HashSet::new();
    let mut count = 0usize;
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("bad tar entry: {e}"))?;
        count += 1;
        let raw = entry
            .path()
            .map_err(|e| format!("bad tar entry path: {e}"))?
            .into_owned();
        let rel = match entry_rel_path(&raw) {
            None => continue,
            Some(Err(e)) => return Err(e),
            Some(Ok(r)) => r,
        };
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == ".wh..wh..opq" {
            make_opaque(dest, &parent, &touched)
                .map_err(|e| format!("opaque directory {}: {e}", parent.display()))?;
            continue;
        }
        if let Some(target) = name.strip_prefix(".wh.") {
            let victim = dest.join(&parent).join(target);
            remove_any(&victim).map_err(|e| format!("whiteout {}: {e}", victim.display()))?;
            continue;
        }
        let target = dest.join(&rel);
        let is_dir = entry.header().entry_type().is_dir();
        if let Ok(existing) = fs::symlink_metadata(&target) {
            if !(is_dir && existing.is_dir()) {
                remove_any(&target).map_err(|e| format!("replace {}: {e}", target.display()))?;
            }
        }
        entry.unpack_in(dest).map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            format!("cannot unpack {}: {e}{cause}", raw.display())
        })?;
        let mut p = rel.as_path();
        loop {
            if !touched.insert(p.to_path_buf()) {
                break;
            }
            match p.parent() {
                Some(q) if !q.as_os_str().is_empty() => p = q,
                _ => break,
            }
        }
    }
    if count == 0 {
        return Err("not a tar archive (no entries)".into());
    }
    Ok(())
}

/// A path inside an archive directory named by a manifest; refuses escapes.
fn archive_path(archive: &Path, rel: &str) -> Result<PathBuf> {
    match entry_rel_path(Path::new(rel)) {
        Some(Ok(r)) => Ok(archive.join(r)),
        _ => Err(fmt_err(
            archive,
            format!("invalid path {rel:?} in manifest"),
        )),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let data = fs::read(path).map_err(|e| Error::io("read", path, e))?;
    serde_json::from_slice(&data).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: e,
    })
}

/// The image config JSON (Docker and OCI share these fields).
#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ConfigInner>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ConfigInner {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

pub(crate) fn parse_config(path: &Path) -> Result<ImageConfig> {
    let f: ConfigFile = read_json(path)?;
    let c = f.config.unwrap_or_default();
    Ok(ImageConfig {
        env: c.env.unwrap_or_default(),
        user: c.user.filter(|u| !u.is_empty()),
        workdir: c.working_dir.filter(|w| !w.is_empty()),
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

/// Import an unpacked `docker save` archive (first image of manifest.json).
fn import_docker(archive: &Path, rootfs: &Path) -> Result<ImageConfig> {
    let mpath = archive.join("manifest.json");
    let manifests: Vec<DockerManifest> = read_json(&mpath)?;
    let m = manifests
        .first()
        .ok_or_else(|| fmt_err(&mpath, "manifest.json lists no image"))?;
    for layer in &m.layers {
        apply_layer_file(&archive_path(archive, layer)?, rootfs)?;
    }
    parse_config(&archive_path(archive, &m.config)?)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `blobs/<alg>/<hex>` for `digest`, after checking the file's sha256.
fn blob(layout: &Path, digest: &str) -> Result<PathBuf> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| fmt_err(layout, format!("malformed digest {digest:?}")))?;
    if !matches!(alg, "sha256" | "sha512")
        || hex.is_empty()
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(fmt_err(layout, format!("unsupported digest {digest:?}")));
    }
    let path = layout.join("blobs").join(alg).join(hex);
    if alg == "sha256" {
        let mut f = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io("read", &path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if !got.eq_ignore_ascii_case(hex) {
            return Err(fmt_err(
                &path,
                format!("digest mismatch: expected {digest}, content has sha256:{got}"),
            ));
        }
    }
    Ok(path)
}

fn is_index(d: &Descriptor) -> bool {
    matches!(
        d.media_type.as_deref(),
        Some("application/vnd.oci.image.index.v1+json")
            | Some("application/vnd.docker.distribution.manifest.list.v2+json")
    )
}

/// Pick the manifest for this host from an index (nested indexes followed).
fn pick_manifest(layout: &Path, index: OciIndex, depth: u32) -> Result<PathBuf> {
    let path = layout.join("index.json");
    let arch = host_arch();
    let chosen = index
        .manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or_else(|| {
            index.manifests.iter().find(|d| {
                d.platform
                    .as_ref()
                    .is_none_or(|p| p.architecture != "unknown")
            })
        })
        .ok_or_else(|| fmt_err(&path, "the index lists no manifest"))?;
    let p = blob(layout, &chosen.digest)?;
    if is_index(chosen) {
        if depth > 3 {
            return Err(fmt_err(&path, "image indexes nested too deeply"));
        }
        return pick_manifest(layout, read_json(&p)?, depth + 1);
    }
    Ok(p)
}

/// Import an OCI image layout directory.
fn import_oci(layout: &Path, rootfs: &Path) -> Result<ImageConfig> {
    let index: OciIndex = read_json(&layout.join("index.json"))?;
    let mpath = pick_manifest(layout, index, 0)?;
    let manifest: OciManifest = read_json(&mpath)?;
    for layer in &manifest.layers {
        apply_layer_file(&blob(layout, &layer.digest)?, rootfs)?;
    }
    parse_config(&blob(layout, &manifest.config.digest)?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(entry_rel_path(Path::new("./")), None);
        assert_eq!(
            entry_rel_path(Path::new("./a/b")),
            Some(Ok(PathBuf::from("a/b")))
        );
        assert_eq!(
            entry_rel_path(Path::new("/a")),
            Some(Ok(PathBuf::from("a")))
        );
        assert!(matches!(
            entry_rel_path(Path::new("a/../../b")),
            Some(Err(_))
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
