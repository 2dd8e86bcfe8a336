//! The endpoints that act on one job: delete, kill, retry, hold and release.

use super::{parse_id, Q};
use crate::http::{ApiResult, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use gaffer_api::views::ErrorBody;
use gaffer_api::{JobId, JobState};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(super) struct DeleteParams {
    force: Option<bool>,
}

/// Delete a finished job and its history (`force=true` kills an active one first).
#[utoipa::path(delete, path = "/v1/jobs/{id}",
    params(("id" = String, Path), ("force" = Option<bool>, Query)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, description = "still active", body = ErrorBody)))]
pub(super) async fn delete_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Q(p): Q<DeleteParams>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id)?;
    st.core.remove(id, p.force.unwrap_or(false)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Answer to a kill.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct KillResponse {
    #[schema(value_type = String)]
    id: JobId,
    /// `killing` while its running tasks stop (SIGTERM, then SIGKILL after the grace),
    /// else the state it ended in (`killed`, or the state of a job that had already ended).
    #[schema(example = "killing")]
    state: String,
}

/// Kill every task of a job: pending ones at once, running ones by SIGTERM then SIGKILL.
#[utoipa::path(post, path = "/v1/jobs/{id}/kill", params(("id" = String, Path)),
    responses((status = 200, body = KillResponse), (status = 404, body = ErrorBody)))]
pub(super) async fn kill_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<KillResponse>> {
    let id = parse_id(&id)?;
    let state = st.core.kill(id).await?;
    let state = if state.is_final() {
        state.to_string()
    } else {
        "killing".to_string()
    };
    Ok(Json(KillResponse { id, state }))
}

/// Answer to a retry.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct RetryResponse {
    #[schema(value_type = String)]
    id: JobId,
    /// Tasks given a new attempt.
    retried: u32,
}

/// Give every task that ended failed, timed out, OOM-killed or lost a new attempt.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", params(("id" = String, Path)),
    responses((status = 200, body = RetryResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn retry_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RetryResponse>> {
    let id = parse_id(&id)?;
    let retried = st.core.retry(id).await?;
    Ok(Json(RetryResponse { id, retried }))
}

/// Answer to a hold or a release.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct HoldResponse {
    #[schema(value_type = String)]
    id: JobId,
    /// The job's state (running tasks go on while it is held).
    state: JobState,
    /// Held now.
    held: bool,
}

/// Hold a job: its tasks that have not started stay pending until it is released (running
/// ones go on). Holding a held job changes nothing.
#[utoipa::path(post, path = "/v1/jobs/{id}/hold", params(("id" = String, Path)),
    responses((status = 200, body = HoldResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn hold_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<HoldResponse>> {
    set_hold(&st, &id, true).await
}

/// Release a held job: its tasks may start again.
#[utoipa::path(post, path = "/v1/jobs/{id}/release", params(("id" = String, Path)),
    responses((status = 200, body = HoldResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn release_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<HoldResponse>> {
    set_hold(&st, &id, false).await
}

/// Holds (`held`) or releases job `id`.
async fn set_hold(st: &AppState, id: &str, held: bool) -> ApiResult<Json<HoldResponse>> {
    let id = parse_id(id)?;
    let state = st.core.hold(id, held).await?;
    Ok(Json(HoldResponse { id, state, held }))
}
