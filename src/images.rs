//! `gaffer image` (the cluster's images, through the server's catalog) and `gaffer agent image`
//! (one agent's own image store, on its machine).

use crate::cli_images::{AgentImageCommand, ImageCommand, PullArgs};
use crate::client::{enc, Client};
use crate::commands::{ago, short_duration, table};
use crate::output::Output;
use anyhow::{bail, Context, Result};
use gaffer_api::views::ImageView;
use gaffer_api::ByteSize;
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::Instant;

/// `gaffer image import|pull|ls|rm`.
pub fn image(c: &Client, out: Output, cmd: ImageCommand) -> Result<i32> {
    match cmd {
        ImageCommand::Import {
            name,
            path,
            all_nodes,
        } => import(c, out, &name, &path, all_nodes)?,
        ImageCommand::Pull {
            what:
                PullArgs {
                    reference,
                    name,
                    insecure,
                },
            all_nodes: _,
        } => {
            let body =
                serde_json::json!({"reference": reference, "name": name, "insecure": insecure});
            let v: serde_json::Value = c.post("/v1/images/pull", &body, &[])?;
            out.print(&v, || {
                let nodes: Vec<&str> = v["nodes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
                    .unwrap_or_default();
                println!(
                    "asked {} node(s) to pull {reference} as `{}`: {}; each lists it in `gaffer image ls` once done",
                    nodes.len(),
                    v["name"].as_str().unwrap_or_default(),
                    nodes.join(", ")
                );
            })?;
        }
        ImageCommand::Ls => {
            let images: Vec<ImageView> = c.get("/v1/images")?;
            out.print(&images, || {
                if images.is_empty() {
                    println!("no images (add one with gaffer image import NAME FILE)");
                } else {
                    let rows: Vec<Vec<String>> = images.iter().map(image_row).collect();
                    table(
                        &["NAME", "SIZE", "DIGEST", "FORMAT", "IMPORTED", "NODES"],
                        &rows,
                    );
                }
            })?;
        }
        ImageCommand::Rm { name } => {
            let v: ImageView = c.delete_json(&format!("/v1/images/{}", enc(&name)))?;
            out.print(&v, || {
                println!(
                    "removed image `{name}` from the cluster's catalog; nodes holding it remove their copy"
                );
            })?;
        }
    }
    Ok(0)
}

fn image_row(i: &ImageView) -> Vec<String> {
    let mut nodes = i.nodes.join(",");
    if !i.other_nodes.is_empty() {
        if !nodes.is_empty() {
            nodes.push(' ');
        }
        nodes.push_str(&format!("(other version: {})", i.other_nodes.join(",")));
    }
    vec![
        i.name.clone(),
        i.size
            .map(|s| ByteSize(s).to_string())
            .unwrap_or("-".into()),
        i.digest
            .as_deref()
            .map(|d| d.chars().take(19).collect())
            .unwrap_or_else(|| "- (node only)".into()),
        i.format.clone().unwrap_or("-".into()),
        i.imported_at.map(ago).unwrap_or("-".into()),
        if nodes.is_empty() { "-".into() } else { nodes },
    ]
}

/// A progress bar on a terminal, nothing otherwise.
fn bar(len: u64, msg: &str, show: bool) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_message(msg.to_string());
    Some(b)
}

/// A reader that moves a progress bar.
struct Progress<R> {
    inner: R,
    bar: Option<indicatif::ProgressBar>,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        }
        Ok(n)
    }
}

/// `sha256:<hex>` of a file, with a progress bar for big ones.
fn sha256_file(path: &Path, len: u64, show: bool) -> Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut r = Progress {
        inner: f,
        bar: bar(len, "checking", show && len > 64 << 20),
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    if let Some(b) = r.bar {
        b.finish_and_clear();
    }
    Ok(format!("sha256:{:x}", h.finalize()))
}

/// Packs an OCI layout directory into a temporary tar (the server keeps archives).
fn tar_layout(dir: &Path) -> Result<tempfile::NamedTempFile> {
    if !dir.join("oci-layout").is_file() {
        bail!(
            "{} is a directory but not an OCI image layout (no oci-layout file): give a tarball or an OCI layout",
            dir.display()
        );
    }
    let tmp = tempfile::NamedTempFile::new().context("cannot create a temporary file")?;
    let mut b = tar::Builder::new(tmp.reopen().context("cannot reopen the temporary file")?);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir)
        .and_then(|_| b.finish())
        .with_context(|| format!("cannot pack {}", dir.display()))?;
    Ok(tmp)
}

/// `gaffer image import`: hash, skip the upload if the server has the archive, else stream it.
fn import(c: &Client, out: Output, name: &str, path: &Path, all_nodes: bool) -> Result<()> {
    if !gaffer_runtime::image::valid_image_name(name) {
        bail!("invalid image name `{name}`: use 1 to 128 characters from [a-z0-9._-], not starting with '.'");
    }
    let t0 = Instant::now();
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let packed = if meta.is_dir() {
        Some(tar_layout(path)?)
    } else {
        None
    };
    let file = packed.as_ref().map(|t| t.path()).unwrap_or(path);
    let len = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let show = out.is_human() && std::io::stderr().is_terminal();
    let digest = sha256_file(file, len, show)?;
    let have = c.exists(&format!("/v1/images/blobs/{digest}"))?;
    let url = format!(
        "/v1/images/{}?digest={}&all_nodes={all_nodes}",
        enc(name),
        enc(&digest)
    );
    let view: ImageView = if have {
        c.put_file(&url, None, || Ok(Box::new(std::io::empty())))?
    } else {
        let msg = format!("uploading {}", path.display());
        c.put_file(&url, Some(len), || {
            let f = std::fs::File::open(file)?;
            Ok(Box::new(Progress {
                inner: f,
                bar: bar(len, &msg, show),
            }))
        })
        .with_context(|| format!("cannot import {} as `{name}`", path.display()))?
    };
    out.print(&view, || {
        println!(
            "imported {} as `{name}` ({}, {}) in {}{}; {}",
            path.display(),
            ByteSize(len),
            &digest[..19],
            short_duration(t0.elapsed().as_millis() as u64),
            if have {
                " (the server already had this archive)"
            } else {
                ""
            },
            if all_nodes {
                "every connected node is fetching it now"
            } else {
                "nodes fetch it when a task needs it"
            }
        );
    })
}

/// `gaffer agent image import|pull|ls|rm` on this machine's agent data directory.
pub fn agent_image(out: Output, cmd: AgentImageCommand) -> Result<i32> {
    match cmd {
        AgentImageCommand::Import {
            name,
            path,
            data_dir,
        } => {
            let store = gaffer_agent::images::node_store(&data_dir);
            let t0 = Instant::now();
            let img = store
                .import(&name, &path)
                .with_context(|| format!("cannot import {} as `{name}`", path.display()))?;
            // Built for scripts only: a path that is not UTF-8 does not encode.
            out.json_with(|| {
                Ok(serde_json::json!({"name": img.name, "rootfs": img.rootfs, "source": img.source}))
            })?;
            out.human(|| {
                println!(
                    "imported {} as `{}` in {} ({}); the agent reports it within a heartbeat",
                    path.display(),
                    img.name,
                    short_duration(t0.elapsed().as_millis() as u64),
                    img.rootfs.display()
                );
            });
        }
        AgentImageCommand::Pull {
            what:
                PullArgs {
                    reference,
                    name,
                    insecure,
                },
            data_dir,
        } => {
            let name = match name {
                Some(n) => n,
                None => gaffer_runtime::default_image_name(&reference).with_context(|| {
                    format!("cannot derive an image name from `{reference}`: pass --name")
                })?,
            };
            let store = gaffer_agent::images::node_store(&data_dir);
            let t0 = Instant::now();
            let human = out.is_human();
            let tty = human && std::io::stderr().is_terminal();
            let mut bar: Option<indicatif::ProgressBar> = None;
            let mut total = 0u64;
            let mut manifest = String::new();
            let mut progress = |p: &gaffer_runtime::PullProgress| {
                use gaffer_runtime::PullProgress as P;
                match p {
                    P::Resolved {
                        bytes,
                        layers,
                        digest,
                    } => {
                        total = *bytes;
                        manifest.clone_from(digest);
                        if human {
                            eprintln!(
                                "pulling {reference}: {layers} layer(s), {}",
                                ByteSize(*bytes)
                            );
                        }
                    }
                    P::Layer {
                        index, count, size, ..
                    } => {
                        let msg = format!("pulling layer {index}/{count} ({})", ByteSize(*size));
                        if tty {
                            let b = indicatif::ProgressBar::new(*size);
                            b.set_style(
                                indicatif::ProgressStyle::with_template(
                                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                                )
                                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                                .progress_chars("=> "),
                            );
                            b.set_message(msg);
                            bar = Some(b);
                        } else if human {
                            eprintln!("{msg}");
                        }
                    }
                    P::Bytes { done, .. } => {
                        if let Some(b) = &bar {
                            b.set_position(*done);
                        }
                    }
                    P::Applied { .. } => {
                        if let Some(b) = bar.take() {
                            b.finish();
                        }
                    }
                }
            };
            let res = store.pull_with_progress(&name, &reference, insecure, &mut progress);
            if let Some(b) = bar.take() {
                b.abandon();
            }
            let img = res?;
            // Built for scripts only: a path that is not UTF-8 does not encode.
            out.json_with(|| {
                Ok(serde_json::json!({
                    "name": img.name,
                    "reference": reference,
                    "rootfs": img.rootfs,
                    "digest": manifest,
                    "bytes": total,
                    "config": img.config,
                }))
            })?;
            out.human(|| {
                println!(
                    "pulled {reference} as `{}` in {} ({}); the agent reports it within a heartbeat",
                    img.name,
                    short_duration(t0.elapsed().as_millis() as u64),
                    img.rootfs.display()
                );
            });
        }
        AgentImageCommand::Ls { data_dir } => {
            let store = gaffer_agent::images::node_store(&data_dir);
            let images = store
                .list()
                .with_context(|| format!("cannot list images in {}", data_dir.display()))?;
            let v: Vec<_> = images
                .iter()
                .map(|i| serde_json::json!({"name": i.name, "source": i.source, "imported_at": i.imported_at_ms, "user": i.config.user, "cmd": i.config.cmd}))
                .collect();
            out.print(&v, || {
                if images.is_empty() {
                    println!(
                        "no images in {} (add one with gaffer agent image import NAME FILE)",
                        data_dir.display()
                    );
                } else {
                    let rows: Vec<Vec<String>> = images
                        .iter()
                        .map(|i| vec![i.name.clone(), ago(i.imported_at_ms), i.source.clone()])
                        .collect();
                    table(&["NAME", "IMPORTED", "SOURCE"], &rows);
                }
            })?;
        }
        AgentImageCommand::Rm { name, data_dir } => {
            let store = gaffer_agent::images::node_store(&data_dir);
            if store.remove(&name)? {
                println!("removed image `{name}`");
            } else {
                bail!("no image `{name}` in {}", data_dir.display());
            }
        }
    }
    Ok(0)
}
