//! What every HTTP handler shares: the state it reads, the tokens, and errors answered as
//! JSON (`{"error": "...", "fields": [...]}`).

use crate::core::{CoreError, CoreHandle};
use crate::shared::Shared;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gaffer_api::views::ErrorBody;
use gaffer_api::{FieldError, JobId};
use gaffer_store::Store;
use std::sync::Arc;

/// Largest request body accepted.
pub const MAX_BODY: usize = 10 * 1024 * 1024;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Commands.
    pub core: CoreHandle,
    /// Reads.
    pub store: Arc<dyn Store>,
    /// Published state.
    pub shared: Arc<Shared>,
    /// Attempt files.
    pub files: crate::files::Files,
    /// Agent streams.
    pub gateway: crate::gateway::Gateway,
    /// The image catalog (`None` on an HA follower, which forwards image calls).
    pub catalog: Option<crate::images::Catalog>,
    /// Tokens.
    pub auth: Auth,
    /// The HA cluster's members (`GET /v1/servers`); `None` for a single server.
    pub cluster: Option<ServersFn>,
}

/// Reads the members of an HA cluster and its leader.
pub type ServersFn = Arc<
    dyn Fn() -> futures_util::future::BoxFuture<
            'static,
            Result<gaffer_api::views::ServersView, String>,
        > + Send
        + Sync,
>;

/// Shared secrets: API clients present `api_token`, agents `join_token` (as bearer tokens).
#[derive(Clone, Default)]
pub struct Auth {
    /// Required on every API call except `/healthz` when set.
    pub api_token: Option<String>,
    /// Required from agents when set.
    pub join_token: Option<String>,
}

/// Whether the request carries `Authorization: Bearer <want>` (compared in constant time).
pub fn bearer_matches(headers: &HeaderMap, want: &str) -> bool {
    let Some(got) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (got.as_bytes(), want.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error answered as JSON.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    body: ErrorBody,
}

impl AppError {
    pub(crate) fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        AppError {
            status,
            body: ErrorBody {
                error: msg.into(),
                fields: Vec::new(),
            },
        }
    }
    pub(crate) fn bad(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    pub(crate) fn fields(fields: Vec<FieldError>) -> Self {
        let first = fields.first().map(|f| f.to_string()).unwrap_or_default();
        let more = if fields.len() > 1 {
            format!(" (and {} more)", fields.len() - 1)
        } else {
            String::new()
        };
        AppError {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                error: format!("invalid job spec: {first}{more}"),
                fields,
            },
        }
    }
    /// A submit body over [`MAX_BODY`], with the one problem in `fields` like any refusal.
    pub(crate) fn too_large() -> Self {
        let message = format!(
            "the request body is over {} MiB: submit the jobs in smaller batches",
            MAX_BODY >> 20
        );
        AppError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            body: ErrorBody {
                error: message.clone(),
                fields: vec![FieldError::new("", message)],
            },
        }
    }
    pub(crate) fn not_found(id: JobId) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("job {id} not found"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self.status {
            // An election under way: expected, and retried by the clients.
            StatusCode::SERVICE_UNAVAILABLE => {}
            // Someone else failed (a leader that died, an agent out of reach).
            StatusCode::BAD_GATEWAY => {
                tracing::warn!(status = %self.status, error = %self.body.error, "request failed")
            }
            s if s.is_server_error() => {
                tracing::error!(status = %self.status, error = %self.body.error, "request failed")
            }
            _ => {}
        }
        (self.status, Json(self.body)).into_response()
    }
}

impl From<CoreError> for AppError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NotFound(id) => AppError::not_found(id),
            CoreError::NoSuchNode(n) => {
                AppError::new(StatusCode::NOT_FOUND, format!("node `{n}` not found"))
            }
            CoreError::Conflict(m) => AppError::new(StatusCode::CONFLICT, m),
            CoreError::Invalid(f) => AppError::fields(f),
            CoreError::Unavailable(m) => AppError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            CoreError::Illegal(e) => {
                AppError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

impl From<gaffer_store::StoreError> for AppError {
    fn from(e: gaffer_store::StoreError) -> Self {
        AppError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

/// The result of a handler.
pub(crate) type ApiResult<T> = Result<T, AppError>;
