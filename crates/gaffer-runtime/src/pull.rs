//! Pulling images from an OCI distribution registry into the [`ImageStore`].
//!
//! [`ImageStore::pull`] resolves a reference such as `debian:12`,
//! `ghcr.io/org/tool@sha256:...` or `127.0.0.1:5000/test/busybox:1` with
//! the `oci-client` crate (anonymous access; bearer-token challenges are
//! answered by the client), picks the manifest of this host's platform
//! (linux/amd64 on x86_64) when the reference names an index, downloads the
//! layers one after the other into the staging directory of the image,
//! checks each blob's sha256 against the manifest, applies it exactly like
//! [`ImageStore::import`] does (whiteouts included) and stores the image
//! config (env, user, working directory, entrypoint, cmd).
//!
//! Like an import, a pull is atomic: everything lands in a hidden staging
//! directory that is renamed into place at the end and removed on any error.
//!
//! The crate is otherwise synchronous: a pull runs its own single-threaded
//! tokio runtime (on a helper thread when called from inside a runtime).

use std::fs;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

use crate::error::{Error, Result};
use crate::image::{valid_image_name, Image, ImageMeta, ImageStore};
use crate::layers::{apply_layer_file, host_arch, parse_config};
use gaffer_api::now_ms;

/// Largest image config blob accepted (they are a few KiB in practice).
const MAX_CONFIG_BYTES: i64 = 16 << 20;

/// What a pull is doing, reported to the caller's callback.
#[derive(Debug, Clone, PartialEq)]
pub enum PullProgress {
    /// The manifest was fetched.
    Resolved {
        /// Digest of the image manifest (after platform selection).
        digest: String,
        /// Number of layers.
        layers: usize,
        /// Total compressed size of the layers, in bytes.
        bytes: u64,
    },
    /// Layer `index` (1-based) of `count` starts downloading.
    Layer {
        /// 1-based layer number.
        index: usize,
        /// Number of layers.
        count: usize,
        /// The layer's digest.
        digest: String,
        /// Its compressed size in bytes, as given by the manifest.
        size: u64,
    },
    /// Bytes of the current layer received so far.
    Bytes {
        /// 1-based layer number.
        index: usize,
        /// Bytes received.
        done: u64,
        /// Expected size.
        size: u64,
    },
    /// Layer `index` was verified and applied to the root filesystem.
    Applied {
        /// 1-based layer number.
        index: usize,
        /// Number of layers.
        count: usize,
    },
}

/// The image name [`ImageStore::pull`] uses by default for `reference`: the
/// last component of its repository (`ghcr.io/org/tools:1` -> `tools`).
pub fn default_image_name(reference: &str) -> Result<String> {
    let r = parse_reference(reference)?;
    let name = r
        .repository()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    if valid_image_name(&name) {
        Ok(name)
    } else {
        Err(Error::InvalidImageName { name })
    }
}

fn parse_reference(reference: &str) -> Result<Reference> {
    reference
        .parse::<Reference>()
        .map_err(|e| pull_err(reference, format!("invalid image reference: {e}")))
}

fn pull_err(reference: &str, detail: impl Into<String>) -> Error {
    Error::Pull {
        reference: reference.to_string(),
        detail: detail.into(),
    }
}

/// A readable message for a registry client error, causes included.
fn describe(reference: &Reference, e: &OciDistributionError, insecure: bool) -> String {
    match e {
        OciDistributionError::RegistryError { envelope, .. } => {
            if let Some(err) = envelope.errors.iter().find(|err| {
                matches!(
                    err.code,
                    OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
                )
            }) {
                let what = match reference.digest() {
                    Some(d) => format!("digest {d}"),
                    None => format!("tag {:?}", reference.tag().unwrap_or("latest")),
                };
                return format!(
                    "{what} not found in repository {:?} of {} ({})",
                    reference.repository(),
                    reference.resolve_registry(),
                    err.message
                );
            }
            let msgs: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect();
            format!("the registry refused: {}", msgs.join("; "))
        }
        OciDistributionError::DigestError(d) => {
            format!("downloaded content does not match its digest: {d}")
        }
        OciDistributionError::UnauthorizedError { url } => {
            format!("access denied by the registry ({url}); only anonymous pulls are supported")
        }
        _ => {
            let mut msg = e.to_string();
            let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
            while let Some(c) = cur {
                let s = c.to_string();
                if !msg.contains(&s) {
                    msg.push_str(": ");
                    msg.push_str(&s);
                }
                cur = c.source();
            }
            if matches!(e, OciDistributionError::RequestError(_)) && !insecure {
                msg.push_str(" (a plain-HTTP registry needs --insecure)");
            }
            msg
        }
    }
}

/// Picks the manifest of this host's platform (linux/amd64 on x86_64).
fn host_platform(manifests: &[ImageIndexEntry]) -> Option<String> {
    let arch = host_arch();
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os.to_string() == "linux" && p.architecture.to_string() == arch)
        })
        .map(|m| m.digest.clone())
}

/// `sha256:<hex>` of a hash state.
fn sha256_digest(h: Sha256) -> String {
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An `AsyncWrite` that hashes and counts what goes through it and reports
/// progress.
struct Tee<'a, W> {
    inner: W,
    hash: Sha256,
    done: u64,
    size: u64,
    index: usize,
    last_report: u64,
    progress: &'a mut (dyn FnMut(&PullProgress) + Send),
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Tee<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.hash.update(&buf[..n]);
            this.done += n as u64;
            if this.done - this.last_report >= 256 * 1024 || this.done == this.size {
                this.last_report = this.done;
                (this.progress)(&PullProgress::Bytes {
                    index: this.index,
                    done: this.done,
                    size: this.size,
                });
            }
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn is_layer_media_type(mt: &str) -> bool {
    mt.is_empty()
        || mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
}

fn is_config_media_type(mt: &str) -> bool {
    matches!(
        mt,
        "" | "application/vnd.oci.image.config.v1+json"
            | "application/vnd.docker.container.image.v1+json"
    )
}

/// Check a blob's descriptor: a sha256 digest we can verify and a sane size.
fn check_descriptor(reference: &str, d: &OciDescriptor) -> Result<(String, u64)> {
    let hex = d
        .digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            pull_err(
                reference,
                format!("unsupported blob digest {:?} (sha256 expected)", d.digest),
            )
        })?;
    if d.size < 0 {
        return Err(pull_err(
            reference,
            format!("blob {} has a negative size", d.digest),
        ));
    }
    Ok((hex.to_ascii_lowercase(), d.size as u64))
}

impl ImageStore {
    /// Pull `reference` from its registry (anonymously; over plain HTTP when
    /// `insecure`) and store it as `name`, replacing any image of that name.
    /// See [`crate::pull`].
    pub fn pull(&self, name: &str, reference: &str, insecure: bool) -> Result<Image> {
        self.pull_with_progress(name, reference, insecure, &mut |_| {})
    }

    /// [`ImageStore::pull`], calling `progress` as the pull goes.
    pub fn pull_with_progress(
        &self,
        name: &str,
        reference: &str,
        insecure: bool,
        progress: &mut (dyn FnMut(&PullProgress) + Send),
    ) -> Result<Image> {
        let parsed = parse_reference(reference)?;
        let (guard, staging) = self.stage(name)?;
        let mut run = || -> Result<(ImageMeta, PathBuf)> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| pull_err(reference, format!("cannot start a runtime: {e}")))?;
            rt.block_on(pull_into(
                name, reference, &parsed, insecure, &staging, progress,
            ))
        };
        let (meta, origin) = if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| s.spawn(run).join())
                .map_err(|_| pull_err(reference, "the pull thread panicked"))??
        } else {
            run()?
        };
        self.commit(guard, meta, &origin)
    }
}

/// Download and apply everything into `staging` (its `rootfs/` exists).
async fn pull_into(
    name: &str,
    reference: &str,
    parsed: &Reference,
    insecure: bool,
    staging: &Path,
    progress: &mut (dyn FnMut(&PullProgress) + Send),
) -> Result<(ImageMeta, PathBuf)> {
    // reqwest is built without a crypto provider (see the workspace manifest):
    // use ring, like the rest of gaffer. Fails harmlessly if one is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::new(ClientConfig {
        protocol: if insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        platform_resolver: Some(Box::new(host_platform)),
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    let auth = RegistryAuth::Anonymous;
    let oci = |e: OciDistributionError| pull_err(reference, describe(parsed, &e, insecure));

    let (manifest, digest) = client
        .pull_image_manifest(parsed, &auth)
        .await
        .map_err(oci)?;
    if !is_config_media_type(&manifest.config.media_type) {
        return Err(pull_err(
            reference,
            format!(
                "not a container image (config media type {})",
                manifest.config.media_type
            ),
        ));
    }
    let count = manifest.layers.len();
    if count == 0 {
        return Err(pull_err(reference, "the image has no layers"));
    }
    let mut total = 0u64;
    for l in &manifest.layers {
        if !is_layer_media_type(&l.media_type) {
            return Err(pull_err(
                reference,
                format!(
                    "layer {} has unsupported media type {}",
                    l.digest, l.media_type
                ),
            ));
        }
        total += check_descriptor(reference, l)?.1;
    }
    progress(&PullProgress::Resolved {
        digest: digest.clone(),
        layers: count,
        bytes: total,
    });

    let rootfs = staging.join("rootfs");
    for (i, layer) in manifest.layers.iter().enumerate() {
        let index = i + 1;
        let (hex, size) = check_descriptor(reference, layer)?;
        progress(&PullProgress::Layer {
            index,
            count,
            digest: layer.digest.clone(),
            size,
        });
        let path = staging.join(format!("layer-{hex}"));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Error::io("create", &path, e))?;
        let mut tee = Tee {
            inner: tokio::io::BufWriter::with_capacity(256 * 1024, file),
            hash: Sha256::new(),
            done: 0,
            size,
            index,
            last_report: 0,
            progress: &mut *progress,
        };
        client
            .pull_blob(parsed, layer, &mut tee)
            .await
            .map_err(oci)?;
        let (got, done) = (sha256_digest(tee.hash), tee.done);
        if got != format!("sha256:{hex}") {
            return Err(pull_err(
                reference,
                format!(
                    "layer digest mismatch: expected {}, got {got}",
                    layer.digest
                ),
            ));
        }
        if done != size {
            return Err(pull_err(
                reference,
                format!(
                    "layer {} is {done} bytes, the manifest says {size}",
                    layer.digest
                ),
            ));
        }
        apply_layer_file(&path, &rootfs)?;
        fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
        progress(&PullProgress::Applied { index, count });
    }

    let (hex, size) = check_descriptor(reference, &manifest.config)?;
    if manifest.config.size > MAX_CONFIG_BYTES {
        return Err(pull_err(
            reference,
            format!("image config of {size} bytes is too large"),
        ));
    }
    let mut data: Vec<u8> = Vec::with_capacity(size as usize);
    client
        .pull_blob(parsed, &manifest.config, &mut data)
        .await
        .map_err(oci)?;
    let mut h = Sha256::new();
    h.update(&data);
    let got = sha256_digest(h);
    if got != format!("sha256:{hex}") {
        return Err(pull_err(
            reference,
            format!(
                "config digest mismatch: expected {}, got {got}",
                manifest.config.digest
            ),
        ));
    }
    let config_path = staging.join("config.json");
    fs::write(&config_path, &data).map_err(|e| Error::io("write", &config_path, e))?;
    let config = parse_config(&config_path)?;
    fs::remove_file(&config_path).map_err(|e| Error::io("remove", &config_path, e))?;

    let meta = ImageMeta {
        name: name.to_string(),
        source: "registry".to_string(),
        imported_at_ms: now_ms(),
        config,
        reference: Some(reference.to_string()),
        digest: Some(digest),
        archive: None,
    };
    Ok((meta, PathBuf::from(reference)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        assert_eq!(default_image_name("busybox").unwrap(), "busybox");
        assert_eq!(default_image_name("debian:12").unwrap(), "debian");
        assert_eq!(
            default_image_name("127.0.0.1:5000/test/busybox:1").unwrap(),
            "busybox"
        );
        assert_eq!(
            default_image_name(&format!("ghcr.io/org/tool@sha256:{}", "a".repeat(64))).unwrap(),
            "tool"
        );
        assert!(default_image_name("Bad Ref").is_err());
    }

    #[test]
    fn media_types() {
        assert!(is_layer_media_type(
            "application/vnd.oci.image.layer.v1.tar+gzip"
        ));
        assert!(is_layer_media_type(
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        ));
        assert!(!is_layer_media_type(
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
        ));
        assert!(is_config_media_type(
            "application/vnd.oci.image.config.v1+json"
        ));
        assert!(!is_config_media_type(
            "application/vnd.cncf.helm.config.v1+json"
        ));
    }
}
