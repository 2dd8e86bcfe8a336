//! The web UI in a real headless Chromium (through chromedriver): every page against a real
//! `gaffer dev` (or `gaffer server --token-file` + `gaffer agent`), waiting on DOM conditions
//! with deadlines. Screenshots land in `target/ui-screenshots/`.

mod ui_network;
mod ui_util;
mod util;

use serde_json::{json, Value};
use std::time::Duration;
use ui_util::{run, s, Browser, Cluster, UI_TIMEOUT};
use util::Dev;

#[test]
fn a_job_submitted_through_the_form_reaches_succeeded_in_the_table_without_a_reload() {
    run(async {
        let dev = Dev::start();
        // Some company for the screenshots: an array, a failure, a running job.
        dev.submit(json!({"name": "squares", "array": 12, "resources": {"cpus": 0.1},
            "outputs": ["results/*.txt"],
            "shell": "mkdir -p results; echo $((GAFFER_TASK_INDEX*GAFFER_TASK_INDEX)) > results/$GAFFER_TASK_INDEX.txt"}));
        dev.submit(json!({"name": "flaky-report", "shell": "echo cannot connect >&2; exit 3"}));
        dev.submit(
            json!({"name": "train-model", "array": 4, "resources": {"cpus": 0.25},
            "shell": "sleep 300"}),
        );
        let b = Browser::start().await;
        b.goto(&format!("{}/#/submit", dev.addr)).await;
        b.el("#submit-form").await;
        b.js("window.__noReload = 'still here'; return 1", vec![])
            .await;
        b.type_into("#f-run", "echo hello from the form; sleep 1")
            .await;
        b.type_into("#f-name", "ui-form-job").await;
        b.type_into("#f-env", "GREETING=hi").await;
        b.type_into("#f-memory", "64M").await;
        b.screenshot("submit").await;
        b.click("#submit-btn").await;
        let id = s(&b
            .wait_js(
                "the new job's page naming the submitted job",
                UI_TIMEOUT,
                "const a = document.querySelector('#submitted-note a'); \
                 return a && location.hash === '#/jobs/' + a.textContent ? a.textContent : null",
            )
            .await);
        assert!(id.starts_with("j-"), "{id}");
        // From there to the job list, where the new job is flagged.
        b.click("#submitted-note a[href^='#/jobs?new=']").await;
        b.wait_js(
            "the new job's row to show succeeded",
            Duration::from_secs(60),
            &format!(
                "const r = document.querySelector('#jobs-body tr[data-job=\"{id}\"]'); \
                 return r && r.dataset.state === 'succeeded' \
                   && r.querySelector('.badge').textContent === 'succeeded' \
                   && r.querySelector('.progress .txt').textContent === '1/1'"
            ),
        )
        .await;
        assert_eq!(
            b.js("return window.__noReload", vec![]).await,
            json!("still here"),
            "the page was reloaded"
        );
        let job = dev.job(&id);
        assert_eq!(job["name"], "ui-form-job");
        assert_eq!(job["spec"]["env"]["GREETING"], "hi");
        assert_eq!(job["spec"]["resources"]["memory"], json!(64 << 20));
        assert_eq!(job["spec"]["shell"], "echo hello from the form; sleep 1");
        b.wait_js(
            "the other jobs in the table",
            UI_TIMEOUT,
            "return document.querySelectorAll('#jobs-body tr[data-job]').length === 4 \
             && !!document.querySelector('#jobs-body tr[data-state=failed]')",
        )
        .await;
        b.assert_fits("the jobs page").await;
        b.screenshot("jobs").await;

        // Filter by state and search by name.
        b.el("#filter-state")
            .await
            .select_by_value("failed")
            .await
            .expect("select failed");
        b.wait_js(
            "only failed jobs",
            UI_TIMEOUT,
            "const r = [...document.querySelectorAll('#jobs-body tr[data-job]')]; \
             return r.length === 1 && r[0].dataset.state === 'failed'",
        )
        .await;
        b.el("#filter-state")
            .await
            .select_by_value("")
            .await
            .expect("select all");
        b.type_into("#filter-name", "squ").await;
        b.wait_js(
            "the name search",
            UI_TIMEOUT,
            "const r = [...document.querySelectorAll('#jobs-body tr[data-job]')]; \
             return r.length === 1 && r[0].textContent.includes('squares')",
        )
        .await;

        // The overview counts it and charts it.
        b.goto(&format!("{}/#/", dev.addr)).await;
        b.wait_js(
            "the overview chart with finished tasks",
            UI_TIMEOUT,
            "const c = document.querySelector('#timeline-chart'); \
             return c && Number(c.dataset.succeeded) >= 13 && Number(c.dataset.failed) >= 1 \
               && document.querySelector('#count-succeeded').textContent === '2' \
               && document.querySelector('#nodes-ready').textContent === '1'",
        )
        .await;
        b.assert_fits("the overview").await;
        b.screenshot("overview").await;

        // A phone's width.
        b.size(390, 844).await;
        b.goto(&format!("{}/#/jobs", dev.addr)).await;
        b.wait_js(
            "the jobs table on a phone",
            UI_TIMEOUT,
            "return document.querySelectorAll('#jobs-body tr[data-job]').length === 4",
        )
        .await;
        b.assert_fits("the jobs page on a phone").await;
        b.screenshot("jobs-phone").await;
        b.goto(&format!("{}/#/submit", dev.addr)).await;
        b.el("#submit-form").await;
        b.assert_fits("the submit page on a phone").await;
        b.goto(&format!("{}/#/", dev.addr)).await;
        b.el("#timeline-chart").await;
        b.assert_fits("the overview on a phone").await;
        b.screenshot("overview-phone").await;
        b.quit().await;
    });
}

#[test]
fn a_bad_memory_value_is_shown_next_to_its_field_and_the_form_is_kept() {
    run(async {
        let dev = Dev::start();
        let b = Browser::start().await;
        b.goto(&format!("{}/#/submit", dev.addr)).await;
        b.type_into("#f-run", "echo kept").await;
        b.type_into("#f-name", "keep-me").await;
        b.type_into("#f-memory", "12XB").await;
        b.type_into("#f-outputs", "out/*.csv").await;
        b.click("#submit-btn").await;
        let msg = s(&b
            .wait_js(
                "the memory error next to its field",
                UI_TIMEOUT,
                "const e = document.querySelector('#err-memory'); \
                 return e && e.textContent.includes('XB') ? e.textContent : null",
            )
            .await);
        assert!(msg.contains("12XB"), "{msg}");
        assert_eq!(
            b.el("#f-memory").await.attr("aria-invalid").await.unwrap(),
            Some("true".into())
        );
        assert_eq!(
            b.js(
                "return document.activeElement && document.activeElement.id",
                vec![]
            )
            .await,
            json!("f-memory"),
            "focus goes to the bad field"
        );
        // Nothing else is flagged, nothing was lost, nothing was stored.
        assert_eq!(
            b.js(
                "return document.querySelectorAll('[aria-invalid=true]').length",
                vec![]
            )
            .await,
            json!(1)
        );
        assert_eq!(b.value("#f-run").await, "echo kept");
        assert_eq!(b.value("#f-name").await, "keep-me");
        assert_eq!(b.value("#f-memory").await, "12XB");
        assert_eq!(b.value("#f-outputs").await, "out/*.csv");
        assert!(b.value("#f-run").await.contains("kept"));
        assert_eq!(dev.job_count(), 0);
        b.assert_fits("the submit page").await;
        b.screenshot("submit-error").await;

        // Fixed, it goes through.
        b.type_into("#f-memory", "64M").await;
        b.click("#submit-btn").await;
        let id = s(&b
            .wait_js(
                "the submitted note",
                UI_TIMEOUT,
                "const a = document.querySelector('#submitted-note a'); return a ? a.textContent : null",
            )
            .await);
        assert_eq!(dev.job(&id)["name"], "keep-me");

        // The paste tab takes TOML, a list of specs.
        b.goto(&format!("{}/#/submit", dev.addr)).await;
        b.click("#tab-paste").await;
        b.type_into(
            "#f-paste",
            "[[jobs]]\nname = \"toml-a\"\nshell = \"true\"\n\n[[jobs]]\nname = \"toml-b\"\ncommand = [\"echo\", \"b\"]\n",
        )
        .await;
        b.click("#paste-submit").await;
        b.wait_js(
            "two jobs from TOML",
            UI_TIMEOUT,
            "return document.querySelectorAll('#submitted-note a').length === 2",
        )
        .await;
        // A bad list names the spec and field.
        b.goto(&format!("{}/#/submit?tab=paste", dev.addr)).await;
        b.type_into(
            "#f-paste",
            r#"[{"shell": "true"}, {"shell": "true", "resources": {"memory": "1QB"}}]"#,
        )
        .await;
        b.click("#paste-submit").await;
        b.wait_js(
            "the paste error naming job 1",
            UI_TIMEOUT,
            "const e = document.querySelector('#paste-error'); \
             return e && e.textContent.includes('job 1: resources.memory')",
        )
        .await;
        assert_eq!(dev.job_count(), 3);
        b.quit().await;
    });
}

#[test]
fn a_running_tasks_log_is_followed_and_a_big_log_shows_its_tail() {
    run(async {
        let dev = Dev::start();
        let id = dev.submit(json!({"name": "ticker",
            "shell": "for i in $(seq 1 40); do echo line-$i; sleep 0.25; done; echo err-done >&2"}));
        let b = Browser::start().await;
        b.goto(&format!("{}/#/jobs/{id}", dev.addr)).await;
        b.wait_js(
            "the first lines while the task runs",
            UI_TIMEOUT,
            "const l = document.querySelector('#log'); \
             return l && l.textContent.includes('line-3\\n') && l.dataset.done === 'false'",
        )
        .await;
        let state = dev.job(&id)["state"].clone();
        assert_eq!(state, "running", "lines must appear while the task runs");
        b.screenshot("job-log-following").await;
        b.wait_js(
            "the whole log and its end",
            Duration::from_secs(60),
            "const l = document.querySelector('#log'); \
             return l.dataset.done === 'true' && l.textContent.includes('line-40\\n')",
        )
        .await;
        let text = s(&b
            .js("return document.querySelector('#log').textContent", vec![])
            .await);
        let want: String = (1..=40).map(|i| format!("line-{i}\n")).collect();
        assert_eq!(text, want);
        b.click("label:has(#stream-stderr)").await;
        b.wait_js(
            "stderr",
            UI_TIMEOUT,
            "const l = document.querySelector('#log'); \
             return l.dataset.done === 'true' && l.textContent === 'err-done\\n'",
        )
        .await;
        b.wait_js(
            "the job's events",
            UI_TIMEOUT,
            "return !!document.querySelector('#events li[data-to=succeeded]') \
               && document.querySelector('#job-state .badge').dataset.state === 'succeeded'",
        )
        .await;
        b.assert_fits("the job page").await;
        b.screenshot("job").await;
        b.size(390, 844).await;
        b.assert_fits("the job page on a phone").await;
        b.screenshot("job-phone").await;
        b.size(1366, 1000).await;

        // 6 MB of output: the page shows the tail and stays responsive.
        let big = dev.submit(json!({"name": "chatty",
            "shell": "yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxy | head -c 6000000; echo; echo THE-END"}));
        b.goto(&format!("{}/#/jobs/{big}", dev.addr)).await;
        b.wait_js(
            "the end of the big log",
            Duration::from_secs(60),
            "const l = document.querySelector('#log'); \
             return l && l.dataset.done === 'true' && l.textContent.endsWith('THE-END\\n')",
        )
        .await;
        let shown = b
            .js(
                "return document.querySelector('#log').textContent.length",
                vec![],
            )
            .await
            .as_u64()
            .unwrap();
        assert!(shown < 1_000_000, "only the tail is shown: {shown}");
        b.click("#log-earlier").await;
        b.wait_js(
            "more of the log after 'load earlier'",
            UI_TIMEOUT,
            &format!("return document.querySelector('#log').textContent.length > {shown}"),
        )
        .await;
        // Still responsive: a script runs at once.
        let t = std::time::Instant::now();
        b.js("return 1", vec![]).await;
        assert!(t.elapsed() < Duration::from_secs(2));
        b.quit().await;
    });
}

#[test]
fn a_running_job_is_killed_from_its_page() {
    run(async {
        let dev = Dev::start();
        let id = dev.submit(json!({"name": "sleeper", "shell": "echo started; sleep 300"}));
        let b = Browser::start().await;
        b.goto(&format!("{}/#/jobs/{id}", dev.addr)).await;
        b.wait_js(
            "the job running",
            UI_TIMEOUT,
            "const s = document.querySelector('#job-state .badge'); \
             return s && s.dataset.state === 'running' && !document.querySelector('#btn-kill').disabled",
        )
        .await;
        b.click("#btn-kill").await;
        b.el("#confirm[open]").await;
        b.screenshot("kill-confirm").await;
        b.click("#confirm-ok").await;
        b.wait_js(
            "the job killed",
            Duration::from_secs(30),
            "const s = document.querySelector('#job-state .badge'); \
             return s && s.dataset.state === 'killed' && document.querySelector('#btn-kill').disabled",
        )
        .await;
        assert_eq!(dev.job(&id)["state"], "killed");
        b.quit().await;
    });
}

#[test]
fn failed_tasks_are_retried_from_the_job_page_and_a_job_can_be_resubmitted() {
    run(async {
        let dev = Dev::start();
        let flag = dev.root().join("second-time");
        let shell = format!(
            "if [ -e '{f}' ]; then echo second try; else touch '{f}'; echo first try; exit 1; fi",
            f = flag.display()
        );
        let id = dev.submit(json!({"name": "flaky", "shell": shell, "timeout": "1m"}));
        dev.wait_final(&id, Duration::from_secs(60));
        let b = Browser::start().await;
        b.goto(&format!("{}/#/jobs/{id}", dev.addr)).await;
        b.wait_js(
            "the failed job with retry enabled",
            UI_TIMEOUT,
            "const s = document.querySelector('#job-state .badge'); \
             return s && s.dataset.state === 'failed' && !document.querySelector('#btn-retry').disabled",
        )
        .await;
        b.click("#btn-retry").await;
        b.wait_js(
            "the second attempt to succeed",
            Duration::from_secs(60),
            "const s = document.querySelector('#job-state .badge'); \
             const a = document.querySelector('#tasks-body tr[data-task=\"0\"][data-attempt=\"2\"] .badge'); \
             return s.dataset.state === 'succeeded' && a && a.dataset.state === 'succeeded'",
        )
        .await;
        let job = dev.job(&id);
        assert_eq!(job["state"], "succeeded");
        assert_eq!(util::attempts(&job, 0).len(), 2);
        b.wait_js(
            "the second attempt's log",
            UI_TIMEOUT,
            "const l = document.querySelector('#log'); return l.dataset.done === 'true' && l.textContent === 'second try\\n'",
        )
        .await;
        b.assert_fits("the job page").await;
        b.screenshot("job-retried").await;

        // Resubmit opens the form filled with the spec.
        b.click("#btn-resubmit").await;
        b.wait_js(
            "the form filled from the spec",
            UI_TIMEOUT,
            "const r = document.querySelector('#f-run'); return r && r.value.includes('second try') \
             && document.querySelector('#f-name').value === 'flaky' \
             && document.querySelector('#f-timeout').value === '1m'",
        )
        .await;
        b.type_into("#f-name", "flaky-again").await;
        b.click("#submit-btn").await;
        let new_id = s(&b
            .wait_js(
                "the resubmitted job",
                UI_TIMEOUT,
                "const a = document.querySelector('#submitted-note a'); return a ? a.textContent : null",
            )
            .await);
        let j = dev.wait_final(&new_id, Duration::from_secs(60));
        assert_eq!(j["name"], "flaky-again");
        assert_eq!(j["spec"]["shell"], json!(shell));
        assert_eq!(j["state"], "succeeded", "the flag file exists now");

        // Delete from its page.
        b.goto(&format!("{}/#/jobs/{new_id}", dev.addr)).await;
        b.el("#btn-delete").await;
        b.wait_js(
            "the job page",
            UI_TIMEOUT,
            "return !!document.querySelector('#job-state .badge')",
        )
        .await;
        b.click("#btn-delete").await;
        b.click("#confirm-ok").await;
        b.wait_js(
            "the jobs page without the deleted job",
            UI_TIMEOUT,
            &format!(
                "return location.hash.startsWith('#/jobs') && !!document.querySelector('#jobs-body tr') \
                 && !document.querySelector('#jobs-body tr[data-job=\"{new_id}\"]')"
            ),
        )
        .await;
        assert_eq!(dev.get(&format!("/v1/jobs/{new_id}")).0, 404);
        b.quit().await;
    });
}

#[test]
fn the_nodes_page_shows_the_node_and_drains_and_enables_it() {
    run(async {
        let dev = Dev::start_with(&["--cpus", "2", "--memory", "4G"]);
        dev.submit(json!({"name": "busy", "resources": {"cpus": 0.5, "memory": "1G"}, "shell": "sleep 300"}));
        // An image in the cluster's catalog that no node has fetched yet.
        let root = dev.tmp.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/motd"), "hello\n").unwrap();
        let tarball = dev.tmp.path().join("tools.tar");
        util::tar_dir(&root, &tarball);
        dev.gaffer(&["image", "import", "tools", tarball.to_str().unwrap()])
            .ok();
        let b = Browser::start().await;
        b.goto(&format!("{}/#/nodes", dev.addr)).await;
        b.wait_js(
            "the catalog image listed",
            UI_TIMEOUT,
            "const r = document.querySelector('#images-body tr[data-image=tools]'); \
             return r && r.textContent.includes('sha256:') && r.textContent.includes('rootfs-tar') \
               && r.textContent.includes('no node yet')",
        )
        .await;
        b.wait_js(
            "a ready node running one task",
            UI_TIMEOUT,
            "const r = document.querySelector('#nodes-body tr[data-node]'); \
             return r && r.dataset.state === 'ready' && r.textContent.includes('0.5 / 2') \
               && r.textContent.includes('1.0 GiB / 4.0 GiB') && r.querySelectorAll('.bar').length === 2",
        )
        .await;
        b.assert_fits("the nodes page").await;
        b.screenshot("nodes").await;
        b.size(390, 844).await;
        b.assert_fits("the nodes page on a phone").await;
        b.size(1366, 1000).await;
        b.click("#nodes-body tr[data-node] button").await;
        b.click("#confirm-ok").await;
        b.wait_js(
            "the node draining",
            UI_TIMEOUT,
            "const r = document.querySelector('#nodes-body tr[data-node]'); \
             return r.dataset.state === 'draining' && r.querySelector('button').textContent === 'Enable'",
        )
        .await;
        b.click("#nodes-body tr[data-node] button").await;
        b.wait_js(
            "the node ready again",
            UI_TIMEOUT,
            "const r = document.querySelector('#nodes-body tr[data-node]'); return r.dataset.state === 'ready'",
        )
        .await;
        // The submit form offers the cluster's images.
        b.goto(&format!("{}/#/submit", dev.addr)).await;
        b.wait_js(
            "the image suggested on the form",
            UI_TIMEOUT,
            "return document.querySelector('#f-image').getAttribute('list') === 'image-options' \
               && !!document.querySelector('#image-options option[value=tools]')",
        )
        .await;
        b.quit().await;
    });
}

#[test]
fn with_a_token_the_ui_asks_for_it_and_shows_nothing_before() {
    run(async {
        let cl = Cluster::start();
        let id = cl.submit(&json!({"name": "secret-job", "shell": "echo classified"}));
        // The pages are open; the data is not.
        let (code, html) = cl.get_anon("/");
        assert_eq!(code, 200);
        assert!(html.contains("/ui/app.js"), "{html}");
        assert_eq!(cl.get_anon("/ui/app.js").0, 200);
        assert_eq!(cl.get_anon("/ui/style.css").0, 200);
        assert_eq!(cl.get_anon("/v1/jobs").0, 401);
        assert_eq!(cl.get_anon("/v1/stats/timeline").0, 401);
        assert_eq!(cl.get_anon("/v1/events?after=0").0, 401);
        assert_eq!(cl.get("/v1/stats/timeline").0, 200);

        let b = Browser::start().await;
        b.goto(&format!("{}/#/jobs", cl.addr)).await;
        b.el("#auth-form").await;
        let seen = s(&b.js("return document.body.innerText", vec![]).await);
        assert!(
            !seen.contains("secret-job") && !seen.contains(&id),
            "{seen}"
        );
        assert_eq!(
            b.js(
                "return document.querySelector('#nav').hidden && !document.querySelector('#jobs-table')",
                vec![]
            )
            .await,
            json!(true)
        );
        b.screenshot("token").await;

        b.type_into("#token", "wrong-token").await;
        b.click("#token-submit").await;
        b.wait_js(
            "the refusal",
            UI_TIMEOUT,
            "return document.querySelector('#token-error').textContent.includes('refused')",
        )
        .await;
        let seen = s(&b.js("return document.body.innerText", vec![]).await);
        assert!(!seen.contains("secret-job"), "{seen}");

        b.type_into("#token", &cl.token).await;
        b.click("#token-submit").await;
        b.wait_js(
            "the secret job, succeeded, once the token is given",
            Duration::from_secs(60),
            &format!(
                "const r = document.querySelector('#jobs-body tr[data-job=\"{id}\"]'); \
                 return r && r.dataset.state === 'succeeded'"
            ),
        )
        .await;
        assert_eq!(
            b.js("return sessionStorage.getItem('gaffer.token')", vec![])
                .await,
            json!(cl.token)
        );
        // Live events, logs and nodes work with the token too.
        b.goto(&format!("{}/#/jobs/{id}", cl.addr)).await;
        b.wait_js(
            "the log and the events through the token",
            UI_TIMEOUT,
            "const l = document.querySelector('#log'); \
             return l && l.textContent === 'classified\\n' && !!document.querySelector('#events li[data-to=succeeded]')",
        )
        .await;
        b.goto(&format!("{}/#/nodes", cl.addr)).await;
        b.wait_js(
            "node n1",
            UI_TIMEOUT,
            "const r = document.querySelector('#nodes-body tr[data-node=n1]'); return r && r.dataset.state === 'ready'",
        )
        .await;
        // A reload keeps the session's token; forgetting it asks again.
        b.c.refresh().await.expect("reload");
        b.el("#nodes-body tr[data-node=n1]").await;
        b.click("#signout").await;
        b.el("#auth-form").await;
        assert_eq!(
            b.js("return sessionStorage.getItem('gaffer.token')", vec![])
                .await,
            Value::Null
        );
        b.quit().await;
    });
}
