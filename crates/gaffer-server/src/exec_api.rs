//! `GET /v1/jobs/{id}/exec`: a WebSocket to a command run inside a running task's container
//! (`gaffer exec`), relayed to and from the task's agent.
//!
//! The client sends binary frames of standard input and `{"eof": true}` when it ends; the
//! server sends binary frames whose first byte is the stream (1 stdout or the terminal, 2
//! stderr) and, last, `{"exit": CODE}` or `{"error": "..."}`.

use crate::http::{ApiResult, AppError, AppState};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use gaffer_api::proto::AgentMsg;
use gaffer_api::{AttemptKey, JobId, TaskState};
use serde::Deserialize;

/// The query of an exec request.
#[derive(Debug, Deserialize)]
pub(crate) struct ExecParams {
    task: Option<u32>,
    /// The command as a JSON list of strings.
    argv: String,
    /// Columns and rows of the client's terminal: run on a pty of that size.
    cols: Option<u16>,
    rows: Option<u16>,
}

/// Opens an exec session on the agent running task `task` of job `id`.
pub(crate) async fn exec(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<ExecParams>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let id: JobId = id
        .parse()
        .map_err(|e: gaffer_api::ids::BadJobId| AppError::bad(e.to_string()))?;
    let argv: Vec<String> = serde_json::from_str(&p.argv)
        .map_err(|_| AppError::bad("argv must be a JSON list of strings"))?;
    if argv.is_empty() || argv[0].is_empty() {
        return Err(AppError::bad("argv: give the command to run"));
    }
    let task = p.task.unwrap_or(0);
    let store = st.store.clone();
    let attempts = tokio::task::spawn_blocking(move || -> Result<_, AppError> {
        let job = store
            .get_job(id)
            .map_err(|e| AppError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
            .ok_or_else(|| AppError::not_found(id))?;
        if task >= job.counts.total {
            return Err(AppError::bad(format!(
                "job {id} has {} task(s): there is no task {task}",
                job.counts.total
            )));
        }
        store
            .attempts(id, task)
            .map_err(|e| AppError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    })
    .await
    .map_err(|e| AppError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let Some(last) = attempts.last().filter(|a| a.state == TaskState::Running) else {
        return Err(AppError::new(
            StatusCode::CONFLICT,
            format!("task {task} of job {id} is not running: nothing to exec into"),
        ));
    };
    let key = AttemptKey {
        job: id,
        index: task,
        attempt: last.attempt,
    };
    let tty = p.cols.zip(p.rows);
    let session = st
        .gateway
        .exec(&last.node, key, argv, tty)
        .map_err(|e| AppError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(ws.on_upgrade(move |socket| relay(socket, session)))
}

/// Copies the client's input to the agent and the command's output back, until it exits.
async fn relay(mut socket: WebSocket, mut session: crate::gateway::ExecSession) {
    loop {
        tokio::select! {
            msg = session.rx.recv() => {
                let frame = match msg {
                    Some(AgentMsg::ExecOutput { stream, data, .. }) => {
                        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
                            continue;
                        };
                        let mut frame = Vec::with_capacity(bytes.len() + 1);
                        frame.push(stream);
                        frame.extend_from_slice(&bytes);
                        Message::Binary(frame.into())
                    }
                    Some(AgentMsg::ExecExit { code, error, .. }) => {
                        let end = match error {
                            Some(e) => serde_json::json!({ "error": e }),
                            None => serde_json::json!({ "exit": code }),
                        };
                        let _ = socket.send(Message::Text(end.to_string().into())).await;
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                    Some(_) => continue,
                    None => {
                        let end = serde_json::json!({ "error": "the task's agent went away" });
                        let _ = socket.send(Message::Text(end.to_string().into())).await;
                        return;
                    }
                };
                if socket.send(frame).await.is_err() {
                    return;
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(data))) => session.input(&data),
                Some(Ok(Message::Text(t))) => {
                    if serde_json::from_str::<serde_json::Value>(&t)
                        .is_ok_and(|v| v["eof"] == true)
                    {
                        session.input(&[]);
                    }
                }
                Some(Ok(_)) => {}
                // The client went away: dropping the session stops the command.
                Some(Err(_)) | None => return,
            },
        }
    }
}
