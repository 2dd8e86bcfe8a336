//! Cluster jobs (`--replicas`) end to end on `gaffer dev` with the bridge network: replicas
//! start only once every peer has an address, know each other by name (`/etc/hosts`,
//! `GAFFER_PEERS`, the hostfile) and reach each other by it.
//!
//! Like tests/bridge.rs, each test runs on a thread in a network namespace of its own, so
//! traffic goes only to addresses in it and in the containers gaffer makes there.

mod util;

use std::time::Duration;
use util::net::{import_web, isolated};
use util::{wait_until, Dev};

#[test]
fn replicas_know_each_other_by_name_and_reach_each_other() {
    if let Some(why) = util::net::unsupported("cluster job", false) {
        eprintln!("skipped: {why}");
        return;
    }
    isolated(|| {
        let dev = Dev::start_bridged();
        import_web(&dev);
        // Each replica serves its own name and fetches every peer's by that peer's name.
        // With the start barrier a name always resolves; the peer's httpd may still be
        // starting, hence the retry. (Into a file: Debian's static busybox wget crashes on a
        // name when its output or its stderr is a pipe or /dev/null.)
        let script = r#"
            mkdir -p www && hostname > www/index.html
            httpd -p 80 -h "$PWD/www"
            echo "replica $GAFFER_REPLICA of $GAFFER_REPLICAS: $(hostname)"
            echo "hostfile: $(cat $GAFFER_HOSTFILE)"
            for p in $GAFFER_PEERS; do
                grep -q "	$p\$" /etc/hosts || { echo "$p is not in /etc/hosts"; cat /etc/hosts; exit 3; }
                i=0
                while [ $i -lt 100 ]; do
                    rm -f page
                    wget -O page "http://$p/" 2>wget.err && got=$(cat page) && break
                    i=$((i + 1))
                    sleep 0.1
                done
                echo "from $p: $got"
                [ "$got" = "$p" ] || { cat wget.err; exit 4; }
            done
            sleep 1
        "#;
        let id = dev.submit_cli(&[
            "--name",
            "ring",
            "--replicas",
            "3",
            "--cpus",
            "0.1",
            "--image",
            "web",
            "--shell",
            script,
        ]);
        let j = dev.wait_final(&id, Duration::from_secs(90));
        let logs: Vec<String> = (0..3)
            .map(|i| {
                dev.gaffer(&["logs", &id, "--task", &i.to_string()])
                    .ok()
                    .stdout
            })
            .collect();
        assert_eq!(j["state"], "succeeded", "{j}\n{logs:#?}");
        let mut ips = Vec::new();
        for (i, log) in logs.iter().enumerate() {
            assert!(
                log.contains(&format!("replica {i} of 3: ring-{i}\n")),
                "{log}"
            );
            assert!(log.contains("hostfile: ring-0\nring-1\nring-2\n"), "{log}");
            for p in 0..3 {
                assert!(log.contains(&format!("from ring-{p}: ring-{p}\n")), "{log}");
            }
            ips.push(util::attempts(&j, i)[0]["ip"].as_str().unwrap().to_string());
        }
        let status = dev.gaffer(&["status", &id]).ok().stdout;
        assert!(
            status.contains(
                "replicas 3, placed and started together: ring-0 … ring-2 (restart group)"
            ),
            "{status}"
        );
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 3, "an address each: {ips:?}");

        // Bad input is refused naming the field.
        for (args, want) in [
            (vec!["--replicas", "1"], "expected 2 to 1024"),
            (
                vec!["--replicas", "2", "--array", "2"],
                "cannot be combined with `array`",
            ),
            (
                vec!["--replicas", "2", "--network", "host"],
                "need the bridge network",
            ),
        ] {
            let mut all = vec!["submit", "--image", "web"];
            all.extend(args);
            all.extend(["--", "true"]);
            let out = dev.gaffer(&all);
            assert_ne!(out.code, 0, "{all:?}");
            assert!(
                out.stderr.contains("replicas") && out.stderr.contains(want),
                "{all:?}: {}",
                out.stderr
            );
        }
    });
}

#[test]
fn a_restarted_replica_gets_a_new_address_that_its_running_peers_see() {
    if let Some(why) = util::net::unsupported("cluster job", false) {
        eprintln!("skipped: {why}");
        return;
    }
    isolated(|| {
        let dev = Dev::start_bridged();
        import_web(&dev);
        // Replica 1 fails at once on its first attempt; under `--restart replica` it alone
        // comes back, and replica 0, still running, sees its new address in /etc/hosts.
        let script = r#"
            addr() { grep "	ring-1$" /etc/hosts | cut -f1; }
            if [ "$GAFFER_REPLICA" = 1 ]; then
                [ "$GAFFER_ATTEMPT" = 1 ] && exit 1
                sleep 1; exit 0
            fi
            was=$(addr); i=0
            while [ "$(addr)" = "$was" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
            echo "ring-1 moved from $was to $(addr)"
            [ "$(addr)" != "$was" ]
        "#;
        let id = dev.submit_cli(&[
            "--name",
            "ring",
            "--replicas",
            "2",
            "--restart",
            "replica",
            "--retries",
            "1",
            "--retry-backoff",
            "100ms",
            "--cpus",
            "0.1",
            "--image",
            "web",
            "--shell",
            script,
        ]);
        let j = dev.wait_final(&id, Duration::from_secs(90));
        let log = dev.gaffer(&["logs", &id, "--task", "0"]).ok().stdout;
        assert_eq!(j["state"], "succeeded", "{j}\n{log}");
        let a = util::attempts(&j, 1);
        assert_eq!(a.len(), 2, "{j}");
        let (old, new) = (a[0]["ip"].as_str().unwrap(), a[1]["ip"].as_str().unwrap());
        assert_eq!(log, format!("ring-1 moved from {old} to {new}\n"));
        assert_eq!(util::attempts(&j, 0).len(), 1, "replica 0 kept running");
    });
}

#[test]
fn the_service_port_follows_the_ready_replica() {
    if let Some(why) = util::net::unsupported("cluster job", false) {
        eprintln!("skipped: {why}");
        return;
    }
    isolated(|| {
        let dev = Dev::start_bridged();
        import_web(&dev);
        // Each replica serves its name; it is ready while /work/leader exists, which the test
        // creates and removes from the host (the attempt's work directory).
        let id = dev.submit_cli(&[
            "--name",
            "ring",
            "--replicas",
            "2",
            "--cpus",
            "0.1",
            "--image",
            "web",
            "--service",
            "18090:80",
            "--ready-cmd",
            "test -f /work/leader",
            "--shell",
            "mkdir -p www && hostname > www/index.html && httpd -f -p 80 -h \"$PWD/www\"",
        ]);
        let work = |i: u32| dev.attempt_dir(&id, i, 1).join("work");
        util::wait_until("both replicas to run", Duration::from_secs(60), || {
            let j = dev.job(&id);
            (0..2)
                .all(|i| {
                    util::attempts(&j, i)
                        .first()
                        .is_some_and(|a| a["state"] == "running")
                })
                .then_some(())
        });
        let get = || util::net::http_get("127.0.0.1:18090");
        assert_eq!(
            get(),
            None,
            "no replica is ready: the door closes connections"
        );
        for (leader, follower) in [(0, 1), (1, 0)] {
            let _ = std::fs::remove_file(work(follower).join("leader"));
            std::fs::write(work(leader).join("leader"), "").unwrap();
            let t0 = std::time::Instant::now();
            let want = format!("ring-{leader}");
            util::wait_until(
                &format!("the port to reach {want}"),
                Duration::from_secs(10),
                || {
                    get()
                        .filter(|b| b.ends_with(&format!("{want}\n")))
                        .map(|_| ())
                },
            );
            eprintln!("the service port followed {want} in {:?}", t0.elapsed());
            let status = dev.gaffer(&["status", &id]).ok().stdout;
            assert!(
                status.contains(&format!("-> port 80 of a ready replica (now: {want})")),
                "{status}"
            );
        }
        dev.gaffer(&["kill", &id]).ok();
        dev.wait_final(&id, Duration::from_secs(30));
        util::wait_until("the front door to close", Duration::from_secs(10), || {
            std::net::TcpStream::connect("127.0.0.1:18090")
                .is_err()
                .then_some(())
        });
    });
}

#[test]
fn host_task_replicas_get_peers_addresses_and_a_shared_directory() {
    // Host processes: no container, no network namespace; the in-process agent of
    // `gaffer dev` is on loopback, so every peer's address is 127.0.0.1.
    let dev = Dev::start();
    let script = r#"
        echo "replica $GAFFER_REPLICA: $GAFFER_PEERS"
        echo "addrs: $GAFFER_PEER_ADDRS"
        echo "hostfile: $(cat "$GAFFER_HOSTFILE" | tr '\n' ' ')"
        touch "$GAFFER_SHARED_DIR/r$GAFFER_REPLICA"
        i=0
        while [ "$(ls "$GAFFER_SHARED_DIR" | wc -l)" -lt 3 ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i + 1)); done
        echo "shared: $(ls "$GAFFER_SHARED_DIR" | tr '\n' ' ')"
    "#;
    let id = dev.submit_cli(&[
        "--name",
        "hosts",
        "--replicas",
        "3",
        "--cpus",
        "0.1",
        "--shared-dir",
        "/shared",
        "--shell",
        script,
    ]);
    let j = dev.wait_final(&id, Duration::from_secs(60));
    assert_eq!(j["state"], "succeeded", "{j}");
    for i in 0..3 {
        let log = dev
            .gaffer(&["logs", &id, "--task", &i.to_string()])
            .ok()
            .stdout;
        assert_eq!(
            log,
            format!(
                "replica {i}: hosts-0 hosts-1 hosts-2\naddrs: 127.0.0.1 127.0.0.1 127.0.0.1\n\
                 hostfile: 127.0.0.1 127.0.0.1 127.0.0.1 \nshared: r0 r1 r2 \n"
            )
        );
    }
    // The shared directory goes with the job.
    let shared = dev.data.join("agent/shared").join(&id);
    assert!(shared.join("r2").exists());
    dev.gaffer(&["rm", &id]).ok();
    wait_until(
        "the shared directory to go",
        Duration::from_secs(10),
        || (!shared.exists()).then_some(()),
    );
}
