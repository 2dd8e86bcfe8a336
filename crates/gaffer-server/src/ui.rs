//! The web UI: static pages embedded in the binary, served at `/` and `/ui/...` without a token
//! (they hold no data; every call they make goes to `/v1` with the token the user gives), and
//! `GET /v1/stats/timeline`, the per-minute chart data of the overview page.

use crate::http::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gaffer_api::now_ms;
use serde::Serialize;

/// An embedded file: path under `/ui/`, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../ui/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../ui/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/api.js"),
    ),
    (
        "util.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/util.js"),
    ),
    (
        "overview.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/overview.js"),
    ),
    (
        "jobs.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/jobs.js"),
    ),
    (
        "job.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/job.js"),
    ),
    (
        "submit.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/submit.js"),
    ),
    (
        "nodes.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/nodes.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../ui/favicon.svg"),
    ),
];

/// Paths the UI serves without a token.
pub fn is_open_path(path: &str) -> bool {
    path == "/" || path == "/index.html" || path.starts_with("/ui/")
}

/// Routes of the UI pages and assets (open) and of its API endpoint (behind the token, like
/// every `/v1` route, once merged into the API router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/ui/{*path}", get(asset))
        .route("/v1/stats/timeline", get(timeline))
}

fn serve(path: &str) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, ctype, body)) => {
            let mut r = (*body).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
                ),
            );
            r
        }
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(path): Path<String>) -> Response {
    serve(&path)
}

/// Attempts that ended in one minute.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TimelineMinute {
    /// Start of the minute (Unix ms).
    pub time: u64,
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed, timed out, were OOM-killed or lost.
    pub failed: u64,
}

/// Ended attempts per minute over the last hour.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Timeline {
    /// Server time of the answer (Unix ms).
    pub now: u64,
    /// Bucket width in ms (60000).
    pub step_ms: u64,
    /// The last 60 minutes, oldest first, the current (partial) minute last.
    pub minutes: Vec<TimelineMinute>,
}

const STEP: u64 = 60_000;
const MINUTES: u64 = 60;

/// Fills the 60 minutes ending with the one holding `now` from the sparse store answer.
fn fill(now: u64, rows: &[(u64, u64, u64)]) -> Vec<TimelineMinute> {
    let last = now / STEP * STEP;
    let first = last.saturating_sub((MINUTES - 1) * STEP);
    (0..MINUTES)
        .map(|i| {
            let time = first + i * STEP;
            let (s, f) = rows
                .iter()
                .find(|r| r.0 == time)
                .map(|r| (r.1, r.2))
                .unwrap_or((0, 0));
            TimelineMinute {
                time,
                succeeded: s,
                failed: f,
            }
        })
        .collect()
}

/// Task attempts that ended per minute over the last hour (for the overview chart).
#[utoipa::path(get, path = "/v1/stats/timeline",
    responses((status = 200, body = Timeline)))]
pub async fn timeline(State(st): State<AppState>) -> Response {
    let now = now_ms();
    let since = (now / STEP * STEP).saturating_sub((MINUTES - 1) * STEP);
    let store = st.store.clone();
    match tokio::task::spawn_blocking(move || store.ended_per_minute(since)).await {
        Ok(Ok(rows)) => Json(Timeline {
            now,
            step_ms: STEP,
            minutes: fill(now, &rows),
        })
        .into_response(),
        Ok(Err(e)) => error(e.to_string()),
        Err(e) => error(format!("worker failed: {e}")),
    }
}

fn error(msg: String) -> Response {
    tracing::error!(error = %msg, "timeline failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(gaffer_api::views::ErrorBody {
            error: msg,
            fields: Vec::new(),
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hour_is_filled_with_zeros() {
        let now = 100 * STEP + 1234;
        let m = fill(now, &[(41 * STEP, 2, 1), (100 * STEP, 0, 3), (7, 9, 9)]);
        assert_eq!(m.len(), 60);
        assert_eq!(m[0].time, 41 * STEP);
        assert_eq!((m[0].succeeded, m[0].failed), (2, 1));
        assert_eq!(m[59].time, 100 * STEP);
        assert_eq!((m[59].succeeded, m[59].failed), (0, 3));
        assert_eq!(m.iter().map(|x| x.succeeded + x.failed).sum::<u64>(), 6);
    }

    #[test]
    fn assets_are_found_and_paths_are_open() {
        for (p, _, body) in ASSETS {
            assert!(!body.is_empty(), "{p}");
            assert!(is_open_path(&format!("/ui/{p}")));
        }
        assert!(is_open_path("/"));
        assert!(!is_open_path("/v1/jobs"));
        assert!(!is_open_path("/v1/stats/timeline"));
    }
}
