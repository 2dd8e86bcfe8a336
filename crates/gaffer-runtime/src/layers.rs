//! Unpacking image archives into a root filesystem: decompression, layers with whiteouts, and
//! the `docker save` and OCI layout formats (blob digests verified). Used by imports and
//! registry pulls ([`crate::image`], [`crate::pull`]) and by the archive check
//! ([`crate::archive`]).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::ImageConfig;
use crate::error::{Error, LayerError, Result};

pub(crate) fn fmt_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::ImageFormat {
        path: path.to_path_buf(),
        detail: detail.into(),
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
pub(crate) fn entry_rel_path(raw: &Path) -> Option<std::result::Result<PathBuf, LayerError>> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Some(Err(LayerError::Escapes(raw.to_path_buf())))
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
    apply_layer(reader, dest).map_err(|source| Error::Layer {
        path: path.to_path_buf(),
        source,
    })
}

/// Unpack one layer onto `dest`, honouring whiteouts and opaque markers.
fn apply_layer(reader: impl Read, dest: &Path) -> std::result::Result<(), LayerError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut touched: HashSet<PathBuf> = HashSet::new();
    let mut count = 0usize;
    let entries = archive.entries().map_err(LayerError::NotTar)?;
    for entry in entries {
        let mut entry = entry.map_err(LayerError::Entry)?;
        count += 1;
        let raw = entry.path().map_err(LayerError::EntryPath)?.into_owned();
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
            make_opaque(dest, &parent, &touched).map_err(|source| LayerError::Opaque {
                dir: parent.clone(),
                source,
            })?;
            continue;
        }
        if let Some(target) = name.strip_prefix(".wh.") {
            let victim = dest.join(&parent).join(target);
            remove_any(&victim).map_err(|source| LayerError::Whiteout {
                path: victim.clone(),
                source,
            })?;
            continue;
        }
        let target = dest.join(&rel);
        let is_dir = entry.header().entry_type().is_dir();
        if let Ok(existing) = fs::symlink_metadata(&target) {
            if !(is_dir && existing.is_dir()) {
                remove_any(&target).map_err(|source| LayerError::Replace {
                    path: target.clone(),
                    source,
                })?;
            }
        }
        entry.unpack_in(dest).map_err(|source| LayerError::Unpack {
            entry: raw.clone(),
            source,
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
        return Err(LayerError::Empty);
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
pub(crate) fn import_docker(archive: &Path, rootfs: &Path) -> Result<ImageConfig> {
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
pub(crate) fn import_oci(layout: &Path, rootfs: &Path) -> Result<ImageConfig> {
    let index: OciIndex = read_json(&layout.join("index.json"))?;
    let mpath = pick_manifest(layout, index, 0)?;
    let manifest: OciManifest = read_json(&mpath)?;
    for layer in &manifest.layers {
        apply_layer_file(&blob(layout, &layer.digest)?, rootfs)?;
    }
    parse_config(&blob(layout, &manifest.config.digest)?)
}
