//! The job, node, event and server endpoints under `/v1` (JSON; errors as `{"error": "..."}`),
//! `/healthz` and `/metrics`, with their part of the OpenAPI document. Writes go to the core
//! through [`crate::core::CoreHandle`]; reads go straight to the store (never through the core),
//! so a busy scheduler never slows a listing.

use crate::http::{ApiResult, AppError, AppState};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::Stream;
use gaffer_api::spec::parse_specs_json;
use gaffer_api::views::{
    ErrorBody, EventView, JobDetail, JobPage, JobView, NodeView, OutputFile, SubmitResponse,
};
use gaffer_api::{FieldError, JobId, JobState};
use gaffer_store::{JobQuery, JobRow};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;
use utoipa::OpenApi;

mod control;
mod files;
mod history;
use control::{
    delete_job, hold_job, kill_job, release_job, retry_job, HoldResponse, KillResponse,
    RetryResponse,
};
pub use files::ATTEMPT_HEADER;
use files::{get_output, list_outputs, logs};

/// `Query` whose rejection is a JSON 400 like every other API error.
struct Q<T>(T);

impl<T, S> axum::extract::FromRequestParts<S> for Q<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Q(v)),
            Err(e) => Err(AppError::bad(format!(
                "bad query parameter: {}",
                e.body_text()
            ))),
        }
    }
}

/// A `state=` filter of a listing: absent, empty or `all` for every state.
fn state_filter(s: Option<&str>) -> ApiResult<Option<JobState>> {
    match s {
        None | Some("") | Some("all") => Ok(None),
        Some(s) => s.parse::<JobState>().map(Some).map_err(AppError::bad),
    }
}

fn parse_id(s: &str) -> ApiResult<JobId> {
    s.parse()
        .map_err(|e: gaffer_api::ids::BadJobId| AppError::bad(e.to_string()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("worker failed: {e}"),
        )
    })?
}

async fn load_job(st: &AppState, id: JobId) -> ApiResult<JobRow> {
    let store = st.store.clone();
    blocking(move || store.get_job(id)?.ok_or_else(|| AppError::not_found(id))).await
}

fn with_reason(st: &AppState, mut v: JobView) -> JobView {
    if !v.state.is_final() {
        v.pending_reason = st
            .shared
            .reasons
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&v.id)
            .cloned();
    }
    v
}

/// The job, node, event and server routes (see [`crate::routes`] for the whole API).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/jobs", post(submit).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job).delete(delete_job))
        .route("/v1/jobs/{id}/kill", post(kill_job))
        .route("/v1/jobs/{id}/retry", post(retry_job))
        .route("/v1/jobs/{id}/hold", post(hold_job))
        .route("/v1/jobs/{id}/release", post(release_job))
        .route("/v1/jobs/{id}/logs", get(logs))
        .route("/v1/jobs/{id}/exec", get(crate::exec_api::exec))
        .route("/v1/jobs/{id}/outputs", get(list_outputs))
        .route("/v1/jobs/{id}/outputs/{task}/{*path}", get(get_output))
        .route("/v1/history", get(history::history))
        .route("/v1/events", get(events))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{name}/drain", post(drain_node))
        .route("/v1/nodes/{name}/enable", post(enable_node))
        .route("/v1/servers", get(servers))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "gaffer", description = "Distributed job manager API"),
    paths(
        submit,
        list_jobs,
        get_job,
        control::delete_job,
        control::kill_job,
        control::retry_job,
        control::hold_job,
        control::release_job,
        history::history,
        files::logs,
        files::list_outputs,
        files::get_output,
        servers,
        events,
        nodes,
        drain_node,
        enable_node,
        healthz,
        metrics,
        crate::ui::timeline
    ),
    components(schemas(
        gaffer_api::JobSpec,
        gaffer_api::Resources,
        gaffer_api::FieldError,
        gaffer_api::TaskState,
        gaffer_api::JobState,
        gaffer_api::state::TaskCounts,
        JobView,
        JobPage,
        JobDetail,
        gaffer_api::views::TaskView,
        gaffer_api::views::AttemptView,
        EventView,
        NodeView,
        SubmitResponse,
        ErrorBody,
        OutputFile,
        KillResponse,
        RetryResponse,
        HoldResponse,
        gaffer_api::views::UsageRow,
        gaffer_api::views::HistoryPage,
        crate::ui::Timeline,
        crate::ui::TimelineMinute
    ))
)]
struct ApiDoc;

/// This module's part of the OpenAPI document ([`crate::routes::openapi_doc`]).
pub(crate) fn doc() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The server is up", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String)))]
async fn metrics(State(st): State<AppState>) -> ApiResult<Response> {
    let store = st.store.clone();
    let counts = blocking(move || Ok(store.count_jobs()?)).await?;
    let m = &st.shared.metrics;
    let mut out = String::new();
    out.push_str("# HELP gaffer_jobs Jobs by state.\n# TYPE gaffer_jobs gauge\n");
    for (s, n) in counts {
        out.push_str(&format!("gaffer_jobs{{state=\"{s}\"}} {n}\n"));
    }
    let nodes = st
        .shared
        .nodes
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let ready = nodes.iter().filter(|n| n.state == "ready").count();
    for (name, help, kind, v) in [
        (
            "gaffer_tasks_started_total",
            "Attempts started.",
            "counter",
            m.tasks_started.load(Ordering::Relaxed),
        ),
        (
            "gaffer_tasks_finished_total",
            "Attempts ended.",
            "counter",
            m.tasks_finished.load(Ordering::Relaxed),
        ),
        (
            "gaffer_jobs_submitted_total",
            "Jobs submitted.",
            "counter",
            m.jobs_submitted.load(Ordering::Relaxed),
        ),
        (
            "gaffer_queue_depth",
            "Tasks waiting to be placed.",
            "gauge",
            m.queue_depth.load(Ordering::Relaxed),
        ),
        (
            "gaffer_tasks_running",
            "Tasks assigned or running.",
            "gauge",
            m.running.load(Ordering::Relaxed),
        ),
        ("gaffer_nodes_ready", "Nodes ready.", "gauge", ready as u64),
        (
            "gaffer_nodes_down",
            "Nodes down.",
            "gauge",
            (nodes.len() - ready) as u64,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

#[derive(Debug, Deserialize)]
struct SubmitParams {
    allow_unplaceable: Option<bool>,
}

/// Submit one job spec, a list of them, or `{"jobs": [...]}`; all are stored or none. The body
/// is JSON, or TOML with `Content-Type: application/toml` (`[[jobs]]` for a list).
#[utoipa::path(post, path = "/v1/jobs", request_body = gaffer_api::JobSpec,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retrying with the same key returns the first submit's ids"),
           ("allow_unplaceable" = Option<bool>, Query, description = "accept specs that no registered node could run (more CPUs or memory than the largest node, labels or an image no node has); they wait for such a node")),
    responses(
        (status = 201, description = "Stored durably", body = SubmitResponse),
        (status = 400, description = "Invalid spec; every problem listed", body = ErrorBody),
        (status = 413, description = "Body over 10 MiB", body = ErrorBody)))]
async fn submit(
    State(st): State<AppState>,
    Q(p): Q<SubmitParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<SubmitResponse>)> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::too_large(),
        status => AppError::new(status, e.body_text()),
    })?;
    let is_toml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/toml"));
    let specs = if is_toml {
        parse_specs_toml(&body)
    } else {
        parse_specs_json(&body)
    }
    .map_err(AppError::fields)?;
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 200)
                .ok_or_else(|| {
                    AppError::bad("Idempotency-Key must be 1 to 200 visible ASCII characters")
                })?
                .to_string(),
        ),
        None => None,
    };
    let ids = st
        .core
        .submit(specs, key, p.allow_unplaceable.unwrap_or(false))
        .await?;
    Ok((StatusCode::CREATED, Json(SubmitResponse { ids })))
}

/// TOML body: converted to the JSON shape, then parsed and validated as JSON is.
fn parse_specs_toml(body: &[u8]) -> Result<Vec<gaffer_api::JobSpec>, Vec<FieldError>> {
    let bad = |m: String| vec![FieldError::new("", m)];
    let text = std::str::from_utf8(body).map_err(|e| bad(format!("invalid TOML: {e}")))?;
    let v: toml::Value = toml::from_str(text).map_err(|e| bad(format!("invalid TOML: {e}")))?;
    let v = serde_json::to_value(v).map_err(|e| bad(format!("invalid TOML: {e}")))?;
    gaffer_api::spec::specs_from_value(v)
}

#[derive(Debug, Deserialize)]
struct ListParams {
    state: Option<String>,
    name: Option<String>,
    limit: Option<u32>,
    before: Option<String>,
}

/// List jobs, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/jobs",
    params(("state" = Option<String>, Query, description = "pending|running|succeeded|failed|killed"),
           ("name" = Option<String>, Query, description = "substring of the name"),
           ("limit" = Option<u32>, Query, description = "page size, default 50, at most 10000"),
           ("before" = Option<String>, Query, description = "the previous page's `next`")),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody)))]
async fn list_jobs(State(st): State<AppState>, Q(p): Q<ListParams>) -> ApiResult<Json<JobPage>> {
    let state = state_filter(p.state.as_deref())?;
    let before = p.before.as_deref().map(parse_id).transpose()?;
    let q = JobQuery {
        state,
        name: p.name.filter(|n| !n.is_empty()),
        before,
        limit: p.limit.unwrap_or(50).clamp(1, 10_000),
    };
    let store = st.store.clone();
    let mut page = blocking(move || Ok(store.list_jobs(&q)?)).await?;
    page.jobs = page.jobs.into_iter().map(|j| with_reason(&st, j)).collect();
    Ok(Json(page))
}

#[derive(Debug, Deserialize)]
struct JobParams {
    tasks_from: Option<u32>,
    tasks_limit: Option<u32>,
}

/// One job with a page of its tasks and their attempts.
#[utoipa::path(get, path = "/v1/jobs/{id}",
    params(("id" = String, Path, description = "job id, e.g. j-000042"),
           ("tasks_from" = Option<u32>, Query, description = "first task index, default 0"),
           ("tasks_limit" = Option<u32>, Query, description = "number of tasks, default 1000")),
    responses((status = 200, body = JobDetail), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Q(p): Q<JobParams>,
) -> ApiResult<Json<JobDetail>> {
    let id = parse_id(&id)?;
    let row = load_job(&st, id).await?;
    let store = st.store.clone();
    let from = p.tasks_from.unwrap_or(0);
    let limit = p.tasks_limit.unwrap_or(1000).min(100_000);
    let (row, tasks) = blocking(move || {
        let tasks = store.list_tasks(&row, from, limit)?;
        Ok((row, tasks))
    })
    .await?;
    Ok(Json(JobDetail {
        job: with_reason(&st, row.view()),
        task_list: tasks,
    }))
}

#[derive(Debug, Deserialize)]
struct EventParams {
    after: Option<u64>,
    job: Option<String>,
}

/// Server-Sent Events of every state transition; resume with `after` (the last id seen).
#[utoipa::path(get, path = "/v1/events",
    params(("after" = Option<u64>, Query, description = "replay stored events after this id first"),
           ("job" = Option<String>, Query, description = "only this job's events")),
    responses((status = 200, description = "text/event-stream of EventView JSON", body = EventView)))]
async fn events(
    State(st): State<AppState>,
    Q(p): Q<EventParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = p.job.as_deref().map(parse_id).transpose()?;
    let mut live = st.shared.events.subscribe();
    let store = st.store.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        // u64::MAX: no `after` given, only live events are sent.
        let mut last = p.after.unwrap_or(u64::MAX);
        // Replay stored events first, when asked.
        if last != u64::MAX {
            loop {
                let s = store.clone();
                let batch =
                    match tokio::task::spawn_blocking(move || s.events(last, job, 1000)).await {
                        Ok(Ok(b)) => b,
                        _ => return,
                    };
                if batch.is_empty() {
                    break;
                }
                for e in batch {
                    last = e.id;
                    if tx.send(sse(&e)).await.is_err() {
                        return;
                    }
                }
            }
        }
        loop {
            match live.recv().await {
                Ok(e) => {
                    if (last != u64::MAX && e.id <= last) || job.is_some_and(|j| j != e.job) {
                        continue;
                    }
                    last = e.id;
                    if tx.send(sse(&e)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the live feed: catch up from the store, page by page, from
                    // the last event sent (a client that never saw one asked for no history).
                    if last == u64::MAX {
                        continue;
                    }
                    loop {
                        let s = store.clone();
                        let from = last;
                        let Ok(Ok(batch)) =
                            tokio::task::spawn_blocking(move || s.events(from, job, 1000)).await
                        else {
                            return;
                        };
                        if batch.is_empty() {
                            break;
                        }
                        for e in batch {
                            last = e.id;
                            if tx.send(sse(&e)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let stream = futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn sse(e: &EventView) -> Event {
    Event::default()
        .id(e.id.to_string())
        .event("transition")
        .data(serde_json::to_string(e).unwrap_or_default())
}

/// The servers of an HA cluster, the leader and its term.
#[utoipa::path(get, path = "/v1/servers", responses(
    (status = 200, body = gaffer_api::views::ServersView),
    (status = 404, body = ErrorBody, description = "A single server without HA"),
))]
async fn servers(State(st): State<AppState>) -> ApiResult<Json<gaffer_api::views::ServersView>> {
    let Some(f) = &st.cluster else {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "this server runs without HA (its store is SQLite): it is the only server",
        ));
    };
    f().await
        .map(Json)
        .map_err(|e| AppError::new(StatusCode::SERVICE_UNAVAILABLE, e))
}

/// Worker nodes.
#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = Vec<NodeView>)))]
async fn nodes(State(st): State<AppState>) -> Json<Vec<NodeView>> {
    Json(
        st.shared
            .nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    )
}

#[derive(Debug, Deserialize)]
struct DrainParams {
    migrate: Option<bool>,
}

/// Stop placing tasks on a node; with `migrate=true` its running tasks are re-queued elsewhere.
#[utoipa::path(post, path = "/v1/nodes/{name}/drain",
    params(("name" = String, Path), ("migrate" = Option<bool>, Query)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn drain_node(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Q(p): Q<DrainParams>,
) -> ApiResult<StatusCode> {
    st.core.drain(name, p.migrate.unwrap_or(false)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Place tasks on a drained node again.
#[utoipa::path(post, path = "/v1/nodes/{name}/enable", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn enable_node(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    st.core.enable(name).await?;
    Ok(StatusCode::NO_CONTENT)
}
