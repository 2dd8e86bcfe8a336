//! Rough edges of the web UI (issue 16), each in a real headless Chromium against a real
//! `gaffer dev`, and each failing on the UI before its fix. Screenshots land in
//! `target/ui-screenshots/`.

mod ui_util;
mod util;

use serde_json::{json, Value};
use std::time::Duration;
use ui_util::{serial, Browser, UI_TIMEOUT};
use util::Dev;

fn run<F: std::future::Future<Output = ()>>(f: F) {
    let _one_at_a_time = serial();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f);
}

fn s(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_default()
}

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
