//! Load benchmark of the etcd store: inserts JOBS jobs (a quarter of them active, in commits of
//! 1,000 as a busy submit stream would) and prints the seconds to insert them and to
//! `load_active` from a fresh store object.
//!
//! `cargo run --release -p gaffer-store --example etcd_load -- [JOBS] [ENDPOINT]`
//! (JOBS defaults to 100,000; without ENDPOINT a throw-away `etcd` is started on free ports).

use gaffer_api::state::TaskCounts;
use gaffer_api::{JobId, JobSpec, JobState};
use gaffer_store::etcd::EtcdStore;
use gaffer_store::{Batch, JobRow, Store};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn start_etcd() -> (Etcd, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cp, pp) = (port(), port());
    let client = format!("http://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd (apt-get install etcd-server)");
    (Etcd { child, _dir: dir }, client)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let jobs: u64 = args.get(1).map_or(100_000, |a| a.parse().expect("JOBS"));
    let (_etcd, endpoint) = match args.get(2) {
        Some(e) => (None, e.clone()),
        None => {
            let (e, ep) = start_etcd();
            (Some(e), ep)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let store = loop {
        match EtcdStore::connect(std::slice::from_ref(&endpoint), "/etcd_load") {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let spec = JobSpec {
        name: Some("load".into()),
        command: vec!["/bin/true".into()],
        array: Some(10),
        ..Default::default()
    };
    let t0 = Instant::now();
    for chunk in (1..=jobs).collect::<Vec<_>>().chunks(1000) {
        let mut b = Batch::default();
        for &id in chunk {
            let active = id % 4 == 0;
            b.insert_jobs.push(JobRow {
                id: JobId(id),
                name: format!("load-{id}"),
                spec: spec.clone(),
                state: if active {
                    JobState::Pending
                } else {
                    JobState::Succeeded
                },
                counts: TaskCounts {
                    total: 10,
                    pending: if active { 10 } else { 0 },
                    succeeded: if active { 0 } else { 10 },
                    ..Default::default()
                },
                created_at: 1_700_000_000_000 + id,
                finished_at: None,
                kill_requested: false,
                held: false,
                next_fresh: 0,
            });
        }
        b.next_job_id = Some(chunk[chunk.len() - 1] + 1);
        store.commit(&b).expect("commit");
    }
    let insert = t0.elapsed().as_secs_f64();
    drop(store);
    let t0 = Instant::now();
    let store = EtcdStore::connect(std::slice::from_ref(&endpoint), "/etcd_load").expect("connect");
    let active = store.load_active().expect("load_active");
    let load = t0.elapsed().as_secs_f64();
    println!(
        "{jobs} jobs: insert {insert:.2}s ({:.0} jobs/s), load_active {load:.2}s ({} active jobs)",
        jobs as f64 / insert,
        active.jobs.len()
    );
}
