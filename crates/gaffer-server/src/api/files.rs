//! The endpoints that read an attempt's files: its logs (`/v1/jobs/{id}/logs`, followed live
//! while it runs) and its outputs (`/v1/jobs/{id}/outputs`).

use super::*;

#[derive(Debug, Deserialize)]
pub(super) struct LogParams {
    task: Option<u32>,
    attempt: Option<u32>,
    stream: Option<String>,
    follow: Option<bool>,
    offset: Option<u64>,
}

/// Header of a log response naming the attempt it reads (when one exists yet), so that a
/// client can resume the same attempt at a byte offset after a broken stream.
pub const ATTEMPT_HEADER: &str = "gaffer-attempt";

/// Picks the attempt to read: the given one, else the latest.
async fn pick_attempt(
    st: &AppState,
    job: JobId,
    task: u32,
    attempt: Option<u32>,
) -> ApiResult<Option<gaffer_api::views::AttemptView>> {
    let store = st.store.clone();
    let attempts = blocking(move || Ok(store.attempts(job, task)?)).await?;
    Ok(match attempt {
        Some(n) => attempts.into_iter().find(|a| a.attempt == n),
        None => attempts.into_iter().last(),
    })
}

/// A task's stdout or stderr; with `follow=true` the body streams until the attempt ends.
#[utoipa::path(get, path = "/v1/jobs/{id}/logs",
    params(("id" = String, Path), ("task" = Option<u32>, Query, description = "task index, default 0"),
           ("attempt" = Option<u32>, Query, description = "default: the latest"),
           ("stream" = Option<String>, Query, description = "stdout (default) or stderr"),
           ("follow" = Option<bool>, Query, description = "keep streaming while the task runs"),
           ("offset" = Option<u64>, Query, description = "first byte to send, default 0 (resuming a broken stream: pass the attempt from the gaffer-attempt header too)")),
    responses((status = 200, description = "log bytes", body = String, content_type = "text/plain"), (status = 404, body = ErrorBody)))]
pub(super) async fn logs(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Q(p): Q<LogParams>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let row = load_job(&st, id).await?;
    let task = p.task.unwrap_or(0);
    if task >= row.counts.total {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            format!(
                "job {id} has no task {task} (it has {} task(s))",
                row.counts.total
            ),
        ));
    }
    let file = match p.stream.as_deref() {
        None | Some("stdout") => "stdout",
        Some("stderr") => "stderr",
        Some(other) => {
            return Err(AppError::bad(format!(
                "stream `{other}` must be stdout or stderr"
            )))
        }
    };
    let follow = p.follow.unwrap_or(false);
    let offset = p.offset.unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let current = pick_attempt(&st, id, task, p.attempt).await?;
    if !follow {
        // Check that there is something to read before answering 200.
        if let Some(a) = &current {
            st.files
                .read(&a.node, attempt_key(id, task, a.attempt), file, 0, 1)
                .await
                .map_err(|e| {
                    AppError::new(StatusCode::BAD_GATEWAY, format!("cannot read the log: {e}"))
                })?;
        }
    }
    // Pin the attempt this response reads, so that it is the one the header names.
    let want = p.attempt.or(current.as_ref().map(|a| a.attempt));
    let st2 = st.clone();
    tokio::spawn(async move {
        let read = LogRead {
            job: id,
            task,
            want,
            found: current,
            file,
            follow,
            from: offset,
        };
        let _ = stream_log(st2, read, tx).await;
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
    if let Some(n) = want {
        resp.headers_mut()
            .insert(ATTEMPT_HEADER, header::HeaderValue::from(n));
    }
    Ok(resp)
}

fn attempt_key(job: JobId, index: u32, attempt: u32) -> gaffer_api::AttemptKey {
    gaffer_api::AttemptKey {
        job,
        index,
        attempt,
    }
}

/// What [`stream_log`] reads: attempt `want` (else the latest) of a task, from byte `from`.
struct LogRead {
    job: JobId,
    task: u32,
    want: Option<u32>,
    /// That attempt, when the request already found it.
    found: Option<gaffer_api::views::AttemptView>,
    file: &'static str,
    follow: bool,
    from: u64,
}

/// Streams a log file; with `follow`, keeps streaming as it grows until its attempt has ended
/// and every byte was sent.
async fn stream_log(
    st: AppState,
    r: LogRead,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), ()> {
    let LogRead {
        job,
        task,
        want,
        found,
        file,
        follow,
        from,
    } = r;
    let tick = Duration::from_millis(100);
    // Wait for an attempt to exist (the task may still be pending).
    let attempt = match found {
        Some(a) => a,
        None => loop {
            match pick_attempt(&st, job, task, want).await {
                Ok(Some(a)) => break a,
                Ok(None) if !follow => return Ok(()),
                Ok(None) => {}
                Err(_) => return Err(()),
            }
            match st.store.get_job(job) {
                Ok(Some(r)) if !r.state.is_final() => {}
                _ => return Ok(()),
            }
            if tx.is_closed() {
                return Err(());
            }
            tokio::time::sleep(tick).await;
        },
    };
    let key = attempt_key(job, task, attempt.attempt);
    let mut offset = from;
    loop {
        let chunk = match st
            .files
            .read(&attempt.node, key, file, offset, crate::files::CHUNK)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e))).await;
                return Err(());
            }
        };
        let n = chunk.data.len();
        if n > 0 {
            offset += n as u64;
            if tx.send(Ok(chunk.data)).await.is_err() {
                return Err(());
            }
            continue;
        }
        // At the current end of the file.
        if !follow
            || chunk.ended
            || attempt_ended(&st, job, task, attempt.attempt) && {
                // The store says it ended: read once more, then stop.
                let last = st
                    .files
                    .read(&attempt.node, key, file, offset, crate::files::CHUNK)
                    .await;
                match last {
                    Ok(c) if !c.data.is_empty() => {
                        offset += c.data.len() as u64;
                        if tx.send(Ok(c.data)).await.is_err() {
                            return Err(());
                        }
                        false
                    }
                    _ => true,
                }
            }
        {
            return Ok(());
        }
        if tx.is_closed() {
            return Err(());
        }
        tokio::time::sleep(tick).await;
    }
}

fn attempt_ended(st: &AppState, job: JobId, task: u32, attempt: u32) -> bool {
    match st.store.attempts(job, task) {
        Ok(a) => a
            .iter()
            .find(|a| a.attempt == attempt)
            .is_none_or(|a| a.state.is_end()),
        Err(_) => true,
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct OutputParams {
    task: Option<u32>,
    attempt: Option<u32>,
}

/// Output files kept by a job's tasks (the latest attempt of each task unless `attempt` is given).
#[utoipa::path(get, path = "/v1/jobs/{id}/outputs",
    params(("id" = String, Path), ("task" = Option<u32>, Query), ("attempt" = Option<u32>, Query)),
    responses((status = 200, body = Vec<OutputFile>), (status = 404, body = ErrorBody)))]
pub(super) async fn list_outputs(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Q(p): Q<OutputParams>,
) -> ApiResult<Json<Vec<OutputFile>>> {
    let id = parse_id(&id)?;
    let row = load_job(&st, id).await?;
    let store = st.store.clone();
    let files = st.files.clone();
    let out = blocking(move || {
        let (from, limit) = match p.task {
            Some(t) => (t, 1),
            None => (0, row.counts.total.min(100_000)),
        };
        let mut out = Vec::new();
        for t in store.list_tasks(&row, from, limit)? {
            let a = match p.attempt {
                Some(n) => t.attempts.iter().find(|a| a.attempt == n),
                None => t
                    .attempts
                    .iter()
                    .rev()
                    .find(|a| !a.outputs.is_empty())
                    .or(t.attempts.last()),
            };
            let Some(a) = a else { continue };
            let key = attempt_key(id, t.index, a.attempt);
            for path in &a.outputs {
                let size = files.output_size(&a.node, &key, path).unwrap_or(0);
                out.push(OutputFile {
                    task: t.index,
                    attempt: a.attempt,
                    path: path.clone(),
                    size,
                });
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(out))
}

/// Download one output file.
#[utoipa::path(get, path = "/v1/jobs/{id}/outputs/{task}/{path}",
    params(("id" = String, Path), ("task" = u32, Path), ("path" = String, Path, description = "relative path as listed"),
           ("attempt" = Option<u32>, Query)),
    responses((status = 200, description = "file bytes", content_type = "application/octet-stream"), (status = 404, body = ErrorBody)))]
pub(super) async fn get_output(
    State(st): State<AppState>,
    Path((id, task, path)): Path<(String, u32, String)>,
    Q(p): Q<OutputParams>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    load_job(&st, id).await?;
    if path.split('/').any(|c| c == ".." || c.is_empty()) || path.starts_with('/') {
        return Err(AppError::bad(format!(
            "`{path}` is not a relative output path"
        )));
    }
    let store = st.store.clone();
    let attempts = blocking(move || Ok(store.attempts(id, task)?)).await?;
    let a = attempts
        .iter()
        .rev()
        .find(|a| p.attempt.is_none_or(|n| n == a.attempt) && a.outputs.contains(&path))
        .ok_or_else(|| {
            AppError::new(
                StatusCode::NOT_FOUND,
                format!("task {task} of job {id} has no output `{path}`"),
            )
        })?;
    let key = attempt_key(id, task, a.attempt);
    let node = a.node.clone();
    // The first piece answers "is it there?" before the 200.
    let first = st
        .files
        .read(
            &node,
            key,
            &format!("outputs/{path}"),
            0,
            crate::files::CHUNK,
        )
        .await
        .map_err(|e| {
            AppError::new(
                StatusCode::BAD_GATEWAY,
                format!("cannot read output `{path}`: {e}"),
            )
        })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let files = st.files.clone();
    tokio::spawn(async move {
        let mut offset = first.data.len() as u64;
        let mut chunk = first.data;
        while !chunk.is_empty() {
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            chunk = match files
                .read(
                    &node,
                    key,
                    &format!("outputs/{path}"),
                    offset,
                    crate::files::CHUNK,
                )
                .await
            {
                Ok(c) => c.data,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            };
            offset += chunk.len() as u64;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}
