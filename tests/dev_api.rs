//! The REST API of a real `gaffer dev`: submit, list, get, kill, delete, logs, events, health,
//! metrics, OpenAPI, idempotency, and the answers to bad input.

mod util;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use util::*;

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn ids_of(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn post_jobs_with_one_spec_or_a_list_answers_201_with_ids_in_order() {
    let dev = Dev::start();
    let (code, body) = dev.post("/v1/jobs", &json!({"command": ["echo", "hi"]}));
    assert_eq!(code, 201, "{body}");
    let v = json_body(&body);
    let ids = v["ids"].as_array().expect("ids");
    assert_eq!(ids.len(), 1, "{v}");
    let first = ids[0].as_str().unwrap().to_string();

    let (code, body) = dev.post(
        "/v1/jobs",
        &json!([
            {"name": "l0", "command": ["true"]},
            {"name": "l1", "command": ["true"]},
            {"name": "l2", "command": ["true"]}
        ]),
    );
    assert_eq!(code, 201, "{body}");
    let list: Vec<String> = json_body(&body)["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect();
    assert_eq!(list.len(), 3);
    for (i, id) in list.iter().enumerate() {
        assert_eq!(
            dev.job(id)["name"],
            format!("l{i}"),
            "ids follow the list order"
        );
    }
    let nums: Vec<u64> = list
        .iter()
        .map(|s| s.trim_start_matches("j-").parse().unwrap())
        .collect();
    assert!(nums.windows(2).all(|w| w[0] < w[1]), "{list:?}");

    // GET /v1/jobs lists them all, newest first.
    let mut want = vec![first.clone()];
    want.extend(list.iter().cloned());
    want.reverse();
    assert_eq!(ids_of(&dev.get_json("/v1/jobs")), want);
    let j = dev.wait_final(&first, JOB_TIMEOUT);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["spec"]["command"], json!(["echo", "hi"]));
}

#[test]
fn get_kill_and_delete_a_job_over_rest() {
    let dev = Dev::start();
    let mark = unique("mark");
    let entry = format!("MARK={mark}");
    let id = dev.submit(json!({"command": ["sleep", "30"], "env": {"MARK": mark}}));
    let j = dev.wait_job(&id, "task running", |j| {
        j["task_list"][0]["state"] == "running"
    });
    assert_eq!(j["id"], id.as_str());
    assert_eq!(j["task_list"][0]["attempts"][0]["state"], "running", "{j}");

    let (code, body) = dev.delete(&format!("/v1/jobs/{id}"));
    assert_eq!(code, 409, "an active job is not deleted: {body}");
    assert!(json_body(&body)["error"].is_string());

    let (code, body) = dev.post(&format!("/v1/jobs/{id}/kill"), &json!({}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_body(&body)["id"], id.as_str());
    let j = dev.wait_final(&id, Duration::from_secs(30));
    assert_eq!(j["state"], "killed", "{j}");
    assert!(j["kill_requested"].as_bool().unwrap(), "{j}");
    wait_until(
        "the killed task to be gone",
        Duration::from_secs(30),
        || pids_with_env(&entry).is_empty().then_some(()),
    );

    let (code, body) = dev.delete(&format!("/v1/jobs/{id}"));
    assert_eq!(code, 204, "{body}");
    let (code, body) = dev.get(&format!("/v1/jobs/{id}"));
    assert_eq!(code, 404, "{body}");
    assert!(json_body(&body)["error"].as_str().unwrap().contains(&id));
    assert_eq!(dev.delete(&format!("/v1/jobs/{id}")).0, 404);
    assert!(ids_of(&dev.get_json("/v1/jobs")).is_empty());
}

#[test]
fn logs_endpoint_serves_stdout_and_stderr_separately() {
    let dev = Dev::start();
    let id = dev.submit(json!({"shell": "echo to-out; echo to-err >&2"}));
    assert_eq!(dev.wait_final(&id, JOB_TIMEOUT)["state"], "succeeded");
    let (code, out) = dev.get(&format!("/v1/jobs/{id}/logs"));
    assert_eq!((code, out.as_str()), (200, "to-out\n"));
    let (code, out) = dev.get(&format!("/v1/jobs/{id}/logs?stream=stdout&task=0"));
    assert_eq!((code, out.as_str()), (200, "to-out\n"));
    let (code, err) = dev.get(&format!("/v1/jobs/{id}/logs?stream=stderr"));
    assert_eq!((code, err.as_str()), (200, "to-err\n"));
    let (code, body) = dev.get(&format!("/v1/jobs/{id}/logs?stream=bogus"));
    assert_eq!(code, 400, "{body}");
    let (code, body) = dev.get(&format!("/v1/jobs/{id}/logs?task=7"));
    assert_eq!(code, 404, "{body}");
    assert!(json_body(&body)["error"].is_string());
}

#[test]
fn events_stream_reports_the_job_reaching_succeeded() {
    let dev = Dev::start();
    let id = dev.submit(json!({"shell": "sleep 0.3"}));
    let sse = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(Duration::from_secs(20))
        .build();
    let resp = sse
        .get(&dev.url("/v1/events?after=0"))
        .call()
        .expect("events stream");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.content_type().starts_with("text/event-stream"),
        "{}",
        resp.content_type()
    );
    let mut reader = BufReader::new(resp.into_reader());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut line = String::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no succeeded event for {id}; saw {seen:?}"
        );
        line.clear();
        let n = reader.read_line(&mut line).expect("read event line");
        assert!(n > 0, "event stream ended; saw {seen:?}");
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let e: Value = serde_json::from_str(data.trim()).expect("event data is JSON");
        assert!(e["id"].is_u64(), "{e}");
        if e["job"] != id.as_str() {
            continue;
        }
        let level = if e["task"].is_null() { "job" } else { "task" };
        seen.push(format!("{level}:{}", e["to"].as_str().unwrap_or_default()));
        if e["to"] == "succeeded" && level == "job" {
            break;
        }
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("job:submitted"),
        "{seen:?}"
    );
    for want in ["task:running", "task:succeeded", "job:succeeded"] {
        assert!(seen.iter().any(|s| s == want), "{want} not in {seen:?}");
    }
}

#[test]
fn healthz_metrics_and_openapi_answer() {
    let dev = Dev::start();
    let id = dev.submit(json!({"command": ["true"]}));
    dev.wait_final(&id, JOB_TIMEOUT);
    let (code, body) = dev.get("/healthz");
    assert_eq!(code, 200);
    assert_eq!(body.trim(), "ok");

    let (code, m) = dev.get("/metrics");
    assert_eq!(code, 200);
    assert!(m.contains("gaffer_jobs{state=\"succeeded\"} 1\n"), "{m}");
    assert!(m.contains("gaffer_queue_depth"), "{m}");
    assert!(m.contains("gaffer_nodes_ready 1\n"), "{m}");

    let doc = dev.get_json("/v1/openapi.json");
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/logs",
        "/v1/events",
    ] {
        assert!(paths.contains_key(p), "missing {p}: {:?}", paths.keys());
    }
}

#[test]
fn same_idempotency_key_returns_the_same_ids_and_creates_one_job() {
    let dev = Dev::start();
    let body = json!({"command": ["true"]}).to_string();
    let key = [("Idempotency-Key", "submit-once-1")];
    let (c1, b1) = dev.post_raw("/v1/jobs", body.as_bytes(), &key);
    let (c2, b2) = dev.post_raw("/v1/jobs", body.as_bytes(), &key);
    assert_eq!(c1, 201, "{b1}");
    assert!(c2 == 200 || c2 == 201, "{c2} {b2}");
    assert_eq!(json_body(&b1)["ids"], json_body(&b2)["ids"]);
    assert_eq!(dev.job_count(), 1);

    let list = json!([{"command": ["true"]}, {"command": ["true"]}]).to_string();
    let key2 = [("Idempotency-Key", "submit-once-2")];
    let (_, l1) = dev.post_raw("/v1/jobs", list.as_bytes(), &key2);
    let (_, l2) = dev.post_raw("/v1/jobs", list.as_bytes(), &key2);
    assert_eq!(json_body(&l1)["ids"].as_array().unwrap().len(), 2);
    assert_eq!(json_body(&l1)["ids"], json_body(&l2)["ids"]);
    assert_eq!(dev.job_count(), 3);

    // Without a key, or with another key, a new job is created.
    let (_, n) = dev.post_raw("/v1/jobs", body.as_bytes(), &[]);
    assert_ne!(json_body(&n)["ids"], json_body(&b1)["ids"]);
    assert_eq!(dev.job_count(), 4);
}

#[test]
fn invalid_specs_are_rejected_with_400_naming_the_field() {
    let dev = Dev::start();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "empty command",
            json!({"command": []}).to_string(),
            "command",
        ),
        (
            "negative retries",
            json!({"command": ["true"], "retries": -1}).to_string(),
            "retries",
        ),
        (
            "bad memory unit",
            json!({"command": ["true"], "resources": {"memory": "12XB"}}).to_string(),
            "resources.memory",
        ),
        (
            "bad timeout",
            json!({"command": ["true"], "timeout": "abc"}).to_string(),
            "timeout",
        ),
        (
            "unknown field",
            json!({"command": ["true"], "comand": ["x"]}).to_string(),
            "comand",
        ),
        (
            "array 0",
            json!({"command": ["true"], "array": 0}).to_string(),
            "array",
        ),
        (
            "array too big",
            json!({"command": ["true"], "array": 1_000_001}).to_string(),
            "array",
        ),
        (
            "output escaping",
            json!({"command": ["true"], "outputs": ["../x"]}).to_string(),
            "outputs[0]",
        ),
        (
            "absolute output",
            json!({"command": ["true"], "outputs": ["ok/*.txt", "/etc/*"]}).to_string(),
            "outputs[1]",
        ),
        (
            "zero cpus",
            json!({"command": ["true"], "resources": {"cpus": 0}}).to_string(),
            "resources.cpus",
        ),
        (
            "relative workdir",
            json!({"command": ["true"], "workdir": "rel"}).to_string(),
            "workdir",
        ),
        (
            "command and shell",
            json!({"command": ["true"], "shell": "true"}).to_string(),
            "command",
        ),
        (
            "bad list element",
            json!([{"command": ["true"]}, {"shell": ""}]).to_string(),
            "shell",
        ),
        ("invalid JSON", "{\"command\": [".to_string(), ""),
        ("not an object", "42".to_string(), ""),
    ];
    for (what, body, field) in &cases {
        let (code, text) = dev.post_raw("/v1/jobs", body.as_bytes(), &[]);
        assert_eq!(code, 400, "{what}: {text}");
        let v = json_body(&text);
        let err = v["error"].as_str().unwrap_or_else(|| panic!("{what}: {v}"));
        assert!(!err.is_empty(), "{what}: {v}");
        if !field.is_empty() {
            let fields: Vec<&str> = v["fields"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: no fields: {v}"))
                .iter()
                .filter_map(|f| f["field"].as_str())
                .collect();
            assert!(fields.contains(field), "{what}: {field} not in {fields:?}");
            assert!(
                err.contains(field),
                "{what}: error does not name {field}: {err}"
            );
        }
    }
    assert_eq!(dev.job_count(), 0, "nothing may be created by bad input");
}

#[test]
fn body_over_10_mib_is_rejected_with_413_json() {
    let dev = Dev::start();
    let mut body = Vec::with_capacity(11 << 20);
    body.extend_from_slice(b"{\"command\": [\"echo\", \"");
    body.resize(body.len() + (10 << 20) + 100, b'a');
    body.extend_from_slice(b"\"]}");
    let mut s = TcpStream::connect(("127.0.0.1", dev.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut w = s.try_clone().unwrap();
    // Write in another thread: the server may answer before reading the whole body.
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(&body);
    });
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        if let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&resp[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|l| resp.len() >= end + 4 + l) {
                break;
            }
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&resp).into_owned();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    let v = json_body(body);
    assert!(v["error"].as_str().unwrap().contains("10 MiB"), "{text}");
    assert!(
        v["fields"][0]["message"].as_str().is_some(),
        "the 413 lists its problem in `fields`, as the README says every error does: {text}"
    );
    assert_eq!(dev.job_count(), 0);
}

#[test]
fn bad_job_id_in_the_path_is_400_and_unknown_job_is_404() {
    let dev = Dev::start();
    for path in [
        "/v1/jobs/not-an-id",
        "/v1/jobs/j-12x",
        "/v1/jobs/not-an-id/logs",
        "/v1/jobs/not-an-id/outputs",
    ] {
        let (code, body) = dev.get(path);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(json_body(&body)["error"].is_string(), "{path}: {body}");
    }
    assert_eq!(dev.post("/v1/jobs/nope/kill", &json!({})).0, 400);
    assert_eq!(dev.delete("/v1/jobs/nope").0, 400);
    for path in [
        "/v1/jobs/j-999999",
        "/v1/jobs/j-999999/logs",
        "/v1/jobs/j-999999/outputs",
    ] {
        let (code, body) = dev.get(path);
        assert_eq!(code, 404, "{path}: {body}");
        assert!(json_body(&body)["error"]
            .as_str()
            .unwrap()
            .contains("j-999999"));
    }
    assert_eq!(dev.post("/v1/jobs/j-999999/kill", &json!({})).0, 404);
    assert_eq!(dev.delete("/v1/jobs/j-999999").0, 404);
    let (code, body) = dev.get("/v1/jobs?state=bogus");
    assert_eq!(code, 400, "{body}");
    assert!(json_body(&body)["error"].is_string());
}

#[test]
fn malformed_query_parameters_get_a_json_error() {
    let dev = Dev::start();
    let id = dev.submit(json!({"command": ["true"]}));
    for path in [
        "/v1/jobs?limit=abc".to_string(),
        format!("/v1/jobs/{id}?tasks_limit=x"),
        format!("/v1/jobs/{id}/logs?task=-1"),
        "/v1/events?after=soon".to_string(),
    ] {
        let (code, body) = dev.get(&path);
        assert_eq!(code, 400, "{path}: {body}");
        let v: Result<Value, _> = serde_json::from_str(&body);
        assert!(
            v.as_ref().is_ok_and(|v| v["error"].is_string()),
            "{path}: body is not a JSON error: {body:?}"
        );
    }
}

#[test]
fn submitted_jobs_metric_does_not_count_idempotent_replays() {
    let dev = Dev::start();
    let body = json!({"command": ["true"]}).to_string();
    for _ in 0..3 {
        let (code, text) = dev.post_raw("/v1/jobs", body.as_bytes(), &[("Idempotency-Key", "k")]);
        assert!(code == 200 || code == 201, "{text}");
    }
    assert_eq!(dev.job_count(), 1);
    let (_, m) = dev.get("/metrics");
    assert!(
        m.contains("gaffer_jobs_submitted_total 1\n"),
        "one job was submitted: {}",
        m.lines()
            .find(|l| l.starts_with("gaffer_jobs_submitted_total"))
            .unwrap_or_default()
    );
}
