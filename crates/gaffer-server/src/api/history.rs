//! `GET /v1/history`: accounting in the manner of Slurm's `sacct` — wait, run and CPU time,
//! peak memory, exit code and nodes per job, or per task — read from the store.

use super::{blocking, parse_id, state_filter, Q};
use crate::http::{ApiResult, AppError, AppState};
use axum::extract::State;
use axum::Json;
use gaffer_api::views::{AttemptView, ErrorBody, HistoryPage, UsageRow};
use gaffer_api::{TaskState, UnixMs};
use gaffer_store::{JobHistory, JobQuery, Store};
use serde::Deserialize;

/// Most jobs one page covers.
const MAX_JOBS: u32 = 1000;

#[derive(Debug, Deserialize)]
pub(super) struct HistoryParams {
    since: Option<UnixMs>,
    until: Option<UnixMs>,
    tasks: Option<bool>,
    state: Option<String>,
    name: Option<String>,
    limit: Option<u32>,
    before: Option<String>,
}

/// Accounting of jobs submitted between `since` and `until` (Unix ms), newest first: one row
/// per job, or with `tasks=true` one per task that ran.
#[utoipa::path(get, path = "/v1/history",
    params(("since" = Option<u64>, Query, description = "submitted at or after (Unix ms)"),
           ("until" = Option<u64>, Query, description = "submitted at or before (Unix ms)"),
           ("tasks" = Option<bool>, Query, description = "one row per task instead of per job"),
           ("state" = Option<String>, Query, description = "only jobs in this state"),
           ("name" = Option<String>, Query, description = "substring of the name"),
           ("limit" = Option<u32>, Query, description = "jobs per page, default 100, at most 1000"),
           ("before" = Option<String>, Query, description = "the previous page's `next`")),
    responses((status = 200, body = HistoryPage), (status = 400, body = ErrorBody)))]
pub(super) async fn history(
    State(st): State<AppState>,
    Q(p): Q<HistoryParams>,
) -> ApiResult<Json<HistoryPage>> {
    let state = state_filter(p.state.as_deref())?;
    let (since, until) = (p.since.unwrap_or(0), p.until.unwrap_or(UnixMs::MAX));
    if since > until {
        return Err(AppError::bad("`since` is after `until`"));
    }
    let q = JobQuery {
        state,
        name: p.name.filter(|n| !n.is_empty()),
        before: p.before.as_deref().map(parse_id).transpose()?,
        limit: p.limit.unwrap_or(100).clamp(1, MAX_JOBS),
    };
    let per_task = p.tasks.unwrap_or(false);
    let store = st.store.clone();
    let page = blocking(move || Ok(read(&*store, q, (since, until), per_task)?)).await?;
    Ok(Json(page))
}

/// Pages through the job list newest first until `q.limit` jobs in the window are covered.
fn read(
    store: &dyn Store,
    mut q: JobQuery,
    (since, until): (UnixMs, UnixMs),
    per_task: bool,
) -> gaffer_store::Result<HistoryPage> {
    let want = q.limit as usize;
    let mut rows = Vec::new();
    let mut covered = 0;
    loop {
        let page = store.list_jobs(&q)?;
        // Ids grow with submit time: past `since`, every older job is out of the window too.
        let older = page.jobs.iter().any(|j| j.created_at < since);
        let in_window: Vec<_> = page
            .jobs
            .iter()
            .filter(|j| (since..=until).contains(&j.created_at))
            .map(|j| j.id)
            .collect();
        // Jobs of the window this page leaves for the next one.
        let truncated = in_window.len() > want - covered;
        let ids: Vec<_> = in_window.into_iter().take(want - covered).collect();
        let last = ids.last().copied();
        for h in store.job_histories(&ids)?.into_iter().flatten() {
            if per_task {
                rows.extend(task_rows(&h));
            } else {
                rows.push(job_row(&h));
            }
        }
        covered += ids.len();
        let next = page.next.filter(|_| !older);
        match next {
            Some(n) if covered < want => q.before = Some(n),
            _ => {
                let more = truncated || next.is_some();
                return Ok(HistoryPage {
                    rows,
                    next: if more { last } else { None },
                });
            }
        }
    }
}

/// The row of a whole job.
fn job_row(h: &JobHistory) -> UsageRow {
    let all: Vec<&AttemptView> = h.attempts.iter().map(|(_, a)| a).collect();
    let mut row = usage(h, None, &all);
    row.state = h.job.state.to_string();
    row.tasks = h.job.counts.total;
    row.ended_at = h.job.finished_at;
    row.run_ms = row
        .started_at
        .zip(row.ended_at)
        .map(|(s, e)| e.saturating_sub(s));
    // Each task's last attempt: the first exit code that is not 0, else 0.
    let mut last: Vec<(u32, &AttemptView)> = Vec::new();
    for (i, a) in &h.attempts {
        match last.last_mut() {
            Some((li, la)) if li == i => *la = a,
            _ => last.push((*i, a)),
        }
    }
    let codes: Vec<i32> = last.iter().filter_map(|(_, a)| a.exit_code).collect();
    row.exit_code = codes
        .iter()
        .copied()
        .find(|c| *c != 0)
        .or(codes.first().copied());
    row
}

/// One row per task that has attempts.
fn task_rows(h: &JobHistory) -> Vec<UsageRow> {
    let mut rows = Vec::new();
    let mut start = 0;
    while start < h.attempts.len() {
        let index = h.attempts[start].0;
        let end = h.attempts[start..]
            .iter()
            .position(|(i, _)| *i != index)
            .map_or(h.attempts.len(), |n| start + n);
        let attempts: Vec<&AttemptView> = h.attempts[start..end].iter().map(|(_, a)| a).collect();
        let mut row = usage(h, Some(index), &attempts);
        let state = h
            .tasks
            .iter()
            .find(|t| t.index == index)
            .map_or(TaskState::Pending, |t| t.state);
        row.state = state.to_string();
        let last = attempts.last().expect("a task row has attempts");
        row.ended_at = last.ended_at;
        row.run_ms = row
            .started_at
            .zip(row.ended_at)
            .map(|(s, e)| e.saturating_sub(s));
        row.exit_code = last.exit_code;
        rows.push(row);
        start = end;
    }
    rows
}

/// What `attempts` add up to.
fn usage(h: &JobHistory, task: Option<u32>, attempts: &[&AttemptView]) -> UsageRow {
    let started_at = attempts.iter().filter_map(|a| a.started_at).min();
    let mut nodes: Vec<&str> = attempts.iter().map(|a| a.node.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    UsageRow {
        job: h.job.id,
        task,
        name: h.job.name.clone(),
        state: String::new(),
        tasks: 1,
        attempts: attempts.len() as u32,
        submitted_at: h.job.created_at,
        started_at,
        ended_at: None,
        wait_ms: started_at.map(|s| s.saturating_sub(h.job.created_at)),
        run_ms: None,
        cpu_secs: attempts.iter().filter_map(|a| a.cpu_secs).sum(),
        max_rss_bytes: attempts.iter().filter_map(|a| a.max_rss_bytes).max(),
        exit_code: None,
        nodes: nodes.join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gaffer_api::{JobId, JobSpec, JobState};
    use gaffer_store::JobRow;

    fn attempt(n: u32, node: &str, span: (u64, u64), code: i32, cpu: f64) -> AttemptView {
        AttemptView {
            attempt: n,
            node: node.into(),
            state: if code == 0 {
                TaskState::Succeeded
            } else {
                TaskState::Failed
            },
            started_at: Some(span.0),
            ended_at: Some(span.1),
            exit_code: Some(code),
            signal: None,
            message: None,
            max_rss_bytes: Some(n as u64 * 1000),
            cpu_secs: Some(cpu),
            outputs: Vec::new(),
            ip: None,
            ports: Vec::new(),
            ready: None,
        }
    }

    fn history() -> JobHistory {
        JobHistory {
            job: JobRow {
                id: JobId(3),
                name: "sweep".into(),
                spec: JobSpec::default(),
                state: JobState::Failed,
                counts: gaffer_api::state::TaskCounts {
                    total: 2,
                    ..Default::default()
                },
                created_at: 1000,
                finished_at: Some(9000),
                kill_requested: false,
                held: false,
                next_fresh: 2,
            },
            tasks: Vec::new(),
            attempts: vec![
                (0, attempt(1, "a", (1500, 2000), 0, 0.5)),
                (1, attempt(1, "b", (1200, 3000), 3, 1.0)),
                (1, attempt(2, "a", (4000, 9000), 4, 2.0)),
            ],
        }
    }

    /// Jobs 1 to 8, submitted at 1 s, 2 s, ... 8 s.
    fn store_of_eight() -> (tempfile::TempDir, gaffer_store::sqlite::SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = gaffer_store::sqlite::SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let jobs = (1..=8)
            .map(|i| JobRow {
                id: JobId(i),
                created_at: i * 1000,
                ..history().job
            })
            .collect();
        store
            .commit(&gaffer_store::Batch {
                insert_jobs: jobs,
                ..Default::default()
            })
            .unwrap();
        (dir, store)
    }

    #[test]
    fn pages_cover_the_window_without_losing_a_job() {
        let (_dir, store) = store_of_eight();
        let q = |before| JobQuery {
            state: None,
            name: None,
            before,
            limit: 3,
        };
        // Job 8 is after the window, jobs 1 to 3 before it: the second list page (5, 4, 3)
        // both reaches past the window and holds more of it than this page takes.
        let first = read(&store, q(None), (3500, 7500), false).unwrap();
        let ids: Vec<u64> = first.rows.iter().map(|r| r.job.0).collect();
        assert_eq!(ids, [7, 6, 5]);
        assert_eq!(
            first.next,
            Some(JobId(5)),
            "job 4 is left for the next page"
        );
        let second = read(&store, q(first.next), (3500, 7500), false).unwrap();
        let ids: Vec<u64> = second.rows.iter().map(|r| r.job.0).collect();
        assert_eq!(ids, [4]);
        assert_eq!(second.next, None, "past the window");
    }

    #[test]
    fn a_job_adds_up_its_attempts() {
        let r = job_row(&history());
        assert_eq!(r.wait_ms, Some(200));
        assert_eq!(r.run_ms, Some(7800));
        assert_eq!(r.cpu_secs, 3.5);
        assert_eq!(r.max_rss_bytes, Some(2000));
        assert_eq!(r.exit_code, Some(4), "task 1's last attempt");
        assert_eq!(r.nodes, "a,b");
        assert_eq!(r.attempts, 3);
    }

    #[test]
    fn tasks_get_a_row_each() {
        let rows = task_rows(&history());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].task, Some(1));
        assert_eq!(rows[1].wait_ms, Some(200));
        assert_eq!(rows[1].run_ms, Some(7800));
        assert_eq!(rows[1].cpu_secs, 3.0);
        assert_eq!(rows[1].exit_code, Some(4));
        assert_eq!(rows[0].run_ms, Some(500));
    }
}
