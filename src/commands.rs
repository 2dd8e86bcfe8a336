//! The client subcommands: each turns parsed flags into API calls and prints the answer through
//! the [`Output`] that `-o` chose, for people (tables) or scripts (JSON).

use crate::cli::{
    EventsArgs, JobsArgs, JobsList, LogsArgs, NodeCommand, OutputArgs, RmArgs, StatusArgs,
    SubmitArgs, WaitArgs,
};
use crate::client::{enc, Client};
use crate::output::Output;
use anyhow::{anyhow, bail, Context, Result};
use gaffer_api::now_ms;
use gaffer_api::views::{
    EventView, JobDetail, JobPage, JobView, NodeView, OutputFile, ServersView, SubmitResponse,
};
use gaffer_api::{ByteSize, JobId, JobSpec, Resources, TaskState};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::time::{Duration, Instant, UNIX_EPOCH};

fn job_id(s: &str) -> Result<JobId> {
    s.parse()
        .map_err(|e: gaffer_api::ids::BadJobId| anyhow!("{e}"))
}

/// "3s", "2m10s", "1h5m".
pub(crate) fn short_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    if s < 3600 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{}h", s / 86_400, (s % 86_400) / 3600)
    }
}

pub(crate) fn ago(t: u64) -> String {
    format!("{} ago", short_duration(now_ms().saturating_sub(t)))
}

fn timestamp(t: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(t)).to_string()
}

/// Prints a table with columns padded to their widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn command_line(spec: &JobSpec) -> String {
    match &spec.shell {
        Some(s) => format!("sh -c {s:?}"),
        None => spec.command.join(" "),
    }
}

/// `gaffer submit`.
pub fn submit(c: &Client, out: Output, a: SubmitArgs) -> Result<i32> {
    let body: serde_json::Value = match &a.file {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
            };
            let is_toml = path.extension().is_some_and(|e| e == "toml")
                || (!text.trim_start().starts_with('{') && !text.trim_start().starts_with('['));
            if is_toml {
                let v: toml::Value = toml::from_str(&text)
                    .with_context(|| format!("{} is not valid TOML", path.display()))?;
                serde_json::to_value(v)?
            } else {
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid JSON", path.display()))?
            }
        }
        None => {
            if a.command.is_empty() && a.shell.is_none() {
                bail!("nothing to run: give a command after `--`, --shell 'LINE', or -f FILE (see gaffer submit --help)");
            }
            let spec = JobSpec {
                name: a.name,
                command: a.command,
                shell: a.shell,
                env: a.env.into_iter().collect(),
                workdir: a.workdir,
                image: a.image,
                resources: Resources {
                    cpus: a.cpus,
                    memory: a.memory,
                    pids: a.pids,
                },
                timeout: a.timeout,
                kill_grace: a.kill_grace,
                retries: a.retries,
                retry_backoff: a.retry_backoff,
                outputs: a.outputs,
                array: a.array,
                priority: a.priority,
                constraints: a.constraints.into_iter().collect(),
                strategy: a.strategy,
                user: a.user,
                network: a.network,
                depends_on: a.after.iter().map(|j| job_id(j)).collect::<Result<_>>()?,
            };
            serde_json::to_value(spec)?
        }
    };
    // Always send a key, so that a submit retried after a lost answer (a leader change) is
    // never applied twice.
    let key = a
        .idempotency_key
        .clone()
        .unwrap_or_else(crate::client::idempotency_key);
    let headers = [("Idempotency-Key", key.as_str())];
    let resp: SubmitResponse = c.post("/v1/jobs", &body, &headers)?;
    out.print(&resp, || {
        for id in &resp.ids {
            if a.quiet {
                println!("{id}");
            } else {
                println!("submitted {id}");
            }
        }
    })?;
    if a.wait {
        return wait_ids(c, &resp.ids, None, out.is_human() && !a.quiet);
    }
    Ok(0)
}

fn job_row(j: &JobView) -> Vec<String> {
    let t = &j.tasks;
    let done = t.succeeded + t.failed + t.killed;
    let duration = match j.finished_at {
        Some(f) => short_duration(f.saturating_sub(j.created_at)),
        None => "-".into(),
    };
    vec![
        j.id.to_string(),
        j.name.chars().take(30).collect(),
        j.state.to_string(),
        format!("{done}/{}", t.total),
        if t.failed > 0 {
            t.failed.to_string()
        } else {
            String::new()
        },
        ago(j.created_at),
        duration,
    ]
}

/// `gaffer jobs`.
pub fn jobs(c: &Client, out: Output, a: JobsArgs) -> Result<i32> {
    let mut q = format!("/v1/jobs?limit={}", a.limit);
    if let Some(s) = &a.state {
        q.push_str(&format!("&state={}", enc(s)));
    }
    if let Some(n) = &a.name {
        q.push_str(&format!("&name={}", enc(n)));
    }
    if let Some(b) = &a.before {
        q.push_str(&format!("&before={}", job_id(b)?));
    }
    let page: JobPage = c.get(&q)?;
    out.print(&page, || print_jobs(&page))?;
    Ok(0)
}

/// The human rendering of `gaffer jobs`.
fn print_jobs(page: &JobPage) {
    if page.jobs.is_empty() {
        println!("no jobs");
        return;
    }
    let rows: Vec<Vec<String>> = page.jobs.iter().map(job_row).collect();
    table(
        &[
            "ID",
            "NAME",
            "STATE",
            "DONE",
            "FAILED",
            "SUBMITTED",
            "DURATION",
        ],
        &rows,
    );
    if let Some(n) = page.next {
        println!("(more: gaffer jobs --before {n})");
    }
}

/// `gaffer status`.
pub fn status(c: &Client, out: Output, a: StatusArgs) -> Result<i32> {
    let id = job_id(&a.job)?;
    let d: JobDetail = c.get(&format!(
        "/v1/jobs/{id}?tasks_from={}&tasks_limit={}",
        a.tasks_from, a.tasks_limit
    ))?;
    out.print(&d, || print_status(&d, a.tasks_from))?;
    Ok(0)
}

/// The human rendering of `gaffer status`: the job, then a row per attempt (or task).
fn print_status(d: &JobDetail, tasks_from: u32) {
    let j = &d.job;
    let t = &j.tasks;
    println!("job      {} ({})", j.id, j.name);
    println!(
        "state    {}{}",
        j.state,
        if j.kill_requested && !j.state.is_final() {
            " (kill requested)"
        } else {
            ""
        }
    );
    println!("command  {}", command_line(&j.spec));
    println!(
        "tasks    {} total: {} pending, {} running, {} succeeded, {} failed, {} killed",
        t.total, t.pending, t.running, t.succeeded, t.failed, t.killed
    );
    let mut limits = Vec::new();
    limits.push(format!("cpus {}", j.spec.cpus()));
    if let Some(m) = j.spec.resources.memory {
        limits.push(format!("memory {m}"));
    }
    if let Some(to) = j.spec.timeout {
        limits.push(format!("timeout {to}"));
    }
    if j.spec.retries > 0 {
        limits.push(format!("retries {}", j.spec.retries));
    }
    println!("limits   {}", limits.join(", "));
    print!(
        "submitted {} ({})",
        timestamp(j.created_at),
        ago(j.created_at)
    );
    match j.finished_at {
        Some(f) => println!(
            ", finished after {}",
            short_duration(f.saturating_sub(j.created_at))
        ),
        None => println!(),
    }
    if let Some(r) = &j.pending_reason {
        println!("waiting  {r}");
    }
    println!();
    let mut rows = Vec::new();
    for task in &d.task_list {
        if task.attempts.is_empty() {
            rows.push(vec![
                task.index.to_string(),
                task.state.to_string(),
                "-".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        for at in &task.attempts {
            let exit = match (at.exit_code, at.signal) {
                (Some(c), _) => c.to_string(),
                (None, Some(s)) => format!("sig {s}"),
                _ => String::new(),
            };
            let dur = match (at.started_at, at.ended_at) {
                (Some(s), Some(e)) => short_duration(e.saturating_sub(s)),
                (Some(s), None) => format!("{}+", short_duration(now_ms().saturating_sub(s))),
                _ => String::new(),
            };
            let mem = at
                .max_rss_bytes
                .map(|b| ByteSize(b).to_string())
                .unwrap_or_default();
            let is_last = at.attempt == task.attempts.len() as u32;
            let state = if is_last && task.state == TaskState::Pending {
                format!("{} (retry pending)", at.state)
            } else {
                at.state.to_string()
            };
            rows.push(vec![
                task.index.to_string(),
                state,
                at.attempt.to_string(),
                at.node.clone(),
                exit,
                dur,
                mem,
                at.message.clone().unwrap_or_default(),
            ]);
        }
    }
    table(
        &[
            "TASK", "STATE", "ATTEMPT", "NODE", "EXIT", "DURATION", "MAX RSS", "REASON",
        ],
        &rows,
    );
    let shown_to = tasks_from + d.task_list.len() as u32;
    if shown_to < t.total {
        println!(
            "(tasks {}..{} of {}; see more with --tasks-from {shown_to})",
            tasks_from, shown_to, t.total
        );
    }
}

/// `gaffer logs`.
pub fn logs(c: &Client, a: LogsArgs) -> Result<i32> {
    // `JOB.TASK` (the form of GAFFER_TASK_ID) names the task too.
    let (id, task) = match a.job.rsplit_once('.') {
        Some((job, index)) if !job.is_empty() => {
            let index: u32 = index.parse().map_err(|_| {
                anyhow!("`{}` is not a job id or JOB.TASK (like j-000003.2)", a.job)
            })?;
            if a.task != 0 && a.task != index {
                bail!("`{}` names task {index}, but --task says {}", a.job, a.task);
            }
            (job_id(job)?, index)
        }
        _ => (job_id(&a.job)?, a.task),
    };
    let q = format!(
        "/v1/jobs/{id}/logs?task={}&stream={}&follow={}",
        task,
        if a.stderr { "stderr" } else { "stdout" },
        a.follow
    );
    // A stream that breaks (the server or its leader died) is resumed at the byte it broke
    // at, on the same attempt, through whichever server answers next.
    let mut attempt = a.attempt;
    let mut sent = 0u64;
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    let mut resume = Resume::default();
    loop {
        let mut path = format!("{q}&offset={sent}");
        if let Some(n) = attempt {
            path.push_str(&format!("&attempt={n}"));
        }
        let resp = match c.get_stream(&path) {
            Ok(r) => r,
            Err(e) if resume.resuming() => {
                return Err(e.context("the log stream broke and could not be resumed"))
            }
            Err(e) => return Err(e),
        };
        if attempt.is_none() {
            attempt = resp
                .header(gaffer_server::api::ATTEMPT_HEADER)
                .and_then(|v| v.parse().ok());
        }
        let mut r = resp.into_reader();
        let broke = loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(0),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break e,
            };
            if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                return Ok(0); // stdout closed (e.g. piped into head)
            }
            sent += n as u64;
            resume.progressed();
        };
        if !a.follow {
            return Err(anyhow!("the log stream broke: {broke}"));
        }
        resume.broke("log", &broke, || format!("resuming at byte {sent}"))?;
    }
}

/// A followed stream (`logs -f`, `events -f`) that breaks when its server goes away, resumed
/// through whichever server answers next.
#[derive(Default)]
struct Resume {
    /// When it broke, if nothing arrived since.
    broke_at: Option<Instant>,
}

impl Resume {
    /// How long a stream may stay broken without anything arriving.
    const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

    fn resuming(&self) -> bool {
        self.broke_at.is_some()
    }

    fn progressed(&mut self) {
        self.broke_at = None;
    }

    /// Says once per break where it resumes, waits a moment; an error once it gave up.
    fn broke(
        &mut self,
        what: &str,
        why: &dyn std::fmt::Display,
        at: impl FnOnce() -> String,
    ) -> Result<()> {
        match self.broke_at {
            Some(t) if t.elapsed() > Self::GIVE_UP_AFTER => {
                bail!("the {what} stream broke: {why}")
            }
            Some(_) => {}
            None => {
                eprintln!("gaffer: the {what} stream broke ({why}); {}", at());
                self.broke_at = Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }
}

use std::io::Read as _;

/// `gaffer kill`.
pub fn kill(c: &Client, out: Output, a: JobsList) -> Result<i32> {
    let mut answers = Vec::new();
    for j in &a.jobs {
        let id = job_id(j)?;
        let v: serde_json::Value =
            c.post_idempotent(&format!("/v1/jobs/{id}/kill"), &serde_json::json!({}))?;
        out.human(|| {
            let state = v["state"].as_str().unwrap_or("?");
            if matches!(state, "succeeded" | "failed") {
                println!("{id} had already finished ({state})");
            } else {
                println!("{id}: kill requested (running tasks get SIGTERM, then SIGKILL after their grace period)");
            }
        });
        answers.push(v);
    }
    out.json(&answers)?;
    Ok(0)
}

/// `gaffer retry`.
pub fn retry(c: &Client, out: Output, a: JobsList) -> Result<i32> {
    let mut answers = Vec::new();
    for j in &a.jobs {
        let id = job_id(j)?;
        let v: serde_json::Value =
            c.post(&format!("/v1/jobs/{id}/retry"), &serde_json::json!({}), &[])?;
        out.human(|| match v["retried"].as_u64().unwrap_or(0) {
            0 => println!("{id}: no failed task to retry"),
            n => println!("{id}: {n} task(s) queued again"),
        });
        answers.push(v);
    }
    out.json(&answers)?;
    Ok(0)
}

/// `gaffer rm`.
pub fn rm(c: &Client, a: RmArgs) -> Result<i32> {
    for j in &a.jobs {
        let id = job_id(j)?;
        c.delete(&format!(
            "/v1/jobs/{id}{}",
            if a.force { "?force=true" } else { "" }
        ))?;
        println!("removed {id}");
    }
    Ok(0)
}

/// `gaffer wait`.
pub fn wait(c: &Client, out: Output, a: WaitArgs) -> Result<i32> {
    let ids = a
        .jobs
        .iter()
        .map(|j| job_id(j))
        .collect::<Result<Vec<_>>>()?;
    let code = wait_ids(c, &ids, a.timeout.map(|t| t.as_std()), out.is_human())?;
    out.json_with(|| {
        let mut views = Vec::new();
        for id in &ids {
            let d: JobDetail = c.get(&format!("/v1/jobs/{id}?tasks_limit=0"))?;
            views.push(d.job);
        }
        Ok(views)
    })?;
    Ok(code)
}

fn wait_ids(c: &Client, ids: &[JobId], timeout: Option<Duration>, human: bool) -> Result<i32> {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal() && human;
    let mut all_ok = true;
    for id in ids {
        let mut bar: Option<indicatif::ProgressBar> = None;
        let mut delay = Duration::from_millis(50);
        let job = loop {
            let d: JobDetail = c.get(&format!("/v1/jobs/{id}?tasks_limit=0"))?;
            let j = d.job;
            let t = j.tasks;
            if tty && t.total > 1 {
                let b = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::new(t.total as u64);
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    b.set_prefix(id.to_string());
                    b
                });
                b.set_position((t.succeeded + t.failed + t.killed) as u64);
                b.set_message(format!("{} running, {} failed", t.running, t.failed));
            }
            if j.state.is_final() {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                break j;
            }
            if timeout.is_some_and(|to| start.elapsed() >= to) {
                if let Some(b) = bar.take() {
                    b.abandon();
                }
                eprintln!("gaffer wait: timed out; {id} is still {}", j.state);
                return Ok(124);
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(500));
        };
        let ok = job.state == gaffer_api::JobState::Succeeded;
        all_ok &= ok;
        if human {
            let t = job.tasks;
            let took = job
                .finished_at
                .map(|f| short_duration(f.saturating_sub(job.created_at)))
                .unwrap_or_default();
            if t.total > 1 {
                println!(
                    "{id} {}: {} succeeded, {} failed, {} killed of {} ({took})",
                    job.state, t.succeeded, t.failed, t.killed, t.total
                );
            } else {
                println!("{id} {} ({took})", job.state);
            }
        }
    }
    Ok(if all_ok { 0 } else { 1 })
}

/// `gaffer output`.
pub fn output(c: &Client, out: Output, a: OutputArgs) -> Result<i32> {
    let id = job_id(&a.job)?;
    let mut q = format!("/v1/jobs/{id}/outputs");
    if let Some(t) = a.task {
        q.push_str(&format!("?task={t}"));
    }
    let files: Vec<OutputFile> = c.get(&q)?;
    let d: JobDetail = c.get(&format!("/v1/jobs/{id}?tasks_limit=0"))?;
    let single = d.job.tasks.total == 1;
    if files.is_empty() {
        out.print(&files, || {
            println!("job {id} has no output files (declare them with --output GLOB)")
        })?;
        return Ok(0);
    }
    for f in &files {
        let dest = if single {
            a.dest.join(&f.path)
        } else {
            a.dest.join(f.task.to_string()).join(&f.path)
        };
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        let path_q: String = f.path.split('/').map(enc).collect::<Vec<_>>().join("/");
        let mut r = c.get_reader(&format!(
            "/v1/jobs/{id}/outputs/{}/{path_q}?attempt={}",
            f.task, f.attempt
        ))?;
        let mut file = std::fs::File::create(&dest)
            .with_context(|| format!("cannot write {}", dest.display()))?;
        std::io::copy(&mut r, &mut file)
            .with_context(|| format!("download of {} failed", f.path))?;
        out.human(|| println!("{}", dest.display()));
    }
    out.json(&files)?;
    Ok(0)
}

/// `gaffer nodes`.
/// `gaffer servers`.
pub fn servers(c: &Client, out: Output) -> Result<i32> {
    let v: ServersView = c.get("/v1/servers")?;
    out.print(&v, || print_servers(&v))?;
    Ok(0)
}

/// The human rendering of `gaffer servers`.
fn print_servers(v: &ServersView) {
    let now = now_ms();
    let rows: Vec<Vec<String>> = v
        .servers
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.url.clone(),
                if s.leader { "leader" } else { "follower" }.to_string(),
                format!("{} ago", short_duration(now.saturating_sub(s.since))),
            ]
        })
        .collect();
    table(&["ID", "URL", "ROLE", "JOINED"], &rows);
    match (&v.leader, v.term) {
        (Some(l), Some(t)) => println!("leader {l}, term {t} (answered by {})", v.answered_by),
        _ => println!(
            "no leader elected right now (answered by {}); an election takes up to the lease TTL",
            v.answered_by
        ),
    }
}

/// `gaffer nodes`.
pub fn nodes(c: &Client, out: Output) -> Result<i32> {
    let nodes: Vec<NodeView> = c.get("/v1/nodes")?;
    out.print(&nodes, || print_nodes(&nodes))?;
    Ok(0)
}

/// The human rendering of `gaffer nodes`.
fn print_nodes(nodes: &[NodeView]) {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                n.name.clone(),
                n.address.clone(),
                n.state.clone(),
                format!("{}/{}", n.cpus_allocated, n.cpus_total),
                format!(
                    "{}/{}",
                    ByteSize(n.memory_allocated),
                    ByteSize(n.memory_total)
                ),
                ByteSize(n.memory_free).to_string(),
                n.running_tasks.to_string(),
                format!("{} ago", short_duration(n.heartbeat_age_ms)),
                labels.join(","),
                n.images.join(","),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ADDRESS",
            "STATE",
            "CPUS ALLOC/TOTAL",
            "MEMORY ALLOC/TOTAL",
            "FREE MEM",
            "TASKS",
            "HEARTBEAT",
            "LABELS",
            "IMAGES",
        ],
        &rows,
    );
}

fn print_event(e: &EventView, out: Output) -> Result<()> {
    println!("{}", out.line(e, || event_line(e))?);
    Ok(())
}

/// An event as a line for people.
fn event_line(e: &EventView) -> String {
    let what = match (e.task, e.attempt) {
        (Some(t), Some(a)) => format!("{}.{t}#{a}", e.job),
        (Some(t), None) => format!("{}.{t}", e.job),
        _ => e.job.to_string(),
    };
    let from = e
        .from
        .as_deref()
        .map(|f| format!("{f} -> "))
        .unwrap_or_default();
    format!("{} {what} {from}{} {}", timestamp(e.time), e.to, e.detail)
}

/// `gaffer events`.
pub fn events(c: &Client, out: Output, a: EventsArgs) -> Result<i32> {
    let job = a.job.as_deref().map(job_id).transpose()?;
    let mut after = match (a.after, a.follow) {
        (Some(n), _) => Some(n),
        (None, false) => Some(0),
        (None, true) => None,
    };
    let idle = !a.follow;
    let mut resume = Resume::default();
    loop {
        let mut q = String::from("/v1/events?");
        if let Some(n) = after {
            q.push_str(&format!("after={n}&"));
        }
        if let Some(j) = job {
            q.push_str(&format!("job={j}"));
        }
        let r = c.get_reader(&q)?;
        let reader = BufReader::new(r);
        // Without -f we stop once the replay is done: the server then only sends keep-alives.
        // Lines, then `None` at a clean end of the stream (or an error).
        let (tx, rx) = std::sync::mpsc::channel::<Option<Result<String, String>>>();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let end = line.is_err();
                if tx.send(Some(line.map_err(|e| e.to_string()))).is_err() || end {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        let broke = loop {
            let line = if idle {
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(l) => l,
                    Err(_) => return Ok(0),
                }
            } else {
                rx.recv().unwrap_or(None)
            };
            let line = match line {
                Some(Ok(l)) => l,
                None if idle => return Ok(0),
                None => break "the server ended the stream".to_string(),
                Some(Err(e)) if idle => return Err(anyhow!("the event stream broke: {e}")),
                Some(Err(e)) => break e,
            };
            if let Some(data) = line.strip_prefix("data:") {
                let e: EventView =
                    serde_json::from_str(data.trim()).context("bad event from the server")?;
                print_event(&e, out)?;
                after = Some(e.id);
                resume.progressed();
            }
        };
        // -f: the stream only ends when its server goes away; resume after the last event
        // through whichever server answers next.
        resume.broke("event", &broke, || {
            format!(
                "resuming after event {}",
                after.map_or("(none yet)".to_string(), |n| n.to_string())
            )
        })?;
    }
}

/// `gaffer node drain|enable`.
pub fn node(c: &Client, cmd: NodeCommand) -> Result<i32> {
    match cmd {
        NodeCommand::Drain { node, migrate } => {
            let _: serde_json::Value =
                c.post_empty(&format!("/v1/nodes/{}/drain?migrate={migrate}", enc(&node)))?;
            if migrate {
                println!("{node} drained; its running tasks are being moved elsewhere");
            } else {
                println!("{node} drained: no new tasks will be placed there");
            }
        }
        NodeCommand::Enable { node } => {
            let _: serde_json::Value = c.post_empty(&format!("/v1/nodes/{}/enable", enc(&node)))?;
            println!("{node} enabled");
        }
    }
    Ok(0)
}
