//! Checking an image archive without unpacking it: what the server does with
//! an upload before it keeps it (`gaffer image import`), so that a file that
//! is not an image is refused with a clear message instead of failing later
//! on every node.
//!
//! [`inspect`] reads the whole archive once (decompressing gzip or zstd),
//! which also catches a truncated file, and tells which of the formats
//! [`crate::ImageStore::import`] takes it is. A `docker save` archive must
//! name only layers it contains; an OCI layout's index must point at blobs
//! it contains. Unpacking (ownership, whiteouts) is left to the nodes, whose
//! import is atomic.

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layers::{entry_rel_path, fmt_err, open_decompressed};

/// `manifest.json` and `index.json` are read into memory; anything bigger is not one.
const MAX_MANIFEST: u64 = 4 << 20;
/// The largest long-name or PAX extension entry accepted.
const MAX_EXTENSION: u64 = 64 << 10;
/// How many names within three levels of the root are remembered for the manifest checks.
const MAX_NAMES: usize = 200_000;

/// The format of an image archive, as recorded in `image.json` `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// A root filesystem tarball.
    RootfsTar,
    /// A `docker save` tarball.
    DockerSave,
    /// A tar of an OCI image layout.
    OciLayout,
}

impl ArchiveFormat {
    /// The name used in `image.json` and in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveFormat::RootfsTar => "rootfs-tar",
            ArchiveFormat::DockerSave => "docker-save",
            ArchiveFormat::OciLayout => "oci-layout",
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    #[serde(default)]
    config: String,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Index {
    manifests: Vec<IndexEntry>,
}

#[derive(serde::Deserialize)]
struct IndexEntry {
    digest: String,
}

/// Reads the archive at `path` to its end and tells its format; an error
/// says what is wrong with it (not a tar, truncated, empty, a manifest that
/// names missing files).
pub fn inspect(path: &Path) -> Result<ArchiveFormat> {
    let mut archive = tar::Archive::new(open_decompressed(path)?);
    let broken = |e: io::Error| {
        fmt_err(
            path,
            format!("not a readable tar archive (.tar, .tar.gz or .tar.zst): {e}"),
        )
    };
    let mut files: HashSet<PathBuf> = HashSet::new();
    let (mut manifest, mut index) = (None::<Vec<u8>>, None::<Vec<u8>>);
    let mut entries = 0u64;
    // Raw: long-name and PAX extension entries come as entries of their own instead of being
    // read into memory by the tar crate, so a small compressed upload cannot make the server
    // hold gigabytes. Names this check needs are all shorter than a tar header's 100 bytes.
    for entry in archive.entries().map_err(broken)?.raw(true) {
        let mut entry = entry.map_err(broken)?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions()
        {
            if entry.size() > MAX_EXTENSION {
                return Err(fmt_err(
                    path,
                    format!(
                        "an extended tar header of {} bytes (at most {MAX_EXTENSION})",
                        entry.size()
                    ),
                ));
            }
            io::copy(&mut entry, &mut io::sink()).map_err(broken)?;
            continue;
        }
        entries += 1;
        let raw = entry.path().map_err(broken)?.into_owned();
        let rel = match entry_rel_path(&raw) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => return Err(fmt_err(path, e.to_string())),
        };
        let keep = match rel.as_deref().and_then(Path::to_str) {
            Some("manifest.json") => Some(&mut manifest),
            Some("index.json") => Some(&mut index),
            _ => None,
        };
        match keep {
            Some(slot) if entry.size() <= MAX_MANIFEST => {
                let mut buf = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut buf).map_err(broken)?;
                *slot = Some(buf);
            }
            _ => {
                io::copy(&mut entry, &mut io::sink()).map_err(broken)?;
            }
        }
        // Only names a manifest can refer to (`<dir>/layer.tar`, `blobs/<alg>/<hex>`, ...),
        // and only so many of them.
        if let Some(r) = rel.filter(|r| r.components().count() <= 3) {
            if files.len() >= MAX_NAMES {
                return Err(fmt_err(
                    path,
                    format!("more than {MAX_NAMES} entries near the top of the archive"),
                ));
            }
            files.insert(r);
        }
    }
    if entries == 0 {
        return Err(fmt_err(
            path,
            "not an image: the archive is empty (or not a tar archive at all)",
        ));
    }
    let has = |name: &str| {
        entry_rel_path(Path::new(name))
            .and_then(|r| r.ok())
            .is_some_and(|r| files.contains(&r))
    };
    if let Some(m) = manifest {
        let images: Vec<DockerEntry> = serde_json::from_slice(&m).map_err(|e| Error::Json {
            path: path.join("manifest.json"),
            source: e,
        })?;
        let first = images
            .first()
            .ok_or_else(|| fmt_err(path, "manifest.json lists no image"))?;
        for f in std::iter::once(&first.config).chain(&first.layers) {
            if !has(f) {
                return Err(fmt_err(
                    path,
                    format!("manifest.json names {f:?}, which the archive does not contain"),
                ));
            }
        }
        return Ok(ArchiveFormat::DockerSave);
    }
    if has("oci-layout") {
        let data = index.ok_or_else(|| fmt_err(path, "an OCI layout without index.json"))?;
        let idx: Index = serde_json::from_slice(&data).map_err(|e| Error::Json {
            path: path.join("index.json"),
            source: e,
        })?;
        if idx.manifests.is_empty() {
            return Err(fmt_err(path, "index.json lists no manifest"));
        }
        for m in &idx.manifests {
            let blob = m.digest.replacen(':', "/", 1);
            if !has(&format!("blobs/{blob}")) {
                return Err(fmt_err(
                    path,
                    format!(
                        "index.json names {}, which the archive does not contain",
                        m.digest
                    ),
                ));
            }
        }
        return Ok(ArchiveFormat::OciLayout);
    }
    Ok(ArchiveFormat::RootfsTar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn inspect_bytes(data: &[u8]) -> Result<ArchiveFormat> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        std::fs::write(&p, data).unwrap();
        inspect(&p)
    }

    #[test]
    fn tells_the_formats_apart() {
        let rootfs = tar_of(&[("bin/sh", b"x"), ("etc/passwd", b"root:x:0:0::/:/bin/sh\n")]);
        assert_eq!(inspect_bytes(&rootfs).unwrap(), ArchiveFormat::RootfsTar);
        let docker = tar_of(&[
            (
                "manifest.json",
                br#"[{"Config":"c.json","Layers":["l/layer.tar"]}]"#,
            ),
            ("c.json", b"{}"),
            ("l/layer.tar", b""),
        ]);
        assert_eq!(inspect_bytes(&docker).unwrap(), ArchiveFormat::DockerSave);
        let oci = tar_of(&[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", br#"{"manifests":[{"digest":"sha256:ab"}]}"#),
            ("blobs/sha256/ab", b"{}"),
        ]);
        assert_eq!(inspect_bytes(&oci).unwrap(), ArchiveFormat::OciLayout);
    }

    #[test]
    fn refuses_what_is_not_an_image() {
        let e = inspect_bytes(b"hello, I am a text file\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not"), "{e}");
        let e = inspect_bytes(&[0u8; 4096]).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let rootfs = tar_of(&[("bin/big", &[7u8; 10_000])]);
        let e = inspect_bytes(&rootfs[..3000]).unwrap_err().to_string();
        assert!(e.contains("not a readable tar"), "{e}");
        let docker = tar_of(&[(
            "manifest.json",
            br#"[{"Config":"c.json","Layers":["missing.tar"]}]"#,
        )]);
        let e = inspect_bytes(&docker).unwrap_err().to_string();
        assert!(e.contains("c.json"), "{e}");
        // A PAX header far bigger than any real one.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(1 << 20);
        h.set_cksum();
        b.append(&h, &vec![b'x'; 1 << 20][..]).unwrap();
        let e = inspect_bytes(&b.into_inner().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("extended tar header"), "{e}");
        // Long names still work: a rootfs with a path over 100 bytes.
        let long = format!("usr/{}/file", "d".repeat(150));
        let rootfs = tar_of(&[(long.as_str(), b"x")]);
        assert_eq!(inspect_bytes(&rootfs).unwrap(), ArchiveFormat::RootfsTar);
    }
}
