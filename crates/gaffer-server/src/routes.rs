//! The whole HTTP API in one router: the job and node routes ([`crate::api`]), the images
//! ([`crate::image_api`]), the agents' WebSocket ([`crate::agent_link`]) and the web UI
//! ([`crate::ui`]), behind the body limit and the API token; and the OpenAPI document of it all.

use crate::http::{bearer_matches, AppError, AppState, MAX_BODY};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::time::Duration;

/// The router of the whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .merge(crate::api::routes())
        .merge(crate::image_api::router())
        .route("/v1/agent/connect", get(crate::agent_link::connect))
        .merge(crate::ui::router())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
}

/// The OpenAPI document of every route.
pub fn openapi_doc() -> utoipa::openapi::OpenApi {
    let mut doc = crate::api::doc();
    doc.merge(crate::image_api::doc());
    doc
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_doc())
}

async fn require_token(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let open =
        path == "/healthz" || path.starts_with("/v1/agent/") || crate::ui::is_open_path(path);
    if let (Some(want), false) = (&st.auth.api_token, open) {
        if !bearer_matches(req.headers(), want) {
            drain_body(req.into_body()).await;
            return AppError::new(
                StatusCode::UNAUTHORIZED,
                "this server requires an API token: set GAFFER_TOKEN (header `Authorization: Bearer <token>`)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Reads and drops (a bounded part of) a request body that is refused before it is read.
/// Answering while the client still sends makes the connection close with unread bytes: the
/// client, or an HA follower forwarding the call, then sees a reset instead of the answer.
async fn drain_body(body: Body) {
    const LIMIT: usize = 1 << 20;
    let mut stream = body.into_data_stream();
    let mut read = 0;
    let drained = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
            read += chunk.len();
            if read > LIMIT {
                break;
            }
        }
    });
    let _ = drained.await;
}
