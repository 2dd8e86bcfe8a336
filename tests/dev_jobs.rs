//! The CLI against a real `gaffer dev`: submitting, logs, timeouts, retries, arrays, spec files,
//! outputs, listing, killing, waiting and removing.

mod util;

use serde_json::{json, Value};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

fn is_job_id(s: &str) -> bool {
    s.strip_prefix("j-")
        .is_some_and(|d| d.len() >= 6 && d.bytes().all(|b| b.is_ascii_digit()))
}

fn parse_json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", out.stdout))
}

/// Rows of a `gaffer jobs` table: the first column of each line after the header.
fn listed_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("j-"))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn submit_prints_the_id_runs_the_job_and_logs_show_its_output() {
    let dev = Dev::start();
    let out = dev
        .gaffer(&["submit", "--name", "hello", "--", "echo", "hello", "world"])
        .ok();
    let line = out.stdout.trim();
    let id = line
        .strip_prefix("submitted ")
        .unwrap_or_else(|| panic!("expected `submitted j-...`, got {line:?}"));
    assert!(is_job_id(id), "{line:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");

    let q = dev.gaffer(&["submit", "-q", "--", "true"]).ok();
    assert!(
        is_job_id(q.stdout.trim()),
        "-q must print only the id: {q:?}"
    );
    assert_eq!(q.stdout.lines().count(), 1, "{q:?}");
    assert_ne!(q.stdout.trim(), id);

    let w = dev.gaffer(&["wait", id]);
    assert_eq!(w.code, 0, "{w:?}");
    let j = dev.job(id);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["name"], "hello", "{j}");
    assert_eq!(j["task_list"][0]["state"], "succeeded", "{j}");
    let logs = dev.gaffer(&["logs", id]).ok();
    assert_eq!(logs.stdout, "hello world\n");
}

#[test]
fn json_format_of_submit_jobs_status_and_nodes_is_valid_json() {
    let dev = Dev::start();
    let out = dev.gaffer(&["-o", "json", "submit", "--", "true"]).ok();
    let v = parse_json(&out);
    let id = v["ids"][0].as_str().expect("ids[0]").to_string();
    assert!(is_job_id(&id), "{v}");
    dev.wait_final(&id, JOB_TIMEOUT);

    let jobs = parse_json(&dev.gaffer(&["jobs", "-o", "json"]).ok());
    let listed: Vec<&str> = jobs["jobs"]
        .as_array()
        .expect("jobs array")
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(listed, vec![id.as_str()], "{jobs}");

    let status = parse_json(&dev.gaffer(&["status", "-o", "json", &id]).ok());
    assert_eq!(status["id"], id.as_str());
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["task_list"][0]["attempts"][0]["exit_code"], 0);

    let nodes = parse_json(&dev.gaffer(&["nodes", "-o", "json"]).ok());
    let nodes = nodes.as_array().expect("nodes array");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["state"], "ready");
    assert!(nodes[0]["cpus_total"].as_f64().unwrap_or(0.0) > 0.0);
}

#[test]
fn shell_job_runs_through_sh_and_logs_follow_exits_when_the_task_ends() {
    let dev = Dev::start();
    let id = dev.submit_cli(&["--shell", "for i in 1 2 3; do echo $i; sleep 0.2; done"]);
    dev.wait_job(&id, "started", |j| j["state"] != "pending");
    let out = dev
        .gaffer_timeout(&["logs", "-f", &id], Duration::from_secs(30))
        .ok();
    assert_eq!(out.stdout, "1\n2\n3\n");
    let j = dev.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(
        j["spec"]["shell"],
        "for i in 1 2 3; do echo $i; sleep 0.2; done"
    );
}

#[test]
fn logs_follow_streams_output_while_the_task_runs() {
    let dev = Dev::start();
    let wd = dev.root().join("follow");
    std::fs::create_dir(&wd).unwrap();
    let wd_s = wd.to_str().unwrap();
    // The task prints a line, then waits for the test to create `go`.
    let id = dev.submit_cli(&[
        "--workdir",
        wd_s,
        "--shell",
        "echo first; while [ ! -e go ]; do sleep 0.05; done; echo second",
    ]);
    let mut child = Command::new(BIN)
        .args(["logs", "-f", &id])
        .env("GAFFER_ADDR", &dev.addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut so = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = so.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !got.ends_with(b"first\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(b) => got.extend(b),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "logs -f printed {:?} and nothing more",
                    String::from_utf8_lossy(&got)
                );
            }
        }
    }
    // The task is still waiting, and `logs -f` is still following it.
    assert_eq!(dev.job(&id)["state"], "running");
    assert!(child.try_wait().unwrap().is_none(), "logs -f ended early");
    std::fs::write(wd.join("go"), "").unwrap();
    let status = wait_child(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("logs -f did not exit after the task ended");
    });
    assert!(status.success(), "{status}");
    while let Ok(b) = rx.recv_timeout(Duration::from_secs(5)) {
        got.extend(b);
    }
    assert_eq!(String::from_utf8_lossy(&got), "first\nsecond\n");
    assert_eq!(dev.wait_final(&id, JOB_TIMEOUT)["state"], "succeeded");
}

#[test]
fn timeout_ends_the_task_as_timed_out_and_the_job_as_failed() {
    let dev = Dev::start();
    let t0 = Instant::now();
    let id = dev.submit_cli(&[
        "--timeout",
        "1s",
        "--kill-grace",
        "500ms",
        "--",
        "sleep",
        "30",
    ]);
    let j = dev.wait_final(&id, Duration::from_secs(30));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["task_list"][0]["state"], "timed_out", "{j}");
    let a = attempts(&j, 0);
    assert_eq!(a.len(), 1, "{j}");
    assert_eq!(a[0]["state"], "timed_out");
    assert_eq!(a[0]["signal"], 15, "sleep dies of the SIGTERM: {j}");
    let ran = a[0]["ended_at"].as_u64().unwrap() - a[0]["started_at"].as_u64().unwrap();
    assert!((900..5000).contains(&ran), "ran {ran} ms");
}

#[test]
fn task_ignoring_sigterm_is_sigkilled_after_the_grace_period() {
    let dev = Dev::start();
    let id = dev.submit_cli(&[
        "--timeout",
        "1s",
        "--kill-grace",
        "1s",
        "--shell",
        "trap '' TERM; sleep 30",
    ]);
    let j = dev.wait_final(&id, Duration::from_secs(30));
    assert_eq!(j["state"], "failed", "{j}");
    let a = attempts(&j, 0);
    assert_eq!(a.len(), 1, "{j}");
    assert_eq!(a[0]["state"], "timed_out", "{j}");
    assert_eq!(a[0]["signal"], 9, "{j}");
    let ran = a[0]["ended_at"].as_u64().unwrap() - a[0]["started_at"].as_u64().unwrap();
    assert!(
        (1800..10_000).contains(&ran),
        "timeout plus grace should take about 2s, took {ran} ms"
    );
}

#[test]
fn retries_make_exactly_n_plus_one_attempts_spaced_by_a_doubling_backoff() {
    let dev = Dev::start();
    let id = dev.submit_cli(&[
        "--retries",
        "3",
        "--retry-backoff",
        "100ms",
        "--shell",
        "exit 1",
    ]);
    let j = dev.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["task_list"][0]["state"], "failed", "{j}");
    let a = attempts(&j, 0);
    assert_eq!(a.len(), 4, "{j}");
    for (i, at) in a.iter().enumerate() {
        assert_eq!(at["attempt"], i as u64 + 1, "{at}");
        assert_eq!(at["state"], "failed", "{at}");
        assert_eq!(at["exit_code"], 1, "{at}");
        assert!(at["started_at"].is_u64(), "{at}");
        assert!(at["ended_at"].is_u64(), "{at}");
    }
    for i in 1..a.len() {
        let prev_end = a[i - 1]["ended_at"].as_u64().unwrap();
        let start = a[i]["started_at"].as_u64().unwrap();
        let want = 100u64 << (i - 1);
        assert!(
            start >= prev_end + want,
            "attempt {} started {} ms after attempt {} ended; back-off is {want} ms",
            i + 1,
            start as i64 - prev_end as i64,
            i
        );
    }

    // `gaffer status` shows every attempt with its exit code.
    let st = dev.gaffer(&["status", &id]).ok().stdout;
    assert!(st.contains("state    failed"), "{st}");
    assert!(st.contains("1 failed"), "{st}");
    let rows: Vec<Vec<&str>> = st
        .lines()
        .skip_while(|l| !l.starts_with("TASK"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{st}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[0], "0", "{st}");
        assert_eq!(r[1], "failed", "{st}");
        assert_eq!(r[2], (i + 1).to_string(), "{st}");
        assert_eq!(r[4], "1", "exit code column: {st}");
    }
}

#[test]
fn array_of_100_tasks_runs_each_index_with_its_ids_in_the_environment() {
    let dev = Dev::start();
    let id = dev.submit_cli(&[
        "--array",
        "100",
        "--cpus",
        "0.1",
        "--shell",
        "echo $GAFFER_TASK_INDEX; echo \"$GAFFER_JOB_ID $GAFFER_TASK_ID $GAFFER_ATTEMPT\" >&2",
    ]);
    let j = dev.wait_final(&id, Duration::from_secs(120));
    assert_eq!(j["state"], "succeeded", "{}", j["tasks"]);
    assert_eq!(j["tasks"]["total"], 100);
    assert_eq!(j["tasks"]["succeeded"], 100);
    assert_eq!(dev.job_count(), 1, "an array is one job");
    let tasks = j["task_list"].as_array().unwrap();
    assert_eq!(tasks.len(), 100);
    for (i, task) in tasks.iter().enumerate() {
        assert_eq!(task["index"], i as u64);
        assert_eq!(task["state"], "succeeded");
        let (code, out) = dev.get(&format!("/v1/jobs/{id}/logs?task={i}"));
        assert_eq!(code, 200);
        assert_eq!(out, format!("{i}\n"), "stdout of task {i}");
        let (code, err) = dev.get(&format!("/v1/jobs/{id}/logs?task={i}&stream=stderr"));
        assert_eq!(code, 200);
        assert_eq!(err, format!("{id} {id}.{i} 1\n"), "env of task {i}");
    }
    // The CLI takes the task id as GAFFER_TASK_ID spells it.
    let out = dev.gaffer(&["logs", &format!("{id}.42")]).ok();
    assert_eq!(out.stdout, "42\n");
    let out = dev.gaffer(&["logs", &format!("{id}.42"), "--task", "7"]);
    assert!(
        out.code != 0 && out.stderr.contains("--task says 7"),
        "{out:?}"
    );
}

#[test]
fn submit_file_with_a_json_list_creates_every_job() {
    let dev = Dev::start();
    let f = dev.root().join("jobs.json");
    std::fs::write(
        &f,
        json!([
            {"name": "a", "command": ["true"]},
            {"name": "b", "shell": "echo b"},
            {"name": "c", "command": ["echo", "c"], "array": 2, "resources": {"cpus": 0.1}}
        ])
        .to_string(),
    )
    .unwrap();
    let out = dev
        .gaffer(&["submit", "-q", "-f", f.to_str().unwrap()])
        .ok();
    let ids: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(ids.len(), 3, "{out:?}");
    assert_eq!(dev.job_count(), 3);
    for (id, name) in ids.iter().zip(["a", "b", "c"]) {
        let j = dev.wait_final(id, JOB_TIMEOUT);
        assert_eq!(j["name"], name);
        assert_eq!(j["state"], "succeeded", "{j}");
    }
}

#[test]
fn submit_file_with_one_bad_spec_creates_no_job_and_names_every_bad_field() {
    let dev = Dev::start();
    dev.submit(json!({"command": ["true"]}));
    assert_eq!(dev.job_count(), 1);
    let f = dev.root().join("bad.json");
    std::fs::write(
        &f,
        json!([
            {"command": ["true"]},
            {"command": ["true"], "bogus_field": 1},
            {"command": []},
            {"shell": "true", "array": 0}
        ])
        .to_string(),
    )
    .unwrap();
    let out = dev.gaffer(&["submit", "-f", f.to_str().unwrap()]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    for want in ["job 1: bogus_field", "job 2: command", "job 3: array"] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?} in {}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("job 0"), "{}", out.stderr);
    assert_eq!(dev.job_count(), 1, "a rejected batch must create nothing");
}

#[test]
fn submit_file_in_toml_creates_the_jobs() {
    let dev = Dev::start();
    let f = dev.root().join("jobs.toml");
    std::fs::write(
        &f,
        "[[jobs]]\nname = \"one\"\ncommand = [\"echo\", \"one\"]\n\n\
         [[jobs]]\nname = \"two\"\nshell = \"echo two\"\ntimeout = \"30s\"\n\n\
         [jobs.resources]\ncpus = 0.5\nmemory = \"64M\"\n",
    )
    .unwrap();
    let out = dev
        .gaffer(&["submit", "-q", "-f", f.to_str().unwrap()])
        .ok();
    let ids: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(ids.len(), 2, "{out:?}");
    let one = dev.wait_final(ids[0], JOB_TIMEOUT);
    let two = dev.wait_final(ids[1], JOB_TIMEOUT);
    assert_eq!(one["name"], "one");
    assert_eq!(two["name"], "two");
    assert_eq!(one["state"], "succeeded", "{one}");
    assert_eq!(two["state"], "succeeded", "{two}");
    assert_eq!(two["spec"]["resources"]["memory"], 64 << 20);
    assert_eq!(two["spec"]["timeout"], "30s");
    assert_eq!(dev.gaffer(&["logs", ids[1]]).ok().stdout, "two\n");
}

#[test]
fn env_workdir_and_resources_reach_the_task_and_the_spec() {
    let dev = Dev::start();
    let wd = dev.root().join("some dir");
    std::fs::create_dir(&wd).unwrap();
    let id = dev.submit_cli(&[
        "--env",
        "K=V with = sign",
        "--env",
        "OTHER=2",
        "--workdir",
        wd.to_str().unwrap(),
        "--cpus",
        "0.5",
        "--memory",
        "256M",
        "--shell",
        "echo \"$K/$OTHER\"; pwd",
    ]);
    let j = dev.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    let logs = dev.gaffer(&["logs", &id]).ok().stdout;
    let real = std::fs::canonicalize(&wd).unwrap();
    assert_eq!(logs, format!("V with = sign/2\n{}\n", real.display()));
    let spec = &j["spec"];
    assert_eq!(spec["resources"]["memory"], 268_435_456u64, "{spec}");
    assert_eq!(spec["resources"]["cpus"], 0.5, "{spec}");
    assert_eq!(spec["env"]["K"], "V with = sign", "{spec}");
    assert_eq!(spec["workdir"], wd.to_str().unwrap(), "{spec}");
}

#[test]
fn output_glob_keeps_only_matching_files_and_output_downloads_them() {
    let dev = Dev::start();
    let id = dev.submit_cli(&[
        "--output",
        "results/*.csv",
        "--shell",
        "mkdir results; printf 'x,y\\n1,2\\n' > results/a.csv; echo nope > results/b.txt",
    ]);
    let j = dev.wait_final(&id, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    let listed = dev.get_json(&format!("/v1/jobs/{id}/outputs"));
    assert_eq!(
        listed,
        json!([{"task": 0, "attempt": 1, "path": "results/a.csv", "size": 8}])
    );
    let dest = dev.root().join("download");
    dev.gaffer(&["output", &id, "--dest", dest.to_str().unwrap()])
        .ok();
    assert_eq!(
        std::fs::read_to_string(dest.join("results/a.csv")).unwrap(),
        "x,y\n1,2\n"
    );
    assert!(!dest.join("results/b.txt").exists());
    let mut files = Vec::new();
    let mut stack = vec![dest.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    assert_eq!(files, vec![dest.join("results/a.csv")]);
}

#[test]
fn jobs_filters_by_state_and_pages_with_before() {
    let dev = Dev::start();
    let mut ok = Vec::new();
    for i in 0..5 {
        ok.push(dev.submit(json!({"name": format!("ok{i}"), "command": ["true"]})));
    }
    let bad = dev.submit(json!({"name": "bad", "command": ["false"]}));
    for id in ok.iter().chain([&bad]) {
        dev.wait_final(id, JOB_TIMEOUT);
    }
    // Newest first, two at a time, following the printed hint.
    let p1 = dev
        .gaffer(&["jobs", "--state", "succeeded", "--limit", "2"])
        .ok()
        .stdout;
    assert_eq!(listed_ids(&p1), vec![ok[4].clone(), ok[3].clone()], "{p1}");
    let hint = format!("--before {}", ok[3]);
    assert!(p1.contains(&hint), "missing {hint:?}: {p1}");
    let p2 = dev
        .gaffer(&[
            "jobs",
            "--state",
            "succeeded",
            "--limit",
            "2",
            "--before",
            &ok[3],
        ])
        .ok()
        .stdout;
    assert_eq!(listed_ids(&p2), vec![ok[2].clone(), ok[1].clone()], "{p2}");
    assert!(p2.contains("--before"), "{p2}");
    let p3 = dev
        .gaffer(&[
            "jobs",
            "--state",
            "succeeded",
            "--limit",
            "2",
            "--before",
            &ok[1],
        ])
        .ok()
        .stdout;
    assert_eq!(listed_ids(&p3), vec![ok[0].clone()], "{p3}");
    assert!(!p3.contains("--before"), "last page has no hint: {p3}");
    let failed = dev.gaffer(&["jobs", "--state", "failed"]).ok().stdout;
    assert_eq!(listed_ids(&failed), vec![bad.clone()], "{failed}");

    // The JSON `next` cursor walks the same pages.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..10 {
        let q = match &before {
            Some(b) => format!("/v1/jobs?state=succeeded&limit=2&before={b}"),
            None => "/v1/jobs?state=succeeded&limit=2".to_string(),
        };
        let page = dev.get_json(&q);
        for j in page["jobs"].as_array().unwrap() {
            assert_eq!(j["state"], "succeeded");
            seen.push(j["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => before = Some(n.to_string()),
            None => break,
        }
    }
    let mut want = ok.clone();
    want.reverse();
    assert_eq!(seen, want);
}

#[test]
fn kill_ends_the_task_as_killed_and_leaves_no_process_behind() {
    let dev = Dev::start();
    let mark = unique("mark");
    let entry = format!("MARK={mark}");
    let id = dev.submit_cli(&["--env", &entry, "--shell", "sleep 100 & sleep 100 & wait"]);
    wait_until(
        "the task's three processes",
        Duration::from_secs(30),
        || (pids_with_env(&entry).len() >= 3).then_some(()),
    );
    let out = dev.gaffer(&["kill", &id]).ok();
    assert!(out.stdout.contains("killing"), "{out:?}");
    let j = dev.wait_final(&id, Duration::from_secs(30));
    assert_eq!(j["state"], "killed", "{j}");
    assert_eq!(j["task_list"][0]["state"], "killed", "{j}");
    assert_eq!(attempts(&j, 0)[0]["state"], "killed", "{j}");
    wait_until(
        "every process of the killed task to be gone",
        Duration::from_secs(30),
        || pids_with_env(&entry).is_empty().then_some(()),
    );
}

#[test]
fn kill_of_an_array_kills_pending_tasks_that_never_started() {
    let dev = Dev::start_with(&["--cpus", "2"]);
    let mark = unique("mark");
    let entry = format!("MARK={mark}");
    let id = dev.submit_cli(&[
        "--array", "50", "--cpus", "1", "--env", &entry, "--", "sleep", "30",
    ]);
    let j = dev.wait_job(&id, "two tasks running", |j| j["tasks"]["running"] == 2);
    assert_eq!(j["tasks"]["pending"], 48, "{}", j["tasks"]);
    dev.gaffer(&["kill", &id]).ok();
    let j = dev.wait_final(&id, Duration::from_secs(30));
    assert_eq!(j["state"], "killed", "{}", j["tasks"]);
    assert_eq!(j["tasks"]["killed"], 50, "{}", j["tasks"]);
    let tasks = j["task_list"].as_array().unwrap();
    assert_eq!(tasks.len(), 50);
    assert!(tasks.iter().all(|t| t["state"] == "killed"));
    let never_started = tasks
        .iter()
        .filter(|t| t["attempts"].as_array().unwrap().is_empty())
        .count();
    assert_eq!(never_started, 48, "tasks that never started");
    wait_until("no sleep left", Duration::from_secs(30), || {
        pids_with_env(&entry).is_empty().then_some(())
    });
}

#[test]
fn wait_exits_zero_for_success_and_one_for_failure() {
    let dev = Dev::start();
    let ok = dev.submit_cli(&["--", "true"]);
    let bad = dev.submit_cli(&["--shell", "exit 3"]);
    let w = dev.gaffer(&["wait", &ok]);
    assert_eq!(w.code, 0, "{w:?}");
    assert!(w.stdout.contains("succeeded"), "{w:?}");
    let w = dev.gaffer(&["wait", &bad]);
    assert_eq!(w.code, 1, "{w:?}");
    assert!(w.stdout.contains("failed"), "{w:?}");
    let w = dev.gaffer(&["wait", &ok, &bad]);
    assert_eq!(w.code, 1, "one failed job makes wait fail: {w:?}");

    let mark = unique("mark");
    let long = dev.submit_cli(&["--env", &format!("MARK={mark}"), "--", "sleep", "30"]);
    let w = dev.gaffer(&["wait", "--timeout", "300ms", &long]);
    assert_eq!(w.code, 124, "{w:?}");
    dev.gaffer(&["kill", &long]).ok();
}

#[test]
fn rm_refuses_a_running_job_and_force_removes_it() {
    let dev = Dev::start();
    let mark = unique("mark");
    let entry = format!("MARK={mark}");
    let id = dev.submit_cli(&["--env", &entry, "--", "sleep", "30"]);
    dev.wait_job(&id, "running", |j| j["state"] == "running");
    let out = dev.gaffer(&["rm", &id]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("--force"), "{out:?}");
    assert_eq!(dev.get(&format!("/v1/jobs/{id}")).0, 200, "still there");

    dev.gaffer(&["rm", "--force", &id]).ok();
    let (code, body) = dev.get(&format!("/v1/jobs/{id}"));
    assert_eq!(code, 404, "{body}");
    wait_until(
        "the removed job's process to die",
        Duration::from_secs(30),
        || pids_with_env(&entry).is_empty().then_some(()),
    );

    let done = dev.submit_cli(&["--", "true"]);
    dev.wait_final(&done, JOB_TIMEOUT);
    let out = dev.gaffer(&["rm", &done]).ok();
    assert!(out.stdout.contains(&format!("removed {done}")), "{out:?}");
    assert_eq!(dev.get(&format!("/v1/jobs/{done}")).0, 404);
}

#[test]
fn cli_without_a_server_says_it_cannot_reach_it_in_one_line() {
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.arg("jobs")
        .env("GAFFER_ADDR", format!("http://127.0.0.1:{port}"));
    let out = run_cmd(cmd, Duration::from_secs(30));
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("cannot reach"), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn retry_gives_failed_tasks_a_new_attempt_and_refuses_killed_jobs() {
    let dev = Dev::start_with(&["--cpus", "8"]);
    let flag = dev.tmp.path().join("fail-once");
    std::fs::write(&flag, "").unwrap();
    let script = format!(
        "if [ $GAFFER_TASK_INDEX = 1 ] && [ -e {0} ]; then rm {0}; exit 3; fi",
        flag.display()
    );
    let id = dev.submit_cli(&["--array", "3", "--cpus", "0.5", "--shell", &script]);
    assert_eq!(
        dev.wait_final(&id, Duration::from_secs(30))["state"],
        "failed"
    );
    let out = dev.gaffer(&["retry", &id]).ok();
    assert!(out.stdout.contains("1 task(s) queued again"), "{out:?}");
    let job = dev.wait_final(&id, Duration::from_secs(30));
    assert_eq!(job["state"], "succeeded", "{job}");
    let attempts = job["task_list"][1]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{job}");
    assert_eq!(attempts[0]["exit_code"], 3);
    assert_eq!(attempts[1]["exit_code"], 0);
    // Nothing left to retry.
    let out = dev.gaffer(&["retry", &id]).ok();
    assert!(out.stdout.contains("no failed task"), "{out:?}");
    // A killed job is resubmitted, not retried.
    let k = dev.submit_cli(&["--", "sleep", "30"]);
    dev.gaffer(&["kill", &k]).ok();
    dev.wait_final(&k, Duration::from_secs(30));
    let out = dev.gaffer(&["retry", &k]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("was killed"), "{out:?}");
}

#[test]
fn events_lists_every_transition_of_a_job_in_order() {
    let dev = Dev::start();
    let id = dev.submit_cli(&["--", "true"]);
    dev.wait_final(&id, Duration::from_secs(30));
    let out = dev.gaffer(&["events", "--job", &id, "-o", "json"]).ok();
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event a line"))
        .collect();
    let tos: Vec<&str> = events.iter().filter_map(|e| e["to"].as_str()).collect();
    assert_eq!(tos.first(), Some(&"submitted"), "{tos:?}");
    for want in ["assigned", "running", "succeeded"] {
        assert!(tos.contains(&want), "{want} missing from {tos:?}");
    }
    assert_eq!(tos.last(), Some(&"succeeded"), "{tos:?}");
    let ids: Vec<u64> = events.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let human = dev.gaffer(&["events", "--job", &id]).ok();
    assert!(human.stdout.contains("running -> succeeded"), "{human:?}");
}

#[test]
fn image_rm_removes_an_imported_image_and_says_so_for_a_missing_one() {
    let dev = Dev::start();
    let root = dev.tmp.path().join("rootfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hello"), "hi\n").unwrap();
    let tarball = dev.tmp.path().join("img.tar");
    tar_dir(&root, &tarball);
    let agent = dev.data.join("agent");
    let agent = agent.to_str().unwrap();
    dev.gaffer(&[
        "agent",
        "image",
        "import",
        "tiny",
        tarball.to_str().unwrap(),
        "--data-dir",
        agent,
    ])
    .ok();
    let ls = dev
        .gaffer(&["agent", "image", "ls", "--data-dir", agent])
        .ok();
    assert!(ls.stdout.contains("tiny"), "{ls:?}");
    // The node reports it; the cluster's listing shows it as a node-only image.
    util::wait_until("the node to report `tiny`", Duration::from_secs(20), || {
        let images = dev.get_json("/v1/images");
        images
            .as_array()?
            .iter()
            .find(|i| i["name"] == "tiny")
            .filter(|i| {
                i["digest"].is_null() && i["nodes"].as_array().is_some_and(|n| n.len() == 1)
            })
            .map(|_| ())
    });
    let rm = dev.gaffer(&["image", "rm", "tiny"]);
    assert_ne!(rm.code, 0);
    assert!(rm.stderr.contains("gaffer agent image rm tiny"), "{rm:?}");
    dev.gaffer(&["agent", "image", "rm", "tiny", "--data-dir", agent])
        .ok();
    let ls = dev
        .gaffer(&["agent", "image", "ls", "--data-dir", agent])
        .ok();
    assert!(!ls.stdout.contains("tiny"), "{ls:?}");
    let again = dev.gaffer(&["agent", "image", "rm", "tiny", "--data-dir", agent]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("no image `tiny`"), "{again:?}");
}

#[test]
fn a_misspelled_flag_is_an_error_not_the_command() {
    let dev = Dev::start();
    let out = dev.gaffer(&["submit", "--retires", "3", "--", "echo", "hi"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("unexpected argument '--retires'")
            && out
                .stderr
                .contains("a similar argument exists: '--retries'"),
        "{}",
        out.stderr
    );
    assert_eq!(dev.job_count(), 0, "nothing was submitted");
    // A command's own flags still need no `--` once the command has begun; one that starts
    // with `-` needs it.
    let id = dev.submit_cli(&["echo", "-n", "hi"]);
    assert_eq!(
        dev.wait_final(&id, Duration::from_secs(30))["state"],
        "succeeded"
    );
    assert_eq!(dev.gaffer(&["logs", &id]).ok().stdout, "hi");
    let out = dev.gaffer(&["submit", "-q", "--", "--version"]);
    assert_eq!(out.code, 0, "{out:?}");
}
