//! The `bridge` container network in the web UI: a real bridge container (in a network
//! namespace of the test's own, so gaffer's bridge, veths and nftables rules never touch the
//! machine's network) shows its network and ports in the job's summary and its address and
//! port mappings per attempt; the submit form sends `network` and `ports` and shows the
//! server's field errors about them (root, overlayfs, busybox and nft needed; elsewhere the
//! test says why it skips, and fails under CI=true).

use crate::ui_util::{Browser, UI_TIMEOUT};
use crate::util::net::{dnat_rules, isolated, sh};
use crate::util::{self, wait_until, Dev};
use crate::{run, s};
use serde_json::{json, Value};
use std::time::Duration;

/// A busybox image imported as `web`.
fn import_busybox(dev: &Dev) {
    let root = dev.root().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    let tarball = dev.root().join("web.tar");
    util::tar_dir(&root, &tarball);
    dev.gaffer(&["image", "import", "web", tarball.to_str().unwrap()])
        .ok();
}

/// The running attempt of task 0, once it has an address.
fn running_attempt(dev: &Dev, id: &str) -> Value {
    wait_until(
        &format!("{id} to run on the bridge"),
        Duration::from_secs(60),
        || {
            let j = dev.job(id);
            let a = util::attempts(&j, 0).last().cloned()?;
            (a["state"] == "running" && a["ip"].is_string()).then_some(a)
        },
    )
}

/// `10.88.0.2 18080→80/tcp 31234→9000/tcp`, as the job page writes an attempt's address.
fn address(a: &Value) -> String {
    let mut out = s(&a["ip"]);
    for p in a["ports"].as_array().into_iter().flatten() {
        out += &format!(
            " {}→{}/{}",
            p["host"],
            p["container"],
            p["protocol"].as_str().unwrap_or("tcp")
        );
    }
    out
}

/// Veths and DNAT rules of gaffer's in this namespace.
fn leftovers() -> (usize, usize) {
    let veths = sh("ip -o link")
        .lines()
        .filter(|l| l.contains(": gv"))
        .count();
    let rules = dnat_rules();
    (veths, rules)
}

#[test]
fn a_bridge_jobs_page_shows_its_address_and_ports_and_the_form_sends_them() {
    if no_bridge().is_some() {
        return;
    }
    isolated(|| run(bridge_in_the_ui()));
}

async fn bridge_in_the_ui() {
    let dev = Dev::start_bridged();
    import_busybox(&dev);
    let web = dev.submit(json!({"name": "web", "image": "web", "network": "bridge",
        "ports": [{"host": 18080, "container": 80}, {"container": 9000}],
        "command": ["sleep", "300"]}));
    let a = running_attempt(&dev, &web);
    let ip = s(&a["ip"]);
    assert!(ip.starts_with("10.88.0."), "{a}");
    let auto = a["ports"][1]["host"].as_u64().unwrap();
    assert!((30000..=32767).contains(&auto), "{a}");
    let want = address(&a);
    assert_eq!(want, format!("{ip} 18080→80/tcp {auto}→9000/tcp"));

    let b = Browser::start().await;
    b.goto(&format!("{}/#/jobs/{web}", dev.addr)).await;
    b.wait_js(
        "the network and ports in the summary",
        UI_TIMEOUT,
        "const n = document.querySelector('#job-network'); \
         return n && n.textContent === 'bridge · ports 18080:80/tcp, 9000/tcp'",
    )
    .await;
    let shown = s(&b
        .wait_js(
            "the attempt's address and port mappings",
            UI_TIMEOUT,
            "const th = [...document.querySelectorAll('#tasks-table th')].map((t) => t.textContent); \
             const td = document.querySelector('#tasks-body tr[data-attempt=\"1\"] td.addr'); \
             return th.includes('Address') && td ? td.textContent : null",
        )
        .await);
    assert_eq!(shown, want);
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#tasks-table thead th').length \
               === document.querySelectorAll('#tasks-body tr[data-attempt=\"1\"] td').length",
            vec![]
        )
        .await,
        json!(true),
        "one cell per column"
    );
    b.assert_fits("the job page of a bridge container").await;
    b.screenshot("job-bridge").await;

    // A host task has no Address column.
    let host = dev.submit(json!({"name": "on-host", "command": ["true"]}));
    dev.wait_final(&host, Duration::from_secs(60));
    b.goto(&format!("{}/#/jobs/{host}", dev.addr)).await;
    b.wait_js(
        "a host job's attempts without an Address column",
        UI_TIMEOUT,
        "const r = document.querySelector('#tasks-body tr[data-attempt=\"1\"] .badge'); \
         return r && r.dataset.state === 'succeeded' && !document.querySelector('#job-network') \
           && ![...document.querySelectorAll('#tasks-table th')].some((t) => t.textContent === 'Address')",
    )
    .await;

    // The overview's y-axis, with a single finished task in the last hour: whole numbers,
    // none repeated.
    b.goto(&format!("{}/#/", dev.addr)).await;
    let labels = b
        .wait_js(
            "the overview chart's y-axis",
            UI_TIMEOUT,
            "const c = document.querySelector('#timeline-chart'); \
             if (!c || Number(c.dataset.succeeded) < 1) return null; \
             return [...c.querySelectorAll('text')].map((t) => t.textContent).filter((t) => /^[0-9]+$/.test(t))",
        )
        .await;
    let labels: Vec<&str> = labels
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut distinct = labels.clone();
    distinct.dedup();
    assert_eq!(labels.len(), 3, "{labels:?}");
    assert_eq!(distinct, labels, "no tick label twice: {labels:?}");

    // The nodes page shows the node's subnet.
    b.goto(&format!("{}/#/nodes", dev.addr)).await;
    b.wait_js(
        "the node's bridge subnet on the nodes page",
        UI_TIMEOUT,
        "const r = document.querySelector('#nodes-body tr[data-node]');          return r && r.textContent.includes('containers 10.88.0.0/24')",
    )
    .await;

    // A cluster job's page names its replicas, with an address each.
    let ring = dev.submit(
        json!({"name": "Ring", "image": "web", "replicas": 2, "command": ["sleep", "300"],
        "resources": {"cpus": 0.1}, "service": {"host": 18099, "port": 80}}),
    );
    b.goto(&format!("{}/#/jobs/{ring}", dev.addr)).await;
    b.wait_js(
        "the replicas with their names, addresses and readiness, and the service",
        UI_TIMEOUT,
        "const r = document.querySelector('#job-replicas'); \
         const names = [...document.querySelectorAll('#tasks-body .replica-name')].map((e) => e.textContent); \
         const addrs = [...document.querySelectorAll('#tasks-body td.addr')].map((e) => e.textContent); \
         const ready = document.querySelectorAll('#tasks-body .chip.ready').length; \
         const svc = document.querySelector('#job-service'); \
         return r && r.textContent.includes('restart group: ring-0 … ring-1') \
           && names.join() === 'ring-0,ring-1' \
           && addrs.length === 2 && addrs.every((a) => a.startsWith('10.88.0.')) && ready === 2 \
           && svc && svc.textContent.includes('port 18099 → port 80')",
    )
    .await;
    // Resubmitting it from the form keeps what the form does not show (the service).
    b.goto(&format!("{}/#/submit?from={ring}", dev.addr)).await;
    b.wait_js(
        "the form loaded with the replicas and a note of the fields it keeps",
        UI_TIMEOUT,
        "const r = document.querySelector('#f-replicas'); \
         const n = document.querySelector('#carried-fields'); \
         return r && r.value === '2' && n && n.textContent.includes('service')",
    )
    .await;
    dev.gaffer(&["kill", &ring]).ok();
    dev.wait_final(&ring, Duration::from_secs(30));
    b.click("#submit-btn").await;
    let again = wait_until("the resubmitted job", Duration::from_secs(10), || {
        let jobs: serde_json::Value =
            serde_json::from_str(&dev.gaffer(&["jobs", "-o", "json"]).ok().stdout).ok()?;
        jobs["jobs"]
            .as_array()?
            .iter()
            .find(|j| j["name"] == "Ring" && j["id"] != ring.as_str())
            .map(|j| j["id"].as_str().unwrap().to_string())
    });
    let spec = &dev.job(&again)["spec"];
    assert_eq!(spec["replicas"], 2, "{spec}");
    assert_eq!(
        spec["service"],
        json!({"host": 18099, "port": 80}),
        "{spec}"
    );
    dev.gaffer(&["kill", &again]).ok();

    // The form: a client-side mistake, then the server's 400s, each next to the Ports field.
    b.goto(&format!("{}/#/submit", dev.addr)).await;
    b.click("#mode-command").await;
    b.type_into("#f-run", "sleep 300").await;
    b.type_into("#f-image", "web").await;
    b.type_into("#f-ports", "18081:80, eighty").await;
    b.click("#submit-btn").await;
    b.wait_js(
        "the malformed port named next to its field",
        UI_TIMEOUT,
        "const e = document.querySelector('#err-ports'); \
         return e && e.textContent.includes('`eighty`') \
           && document.querySelector('#f-ports').getAttribute('aria-invalid') === 'true'",
    )
    .await;
    b.type_into("#f-ports", "70000:80").await;
    b.click("#submit-btn").await;
    let msg = s(&b
        .wait_js(
            "the server's error about port 70000",
            UI_TIMEOUT,
            "const e = document.querySelector('#err-ports'); \
             return e && e.textContent.includes('70000') ? e.textContent : null",
        )
        .await);
    assert!(!msg.contains("eighty"), "{msg}");
    assert_eq!(
        b.js(
            "return document.activeElement && document.activeElement.id",
            vec![]
        )
        .await,
        json!("f-ports")
    );
    b.el("#f-network")
        .await
        .select_by_value("host")
        .await
        .expect("select host");
    b.type_into("#f-ports", "18081:80").await;
    b.click("#submit-btn").await;
    b.wait_js(
        "the server's error about ports on the host network",
        UI_TIMEOUT,
        "const e = document.querySelector('#err-ports'); \
         return e && e.textContent.includes('need the bridge network, not `host`')",
    )
    .await;
    assert_eq!(
        dev.job_count(),
        4,
        "nothing stored by the refused submissions"
    );
    b.screenshot("submit-ports-error").await;

    b.el("#f-network")
        .await
        .select_by_value("bridge")
        .await
        .expect("select bridge");
    b.type_into("#f-ports", "18081:80 9001/udp").await;
    b.click("#submit-btn").await;
    let id = s(&b
        .wait_js(
            "the submitted note",
            UI_TIMEOUT,
            "const a = document.querySelector('#submitted-note a'); return a ? a.textContent : null",
        )
        .await);
    let spec = &dev.job(&id)["spec"];
    assert_eq!(spec["network"], "bridge", "{spec}");
    assert_eq!(
        spec["ports"],
        json!([{"host": 18081, "container": 80, "protocol": "tcp"},
               {"container": 9001, "protocol": "udp"}]),
        "{spec}"
    );
    let second = running_attempt(&dev, &id);
    assert_ne!(second["ip"], a["ip"]);

    // Resubmit fills the form from the spec.
    b.goto(&format!("{}/#/submit?from={id}", dev.addr)).await;
    b.wait_js(
        "network and ports filled from the spec",
        UI_TIMEOUT,
        "const p = document.querySelector('#f-ports'); \
         return p && p.value === '18081:80, 9001/udp' && document.querySelector('#f-network').value === 'bridge'",
    )
    .await;
    b.quit().await;

    for j in [&web, &id] {
        dev.gaffer(&["kill", j]).ok();
        dev.wait_final(j, Duration::from_secs(30));
    }
    wait_until(
        "the veths and DNAT rules of the killed attempts to go",
        Duration::from_secs(10),
        || (leftovers() == (0, 0)).then_some(()),
    );
}

fn no_bridge() -> Option<String> {
    crate::util::net::unsupported("bridge network in the UI", false)
}
