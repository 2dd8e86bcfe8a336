//! A follower's API (HA mode): every call is accepted; reads the store can answer are answered
//! here, everything else is forwarded to the leader.
//!
//! Answered locally (straight from the shared store): `GET /v1/jobs`, `GET /v1/jobs/{id}`,
//! `/v1/stats/timeline`, `/v1/servers`, `/v1/openapi.json`, `/healthz` and the web UI's files.
//! One exception: the status of one job is asked of the leader first, since only the leader
//! knows why a pending task waits (`pending_reason` lives in its scheduler's memory); when the
//! leader does not answer within [`STATUS_FROM_LEADER`], the store answers.
//! Forwarded (streamed both ways, so `logs -f` and the event stream work through a follower):
//! every write, and the reads that need the leader's memory or its agent streams (nodes, logs,
//! outputs, events, metrics). An agent that connects to a follower is told where the leader is
//! (`503` with a `gaffer-leader` header) instead of being proxied: its stream must end at the
//! leader itself.
//!
//! While no leader is known, or when this server has just won and is still loading the state,
//! forwarded calls get `503` with `Retry-After: 1`, which the CLI retries.

use crate::http::{AppError, AppState};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::TryStreamExt;
use std::sync::Arc;
use tokio::sync::watch;

/// Header naming the leader's URL in answers to agents that reached a follower.
pub const LEADER_HEADER: &str = "gaffer-leader";
/// Header marking a request a follower forwarded (a server that is not leader refuses to
/// forward it again, so a stale view can never loop a request between followers).
pub const FORWARDED_HEADER: &str = "gaffer-forwarded";

/// How long a follower waits for the leader's answer to a job status before it answers from
/// the store (without the pending reason).
pub const STATUS_FROM_LEADER: std::time::Duration = std::time::Duration::from_secs(2);

/// What a follower needs to forward.
#[derive(Clone)]
pub struct Follower {
    /// URL of the current leader, as seen by the election.
    pub leader: watch::Receiver<Option<String>>,
    /// This server's own URL (it may be the leader still loading its state).
    pub own_url: String,
    /// HTTP client towards the leader.
    pub http: reqwest::Client,
}

/// The router of a follower: the normal API with [`forward`] in front of it.
pub fn router(state: AppState, follower: Follower) -> Router {
    crate::routes::router(state).layer(axum::middleware::from_fn_with_state(
        Arc::new(follower),
        forward,
    ))
}

/// True for calls a follower answers from the store.
pub fn answered_locally(method: &Method, path: &str) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(
        segs.as_slice(),
        [""] | ["", "index.html"]
            | ["", "healthz"]
            | ["", "ui", ..]
            | ["", "v1", "openapi.json"]
            | ["", "v1", "jobs"]
            | ["", "v1", "jobs", _]
            | ["", "v1", "stats", "timeline"]
            | ["", "v1", "servers"]
    )
}

fn unavailable(msg: String) -> Response {
    let mut r = AppError::new(StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

async fn forward(
    State(f): State<Arc<Follower>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if answered_locally(req.method(), req.uri().path()) {
        if let Some((leader, ask)) = status_call(&f, &req) {
            // A leader that is stepping down or loading answers 5xx: the store knows as much.
            match send(&f.http, &leader, ask, Some(STATUS_FROM_LEADER)).await {
                Ok(r) if !r.status().is_server_error() => return r,
                _ => {}
            }
        }
        return next.run(req).await;
    }
    let leader = f.leader.borrow().clone();
    let leader = match leader {
        None => return unavailable(
            "no gaffer server is leader right now (an election is under way); retry in a moment"
                .into(),
        ),
        Some(l) if l == f.own_url => {
            return unavailable(
                "this server was just elected leader and is loading the state; retry in a moment"
                    .into(),
            )
        }
        Some(l) => l,
    };
    if req.headers().contains_key(FORWARDED_HEADER) {
        return unavailable(format!(
            "the leader changed while this call was forwarded (this server is not leader; {leader} is); retry"
        ));
    }
    if req.uri().path() == "/v1/agent/connect" {
        let mut r = unavailable(format!(
            "this server is a follower; connect to the leader at {leader}"
        ));
        if let Ok(v) = header::HeaderValue::from_str(&leader) {
            r.headers_mut().insert(LEADER_HEADER, v);
        }
        return r;
    }
    // A call to a leader that stops being leader (killed, cut off) might never be answered:
    // give up on it as soon as the election moves on, so the client can retry at once.
    let mut changes = f.leader.clone();
    let was = leader.clone();
    let moved_on = async move {
        let _ = changes
            .wait_for(|l| l.as_deref() != Some(was.as_str()))
            .await;
    };
    tokio::select! {
        r = proxy(&f.http, &leader, req) => r,
        _ = moved_on => AppError::new(
            StatusCode::BAD_GATEWAY,
            format!("the leader at {leader} lost its role while this call was forwarded; it may or may not have been applied: retry (with the same Idempotency-Key for a submit)"),
        )
        .into_response(),
    }
}

/// The leader and a copy of `req` to ask it for a job status (see the module docs), or `None`
/// when the store should answer: another call, no other leader, or a call already forwarded.
fn status_call(f: &Follower, req: &Request) -> Option<(String, Request)> {
    let segs: Vec<&str> = req.uri().path().trim_end_matches('/').split('/').collect();
    if req.method() != Method::GET
        || !matches!(segs.as_slice(), ["", "v1", "jobs", id] if !id.is_empty())
        || req.headers().contains_key(FORWARDED_HEADER)
    {
        return None;
    }
    let leader = f.leader.borrow().clone().filter(|l| *l != f.own_url)?;
    let mut ask = Request::new(Body::empty());
    *ask.uri_mut() = req.uri().clone();
    *ask.headers_mut() = req.headers().clone();
    Some((leader, ask))
}

/// Hop-by-hop headers, which a proxy must not pass on.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !hop_by_hop(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

/// Forwards `req` to the leader, streaming both ways; 502 when the leader does not answer.
async fn proxy(http: &reqwest::Client, leader: &str, req: Request) -> Response {
    send(http, leader, req, None).await.unwrap_or_else(|e| {
        AppError::new(
            StatusCode::BAD_GATEWAY,
            format!("the leader at {leader} did not answer this forwarded call ({e}); if it died, a new leader is elected within seconds: retry"),
        )
        .into_response()
    })
}

/// Sends `req` to the leader, marked as forwarded, within `timeout` (if any); the answer's
/// body streams back.
async fn send(
    http: &reqwest::Client,
    leader: &str,
    req: Request,
    timeout: Option<std::time::Duration>,
) -> Result<Response, reqwest::Error> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    let (parts, body) = req.into_parts();
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    headers.insert(FORWARDED_HEADER, header::HeaderValue::from_static("1"));
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let mut call = http.request(parts.method, &url).headers(headers).body(body);
    if let Some(t) = timeout {
        call = call.timeout(t);
    }
    let resp = call.send().await?;
    let mut out = Response::builder().status(resp.status());
    if let Some(h) = out.headers_mut() {
        copy_headers(resp.headers(), h);
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    Ok(out
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_reads_stay_local_everything_else_is_forwarded() {
        let get = Method::GET;
        for p in [
            "/",
            "/healthz",
            "/ui/app.js",
            "/v1/jobs",
            "/v1/jobs/j-000001",
            "/v1/servers",
            "/v1/stats/timeline",
        ] {
            assert!(answered_locally(&get, p), "{p}");
        }
        for p in [
            "/v1/nodes",
            "/v1/events",
            "/v1/jobs/j-000001/logs",
            "/v1/jobs/j-000001/outputs",
            "/metrics",
            "/v1/agent/connect",
        ] {
            assert!(!answered_locally(&get, p), "{p}");
        }
        assert!(!answered_locally(&Method::POST, "/v1/jobs"));
        assert!(!answered_locally(&Method::DELETE, "/v1/jobs/j-000001"));
    }
}
