//! The web UI and the batch fields of issue 16 (holds, dependency kinds, throttled arrays,
//! stored scripts, log files, unplaceable specs), each in a real headless Chromium against a
//! real `gaffer dev`, and each failing on the UI before them. Screenshots land in
//! `target/ui-screenshots/`.

mod ui_util;
mod util;

use serde_json::{json, Value};
use std::time::Duration;
use ui_util::{run, s, Browser, UI_TIMEOUT};
use util::Dev;

const FINAL: Duration = Duration::from_secs(60);

/// Waits for the job page of `id` to be drawn.
async fn job_page(b: &Browser, dev: &Dev, id: &str) {
    b.goto(&format!("{}/#/jobs/{id}", dev.addr)).await;
    b.wait_js(
        &format!("the page of {id}"),
        UI_TIMEOUT,
        &format!(
            "return location.hash === '#/jobs/{id}' && !!document.querySelector('#job-title') \
               && !!document.querySelector('#btn-hold')"
        ),
    )
    .await;
}

/// Clicks `css` scrolled to the middle of the window, clear of the sticky header.
async fn press(b: &Browser, css: &str) {
    b.el(css).await;
    b.js(
        &format!("document.querySelector('{css}').scrollIntoView({{block: 'center'}}); return 1"),
        vec![],
    )
    .await;
    b.click(css).await;
}

/// Clicks a checkbox and waits for it to change.
async fn tick(b: &Browser, css: &str) {
    let before = b
        .js(
            &format!("return document.querySelector('{css}').checked"),
            vec![],
        )
        .await;
    press(b, css).await;
    b.wait_js(
        &format!("{css} to change"),
        UI_TIMEOUT,
        &format!("return document.querySelector('{css}').checked !== {before}"),
    )
    .await;
}

/// Waits for the note naming the job just submitted; returns its id.
async fn submitted(b: &Browser) -> String {
    let id = s(&b
        .wait_js(
            "the note naming the submitted job",
            UI_TIMEOUT,
            "const a = document.querySelector('#submitted-note a'); \
             return a && location.hash === '#/jobs/' + a.textContent ? a.textContent : null",
        )
        .await);
    assert!(id.starts_with("j-"), "{id}");
    id
}

/// Whether the Hold and Release buttons show, and the held badge.
const HOLD_UI: &str = "const shown = (q) => { const e = document.querySelector(q); return !!e && !e.hidden && e.offsetParent !== null; }; \
    const badge = document.querySelector('#job-state .badge.held'); \
    return { hold: shown('#btn-hold'), release: shown('#btn-release'), held: !!badge && badge.textContent === 'held', \
      state: document.querySelector('#job-state .badge').dataset.state, \
      reason: (document.querySelector('#job-reason') || {}).textContent || '' };";

async fn hold_ui(b: &Browser, what: &str, pred: &str) -> Value {
    b.wait_js(
        what,
        UI_TIMEOUT,
        &format!("const v = (() => {{ {HOLD_UI} }})(); return ({pred}) ? v : null"),
    )
    .await
}

/// A job submitted held does not start; the job list marks it held; Release on its page lets
/// it run to success without a reload; Hold and Release toggle a waiting job; a refused hold
/// is shown on the page.
#[test]
fn a_held_job_is_marked_held_and_hold_and_release_on_its_page_act_without_a_reload() {
    run(async {
        let dev = Dev::start();
        let id = dev.submit(json!({"name": "held-one", "shell": "echo released", "hold": true}));
        let j = dev.job(&id);
        assert_eq!(j["held"], true, "{j}");
        let b = Browser::start().await;

        // The job list marks it held, with the reason.
        b.goto(&format!("{}/#/jobs", dev.addr)).await;
        let cell = s(&b
            .wait_js(
                "the held job's row marked held",
                UI_TIMEOUT,
                &format!(
                    "const r = document.querySelector('#jobs-body tr[data-job=\"{id}\"]'); \
                     const b = r && r.querySelector('.badge.held'); \
                     return b && b.textContent === 'held' && r.dataset.held === 'true' \
                       && getComputedStyle(b).display !== 'none' ? r.children[2].textContent : null"
                ),
            )
            .await);
        assert!(
            cell.starts_with("pendingheld") && cell.contains(&format!("gaffer release {id}")),
            "{cell}"
        );
        b.screenshot("batch-jobs-held").await;

        // Its page: held, why it waits, Release and no Hold.
        job_page(&b, &dev, &id).await;
        let v = hold_ui(&b, "the held badge and Release", "v.held && v.release").await;
        assert_eq!(v["hold"], false, "{v}");
        assert_eq!(v["state"], "pending", "{v}");
        assert!(
            s(&v["reason"]).contains(&format!("held: gaffer release {id} lets its tasks start")),
            "{v}"
        );
        let j = dev.job(&id);
        assert_eq!(
            j["task_list"][0]["attempts"],
            json!([]),
            "a held job does not start: {j}"
        );
        b.screenshot("batch-job-held").await;

        // Release: it runs and succeeds, on the same page.
        b.js("window.__noReload = 'still here'; return 1", vec![])
            .await;
        b.click("#btn-release").await;
        let v = hold_ui(
            &b,
            "the released job to succeed",
            "!v.held && v.state === 'succeeded' && !v.release && !v.hold",
        )
        .await;
        assert!(s(&v["reason"]).is_empty(), "{v}");
        b.wait_js(
            "the released job's log",
            FINAL,
            "const l = document.querySelector('#log'); return l && l.textContent === 'released\\n'",
        )
        .await;
        assert_eq!(
            b.js("return window.__noReload", vec![]).await,
            json!("still here"),
            "the page was reloaded"
        );
        let j = dev.job(&id);
        assert_eq!(j["state"], "succeeded", "{j}");
        assert!(j["held"] != true, "{j}");
        b.screenshot("batch-job-released").await;

        // Hold and Release a waiting job (it waits for a running one).
        let first = dev.submit(json!({"name": "first", "shell": "sleep 300"}));
        let then = dev.submit(json!({"name": "then", "shell": "true", "depends_on": [first]}));
        job_page(&b, &dev, &then).await;
        hold_ui(
            &b,
            "Hold on the waiting job",
            "v.hold && !v.release && !v.held",
        )
        .await;
        // A refused hold is shown on the page (here the server answers for a job it does not
        // know), and goes once a hold works.
        b.js(
            "window.__fetch = window.fetch; \
             window.fetch = (u, o) => window.__fetch(String(u).replace(/\\/v1\\/jobs\\/[^/]+\\/hold$/, '/v1/jobs/j-999999/hold'), o); \
             return 1",
            vec![],
        )
        .await;
        b.click("#btn-hold").await;
        let err = s(&b
            .wait_js(
                "the refused hold",
                UI_TIMEOUT,
                "const e = document.querySelector('#job-action-error'); return e ? e.textContent : null",
            )
            .await);
        assert!(
            err.starts_with("Hold failed: ") && err.contains("j-999999"),
            "{err}"
        );
        assert_ne!(dev.job(&then)["held"], true);
        b.screenshot("batch-job-hold-refused").await;
        b.js("window.fetch = window.__fetch; return 1", vec![])
            .await;
        b.click("#btn-hold").await;
        let v = hold_ui(
            &b,
            "the held badge after Hold",
            "v.held && v.release && !v.hold && v.reason.includes('gaffer release')",
        )
        .await;
        assert_eq!(v["state"], "pending", "{v}");
        assert_eq!(dev.job(&then)["held"], true);
        assert_eq!(
            b.js(
                "return document.querySelector('#job-action-error').textContent",
                vec![]
            )
            .await,
            json!(""),
            "the error goes once a hold works"
        );
        assert_eq!(
            b.js("return document.activeElement.id", vec![]).await,
            json!("btn-release"),
            "the keyboard stays on the button that undoes it"
        );
        b.assert_fits("the held job's page").await;
        b.screenshot("batch-job-hold-clicked").await;
        b.click("#btn-release").await;
        let v = hold_ui(
            &b,
            "no held badge and no held reason after Release",
            "!v.held && v.hold && !v.release && !v.reason.includes('held')",
        )
        .await;
        assert!(!s(&v["reason"]).contains("held"), "{v}");
        assert!(dev.job(&then)["held"] != true);
        dev.gaffer(&["kill", &first]).ok();
        dev.wait_final(&then, FINAL);
        b.quit().await;
    });
}

/// A script job's page shows the script's name, arguments and body, with a download of the
/// same text; its dependencies by kind, its throttle and its log file; resubmit keeps them.
#[test]
fn a_script_jobs_page_shows_its_script_dependencies_throttle_and_log_file_and_resubmit_keeps_them()
{
    run(async {
        let dev = Dev::start();
        let ok = dev.submit(json!({"name": "ok", "shell": "true"}));
        let ok2 = dev.submit(json!({"name": "ok2", "shell": "true"}));
        let bad = dev.submit(json!({"name": "bad", "shell": "exit 1"}));
        let bad2 = dev.submit(json!({"name": "bad2", "shell": "exit 2"}));
        for j in [&ok, &ok2, &bad, &bad2] {
            dev.wait_final(j, FINAL);
        }
        let body = "#!/bin/sh\n# greet: says hello to its arguments, and this comment is a long line that is wider than a phone\necho \"hello $1 and $2\"\n";
        let logs = dev.root().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let pattern = format!("{}/greet-%j_%a.out", logs.display());
        let spec = json!({"name": "greet", "array": 2, "max_running": 1,
            "script": {"name": "greet.sh", "body": body}, "command": ["world", "it's me"],
            "depends_on": [ok], "after_any": [ok2, bad], "after_not_ok": [bad2], "singleton": true,
            "stdout_file": pattern});
        let id = dev.submit(spec.clone());
        let j = dev.wait_final(&id, FINAL);
        assert_eq!(j["state"], "succeeded", "{j}");
        let number = id.trim_start_matches("j-").trim_start_matches('0');
        let file = logs.join(format!("greet-{number}_0.out"));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "hello world and it's me\n"
        );

        let b = Browser::start().await;
        job_page(&b, &dev, &id).await;
        let v = b
            .wait_js(
                "the script panel",
                UI_TIMEOUT,
                "const t = (q) => (document.querySelector(q) || {}).textContent; \
                 const pre = document.querySelector('#script-body'); \
                 return pre && pre.offsetParent !== null ? { name: t('#script-name'), body: pre.textContent, \
                   runs: t('#job-runs'), info: t('#script-info'), \
                   download: document.querySelector('#script-download').getAttribute('download') } : null",
            )
            .await;
        assert_eq!(v["name"], "greet.sh", "{v}");
        assert_eq!(v["body"], body, "{v}");
        assert_eq!(v["runs"], "script greet.sh world 'it'\\''s me'", "{v}");
        assert!(s(&v["info"]).starts_with("3 lines"), "{v}");
        assert_eq!(v["download"], "greet.sh", "{v}");
        // The download is the script's text.
        let got = b
            .js(
                "const u = document.querySelector('#script-download').href; \
                 const p = 'data:text/plain;charset=utf-8,'; \
                 return u.startsWith(p) ? decodeURIComponent(u.slice(p.length)) : u",
                vec![],
            )
            .await;
        assert_eq!(got, json!(body));
        b.click("#script-copy").await;
        b.wait_js(
            "the copy to be done",
            UI_TIMEOUT,
            "return document.querySelector('#script-copy').dataset.copied === 'true' \
               && [...document.querySelectorAll('.toast')].some((t) => t.textContent === 'Copied greet.sh')",
        )
        .await;

        // Dependencies by kind, the throttle, the log file.
        let v = b
            .js(
                "const t = (q) => (document.querySelector(q) || {}).textContent; \
                 const ids = (k) => [...document.querySelectorAll(`#job-deps .dep[data-kind=${k}] a`)].map((a) => a.textContent); \
                 return { ok: ids('ok'), any: ids('any'), not_ok: ids('not_ok'), deps: t('#job-deps'), \
                   throttle: t('#job-max-running'), files: t('#job-log-files') }",
                vec![],
            )
            .await;
        assert_eq!(v["ok"], json!([ok]), "{v}");
        assert_eq!(v["any"], json!([ok2, bad]), "{v}");
        assert_eq!(v["not_ok"], json!([bad2]), "{v}");
        let deps = s(&v["deps"]);
        for part in [
            format!("after success of {ok}"),
            format!("after the end of {ok2}, {bad}"),
            format!("after failure of {bad2}"),
            "singleton: after every earlier job named greet has ended".to_string(),
        ] {
            assert!(deps.contains(&part), "{part} in {deps}");
        }
        assert_eq!(v["throttle"], "at most 1 task at once", "{v}");
        assert!(
            s(&v["files"]).starts_with(&format!("stdout and stderr → {pattern}")),
            "{v}"
        );
        b.wait_js(
            "task 0's log",
            UI_TIMEOUT,
            "const l = document.querySelector('#log'); return l && l.textContent === 'hello world and it\\'s me\\n'",
        )
        .await;
        b.assert_fits("the script job's page").await;
        b.screenshot("batch-script-job").await;
        b.js(
            "document.querySelector('#job-script').scrollIntoView({block: 'center'}); return 1",
            vec![],
        )
        .await;
        b.screenshot("batch-script-panel").await;

        // Resubmit: the script is kept, its arguments fill the command line, the new fields
        // theirs; it is submitted as it was.
        press(&b, "#btn-resubmit").await;
        let v = b
            .wait_js(
                "the resubmit form filled",
                UI_TIMEOUT,
                "const v = (i) => document.querySelector('#f-' + i).value; \
                 const c = (i) => document.querySelector('#f-' + i).checked; \
                 const note = document.querySelector('#script-note'); \
                 return v('name') === 'greet' ? { run: v('run'), mode: document.querySelector('#mode-command').checked, \
                   array: v('array'), max: v('max_running'), ok: v('depends_on'), any: v('after_any'), not_ok: v('after_not_ok'), \
                   singleton: c('singleton'), hold: c('hold'), out: v('stdout_file'), \
                   note: note.textContent, carried: document.querySelector('#carried-fields').textContent } : null",
            )
            .await;
        assert_eq!(v["run"], "world 'it'\\''s me'", "{v}");
        assert_eq!(v["mode"], true, "{v}");
        assert_eq!(
            (&v["array"], &v["max"], &v["ok"], &v["any"], &v["not_ok"]),
            (
                &json!("2"),
                &json!("1"),
                &json!(ok),
                &json!(format!("{ok2}, {bad}")),
                &json!(bad2)
            ),
            "{v}"
        );
        assert_eq!((&v["singleton"], &v["hold"]), (&json!(true), &json!(false)));
        assert_eq!(v["out"], json!(pattern));
        assert!(s(&v["note"]).contains("greet.sh"), "{v}");
        assert!(s(&v["carried"]).contains("script"), "{v}");
        b.screenshot("batch-resubmit-script").await;
        b.click("#submit-btn").await;
        let again = submitted(&b).await;
        assert_ne!(again, id);
        assert_eq!(dev.job(&again)["spec"], j["spec"], "resubmitted as it was");
        assert_eq!(dev.wait_final(&again, FINAL)["state"], "succeeded");
        // On a phone, nothing scrolls sideways (a long line scrolls inside the script).
        b.size(390, 844).await;
        b.el("#script-body").await;
        b.assert_fits("the script job's page on a phone").await;
        b.js(
            "document.querySelector('#job-script').scrollIntoView({block: 'center'}); return 1",
            vec![],
        )
        .await;
        b.screenshot("batch-script-phone").await;
        b.quit().await;
    });
}

/// Hold, max running (and N%K in the array field), the dependency kinds, singleton and the log
/// files reach the spec from the form; resubmit fills them back; a draft keeps the checkboxes.
#[test]
fn the_submit_forms_hold_throttle_and_dependency_fields_reach_the_spec() {
    run(async {
        let dev = Dev::start();
        let ok = dev.submit(json!({"name": "ok", "shell": "true"}));
        let ok2 = dev.submit(json!({"name": "ok2", "shell": "true"}));
        let bad = dev.submit(json!({"name": "bad", "shell": "exit 1"}));
        let bad2 = dev.submit(json!({"name": "bad2", "shell": "exit 2"}));
        for j in [&ok, &ok2, &bad, &bad2] {
            dev.wait_final(j, FINAL);
        }
        let out = dev.root().join("formed-%j_%a.out").display().to_string();
        let b = Browser::start().await;
        b.goto(&format!("{}/#/submit", dev.addr)).await;
        b.type_into("#f-run", "echo task $GAFFER_TASK_INDEX").await;
        b.type_into("#f-name", "formed").await;
        b.type_into("#f-array", "3").await;
        b.type_into("#f-max_running", "2").await;
        b.type_into("#f-depends_on", &ok).await;
        b.type_into("#f-after_any", &format!("{ok2}, {bad}")).await;
        b.type_into("#f-after_not_ok", &bad2).await;
        b.type_into("#f-stdout_file", &out).await;
        tick(&b, "#f-singleton").await;
        tick(&b, "#f-hold").await;
        // Leaving the page and coming back keeps the draft, checkboxes too.
        b.goto(&format!("{}/#/jobs", dev.addr)).await;
        b.el("#jobs-body").await;
        b.goto(&format!("{}/#/submit", dev.addr)).await;
        b.wait_js(
            "the draft with its checkboxes",
            UI_TIMEOUT,
            "const f = (i) => document.querySelector('#f-' + i); \
             return f('name') && f('name').value === 'formed' && f('hold').checked && f('singleton').checked \
               && !f('allow_unplaceable').checked && f('max_running').value === '2'",
        )
        .await;
        b.assert_fits("the submit page").await;
        b.js(
            "document.querySelector('#start-fields').scrollIntoView(); return 1",
            vec![],
        )
        .await;
        b.screenshot("batch-submit-form").await;
        b.click("#submit-btn").await;
        let id = submitted(&b).await;
        let j = dev.job(&id);
        let spec = &j["spec"];
        assert_eq!(spec["array"], 3, "{spec}");
        assert_eq!(spec["max_running"], 2, "{spec}");
        assert_eq!(spec["depends_on"], json!([ok]), "{spec}");
        assert_eq!(spec["after_any"], json!([ok2, bad]), "{spec}");
        assert_eq!(spec["after_not_ok"], json!([bad2]), "{spec}");
        assert_eq!(spec["singleton"], true, "{spec}");
        assert_eq!(spec["hold"], true, "{spec}");
        assert_eq!(spec["stdout_file"], json!(out), "{spec}");
        assert_eq!(j["held"], true, "{j}");
        // Its page says so.
        let v = hold_ui(&b, "the new job held on its page", "v.held && v.release").await;
        assert_eq!(v["state"], "pending", "{v}");
        assert_eq!(
            b.js(
                "return document.querySelector('#job-max-running').textContent",
                vec![]
            )
            .await,
            json!("at most 2 tasks at once")
        );

        // Resubmit fills them back; N%K in the array field sets both; without hold it runs.
        b.goto(&format!("{}/#/submit?from={id}", dev.addr)).await;
        let v = b
            .wait_js(
                "the fields filled from the spec",
                UI_TIMEOUT,
                "const f = (i) => document.querySelector('#f-' + i); \
                 return f('name').value === 'formed' ? [f('array').value, f('max_running').value, f('depends_on').value, \
                   f('after_any').value, f('after_not_ok').value, f('singleton').checked, f('hold').checked, \
                   f('stdout_file').value, document.querySelector('#carried-fields').textContent] : null",
            )
            .await;
        assert_eq!(
            v,
            json!([
                "3",
                "2",
                ok,
                format!("{ok2}, {bad}"),
                bad2,
                true,
                true,
                out,
                ""
            ])
        );
        b.type_into("#f-name", "formed-again").await;
        b.type_into("#f-array", "4%1").await;
        b.type_into("#f-max_running", "").await;
        tick(&b, "#f-hold").await;
        b.click("#submit-btn").await;
        let again = submitted(&b).await;
        let j2 = dev.wait_final(&again, FINAL);
        assert_eq!(j2["state"], "succeeded", "{j2}");
        let mut want = spec.clone();
        want["name"] = json!("formed-again");
        want["array"] = json!(4);
        want["max_running"] = json!(1);
        want.as_object_mut().unwrap().remove("hold");
        assert_eq!(j2["spec"], want);
        let number = again.trim_start_matches("j-").trim_start_matches('0');
        for i in 0..4 {
            let f = dev.root().join(format!("formed-{number}_{i}.out"));
            assert_eq!(
                std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())),
                format!("task {i}\n")
            );
        }
        assert_eq!(
            dev.job(&id)["task_list"][0]["attempts"],
            json!([]),
            "the held one never started"
        );
        dev.gaffer(&["kill", &id]).ok();
        b.quit().await;
    });
}

/// A spec no node could run is refused next to its field, with the tip pointing at the form's
/// checkbox; ticking Allow unplaceable submits it (form and paste tab), and it waits.
#[test]
fn an_unplaceable_spec_is_refused_next_to_its_field_and_allow_unplaceable_accepts_it() {
    run(async {
        let dev = Dev::start_with(&["--memory", "1G"]);
        let b = Browser::start().await;
        b.goto(&format!("{}/#/submit", dev.addr)).await;
        b.type_into("#f-run", "true").await;
        b.type_into("#f-name", "too-big").await;
        b.type_into("#f-memory", "7G").await;
        b.click("#submit-btn").await;
        let v = b
            .wait_js(
                "the refusal next to memory",
                UI_TIMEOUT,
                "const m = document.querySelector('#err-memory').textContent; \
                 const a = document.querySelector('#err-allow_unplaceable').textContent; \
                 return m && a ? [m, a] : null",
            )
            .await;
        let (memory, tip) = (s(&v[0]), s(&v[1]));
        assert_eq!(
            memory,
            "7GiB: the largest node offers 1GiB (to wait for such a node, tick Allow unplaceable below)"
        );
        assert!(
            !memory.contains("gaffer submit"),
            "the CLI's advice is not the form's: {memory}"
        );
        assert!(tip.contains("tick Allow unplaceable"), "{tip}");
        let banner = s(&b
            .js(
                "return document.querySelector('#submit-error').textContent",
                vec![],
            )
            .await);
        assert!(
            banner.contains("the largest node offers 1GiB") && !banner.contains("gaffer submit"),
            "{banner}"
        );
        assert_eq!(
            b.js(
                "return [document.activeElement.id, [...document.querySelectorAll('[aria-invalid=true]')].map((e) => e.id)]",
                vec![]
            )
            .await,
            json!(["f-memory", ["f-memory"]])
        );
        assert_eq!(dev.job_count(), 0);
        b.screenshot("batch-unplaceable-refused").await;

        tick(&b, "#f-allow_unplaceable").await;
        b.click("#submit-btn").await;
        let id = submitted(&b).await;
        let j = dev.job(&id);
        assert_eq!(j["spec"]["resources"]["memory"], json!(7u64 << 30), "{j}");
        assert_eq!(j["state"], "pending", "{j}");
        b.wait_js(
            "why it waits",
            UI_TIMEOUT,
            "const r = document.querySelector('#job-reason'); return r && r.textContent.startsWith('Waiting: ')",
        )
        .await;
        b.screenshot("batch-unplaceable-accepted").await;

        // The paste tab has the checkbox too.
        b.goto(&format!("{}/#/submit?tab=paste", dev.addr)).await;
        b.type_into(
            "#f-paste",
            r#"{"name": "too-big-pasted", "shell": "true", "resources": {"memory": "7G"}}"#,
        )
        .await;
        b.click("#paste-submit").await;
        let err = s(&b
            .wait_js(
                "the pasted spec refused",
                UI_TIMEOUT,
                "return document.querySelector('#paste-error').textContent",
            )
            .await);
        assert!(err.contains("the largest node offers 1GiB"), "{err}");
        assert_eq!(dev.job_count(), 1);
        tick(&b, "#paste-allow_unplaceable").await;
        b.click("#paste-submit").await;
        let pasted = submitted(&b).await;
        assert_eq!(dev.job(&pasted)["name"], "too-big-pasted");
        for j in [&id, &pasted] {
            dev.gaffer(&["kill", j]).ok();
        }
        b.quit().await;
    });
}
