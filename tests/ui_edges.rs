//! Rough edges of the web UI (issue 16), each in a real headless Chromium against a real
//! `gaffer dev`, and each failing on the UI before its fix. Screenshots land in
//! `target/ui-screenshots/`.

mod ui_util;
mod util;

use serde_json::{json, Value};
use std::time::Duration;
use ui_util::{run, s, Browser, UI_TIMEOUT};
use util::Dev;

/// Waits for the note naming the job just submitted; returns its id.
async fn submitted(b: &Browser) -> String {
    let id = s(&b
        .wait_js(
            "the note naming the submitted job",
            UI_TIMEOUT,
            "const a = document.querySelector('#submitted-note a'); return a ? a.textContent : null",
        )
        .await);
    assert!(id.starts_with("j-"), "{id}");
    id
}

/// Job summary, stored spec, attempts and the resubmit form show sizes in binary units, and
/// what they show is read back as the same number of bytes.
#[test]
fn sizes_are_binary_units_in_the_summary_the_stored_spec_the_attempts_and_the_resubmit_form() {
    run(async {
        let dev = Dev::start();
        let id = dev.submit(
            json!({"name": "sized", "resources": {"memory": "64M", "cpus": 0.5},
            "shell": "head -c 3000000 /dev/zero | tail -c 1 >/dev/null; echo done"}),
        );
        let job = dev.wait_final(&id, Duration::from_secs(60));
        assert_eq!(job["spec"]["resources"]["memory"], json!(64 << 20));
        let b = Browser::start().await;
        b.goto(&format!("{}/#/jobs/{id}", dev.addr)).await;
        let resources = s(&b
            .wait_js(
                "the summary's resources",
                UI_TIMEOUT,
                "const t = [...document.querySelectorAll('#main dt')].find((d) => d.textContent === 'Resources'); \
                 return t ? t.nextElementSibling.textContent : null",
            )
            .await);
        assert_eq!(resources, "0.5 CPU · 64 MiB memory");
        let spec = s(&b
            .js("return document.querySelector('#spec').textContent", vec![])
            .await);
        assert!(spec.contains("\"memory\": \"64 MiB\""), "{spec}");
        assert!(!spec.contains("67108864"), "{spec}");

        // The attempt's peak memory, as the shared formatter writes it.
        let peak = b
            .wait_js(
                "the attempt's peak memory",
                UI_TIMEOUT,
                "const th = [...document.querySelectorAll('#tasks-table thead th')] \
                   .findIndex((h) => h.textContent === 'Max memory'); \
                 const r = document.querySelector('#tasks-body tr[data-attempt=\"1\"]'); \
                 return th >= 0 && r ? r.children[th].textContent : null",
            )
            .await;
        let peak = s(&peak);
        let rss = util::attempts(&job, 0)[0]["max_rss_bytes"].as_u64();
        match rss {
            Some(n) => {
                assert!(!peak.contains(&n.to_string()), "{peak} is raw bytes");
                let re = peak.split(' ').collect::<Vec<_>>();
                assert!(
                    re.len() == 2
                        && re[0].parse::<f64>().is_ok()
                        && ["B", "KiB", "MiB", "GiB"].contains(&re[1]),
                    "peak memory `{peak}` for {n} bytes"
                );
            }
            None => assert_eq!(peak, "—"),
        }
        b.screenshot("edges-job-sizes").await;

        // Resubmit: the form and the JSON tab show the size as the server reads it back.
        b.goto(&format!("{}/#/submit?from={id}", dev.addr)).await;
        b.wait_js(
            "the memory field filled in binary units",
            UI_TIMEOUT,
            "const m = document.querySelector('#f-memory'); \
             return m && m.value === '64 MiB' && document.querySelector('#f-name').value === 'sized'",
        )
        .await;
        let paste = b.value("#f-paste").await;
        assert!(paste.contains("\"memory\": \"64 MiB\""), "{paste}");
        b.type_into("#f-name", "sized-again").await;
        b.click("#submit-btn").await;
        let again = submitted(&b).await;
        assert_eq!(
            dev.job(&again)["spec"]["resources"]["memory"],
            json!(64 << 20),
            "the shown size is read back as the same number of bytes"
        );
        // The JSON tab round-trips it too.
        b.goto(&format!("{}/#/submit?from={id}&tab=paste", dev.addr))
            .await;
        b.wait_js(
            "the spec in the JSON tab",
            UI_TIMEOUT,
            "return document.querySelector('#f-paste').value.includes('64 MiB')",
        )
        .await;
        b.click("#paste-submit").await;
        let third = submitted(&b).await;
        assert_ne!(third, again);
        assert_eq!(
            dev.job(&third)["spec"]["resources"]["memory"],
            json!(64 << 20)
        );
        b.quit().await;
    });
}

/// The parts of the progress bar of `el` (a `.progress`): name, fraction of the bar, fill
/// colour `[r, g, b, alpha]`, and whether it is striped (a gradient) rather than solid.
const BAR_PARTS: &str = "const p = arguments[0]; if (!p) return null; \
    const bar = p.querySelector('.bar'); \
    const rgba = (c) => { const m = c.match(/[\\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; }; \
    return { txt: p.querySelector('.txt').textContent, state: p.dataset.state, \
      parts: [...bar.children].map((e) => { const cs = getComputedStyle(e); \
        return { part: e.dataset.part, frac: e.getBoundingClientRect().width / bar.getBoundingClientRect().width, \
          color: rgba(cs.backgroundColor), striped: cs.backgroundImage.includes('gradient'), \
          stripe: (cs.backgroundImage.match(/rgba?\\([^)]*\\)/) || [''])[0] }; }) };";

/// Waits for the `.progress` that the function body `find` returns, and returns its parts
/// ([`BAR_PARTS`]).
async fn bar_of(b: &Browser, what: &str, find: &str) -> Value {
    let script = format!(
        "const p = (() => {{ {find} }})(); \
         if (!p || !p.querySelector('.txt')) return null; \
         return (function() {{ {BAR_PARTS} }}).call(null, p);"
    );
    b.wait_js(what, UI_TIMEOUT, &script).await
}

fn parts(v: &Value) -> Vec<Value> {
    v["parts"].as_array().cloned().unwrap_or_default()
}

fn rgb(p: &Value) -> (f64, f64, f64, f64) {
    let c = |i: usize| p["color"][i].as_f64().unwrap();
    (c(0), c(1), c(2), c(3))
}

fn red_ish(p: &Value) -> bool {
    let (r, g, b, a) = rgb(p);
    a > 0.5 && r > g + 60.0 && r > b + 40.0
}

fn green_ish(p: &Value) -> bool {
    let (r, g, b, a) = rgb(p);
    a > 0.5 && g > r + 40.0 && g > b + 40.0
}

/// How much of the bar is filled with a solid colour (what reads as done).
fn solid(ps: &[Value]) -> f64 {
    ps.iter()
        .filter(|p| rgb(p).3 > 0.5 && !p["striped"].as_bool().unwrap())
        .map(|p| p["frac"].as_f64().unwrap())
        .sum()
}

/// Checks one job's bar: what it looks like first (fill and colour), then its text and the
/// name of its one part.
fn check_bar(v: &Value, state: &str, page: &str) {
    let ps = parts(v);
    assert_eq!(ps.len(), 1, "{page}: a {state} bar has one part: {v}");
    let p = &ps[0];
    let (txt, name) = match state {
        "running" => {
            // Under way, not done: stripes over the track, not a solid fill.
            assert!(
                solid(&ps) < 0.01,
                "{page}: a running task fills its bar: {v}"
            );
            assert!(
                p["striped"].as_bool().unwrap(),
                "{page}: running is striped: {v}"
            );
            assert!(!p["stripe"].as_str().unwrap().is_empty(), "{page}: {v}");
            ("0/1", "running")
        }
        "succeeded" => {
            assert!(
                green_ish(p) && solid(&ps) > 0.97,
                "{page}: succeeded is solid green: {v}"
            );
            ("1/1", "succeeded")
        }
        "failed" | "timed_out" => {
            assert!(
                red_ish(p) && solid(&ps) > 0.97,
                "{page}: a {state} task is solid red: {v}"
            );
            ("1/1", "failed")
        }
        "killed" => {
            assert!(
                red_ish(p) && solid(&ps) > 0.97,
                "{page}: a killed task is red-ish: {v}"
            );
            ("1/1", "killed")
        }
        _ => unreachable!(),
    };
    assert!(
        !green_ish(p) || state == "succeeded",
        "{page}: only success is green: {v}"
    );
    assert!(p["frac"].as_f64().unwrap() > 0.97, "{page}: {v}");
    assert_eq!(v["txt"], txt, "{page}: {v}");
    assert_eq!(p["part"], name, "{page}: {v}");
}

/// Succeeded green, failed and killed red-ish, running striped (not a full bar), on the jobs
/// page, the overview and the job page.
#[test]
fn progress_bars_are_coloured_by_state_and_a_running_task_does_not_fill_its_bar() {
    run(async {
        let dev = Dev::start();
        let ok = dev.submit(json!({"name": "bar-ok", "shell": "true"}));
        let failed = dev.submit(json!({"name": "bar-failed", "shell": "exit 3"}));
        let timed =
            dev.submit(json!({"name": "bar-timed-out", "shell": "sleep 30", "timeout": "1s"}));
        let killed = dev.submit(json!({"name": "bar-killed", "shell": "sleep 300"}));
        let running = dev.submit(json!({"name": "bar-running", "shell": "sleep 300"}));
        for j in [&ok, &failed, &timed] {
            dev.wait_final(j, Duration::from_secs(60));
        }
        dev.wait_job(&killed, "running", |j| j["state"] == "running");
        dev.gaffer(&["kill", &killed]).ok();
        assert_eq!(
            dev.wait_final(&killed, Duration::from_secs(60))["state"],
            "killed"
        );
        dev.wait_job(&running, "running", |j| j["state"] == "running");
        let jobs = [
            (&running, "running"),
            (&ok, "succeeded"),
            (&failed, "failed"),
            (&timed, "timed_out"),
            (&killed, "killed"),
        ];
        let b = Browser::start().await;

        b.goto(&format!("{}/#/jobs", dev.addr)).await;
        for (id, state) in jobs {
            let v = bar_of(
                &b,
                &format!("the bar of {state} {id} on the jobs page"),
                &format!(
                    "return document.querySelector('#jobs-body tr[data-job=\"{id}\"] .progress')"
                ),
            )
            .await;
            check_bar(&v, state, "jobs page");
        }
        b.screenshot("edges-bars-jobs").await;

        b.goto(&format!("{}/#/", dev.addr)).await;
        for (id, state) in jobs {
            let v = bar_of(
                &b,
                &format!("the bar of {state} {id} on the overview"),
                &format!(
                    "const a = document.querySelector('#main a[href=\"#/jobs/{id}\"]'); \
                     return a && a.closest('tr') ? a.closest('tr').querySelector('.progress') : null"
                ),
            )
            .await;
            check_bar(&v, state, "overview");
        }
        b.screenshot("edges-bars-overview").await;

        for (id, state) in jobs {
            b.goto(&format!("{}/#/jobs/{id}", dev.addr)).await;
            let v = bar_of(
                &b,
                &format!("the bar of {state} {id} on its page"),
                &format!(
                    "const t = document.querySelector('#job-title'); \
                     const p = document.querySelector('#job-progress .progress'); \
                     return t && location.hash === '#/jobs/{id}' ? p : null"
                ),
            )
            .await;
            check_bar(&v, state, "job page");
            if state == "running" {
                b.screenshot("edges-bar-running-job").await;
            }
        }
        b.quit().await;
    });
}

/// User, process limit, mounts and kill grace: sent, refused next to their fields, shown on
/// the job page and filled back on resubmit.
#[test]
fn the_submit_form_sends_the_container_fields_and_shows_the_servers_errors_next_to_them() {
    run(async {
        let dev = Dev::start();
        // An image in the cluster's catalog (a submission may name only images the cluster has).
        let root = dev.root().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/motd"), "hello\n").unwrap();
        let tarball = dev.root().join("tools.tar");
        util::tar_dir(&root, &tarball);
        dev.gaffer(&["image", "import", "tools", tarball.to_str().unwrap()])
            .ok();
        let b = Browser::start().await;
        b.goto(&format!("{}/#/submit", dev.addr)).await;
        b.type_into("#f-run", "sleep 1").await;
        b.type_into("#f-name", "boxed").await;
        b.type_into("#f-image", "tools").await;
        b.type_into("#f-user", "alice").await;
        b.type_into("#f-pids", "64").await;
        b.type_into("#f-kill_grace", "30s").await;
        b.type_into("#f-mounts", "srv/data:/data:ro").await;
        b.click("#submit-btn").await;
        // The server's errors, each next to its field.
        let (user, mounts) = {
            let v = b
                .wait_js(
                    "the server's errors next to user and mounts",
                    UI_TIMEOUT,
                    "const u = document.querySelector('#err-user').textContent; \
                     const m = document.querySelector('#err-mounts').textContent; \
                     return u && m ? [u, m] : null",
                )
                .await;
            (s(&v[0]), s(&v[1]))
        };
        assert!(user.contains("`alice` must be UID or UID:GID"), "{user}");
        assert!(
            mounts.contains("srv/data") && mounts.contains("absolute"),
            "{mounts}"
        );
        assert_eq!(
            b.js(
                "return [...document.querySelectorAll('[aria-invalid=true]')].map((e) => e.id).sort()",
                vec![]
            )
            .await,
            json!(["f-mounts", "f-user"])
        );
        assert_eq!(
            b.js("return document.activeElement.id", vec![]).await,
            json!("f-user"),
            "focus goes to the first bad field of the form"
        );
        assert_eq!(dev.job_count(), 0);
        b.screenshot("edges-submit-container-errors").await;
        // A mount that is not HOST:CONTAINER[:ro] is caught before sending.
        b.type_into("#f-user", "1000:1000").await;
        b.type_into("#f-mounts", "/srv/data").await;
        b.click("#submit-btn").await;
        b.wait_js(
            "the mount's format error",
            UI_TIMEOUT,
            "return document.querySelector('#err-mounts').textContent.includes('is not HOST:CONTAINER[:ro]') \
               && !document.querySelector('#err-user').textContent",
        )
        .await;

        b.type_into("#f-mounts", "/srv/data:/data:ro\n/tmp/scratch:/scratch")
            .await;
        b.click("#submit-btn").await;
        let id = submitted(&b).await;
        b.goto(&format!("{}/#/jobs/{id}", dev.addr)).await;
        let spec = dev.job(&id)["spec"].clone();
        assert_eq!(spec["image"], "tools", "{spec}");
        assert_eq!(spec["user"], "1000:1000", "{spec}");
        assert_eq!(spec["resources"]["pids"], 64, "{spec}");
        assert_eq!(spec["kill_grace"], "30s", "{spec}");
        assert_eq!(
            spec["mounts"],
            json!([{"host": "/srv/data", "container": "/data", "read_only": true},
                   {"host": "/tmp/scratch", "container": "/scratch"}]),
            "{spec}"
        );
        let container = s(&b
            .wait_js(
                "the container in the summary",
                UI_TIMEOUT,
                "const c = document.querySelector('#job-container'); return c ? c.textContent : null",
            )
            .await);
        assert!(
            container.contains("tools")
                && container.contains("user 1000:1000")
                && container.contains("/srv/data:/data:ro, /tmp/scratch:/scratch"),
            "{container}"
        );
        b.screenshot("edges-submitted-container-job").await;

        // Resubmit fills every one of them back, with nothing left over.
        b.goto(&format!("{}/#/submit?from={id}", dev.addr)).await;
        let filled = b
            .wait_js(
                "the container fields filled from the spec",
                UI_TIMEOUT,
                "const v = (i) => document.querySelector('#f-' + i).value; \
                 return v('name') === 'boxed' ? [v('image'), v('user'), v('pids'), v('kill_grace'), v('mounts'), \
                   document.querySelector('#carried-fields').textContent] : null",
            )
            .await;
        assert_eq!(
            filled,
            json!([
                "tools",
                "1000:1000",
                "64",
                "30s",
                "/srv/data:/data:ro\n/tmp/scratch:/scratch",
                ""
            ])
        );
        b.assert_fits("the submit page").await;
        b.screenshot("edges-submit-form").await;
        b.click("#submit-btn").await;
        let again = submitted(&b).await;
        assert_ne!(again, id);
        assert_eq!(dev.job(&again)["spec"], spec, "resubmitted as it was");
        b.goto(&format!("{}/#/submit", dev.addr)).await;
        b.el("#submit-form").await;
        b.size(390, 844).await;
        b.assert_fits("the submit page on a phone").await;
        b.quit().await;
        for j in [&id, &again] {
            dev.gaffer(&["kill", j]).ok();
        }
    });
}

/// The job page names events as `gaffer events` does: `j-000001`, `j-000001.0#2`.
#[test]
fn the_job_pages_events_read_as_gaffer_events_writes_them() {
    run(async {
        let dev = Dev::start();
        let flag = dev.root().join("again");
        let id = dev.submit(
            json!({"name": "twice", "retries": 1, "retry_backoff": "100ms",
            "shell": format!("[ -e '{f}' ] || {{ touch '{f}'; exit 1; }}", f = flag.display())}),
        );
        let job = dev.wait_final(&id, Duration::from_secs(60));
        assert_eq!(job["state"], "succeeded");
        let out = dev.gaffer(&["events", "--job", &id]).ok();
        // `TIME WHAT [FROM -> ]TO DETAIL`: the second word names the job, task or attempt.
        let cli: Vec<String> = out
            .stdout
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
            .collect();
        assert!(cli.contains(&id), "{}", out.stdout);
        assert!(cli.contains(&format!("{id}.0#2")), "{}", out.stdout);
        let b = Browser::start().await;
        b.goto(&format!("{}/#/jobs/{id}", dev.addr)).await;
        let ui = b
            .wait_js(
                "every event of the job",
                UI_TIMEOUT,
                &format!(
                    "const w = [...document.querySelectorAll('#events li .what > span:first-child')].map((e) => e.textContent); \
                     return w.length >= {} ? w : null",
                    cli.len()
                ),
            )
            .await;
        assert_eq!(ui, json!(cli), "the UI names events as the CLI does");
        b.js(
            "document.querySelector('#events').scrollIntoView(); return 1",
            vec![],
        )
        .await;
        b.screenshot("edges-events").await;
        b.quit().await;
    });
}

/// "free" is what the node offers minus what gaffer reserved; the host's free memory apart.
#[test]
fn the_nodes_page_shows_free_memory_as_offered_minus_reserved_and_the_hosts_apart() {
    run(async {
        let dev = Dev::start_with(&["--cpus", "2", "--memory", "4G"]);
        let busy = dev.submit(json!({"name": "busy", "resources": {"cpus": 0.5, "memory": "1G"}, "shell": "sleep 300"}));
        dev.wait_job(&busy, "running", |j| j["state"] == "running");
        let b = Browser::start().await;
        b.goto(&format!("{}/#/nodes", dev.addr)).await;
        let v = b
            .wait_js(
                "the node's memory with its task's reservation",
                UI_TIMEOUT,
                "const r = document.querySelector('#nodes-body tr[data-node]'); \
                 if (!r || !r.textContent.includes('1.0 GiB / 4.0 GiB')) return null; \
                 const f = r.querySelector('.mem-free'); const hf = r.querySelector('.mem-host-free'); \
                 return [r.textContent, f && f.textContent, hf && hf.textContent]",
            )
            .await;
        let (text, free, host) = (s(&v[0]), s(&v[1]), s(&v[2]));
        assert!(
            text.contains("3.0 GiB free"),
            "4 GiB offered, 1 GiB reserved: {text}"
        );
        assert!(text.contains("host free "), "{text}");
        assert_eq!(free, "3.0 GiB free", "{text}");
        let figure = host
            .strip_prefix("host free ")
            .unwrap_or_else(|| panic!("{text}"));
        let words: Vec<&str> = figure.split(' ').collect();
        assert!(
            words.len() == 2
                && words[0].parse::<f64>().is_ok()
                && ["KiB", "MiB", "GiB", "TiB"].contains(&words[1]),
            "the host's free memory in binary units: {host}"
        );
        let nodes = dev.get_json("/v1/nodes");
        assert!(nodes[0]["memory_free"].as_u64().unwrap() > 0, "{nodes}");
        b.assert_fits("the nodes page").await;
        b.screenshot("edges-nodes-memory").await;
        b.size(390, 844).await;
        b.assert_fits("the nodes page on a phone").await;
        b.quit().await;
    });
}

/// One submitted job lands on its page, which says it was submitted (once: not after a reload)
/// and links to the job list; a list of jobs lands on the job list.
#[test]
fn one_submitted_job_lands_on_its_page_and_a_list_of_jobs_on_the_job_list() {
    run(async {
        let dev = Dev::start();
        let b = Browser::start().await;
        b.goto(&format!("{}/#/submit", dev.addr)).await;
        b.type_into("#f-run", "echo landed").await;
        b.type_into("#f-name", "lander").await;
        b.click("#submit-btn").await;
        let id = s(&b
            .wait_js(
                "the new job's page with the submitted note",
                UI_TIMEOUT,
                "const a = document.querySelector('#submitted-note a'); \
                 const t = document.querySelector('#job-title'); \
                 return a && t && t.textContent === 'lander' && location.hash === '#/jobs/' + a.textContent \
                   ? a.textContent : null",
            )
            .await);
        assert_eq!(dev.job(&id)["name"], "lander");
        b.wait_js(
            "the new job's log",
            Duration::from_secs(60),
            "const l = document.querySelector('#log'); \
             return l && l.dataset.done === 'true' && l.textContent === 'landed\\n'",
        )
        .await;
        b.screenshot("edges-landed").await;
        b.c.refresh().await.expect("reload");
        b.wait_js(
            "the job page again, without the note",
            UI_TIMEOUT,
            "const t = document.querySelector('#job-title'); \
             return t && t.textContent === 'lander' && !document.querySelector('#submitted-note')",
        )
        .await;

        // One spec pasted lands on its page too; from there, the job list.
        b.goto(&format!("{}/#/submit?tab=paste", dev.addr)).await;
        b.type_into("#f-paste", r#"{"name": "pasted", "shell": "true"}"#)
            .await;
        b.click("#paste-submit").await;
        let pasted = s(&b
            .wait_js(
                "the pasted job's page",
                UI_TIMEOUT,
                "const a = document.querySelector('#submitted-note a'); \
                 const t = document.querySelector('#job-title'); \
                 return a && t && t.textContent === 'pasted' && location.hash === '#/jobs/' + a.textContent \
                   ? a.textContent : null",
            )
            .await);
        b.click("#submitted-note a[href^='#/jobs?new=']").await;
        b.wait_js(
            "the job list with the pasted job",
            UI_TIMEOUT,
            &format!(
                "return location.hash.startsWith('#/jobs?') \
                   && !!document.querySelector('#jobs-body tr[data-job=\"{pasted}\"]')"
            ),
        )
        .await;

        // A list lands on the job list, naming both.
        b.goto(&format!("{}/#/submit?tab=paste", dev.addr)).await;
        b.type_into(
            "#f-paste",
            r#"[{"name": "one", "shell": "true"}, {"name": "two", "shell": "true"}]"#,
        )
        .await;
        b.click("#paste-submit").await;
        b.wait_js(
            "the job list naming both",
            UI_TIMEOUT,
            "return location.hash.startsWith('#/jobs?new=') \
               && document.querySelectorAll('#submitted-note a').length === 2",
        )
        .await;
        b.quit().await;
    });
}
