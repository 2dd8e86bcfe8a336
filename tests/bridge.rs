//! The `bridge` container network end to end on `gaffer dev`: addresses, container to container
//! traffic, port mapping on 127.0.0.1 and the node's address, host ports as a resource, and
//! nothing left behind (veths, namespaces, nftables rules), also across a kill -9.
//!
//! Each test runs on a thread that first moves into a network namespace of its own: the
//! `gaffer dev` it starts, the CLI and the test's own HTTP requests all live there, so the
//! bridge, routes and rules gaffer makes never touch the machine's network, and traffic goes
//! only to loopback and to addresses inside that namespace and the containers' (root and
//! overlayfs needed; elsewhere the tests say why they skip, and fail under CI=true).

mod util;

use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use util::net::{dnat_rules, http_get, import_web, isolated, sh};
use util::{wait_until, Dev};

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

/// What of gaffer's network is on this namespace's node: attempt veths and DNAT rules.
fn leftovers(dev: &Dev) -> (Vec<String>, usize, Vec<String>) {
    let veths: Vec<String> = sh("ip -o link")
        .lines()
        .filter(|l| l.contains(": gv"))
        .map(str::to_string)
        .collect();
    let rules = dnat_rules();
    let netns: Vec<String> = std::fs::read_dir(dev.data.join("agent/netns"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    (veths, rules, netns)
}

fn assert_clean(dev: &Dev) {
    let got = wait_until(
        "gaffer's network of ended attempts to go",
        Duration::from_secs(10),
        || {
            let l = leftovers(dev);
            (l.0.is_empty() && l.1 == 0 && l.2.is_empty()).then_some(l)
        },
    );
    assert_eq!(got, (vec![], 0, vec![]));
}

#[test]
fn bridge_containers_talk_map_ports_wait_for_taken_ones_and_leave_nothing() {
    if no_containers().is_some() {
        return;
    }
    isolated(|| {
        let dev = Dev::start_bridged();
        import_web(&dev);
        let web = dev.submit_cli(&[
            "--image", "web", "-p", "18080:80", "--", "httpd", "-f", "-p", "80", "-h", "/www",
        ]);
        let a = running_attempt(&dev, &web);
        let ip = a["ip"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.88.0."), "{a}");
        assert_eq!(
            a["ports"],
            json!([{"host": 18080, "container": 80, "protocol": "tcp"}])
        );

        // The mapped port answers on 127.0.0.1 and on the node's bridge address; the
        // container answers on its own address.
        for addr in ["127.0.0.1:18080", "10.88.0.1:18080", &format!("{ip}:80")] {
            let body = wait_until(
                &format!("{addr} to answer"),
                Duration::from_secs(10),
                || http_get(addr),
            );
            assert!(body.contains("hello from the bridge"), "{addr}: {body}");
        }
        let status = dev.gaffer(&["status", &web]).ok().stdout;
        assert!(status.contains(&format!("{ip} 18080->80/tcp")), "{status}");
        assert!(
            status.contains("network  bridge, ports 18080:80/tcp"),
            "{status}"
        );

        // A second container, on the bridge by default, fetches from the first by its address
        // and knows itself.
        let client = dev.submit_cli(&[
            "--image",
            "web",
            "--",
            "sh",
            "-c",
            &format!("wget -q -O- http://{ip}/ && cat /etc/hosts && hostname"),
        ]);
        let j = dev.wait_final(&client, Duration::from_secs(60));
        assert_eq!(j["state"], "succeeded", "{j}");
        let out = dev.gaffer(&["logs", &client]).ok().stdout;
        assert!(out.contains("hello from the bridge"), "{out}");
        let own = util::attempts(&j, 0)[0]["ip"].as_str().unwrap().to_string();
        assert_ne!(own, ip);
        assert!(
            out.contains(&format!("{own}\t")),
            "its own name in /etc/hosts: {out}"
        );

        // Host port 18080 is taken: a second task asking for it waits, naming the port.
        let second = dev.submit_cli(&[
            "--image", "web", "-p", "18080:80", "--", "httpd", "-f", "-p", "80", "-h", "/www",
        ]);
        let waiting = dev.wait_job(&second, "a pending reason", |j| {
            j["pending_reason"].is_string()
        });
        let why = waiting["pending_reason"].as_str().unwrap();
        assert!(why.contains("host port 18080/tcp is taken"), "{why}");
        dev.gaffer(&["kill", &web]).ok();
        let b = running_attempt(&dev, &second);
        let body = wait_until("18080 to answer again", Duration::from_secs(10), || {
            http_get("127.0.0.1:18080")
        });
        assert!(body.contains("hello from the bridge"));
        assert_ne!(
            b["ip"], a["ip"],
            "the new attempt has an address of its own"
        );

        // `none` has only loopback.
        let none = dev.submit_cli(&[
            "--image",
            "web",
            "--network",
            "none",
            "--",
            "ip",
            "-o",
            "link",
        ]);
        assert_eq!(
            dev.wait_final(&none, Duration::from_secs(60))["state"],
            "succeeded"
        );
        let links = dev.gaffer(&["logs", &none]).ok().stdout;
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains(": lo:"), "{links}");

        dev.gaffer(&["kill", &second]).ok();
        dev.wait_final(&second, Duration::from_secs(30));
        assert_clean(&dev);
        assert!(http_get("127.0.0.1:18080").is_none(), "the mapping is gone");
    });
}

#[test]
fn bad_ports_and_networks_are_refused_naming_the_field() {
    if no_containers().is_some() {
        return;
    }
    isolated(|| {
        let dev = Dev::start_bridged();
        for (ports, network, want) in [
            (
                json!([{"host": 80, "container": 80}]),
                None,
                "host port 80 is below 1024",
            ),
            (
                json!([{"host": 18080, "container": 80}, {"host": 18080, "container": 81}]),
                None,
                "host port 18080/tcp is given twice",
            ),
            (
                json!([{"host": 18080, "container": 80}]),
                Some("host"),
                "need the bridge network, not `host`",
            ),
            (
                json!([{"host": 18080, "container": 0}]),
                None,
                "ports are 1 to 65535",
            ),
        ] {
            let mut spec = json!({"command": ["true"], "image": "web", "ports": ports});
            if let Some(n) = network {
                spec["network"] = json!(n);
            }
            let (code, body) = dev.post("/v1/jobs", &spec);
            assert_eq!(code, 400, "{spec}: {body}");
            assert!(
                body.contains(want) && body.contains("ports"),
                "{spec}: {body}"
            );
        }
        let (code, body) = dev.post("/v1/jobs", &json!({"command": ["true"], "image": "web", "ports": [{"host": 70000, "container": 80}]}));
        assert_eq!(code, 400, "{body}");
        let bad = dev.gaffer(&["submit", "--image", "web", "-p", "80/sctp", "--", "true"]);
        assert_ne!(bad.code, 0);
        assert!(bad.stderr.contains("tcp or udp"), "{bad:?}");
    });
    let out = Command::new(util::BIN)
        .args(["server", "--cluster-cidr", "10.88.0.1/16"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("host bits are set"),
        "{err}"
    );
}

#[test]
fn a_restarted_agent_keeps_live_bridge_attempts_and_removes_what_died() {
    if no_containers().is_some() {
        return;
    }
    isolated(|| {
        let mut dev = Dev::start_bridged();
        import_web(&dev);
        let keep = dev.submit_cli(&[
            "--image", "web", "--cpus", "0.1", "-p", "18081:80", "--", "httpd", "-f", "-p", "80",
            "-h", "/www",
        ]);
        let a = running_attempt(&dev, &keep);
        let dies = dev.submit_cli(&[
            "--image",
            "web",
            "--cpus",
            "0.1",
            "--network",
            "bridge",
            "--",
            "sleep",
            "600",
        ]);
        let d = running_attempt(&dev, &dies);
        // kill -9 of the agent (with the server: gaffer dev), then of one attempt's supervisor
        // and task: its veth, namespace and address stay behind until the agent comes back.
        dev.kill9();
        let dir = dev.attempt_dir(&dies, 0, 1);
        let pids: Vec<i32> = util::all_pids()
            .into_iter()
            .filter(|p| {
                std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|c| c.starts_with(&dir))
                    || util::proc_entries(*p, "cmdline")
                        .iter()
                        .any(|a| a.starts_with(dir.to_str().unwrap()))
            })
            .collect();
        assert!(!pids.is_empty(), "the dying attempt's processes");
        for p in pids {
            if let Some(g) = util::pgid_of(p) {
                util::killpg9(g);
            }
        }
        assert_eq!(leftovers(&dev).0.len(), 2, "both veths outlive the agent");
        dev.launch();
        // The dead attempt is lost (and placed again: lost attempts do not use up retries).
        dev.wait_job(&dies, "its first attempt to be lost", |j| {
            util::attempts(j, 0)
                .first()
                .is_some_and(|a| a["state"] == "lost")
        });
        // The survivor still answers, on its port, at its address, which nobody else gets.
        let body = wait_until("18081 to answer", Duration::from_secs(10), || {
            http_get("127.0.0.1:18081")
        });
        assert!(body.contains("hello from the bridge"));
        let next = dev.submit_cli(&[
            "--image",
            "web",
            "--cpus",
            "0.1",
            "--network",
            "bridge",
            "--",
            "sleep",
            "600",
        ]);
        let n = running_attempt(&dev, &next);
        assert_ne!(n["ip"], a["ip"]);
        let retry = running_attempt(&dev, &dies);
        assert_eq!(retry["attempt"], 2);
        // One veth per live attempt: the dead one's is gone.
        let veths = wait_until("one veth per live attempt", Duration::from_secs(10), || {
            let v = leftovers(&dev).0;
            (v.len() == 3).then_some(v)
        });
        assert!(!veths
            .iter()
            .any(|v| v.contains(&d["ip"].as_str().unwrap().to_string())));
        for id in [&keep, &next, &dies] {
            dev.gaffer(&["kill", id]).ok();
        }
        for id in [&keep, &next, &dies] {
            dev.wait_final(id, Duration::from_secs(30));
        }
        assert_clean(&dev);

        // The bridge and the table outlive the agent (as docker0 does) until
        // `gaffer agent --cleanup-network` removes them.
        dev.sigterm(Duration::from_secs(20));
        assert!(sh("ip -o link").contains(": gaffer0:"));
        let out = dev.gaffer(&[
            "agent",
            "--cleanup-network",
            "--data-dir",
            dev.data.join("agent").to_str().unwrap(),
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("removed the bridge network"), "{out:?}");
        assert!(!sh("ip -o link").contains("gaffer0"));
        assert!(!sh("nft list tables").contains("gaffer"));
        // A one-node dev has no routes to other nodes' subnets: their removal is asserted
        // in tests/bridge_cluster.rs, where there are some.
    });
}

fn no_containers() -> Option<String> {
    util::net::unsupported("bridge network", false)
}
