//! The image endpoints: the cluster's catalog (`gaffer image import|ls|rm`) and registry pulls
//! on every node. The archives themselves live in [`crate::images`]; agents fetch them over
//! their stream ([`crate::gateway`]).
//!
//! | call | what |
//! |---|---|
//! | `PUT /v1/images/{name}?digest=sha256:…&all_nodes=` | upload an archive (streamed, any size) |
//! | `GET /v1/images` | catalog images and node-only images, with the nodes holding each |
//! | `DELETE /v1/images/{name}` | remove from the catalog and from the nodes holding that archive |
//! | `GET /v1/images/blobs/{digest}` | whether the catalog keeps an archive (a client skips the upload) |
//! | `POST /v1/images/pull` | every node pulls from a registry |

use crate::core::Command;
use crate::http::{ApiResult, AppError, AppState};
use crate::images::{CatalogImage, ImageError};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::{Json, Router};
use gaffer_api::proto::ServerMsg;
use gaffer_api::views::{ErrorBody, ImageView, NodeView};
use gaffer_api::FieldError;
use serde::Deserialize;
use std::collections::BTreeMap;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    paths(pull_image, list_images, upload_image, remove_image, blob_info),
    components(schemas(PullRequest, PullAccepted, BlobInfo, ImageView))
)]
struct ImageDoc;

/// This module's part of the OpenAPI document ([`crate::routes::openapi_doc`]).
pub(crate) fn doc() -> utoipa::openapi::OpenApi {
    ImageDoc::openapi()
}

/// The image routes, merged into [`crate::routes::router`].
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/images", get(list_images))
        .route("/v1/images/{name}", put(upload_image).delete(remove_image))
        // `pull` is also a valid image name: its PUT and DELETE are the catalog's.
        .route(
            "/v1/images/pull",
            put(upload_image_named_pull)
                .delete(remove_image_named_pull)
                .post(pull_image),
        )
        .route("/v1/images/blobs/{digest}", get(blob_info))
}

fn catalog(st: &AppState) -> ApiResult<&crate::images::Catalog> {
    st.catalog.as_ref().ok_or_else(|| {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server keeps no image catalog (an HA follower forwards image calls to the leader)",
        )
    })
}

fn image_error(e: ImageError) -> AppError {
    let status = match &e {
        ImageError::NotFound(_) => StatusCode::NOT_FOUND,
        e if e.is_client_error() => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    AppError::new(status, e.to_string())
}

fn nodes(st: &AppState) -> Vec<NodeView> {
    st.shared
        .nodes
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// A catalog image as listed: which nodes hold that archive, which hold another one of the name.
fn catalog_view(img: CatalogImage, nodes: &[NodeView]) -> ImageView {
    let (mut held, mut other) = (Vec::new(), Vec::new());
    for n in nodes.iter().filter(|n| n.images.contains(&img.name)) {
        if n.image_digests.get(&img.name) == Some(&img.digest) {
            held.push(n.name.clone());
        } else {
            other.push(n.name.clone());
        }
    }
    ImageView {
        name: img.name,
        digest: Some(img.digest),
        size: Some(img.size),
        format: Some(img.format),
        imported_at: Some(img.imported_at),
        nodes: held,
        other_nodes: other,
    }
}

/// The cluster's images: the catalog's, then those only some nodes hold, by name.
#[utoipa::path(get, path = "/v1/images", responses((status = 200, body = [ImageView])))]
pub(crate) async fn list_images(State(st): State<AppState>) -> ApiResult<Json<Vec<ImageView>>> {
    let catalog = catalog(&st)?;
    let nodes = nodes(&st);
    let mut out: BTreeMap<String, ImageView> = catalog
        .list()
        .into_iter()
        .map(|i| (i.name.clone(), catalog_view(i, &nodes)))
        .collect();
    for n in &nodes {
        for name in &n.images {
            let v = out.entry(name.clone()).or_insert_with(|| ImageView {
                name: name.clone(),
                digest: None,
                size: None,
                format: None,
                imported_at: None,
                nodes: Vec::new(),
                other_nodes: Vec::new(),
            });
            // Catalog images already sorted their nodes out in catalog_view.
            if v.digest.is_none() {
                v.nodes.push(n.name.clone());
            }
        }
    }
    Ok(Json(out.into_values().collect()))
}

/// Query of an upload.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadParams {
    /// `sha256:<hex>` the body must hash to; the upload is refused otherwise.
    digest: Option<String>,
    /// Ask every connected node to fetch it now rather than when a task needs it.
    #[serde(default)]
    all_nodes: bool,
}

/// Store an image archive (a rootfs tarball, a `docker save` tarball or a tar of an OCI
/// layout; plain, gzip or zstd) in the cluster's catalog as `name`. The body is streamed and
/// may be of any size. An empty body re-tags an archive the catalog already keeps (`digest`
/// required; see `GET /v1/images/blobs/{digest}`).
#[utoipa::path(put, path = "/v1/images/{name}", params(("name" = String, Path), UploadParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = ImageView), (status = 400, body = ErrorBody)))]
pub(crate) async fn upload_image(
    State(st): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<UploadParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImageView>)> {
    let Query(p) = params.map_err(|e| AppError::bad(e.body_text()))?;
    let catalog = catalog(&st)?;
    let expected = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let t0 = std::time::Instant::now();
    let img = catalog
        .upload(
            &name,
            p.digest.as_deref(),
            expected,
            body.into_data_stream(),
        )
        .await
        .map_err(|e| {
            tracing::warn!(image = %name, error = %e, "image upload refused");
            image_error(e)
        })?;
    tracing::info!(image = %img.name, digest = %img.digest, bytes = img.size,
        secs = t0.elapsed().as_secs_f64(), "image stored in the catalog");
    st.core.send(Command::Images(catalog.snapshot()));
    if p.all_nodes {
        st.gateway.broadcast(&ServerMsg::FetchImage {
            name: img.name.clone(),
            digest: img.digest.clone(),
            size: img.size,
        });
    }
    Ok((StatusCode::CREATED, Json(catalog_view(img, &nodes(&st)))))
}

async fn upload_image_named_pull(
    st: State<AppState>,
    params: Result<Query<UploadParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImageView>)> {
    upload_image(st, Path("pull".to_string()), params, headers, body).await
}

/// Remove an image from the catalog; nodes holding that archive remove their copy (running
/// containers keep theirs until they end).
#[utoipa::path(delete, path = "/v1/images/{name}", params(("name" = String, Path)),
    responses((status = 200, body = ImageView), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_image(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ImageView>> {
    let catalog = catalog(&st)?;
    let nodes = nodes(&st);
    let removed = {
        let (catalog, name) = (catalog.clone(), name.clone());
        tokio::task::spawn_blocking(move || catalog.remove(&name))
            .await
            .map_err(|e| AppError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    };
    let img = removed.map_err(|e| match e {
        ImageError::NotFound(_) if nodes.iter().any(|n| n.images.contains(&name)) => {
            AppError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "`{name}` is not in the cluster's catalog, only on nodes that imported or pulled it themselves: remove it there with `gaffer agent image rm {name}`"
                ),
            )
        }
        e => image_error(e),
    })?;
    st.core.send(Command::Images(catalog.snapshot()));
    st.gateway.broadcast(&ServerMsg::RemoveImage {
        name: img.name.clone(),
        digest: img.digest.clone(),
    });
    tracing::info!(image = %img.name, digest = %img.digest, "image removed from the catalog");
    Ok(Json(catalog_view(img, &nodes)))
}

async fn remove_image_named_pull(st: State<AppState>) -> ApiResult<Json<ImageView>> {
    remove_image(st, Path("pull".to_string())).await
}

/// An archive the catalog keeps.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct BlobInfo {
    /// `sha256:<hex>`.
    digest: String,
    /// Bytes.
    size: u64,
}

/// Whether the catalog keeps the archive `digest` (404 if not).
#[utoipa::path(get, path = "/v1/images/blobs/{digest}", params(("digest" = String, Path)),
    responses((status = 200, body = BlobInfo), (status = 404, body = ErrorBody)))]
pub(crate) async fn blob_info(
    State(st): State<AppState>,
    Path(digest): Path<String>,
) -> ApiResult<Json<BlobInfo>> {
    let catalog = catalog(&st)?;
    if !crate::images::valid_digest(&digest) {
        return Err(image_error(ImageError::BadDigest(digest)));
    }
    match catalog.blob_size(&digest) {
        Some(size) => Ok(Json(BlobInfo { digest, size })),
        None => Err(AppError::new(
            StatusCode::NOT_FOUND,
            format!("the catalog keeps no archive {digest}"),
        )),
    }
}

/// What to pull on every node.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PullRequest {
    /// `[REGISTRY/]REPOSITORY[:TAG|@DIGEST]`.
    reference: String,
    /// Name to store it as (default: the last component of the repository).
    name: Option<String>,
    /// Plain HTTP to the registry.
    #[serde(default)]
    insecure: bool,
}

/// Nodes asked to pull.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct PullAccepted {
    /// Nodes that were told to pull; each reports the image in its next heartbeat once done.
    nodes: Vec<String>,
    /// The name the image will have.
    name: String,
}

/// Ask every connected node to pull an image from a registry.
#[utoipa::path(post, path = "/v1/images/pull", request_body = PullRequest,
    responses((status = 202, body = PullAccepted), (status = 400, body = ErrorBody)))]
pub(crate) async fn pull_image(
    State(st): State<AppState>,
    body: Result<Json<PullRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<PullAccepted>)> {
    let Json(req) = body.map_err(|e| AppError::bad(e.body_text()))?;
    let name = match req.name {
        Some(n) => n,
        None => req
            .reference
            .split(['@', ':'])
            .next()
            .and_then(|r| r.rsplit('/').next())
            .unwrap_or_default()
            .to_string(),
    };
    if !gaffer_api::spec::valid_image_name(&name) || req.reference.trim().is_empty() {
        return Err(AppError::fields(vec![FieldError::new(
            "reference",
            format!(
                "`{}` does not name an image (or pass a valid `name`)",
                req.reference
            ),
        )]));
    }
    let nodes = st.gateway.broadcast(&ServerMsg::PullImage {
        reference: req.reference,
        name: name.clone(),
        insecure: req.insecure,
    });
    Ok((StatusCode::ACCEPTED, Json(PullAccepted { nodes, name })))
}
