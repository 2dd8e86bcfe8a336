//! `gaffer status`.

use super::util::{ago, job_id, short_duration, table, timestamp};
use crate::cli::StatusArgs;
use crate::client::Client;
use crate::output::Output;
use anyhow::Result;
use gaffer_api::now_ms;
use gaffer_api::views::JobDetail;
use gaffer_api::{ByteSize, JobSpec, TaskState};

fn command_line(spec: &JobSpec) -> String {
    if let Some(s) = &spec.script {
        let lines = s.body.lines().count();
        let args = match spec.command.is_empty() {
            true => String::new(),
            false => format!(" {}", spec.command.join(" ")),
        };
        return format!(
            "script {}{args} ({lines} lines, stored: gaffer status --script)",
            s.name
        );
    }
    match &spec.shell {
        Some(s) => format!("sh -c {s:?}"),
        None => spec.command.join(" "),
    }
}

/// "held", "retrying in 3s": what a job that is not running waits for.
fn waiting_for(d: &JobDetail) -> Option<String> {
    let j = &d.job;
    if j.held {
        return Some(format!("held: gaffer release {}", j.id));
    }
    let now = now_ms();
    let retry = d
        .task_list
        .iter()
        .filter(|t| t.state == TaskState::Pending)
        .filter_map(|t| t.not_before)
        .min()?;
    Some(match retry > now {
        true => format!("retrying in {}", short_duration(retry - now)),
        false => "retrying".to_string(),
    })
}

/// "j-000001 succeeds, j-000002 ends": what a job's dependencies wait for.
fn dependencies(spec: &JobSpec) -> Option<String> {
    let deps = spec.dependencies();
    if deps.is_empty() && !spec.singleton {
        return None;
    }
    let mut parts: Vec<String> = deps
        .iter()
        .map(|(d, k)| {
            let verb = match k {
                gaffer_api::batch::DepKind::Ok => "succeeds",
                gaffer_api::batch::DepKind::Any => "ends",
                gaffer_api::batch::DepKind::NotOk => "fails",
            };
            format!("{d} {verb}")
        })
        .collect();
    if spec.singleton {
        parts.push("every earlier job of its name ends (singleton)".into());
    }
    Some(parts.join(", "))
}

/// `gaffer status`.
pub fn status(c: &Client, out: Output, a: StatusArgs) -> Result<i32> {
    let id = job_id(&a.job)?;
    if a.script {
        let d: JobDetail = c.get(&format!("/v1/jobs/{id}?tasks_limit=0"))?;
        match &d.job.spec.script {
            Some(s) => print!("{}", s.body),
            None => anyhow::bail!("job {id} was not submitted from a script"),
        }
        return Ok(0);
    }
    if out == Output::State {
        // `-o state`: the job's state alone, for scripts; none of its tasks are needed.
        let d: JobDetail = c.get(&format!("/v1/jobs/{id}?tasks_limit=0"))?;
        println!("{}", d.job.state.as_str());
        return Ok(0);
    }
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
    let note = match (j.kill_requested, j.state.is_final()) {
        (true, false) => Some("being killed".to_string()),
        (false, false) => waiting_for(d),
        _ => None,
    };
    match note {
        Some(n) => println!("state    {} ({n})", j.state),
        None => println!("state    {}", j.state),
    }
    println!("command  {}", command_line(&j.spec));
    println!(
        "tasks    {} total: {} pending, {} running, {} succeeded, {} failed, {} killed{}",
        t.total,
        t.pending,
        t.running,
        t.succeeded,
        t.failed,
        t.killed,
        j.spec
            .max_running
            .map(|k| format!(" (at most {k} at once)"))
            .unwrap_or_default()
    );
    if let Some(deps) = dependencies(&j.spec) {
        println!("after    {deps}");
    }
    for (what, file) in [
        ("stdout", &j.spec.stdout_file),
        ("stderr", &j.spec.stderr_file),
    ] {
        if let Some(f) = file {
            println!("{what:<8} also written to {f} on the node");
        }
    }
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
    if let Some(n) = j.spec.net() {
        let ports: Vec<String> = j.spec.ports.iter().map(|p| p.to_string()).collect();
        match ports.is_empty() {
            true => println!("network  {}", network_name(n)),
            false => println!("network  {}, ports {}", network_name(n), ports.join(" ")),
        }
    }
    if let Some(n) = j.spec.replicas {
        println!(
            "replicas {n}, placed and started together: {} … {} (restart {})",
            gaffer_api::cluster::hostname(&j.name, 0),
            gaffer_api::cluster::hostname(&j.name, n - 1),
            j.spec.restart.unwrap_or_default().as_str()
        );
    }
    if let Some(d) = &j.spec.shared_dir {
        println!("shared   {d}: one directory for every replica (on one node unless the agents share --storage-dir)");
    }
    if let Some(svc) = j.spec.service {
        let ready: Vec<String> = d
            .task_list
            .iter()
            .filter(|t| t.attempts.last().is_some_and(|a| a.ready == Some(true)))
            .map(|t| gaffer_api::cluster::hostname(&j.name, t.index))
            .collect();
        println!(
            "service  every node's port {} -> port {} of a ready replica (now: {})",
            svc.host,
            svc.port,
            if ready.is_empty() {
                "none".to_string()
            } else {
                ready.join(", ")
            }
        );
    }
    print!(
        "submitted {} ({})",
        timestamp(j.created_at),
        ago(j.created_at)
    );
    match j.finished_at {
        Some(f) => println!(
            ", finished {} after {}",
            clock(f),
            short_duration(f.saturating_sub(j.created_at))
        ),
        None => println!(),
    }
    let cpu: f64 = d
        .task_list
        .iter()
        .flat_map(|t| &t.attempts)
        .filter_map(|a| a.cpu_secs)
        .sum();
    if cpu > 0.0 {
        println!("cpu time {} (the tasks shown)", cpu_time(cpu));
    }
    if let Some(r) = &j.pending_reason {
        println!("waiting  {r}");
    }
    println!();
    // An address column only for jobs on the bridge network.
    let addressed = d
        .task_list
        .iter()
        .flat_map(|t| &t.attempts)
        .any(|a| a.ip.is_some() || !a.ports.is_empty());
    let mut rows = Vec::new();
    for task in &d.task_list {
        if task.attempts.is_empty() {
            let mut row = vec![task.index.to_string(), task.state.to_string(), "-".into()];
            row.resize(10, String::new());
            rows.push(row);
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
            let retry = match task.not_before {
                Some(t) if t > now_ms() => {
                    format!("retry in {}", short_duration(t - now_ms()))
                }
                _ => "retry pending".to_string(),
            };
            let state = match (is_last && task.state == TaskState::Pending, at.ready) {
                (true, _) => format!("{} ({retry})", at.state),
                (false, Some(true)) => format!("{} (ready)", at.state),
                (false, Some(false)) => format!("{} (not ready)", at.state),
                (false, None) => at.state.to_string(),
            };
            rows.push(vec![
                task.index.to_string(),
                state,
                at.attempt.to_string(),
                at.node.clone(),
                exit,
                at.started_at.map(clock).unwrap_or_default(),
                dur,
                at.cpu_secs.map(cpu_time).unwrap_or_default(),
                mem,
                at.message.clone().unwrap_or_default(),
            ]);
            if addressed {
                let row = rows.last_mut().expect("just pushed");
                row.insert(4, address(at));
            }
        }
    }
    let mut header = vec![
        "TASK", "STATE", "ATTEMPT", "NODE", "EXIT", "STARTED", "DURATION", "CPU", "MAX RSS",
        "REASON",
    ];
    if addressed {
        header.insert(4, "ADDRESS");
        for row in rows.iter_mut().filter(|r| r.len() < header.len()) {
            row.insert(4, String::new());
        }
    }
    table(&header, &rows);
    let shown_to = tasks_from + d.task_list.len() as u32;
    if shown_to < t.total {
        println!(
            "(tasks {}..{} of {}; see more with --tasks-from {shown_to})",
            tasks_from, shown_to, t.total
        );
    }
}

/// A time of day in UTC, `14:03:07`.
fn clock(t: u64) -> String {
    let stamp = timestamp(t);
    stamp
        .split_once('T')
        .map(|(_, time)| time.trim_end_matches('Z').to_string())
        .unwrap_or(stamp)
}

/// CPU seconds for people: `0.42s`, `3m10s`.
fn cpu_time(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.2}s")
    } else {
        short_duration((secs * 1000.0) as u64)
    }
}

fn network_name(n: gaffer_api::Network) -> &'static str {
    match n {
        gaffer_api::Network::Host => "host",
        gaffer_api::Network::None => "none",
        gaffer_api::Network::Bridge => "bridge",
    }
}

/// An attempt's bridge address and mapped ports: `10.88.0.2 18080->80/tcp`.
fn address(a: &gaffer_api::views::AttemptView) -> String {
    let mut parts: Vec<String> = a.ip.iter().cloned().collect();
    parts.extend(
        a.ports
            .iter()
            .map(|p| format!("{}->{}/{}", p.host, p.container, p.protocol)),
    );
    parts.join(" ")
}
