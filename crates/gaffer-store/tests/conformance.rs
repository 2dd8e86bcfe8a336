//! One suite of scenarios run against every backend: SQLite (a temporary file) and etcd (a real
//! `etcd` started per test on free ports, killed on drop; installed with apt-get when missing).
//! Each scenario gets a fixture that can open a *new* store object on the same data (same file,
//! same etcd prefix), to check what survives a restart.

use gaffer_api::state::TaskCounts;
use gaffer_api::views::{AttemptView, EventView};
use gaffer_api::{JobId, JobSpec, JobState, TaskState};
use gaffer_store::etcd::{EtcdStore, FenceCond};
use gaffer_store::sqlite::SqliteStore;
use gaffer_store::{Batch, JobQuery, JobRow, Store, StoreError, TaskRow};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- fixtures

trait Fixture {
    /// A new store object on this fixture's data.
    fn open(&self) -> Box<dyn Store>;
}

struct SqliteFx {
    dir: tempfile::TempDir,
}

impl SqliteFx {
    fn new() -> Self {
        SqliteFx {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }
}

impl Fixture for SqliteFx {
    fn open(&self) -> Box<dyn Store> {
        Box::new(SqliteStore::open(&self.path()).unwrap())
    }
}

/// A real etcd on free local ports; killed on drop.
struct EtcdServer {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ensure_etcd_installed() {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    let have = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        eprintln!("etcd is missing: installing etcd-server with apt-get");
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        let st = Command::new("apt-get")
            .args(["install", "-y", "-q", "etcd-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("run apt-get");
        assert!(st.success(), "apt-get install etcd-server failed");
    }
    *done = true;
}

fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl EtcdServer {
    fn start() -> Self {
        ensure_etcd_installed();
        for _try in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let (cp, pp) = (free_port(), free_port());
            let client = format!("http://127.0.0.1:{cp}");
            let peer = format!("http://127.0.0.1:{pp}");
            let mut child = Command::new("etcd")
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
                .expect("start etcd");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if healthy(cp) {
                    return EtcdServer {
                        child,
                        endpoint: client,
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken in the meantime: try other ports
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("etcd did not become healthy");
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct EtcdFx {
    server: EtcdServer,
    prefix: String,
}

static PREFIXES: AtomicU64 = AtomicU64::new(0);

impl EtcdFx {
    fn new() -> Self {
        let server = EtcdServer::start();
        let n = PREFIXES.fetch_add(1, Ordering::Relaxed);
        EtcdFx {
            server,
            prefix: format!("/test-{}-{n}", std::process::id()),
        }
    }
    fn store(&self) -> EtcdStore {
        EtcdStore::connect(std::slice::from_ref(&self.server.endpoint), &self.prefix).unwrap()
    }
}

impl Fixture for EtcdFx {
    fn open(&self) -> Box<dyn Store> {
        Box::new(self.store())
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $( #[test] fn $name() { super::$name(&super::SqliteFx::new()); } )*
        }
        mod etcd_backend {
            $( #[test] fn $name() { super::$name(&super::EtcdFx::new()); } )*
        }
    };
}

conformance!(
    committed_state_survives_reopen_and_pages_newest_first,
    ended_attempts_are_counted_per_minute,
    delete_removes_everything_of_a_job,
    list_jobs_filters_and_cursors,
    lazy_tasks_and_attempts,
    events_order_filter_and_limit,
    idempotency_keys,
    idempotency_keys_are_listed_in_byte_order,
    tasks_in_states_and_active_index,
    updates_keep_spec_and_missing_updates_are_ignored,
    large_batch_in_one_commit,
    many_jobs_load,
    job_histories_hold_every_row_of_each_job,
    node_subnets_are_kept,
);

fn node_subnets_are_kept(fx: &dyn Fixture) {
    let s = fx.open();
    assert!(s.load_active().unwrap().node_subnets.is_empty());
    s.commit(&Batch {
        node_subnets: vec![
            ("b".into(), "10.88.1.0/24".into()),
            ("a".into(), "10.88.0.0/24".into()),
        ],
        ..Default::default()
    })
    .unwrap();
    // Only this: the batch is not empty.
    s.commit(&Batch {
        node_subnets: vec![("b".into(), "10.88.7.0/24".into())],
        ..Default::default()
    })
    .unwrap();
    let want = vec![
        ("a".to_string(), "10.88.0.0/24".to_string()),
        ("b".to_string(), "10.88.7.0/24".to_string()),
    ];
    assert_eq!(s.load_active().unwrap().node_subnets, want);
    assert_eq!(fx.open().load_active().unwrap().node_subnets, want);
}

// ---------------------------------------------------------------- helpers

fn job(id: u64, n: u32) -> JobRow {
    JobRow {
        id: JobId(id),
        name: format!("job{id}"),
        spec: JobSpec {
            command: vec!["true".into()],
            array: Some(n),
            ..Default::default()
        },
        state: JobState::Pending,
        counts: TaskCounts {
            total: n,
            pending: n,
            ..Default::default()
        },
        created_at: 1000 + id,
        finished_at: None,
        kill_requested: false,
        held: false,
        next_fresh: 0,
    }
}

fn task(job: u64, index: u32, state: TaskState) -> TaskRow {
    TaskRow {
        job: JobId(job),
        index,
        state,
        attempts: 1,
        lost: 0,
        node: Some("n1".into()),
        not_before: None,
    }
}

fn attempt(n: u32, state: TaskState) -> AttemptView {
    AttemptView {
        attempt: n,
        node: "n1".into(),
        state,
        started_at: Some(5),
        ended_at: None,
        exit_code: None,
        signal: None,
        message: None,
        max_rss_bytes: None,
        cpu_secs: Some(1.25),
        outputs: vec![],
        ip: Some("10.88.0.2".into()),
        ports: Vec::new(),
        // A replica's readiness goes through both backends too.
        ready: (state == TaskState::Running).then_some(true),
    }
}

fn event(id: u64, job: u64, task: Option<u32>, to: &str) -> EventView {
    EventView {
        id,
        time: id * 10,
        job: JobId(job),
        task,
        attempt: task.map(|_| 1),
        from: None,
        to: to.into(),
        detail: String::new(),
    }
}

fn ids(page: &gaffer_api::views::JobPage) -> Vec<u64> {
    page.jobs.iter().map(|j| j.id.0).collect()
}

// ---------------------------------------------------------------- scenarios

fn committed_state_survives_reopen_and_pages_newest_first(fx: &dyn Fixture) {
    {
        let s = fx.open();
        let mut b = Batch::default();
        for id in 1..=5 {
            b.insert_jobs.push(job(id, 3));
        }
        b.next_job_id = Some(6);
        s.commit(&b).unwrap();
        let mut b = Batch::default();
        let mut j = job(2, 3);
        j.state = JobState::Succeeded;
        b.update_jobs.push(j);
        b.tasks.push(task(1, 1, TaskState::Running));
        let mut a = attempt(1, TaskState::Running);
        a.outputs = vec!["a.csv".into()];
        b.attempts.push((JobId(1), 1, a));
        s.commit(&b).unwrap();
    }
    let s = fx.open();
    let active = s.load_active().unwrap();
    assert_eq!(active.jobs.len(), 4, "job 2 is final");
    let active_ids: Vec<u64> = active.jobs.iter().map(|j| j.id.0).collect();
    assert_eq!(active_ids, [1, 3, 4, 5]);
    assert_eq!(active.tasks, [task(1, 1, TaskState::Running)]);
    assert_eq!(active.next_job_id, 6);
    assert_eq!(active.next_event_id, 1);
    let page = s
        .list_jobs(&JobQuery {
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&page), [5, 4]);
    assert_eq!(page.next, Some(JobId(4)));
    let page = s
        .list_jobs(&JobQuery {
            limit: 10,
            before: page.next,
            state: Some(JobState::Pending),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&page), [3, 1]);
    assert_eq!(page.next, None);
    let j1 = s.get_job(JobId(1)).unwrap().unwrap();
    assert_eq!(j1, job(1, 3));
    let tasks = s.list_tasks(&j1, 0, 10).unwrap();
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[1].state, TaskState::Running);
    assert_eq!(tasks[1].attempts[0].outputs, ["a.csv"]);
    assert_eq!(tasks[0].state, TaskState::Pending);
    let counts = s.count_jobs().unwrap();
    assert_eq!(
        counts,
        [
            (JobState::Pending, 4),
            (JobState::Running, 0),
            (JobState::Succeeded, 1),
            (JobState::Failed, 0),
            (JobState::Killed, 0)
        ]
    );
}

fn ended_attempts_are_counted_per_minute(fx: &dyn Fixture) {
    let s = fx.open();
    let ev = |id: u64, time: u64, task: Option<u32>, to: &str| EventView {
        id,
        time,
        job: JobId(1),
        task,
        attempt: task.map(|_| 1),
        from: Some("running".into()),
        to: to.into(),
        detail: String::new(),
    };
    let mut b = Batch::default();
    b.insert_jobs.push(job(1, 5));
    b.events = vec![
        ev(1, 59_000, Some(0), "succeeded"),
        ev(2, 120_000, Some(0), "succeeded"),
        ev(3, 150_000, Some(1), "failed"),
        ev(4, 170_000, Some(2), "timed_out"),
        ev(5, 170_500, Some(2), "pending"),
        ev(6, 179_000, None, "succeeded"),
        ev(7, 200_000, Some(3), "lost"),
        ev(8, 60_000, Some(4), "oom_killed"),
    ];
    s.commit(&b).unwrap();
    let got = s.ended_per_minute(60_000).unwrap();
    assert_eq!(got, [(60_000, 0, 1), (120_000, 1, 2), (180_000, 0, 1)]);
    assert_eq!(s.ended_per_minute(1_000_000).unwrap(), []);
    // A deleted job's events no longer count.
    s.commit(&Batch {
        delete_jobs: vec![JobId(1)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.ended_per_minute(0).unwrap(), []);
}

fn delete_removes_everything_of_a_job(fx: &dyn Fixture) {
    let s = fx.open();
    let mut b = Batch::default();
    b.insert_jobs.push(job(1, 3));
    b.insert_jobs.push(job(2, 3));
    b.events.push(event(1, 1, None, "submitted"));
    b.events.push(event(2, 2, None, "submitted"));
    b.events.push(event(3, 1, Some(0), "succeeded"));
    b.tasks.push(task(1, 0, TaskState::Running));
    b.tasks.push(task(2, 0, TaskState::Running));
    b.attempts
        .push((JobId(1), 0, attempt(1, TaskState::Running)));
    b.idempotency.push(("k1".into(), vec![JobId(1)]));
    s.commit(&b).unwrap();
    assert_eq!(s.events(0, None, 10).unwrap().len(), 3);
    assert_eq!(s.idempotent_ids("k1").unwrap(), Some(vec![JobId(1)]));
    s.commit(&Batch {
        delete_jobs: vec![JobId(1)],
        ..Default::default()
    })
    .unwrap();
    assert!(s.get_job(JobId(1)).unwrap().is_none());
    assert!(s.events(0, Some(JobId(1)), 10).unwrap().is_empty());
    let left: Vec<u64> = s
        .events(0, None, 10)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(left, [2]);
    assert!(s.attempts(JobId(1), 0).unwrap().is_empty());
    assert!(s
        .tasks_in_states(JobId(1), &TaskState::ALL)
        .unwrap()
        .is_empty());
    let active = s.load_active().unwrap();
    assert_eq!(active.jobs.len(), 1);
    assert_eq!(active.tasks, [task(2, 0, TaskState::Running)]);
    let counts = s.count_jobs().unwrap();
    assert!(counts.contains(&(JobState::Pending, 1)));
    assert_eq!(
        ids(&s
            .list_jobs(&JobQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap()),
        [2]
    );
    // Insert and delete in one batch: nothing is left.
    let mut b = Batch::default();
    b.insert_jobs.push(job(3, 1));
    b.tasks.push(task(3, 0, TaskState::Running));
    b.events.push(event(4, 3, None, "submitted"));
    b.delete_jobs.push(JobId(3));
    s.commit(&b).unwrap();
    assert!(s.get_job(JobId(3)).unwrap().is_none());
    assert_eq!(s.events(0, None, 10).unwrap().len(), 1);
    assert_eq!(s.load_active().unwrap().tasks.len(), 1);
}

fn list_jobs_filters_and_cursors(fx: &dyn Fixture) {
    let s = fx.open();
    let mut b = Batch::default();
    for id in 1..=30 {
        let mut j = job(id, 1);
        j.name = if id % 3 == 0 {
            format!("alpha-{id}")
        } else {
            format!("beta-{id}")
        };
        if id % 2 == 0 {
            j.state = JobState::Succeeded;
        }
        b.insert_jobs.push(j);
    }
    s.commit(&b).unwrap();
    let q = |state, name: Option<&str>, before: Option<u64>, limit| JobQuery {
        state,
        name: name.map(String::from),
        before: before.map(JobId),
        limit,
    };
    // Walk all pages of every filter and compare with the expected order.
    for (state, name) in [
        (None, None),
        (Some(JobState::Succeeded), None),
        (Some(JobState::Pending), None),
        (None, Some("alpha")),
        (Some(JobState::Succeeded), Some("alpha")),
        (Some(JobState::Pending), Some("pha-2")),
        (Some(JobState::Killed), None),
        (None, Some("nothing")),
    ] {
        let want: Vec<u64> = (1..=30u64)
            .rev()
            .filter(|id| match state {
                Some(JobState::Succeeded) => id % 2 == 0,
                Some(JobState::Pending) => id % 2 == 1,
                Some(_) => false,
                None => true,
            })
            .filter(|id| {
                let n = if id % 3 == 0 {
                    format!("alpha-{id}")
                } else {
                    format!("beta-{id}")
                };
                match name {
                    None => true,
                    Some(w) => n.contains(w),
                }
            })
            .collect();
        let mut got = Vec::new();
        let mut before = None;
        loop {
            let page = s.list_jobs(&q(state, name, before, 4)).unwrap();
            assert!(page.jobs.len() <= 4);
            got.extend(ids(&page));
            match page.next {
                Some(n) => {
                    assert_eq!(Some(n.0), got.last().copied());
                    before = Some(n.0);
                }
                None => break,
            }
        }
        assert_eq!(got, want, "state {state:?} name {name:?}");
    }
    // A cursor in the middle and a limit of 0 (treated as 1).
    let page = s.list_jobs(&q(None, None, Some(10), 3)).unwrap();
    assert_eq!(ids(&page), [9, 8, 7]);
    let page = s.list_jobs(&q(None, None, None, 0)).unwrap();
    assert_eq!(ids(&page), [30]);
    assert_eq!(page.next, Some(JobId(30)));
    let page = s.list_jobs(&q(None, None, Some(1), 3)).unwrap();
    assert!(page.jobs.is_empty() && page.next.is_none());
    // A cursor far above every id is the same as none.
    let page = s.list_jobs(&q(None, None, Some(u64::MAX / 2), 3)).unwrap();
    assert_eq!(ids(&page), [30, 29, 28]);
    // Views carry the record.
    let page = s.list_jobs(&q(None, Some("alpha-30"), None, 3)).unwrap();
    assert_eq!(page.jobs[0].name, "alpha-30");
    assert_eq!(page.jobs[0].state, JobState::Succeeded);
    assert_eq!(page.jobs[0].created_at, 1030);
}

fn lazy_tasks_and_attempts(fx: &dyn Fixture) {
    let s = fx.open();
    let mut j = job(7, 1_000_000);
    j.next_fresh = 3;
    let mut b = Batch::default();
    b.insert_jobs.push(j.clone());
    for i in 0..3 {
        b.tasks.push(task(7, i, TaskState::Running));
    }
    let mut nb = task(7, 2, TaskState::Pending);
    nb.not_before = Some(99);
    nb.attempts = 2;
    b.tasks.push(nb.clone());
    b.attempts
        .push((JobId(7), 2, attempt(2, TaskState::Pending)));
    b.attempts
        .push((JobId(7), 2, attempt(1, TaskState::Failed)));
    b.attempts
        .push((JobId(7), 1, attempt(1, TaskState::Running)));
    // Index 10's attempt must not show in index 1's list (key prefixes).
    b.attempts
        .push((JobId(7), 10, attempt(1, TaskState::Running)));
    s.commit(&b).unwrap();
    let j = s.get_job(JobId(7)).unwrap().unwrap();
    assert_eq!(j.next_fresh, 3);
    let tasks = s.list_tasks(&j, 0, 5).unwrap();
    assert_eq!(tasks.len(), 5);
    let states: Vec<TaskState> = tasks.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [
            TaskState::Running,
            TaskState::Running,
            TaskState::Pending,
            TaskState::Pending,
            TaskState::Pending
        ]
    );
    assert_eq!(tasks[2].not_before, Some(99));
    let nums: Vec<u32> = tasks[2].attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(nums, [1, 2], "attempts ordered by number");
    assert_eq!(tasks[1].attempts.len(), 1);
    assert!(tasks[3].attempts.is_empty());
    // Far into the lazy part; past the end; a window ending at the total.
    let tail = s.list_tasks(&j, 999_998, 10).unwrap();
    let idx: Vec<u32> = tail.iter().map(|t| t.index).collect();
    assert_eq!(idx, [999_998, 999_999]);
    assert!(s.list_tasks(&j, 1_000_000, 10).unwrap().is_empty());
    assert!(s.list_tasks(&j, 5, 0).unwrap().is_empty());
    let window = s.list_tasks(&j, 1, 2).unwrap();
    assert_eq!(window.len(), 2);
    assert_eq!(window[0].index, 1);
    assert_eq!(window[0].attempts.len(), 1);
    assert_eq!(window[1].attempts.len(), 2);
    // Untouched tasks of a killed or final job.
    let mut killed = j.clone();
    killed.kill_requested = true;
    assert_eq!(
        s.list_tasks(&killed, 5, 1).unwrap()[0].state,
        TaskState::Killed
    );
    let mut done = j.clone();
    done.state = JobState::Failed;
    assert_eq!(
        s.list_tasks(&done, 5, 1).unwrap()[0].state,
        TaskState::DependencyFailed
    );
    assert_eq!(s.attempts(JobId(7), 2).unwrap().len(), 2);
    assert_eq!(
        s.attempts(JobId(7), 2).unwrap()[1],
        attempt(2, TaskState::Pending)
    );
    assert_eq!(s.attempts(JobId(7), 1).unwrap().len(), 1);
    assert!(s.attempts(JobId(7), 5).unwrap().is_empty());
    // The later row of the same task in one batch wins.
    assert_eq!(
        s.tasks_in_states(JobId(7), &[TaskState::Pending]).unwrap(),
        [nb]
    );
}

fn events_order_filter_and_limit(fx: &dyn Fixture) {
    let s = fx.open();
    let mut b = Batch::default();
    b.insert_jobs.push(job(1, 1));
    b.insert_jobs.push(job(2, 1));
    for id in 1..=20u64 {
        let mut e = event(id, 1 + id % 2, Some(0), "running");
        e.detail = format!("d{id}");
        e.from = Some("pending".into());
        b.events.push(e);
    }
    s.commit(&b).unwrap();
    // Beyond 9 and 10: ids must sort as numbers.
    let all: Vec<u64> = s
        .events(0, None, 100)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(all, (1..=20).collect::<Vec<_>>());
    let page: Vec<u64> = s.events(8, None, 5).unwrap().iter().map(|e| e.id).collect();
    assert_eq!(page, [9, 10, 11, 12, 13]);
    let j1: Vec<u64> = s
        .events(5, Some(JobId(2)), 3)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(j1, [7, 9, 11]);
    assert!(s.events(20, None, 10).unwrap().is_empty());
    assert!(s.events(0, None, 0).unwrap().is_empty());
    assert!(s.events(0, Some(JobId(9)), 10).unwrap().is_empty());
    let e = &s.events(2, None, 1).unwrap()[0];
    assert_eq!(e.detail, "d3");
    assert_eq!(e.from.as_deref(), Some("pending"));
    assert_eq!(e.job, JobId(2));
    assert_eq!(e.time, 30);
    drop(s);
    let s = fx.open();
    assert_eq!(s.load_active().unwrap().next_event_id, 21);
}

fn idempotency_keys(fx: &dyn Fixture) {
    let s = fx.open();
    assert_eq!(s.idempotent_ids("k").unwrap(), None);
    let mut b = Batch::default();
    b.insert_jobs.push(job(1, 1));
    b.insert_jobs.push(job(2, 1));
    b.idempotency
        .push(("k/with spaces".into(), vec![JobId(1), JobId(2)]));
    b.idempotency.push(("empty".into(), vec![]));
    b.next_job_id = Some(3);
    s.commit(&b).unwrap();
    assert_eq!(
        s.idempotent_ids("k/with spaces").unwrap(),
        Some(vec![JobId(1), JobId(2)])
    );
    assert_eq!(s.idempotent_ids("empty").unwrap(), Some(vec![]));
    assert_eq!(s.idempotent_ids("k").unwrap(), None);
    // The counter never goes below the largest id + 1.
    s.commit(&Batch {
        next_job_id: Some(1),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.load_active().unwrap().next_job_id, 3);
    s.commit(&Batch {
        next_job_id: Some(100),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(fx.open().load_active().unwrap().next_job_id, 100);
    // Empty batches are fine.
    s.commit(&Batch::default()).unwrap();
}

fn idempotency_keys_are_listed_in_byte_order(fx: &dyn Fixture) {
    let s = fx.open();
    assert_eq!(s.idempotency_keys(None, 10).unwrap(), []);
    let mut b = Batch::default();
    for id in 1..=4 {
        b.insert_jobs.push(job(id, 1));
    }
    // Written out of order; `a/x` sorts between `a` and `b` byte-wise, `Z` before `a`.
    b.idempotency.push(("b".into(), vec![JobId(2)]));
    b.idempotency.push(("a/x".into(), vec![JobId(3), JobId(4)]));
    b.idempotency.push(("a".into(), vec![JobId(1)]));
    b.idempotency.push(("Z key".into(), vec![]));
    s.commit(&b).unwrap();
    let all = |v: Vec<(String, Vec<JobId>)>| -> Vec<(String, Vec<u64>)> {
        v.into_iter()
            .map(|(k, ids)| (k, ids.into_iter().map(|i| i.0).collect()))
            .collect()
    };
    let s = fx.open();
    assert_eq!(
        all(s.idempotency_keys(None, 100).unwrap()),
        [
            ("Z key".to_string(), vec![]),
            ("a".to_string(), vec![1]),
            ("a/x".to_string(), vec![3, 4]),
            ("b".to_string(), vec![2]),
        ]
    );
    // Pages: `after` is exclusive, `limit` bounds the page.
    let p1 = s.idempotency_keys(None, 2).unwrap();
    assert_eq!(all(p1.clone()).len(), 2);
    assert_eq!(p1[1].0, "a");
    let p2 = s.idempotency_keys(Some(&p1[1].0), 2).unwrap();
    assert_eq!(
        all(p2),
        [("a/x".to_string(), vec![3, 4]), ("b".to_string(), vec![2])]
    );
    assert_eq!(s.idempotency_keys(Some("b"), 2).unwrap(), []);
    assert_eq!(s.idempotency_keys(Some("a0"), 10).unwrap().len(), 1);
    assert_eq!(s.idempotency_keys(None, 0).unwrap(), []);
    // Deleting a job leaves its key (a resubmit still returns the old ids), as lookups do.
    s.commit(&Batch {
        delete_jobs: vec![JobId(2)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.idempotency_keys(None, 100).unwrap().len(), 4);
    assert_eq!(s.idempotent_ids("b").unwrap(), Some(vec![JobId(2)]));
}

fn tasks_in_states_and_active_index(fx: &dyn Fixture) {
    let s = fx.open();
    let mut b = Batch::default();
    b.insert_jobs.push(job(1, 20));
    for (i, st) in TaskState::ALL.iter().enumerate() {
        b.tasks.push(task(1, i as u32, *st));
    }
    s.commit(&b).unwrap();
    let got = s
        .tasks_in_states(JobId(1), &[TaskState::Succeeded, TaskState::Pending])
        .unwrap();
    let idx: Vec<u32> = got.iter().map(|t| t.index).collect();
    assert_eq!(idx, [0, 3]);
    assert!(s.tasks_in_states(JobId(1), &[]).unwrap().is_empty());
    let mut active: Vec<TaskRow> = s.load_active().unwrap().tasks;
    active.sort_by_key(|t| t.index);
    let states: Vec<TaskState> = active.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [TaskState::Pending, TaskState::Assigned, TaskState::Running]
    );
    // Tasks leave the active set when they end.
    let mut b = Batch::default();
    let mut t = task(1, 2, TaskState::Succeeded);
    t.lost = 2;
    t.not_before = Some(7);
    b.tasks.push(t.clone());
    s.commit(&b).unwrap();
    let s = fx.open();
    assert_eq!(s.load_active().unwrap().tasks.len(), 2);
    assert_eq!(
        s.tasks_in_states(JobId(1), &[TaskState::Succeeded])
            .unwrap()
            .iter()
            .find(|r| r.index == 2),
        Some(&t)
    );
}

fn updates_keep_spec_and_missing_updates_are_ignored(fx: &dyn Fixture) {
    let s = fx.open();
    s.commit(&Batch {
        insert_jobs: vec![job(1, 4)],
        ..Default::default()
    })
    .unwrap();
    let mut u = job(1, 4);
    u.state = JobState::Running;
    u.counts.running = 2;
    u.counts.pending = 2;
    u.counts.started = 2;
    u.kill_requested = true;
    u.held = true;
    u.next_fresh = 2;
    u.name = "renamed".into();
    u.spec.command = vec!["false".into()];
    s.commit(&Batch {
        update_jobs: vec![u.clone(), job(99, 1)],
        ..Default::default()
    })
    .unwrap();
    let got = s.get_job(JobId(1)).unwrap().unwrap();
    assert_eq!(got.state, JobState::Running);
    assert_eq!(got.counts, u.counts);
    assert!(got.kill_requested);
    assert!(got.held, "holds are kept");
    assert_eq!(got.next_fresh, 2);
    assert_eq!(got.name, "job1", "update does not rename");
    assert_eq!(got.spec, job(1, 4).spec, "update does not rewrite the spec");
    assert!(s.get_job(JobId(99)).unwrap().is_none());
    let counts = s.count_jobs().unwrap();
    assert!(counts.contains(&(JobState::Running, 1)));
    assert!(counts.contains(&(JobState::Pending, 0)));
    // Insert and update in one batch; then finish.
    let mut u2 = job(2, 1);
    u2.state = JobState::Running;
    s.commit(&Batch {
        insert_jobs: vec![job(2, 1)],
        update_jobs: vec![u2],
        ..Default::default()
    })
    .unwrap();
    let mut fin = job(1, 4);
    fin.state = JobState::Succeeded;
    fin.finished_at = Some(5000);
    s.commit(&Batch {
        update_jobs: vec![fin],
        ..Default::default()
    })
    .unwrap();
    let s = fx.open();
    let active = s.load_active().unwrap();
    assert_eq!(active.jobs.len(), 1);
    assert_eq!(active.jobs[0].id, JobId(2));
    assert_eq!(active.jobs[0].state, JobState::Running);
    assert_eq!(
        s.get_job(JobId(1)).unwrap().unwrap().finished_at,
        Some(5000)
    );
    let running = s
        .list_jobs(&JobQuery {
            state: Some(JobState::Running),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&running), [2]);
    let done = s
        .list_jobs(&JobQuery {
            state: Some(JobState::Succeeded),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&done), [1]);
}

fn large_batch_in_one_commit(fx: &dyn Fixture) {
    let s = fx.open();
    let mut b = Batch::default();
    b.insert_jobs.push(job(1, 10_000));
    for i in 0..10_000 {
        b.tasks.push(task(1, i, TaskState::Running));
    }
    for id in 1..=30_000u64 {
        b.events
            .push(event(id, 1, Some((id % 10_000) as u32), "running"));
    }
    let t0 = Instant::now();
    s.commit(&b).unwrap();
    eprintln!(
        "large batch (10,000 tasks + 30,000 events): commit {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let s = fx.open();
    let active = s.load_active().unwrap();
    eprintln!(
        "large batch: load_active {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(active.tasks.len(), 10_000);
    assert_eq!(active.next_event_id, 30_001);
    assert_eq!(s.events(29_990, None, 100).unwrap().len(), 10);
    let j = s.get_job(JobId(1)).unwrap().unwrap();
    assert_eq!(s.list_tasks(&j, 9_990, 100).unwrap().len(), 10);
    // Deleting it removes it all.
    s.commit(&Batch {
        delete_jobs: vec![JobId(1)],
        ..Default::default()
    })
    .unwrap();
    let active = s.load_active().unwrap();
    assert!(active.tasks.is_empty() && active.jobs.is_empty());
    assert!(s.events(0, None, 10).unwrap().is_empty());
}

fn job_histories_hold_every_row_of_each_job(fx: &dyn Fixture) {
    let s = fx.open();
    let mut b = Batch::default();
    // Job 1: one task, two attempts. Job 2: an array of 20 with rows for 6 tasks (more than
    // the default reads task by task), attempts on three of them. Job 3: none. Job 5: no rows.
    b.insert_jobs.push(job(1, 1));
    b.tasks.push(task(1, 0, TaskState::Failed));
    b.attempts
        .push((JobId(1), 0, attempt(2, TaskState::Failed)));
    b.attempts
        .push((JobId(1), 0, attempt(1, TaskState::Failed)));
    let mut array = job(2, 20);
    array.next_fresh = 6;
    b.insert_jobs.push(array);
    for i in 0..6 {
        b.tasks.push(task(2, i, TaskState::Running));
    }
    for (i, n) in [(5, 1), (0, 1), (10, 1), (0, 2)] {
        b.attempts
            .push((JobId(2), i, attempt(n, TaskState::Running)));
    }
    b.insert_jobs.push(job(5, 1));
    s.commit(&b).unwrap();

    let ids = [JobId(5), JobId(3), JobId(2), JobId(1)];
    let got = s.job_histories(&ids).unwrap();
    assert_eq!(got.len(), 4);
    assert!(got[1].is_none(), "job 3 does not exist");
    let five = got[0].as_ref().unwrap();
    assert_eq!(
        (five.job.id, five.tasks.len(), five.attempts.len()),
        (JobId(5), 0, 0)
    );
    let two = got[2].as_ref().unwrap();
    assert_eq!(two.job.next_fresh, 6);
    let rows: Vec<u32> = two.tasks.iter().map(|t| t.index).collect();
    assert_eq!(rows, [0, 1, 2, 3, 4, 5]);
    // Attempts by index, then number (index 10 has no row but its attempt is kept).
    let at: Vec<(u32, u32)> = two.attempts.iter().map(|(i, a)| (*i, a.attempt)).collect();
    assert_eq!(at, [(0, 1), (0, 2), (5, 1), (10, 1)]);
    let one = got[3].as_ref().unwrap();
    let at: Vec<(u32, u32)> = one.attempts.iter().map(|(i, a)| (*i, a.attempt)).collect();
    assert_eq!(at, [(0, 1), (0, 2)]);
    assert_eq!(one.tasks, vec![task(1, 0, TaskState::Failed)]);
    // It agrees with the single reads.
    for (id, h) in ids.iter().zip(&got) {
        assert_eq!(s.get_job(*id).unwrap(), h.as_ref().map(|h| h.job.clone()));
        let Some(h) = h else { continue };
        assert_eq!(s.tasks_in_states(*id, &TaskState::ALL).unwrap(), h.tasks);
        let mut single = Vec::new();
        for index in [0, 1, 2, 3, 4, 5, 10] {
            let list = s.attempts(*id, index).unwrap();
            single.extend(list.into_iter().map(|a| (index, a)));
        }
        assert_eq!(single, h.attempts, "job {id}");
    }
}

fn many_jobs_load(fx: &dyn Fixture) {
    const N: u64 = 20_000;
    let s = fx.open();
    let t0 = Instant::now();
    for chunk in (1..=N).collect::<Vec<_>>().chunks(1000) {
        let mut b = Batch::default();
        for &id in chunk {
            let mut j = job(id, 1);
            if id == 2 {
                j.state = JobState::Killed;
                j.name = "the-only-killed".into();
            } else if id % 4 != 0 {
                j.state = JobState::Succeeded;
            }
            b.insert_jobs.push(j);
        }
        b.next_job_id = Some(chunk[chunk.len() - 1] + 1);
        s.commit(&b).unwrap();
    }
    let insert = t0.elapsed();
    let t0 = Instant::now();
    let s = fx.open();
    let active = s.load_active().unwrap();
    eprintln!(
        "{N} jobs: insert {:.2}s, load_active {:.2}s ({} active)",
        insert.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        active.jobs.len()
    );
    assert_eq!(active.jobs.len(), (N / 4) as usize);
    assert_eq!(active.next_job_id, N + 1);
    let counts = s.count_jobs().unwrap();
    assert!(counts.contains(&(JobState::Succeeded, N * 3 / 4 - 1)));
    let page = s
        .list_jobs(&JobQuery {
            limit: 50,
            before: Some(JobId(10_001)),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&page)[0], 10_000);
    assert_eq!(page.jobs.len(), 50);
    // Pages far bigger than the etcd backend's first read window, of a filter that holds for
    // every fourth job: all 5,000 in order.
    let mut got = Vec::new();
    let mut before = None;
    loop {
        let page = s
            .list_jobs(&JobQuery {
                state: Some(JobState::Pending),
                limit: 1500,
                before,
                ..Default::default()
            })
            .unwrap();
        got.extend(ids(&page));
        match page.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    let want: Vec<u64> = (1..=N).rev().filter(|id| id % 4 == 0).collect();
    assert_eq!(got, want);
    // One old entry below 20,000 newer ones: by state, and by a name no other job has.
    let page = s
        .list_jobs(&JobQuery {
            state: Some(JobState::Killed),
            limit: 50,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((ids(&page), page.next), (vec![2], None));
    let page = s
        .list_jobs(&JobQuery {
            name: Some("only-killed".into()),
            limit: 50,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((ids(&page), page.next), (vec![2], None));
}

// ---------------------------------------------------------------- etcd only

#[test]
fn etcd_stale_fence_refuses_writes_and_changes_nothing() {
    let fx = EtcdFx::new();
    let leader_key = format!("{}-leader", fx.prefix);
    // Become "leader": create the key and fence on its create revision.
    let setup = fx.store();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = fx.server.endpoint.clone();
    let rev = rt.block_on(async {
        let mut c = etcd_client::Client::connect([ep], None).await.unwrap();
        c.put(leader_key.clone(), "me", None).await.unwrap();
        c.get(leader_key.clone(), None).await.unwrap().kvs()[0].create_revision()
    });
    let s = fx
        .store()
        .with_fence(leader_key.clone(), FenceCond::CreateRevision(rev));
    s.commit(&Batch {
        insert_jobs: vec![job(1, 1)],
        ..Default::default()
    })
    .unwrap();
    let by_value = fx
        .store()
        .with_fence(leader_key.clone(), FenceCond::Value(b"me".to_vec()));
    by_value
        .commit(&Batch {
            insert_jobs: vec![job(2, 1)],
            ..Default::default()
        })
        .unwrap();
    // Someone else becomes leader: the key is recreated.
    let ep = fx.server.endpoint.clone();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([ep], None).await.unwrap();
        c.delete(leader_key.clone(), None).await.unwrap();
        c.put(leader_key.clone(), "other", None).await.unwrap();
    });
    let mut big = Batch::default();
    big.insert_jobs.push(job(3, 1));
    let mut u = job(1, 1);
    u.state = JobState::Killed;
    big.update_jobs.push(u);
    big.delete_jobs.push(JobId(2));
    big.next_job_id = Some(50);
    let err = s.commit(&big).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert!(err.to_string().contains(&leader_key), "{err}");
    let err = by_value.commit(&big).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    // Nothing changed.
    let active = setup.load_active().unwrap();
    let ids: Vec<u64> = active.jobs.iter().map(|j| j.id.0).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(active.next_job_id, 3);
    // Re-fenced on the new key, writes go through again.
    let rev2 = rt.block_on(async {
        let mut c = etcd_client::Client::connect([fx.server.endpoint.clone()], None)
            .await
            .unwrap();
        c.get(leader_key.clone(), None).await.unwrap().kvs()[0].create_revision()
    });
    s.set_fence(Some(gaffer_store::etcd::Fence {
        key: leader_key,
        cond: FenceCond::CreateRevision(rev2),
    }));
    s.commit(&big).unwrap();
    assert_eq!(setup.load_active().unwrap().next_job_id, 50);
}

#[test]
fn etcd_split_batches_respect_small_limits() {
    let fx = EtcdFx::new();
    // Tiny transactions: every batch is split, and the result is the same.
    let s = fx.store().with_limits(3, 4096);
    let mut b = Batch::default();
    for id in 1..=10 {
        b.insert_jobs.push(job(id, 2));
        b.tasks.push(task(id, 0, TaskState::Running));
        b.events.push(event(id, id, None, "submitted"));
    }
    s.commit(&b).unwrap();
    let active = fx.store().load_active().unwrap();
    assert_eq!(active.jobs.len(), 10);
    assert_eq!(active.tasks.len(), 10);
    assert_eq!(active.next_event_id, 11);
}

#[test]
fn etcd_works_from_inside_a_tokio_runtime() {
    let fx = EtcdFx::new();
    let ep = fx.server.endpoint.clone();
    let prefix = fx.prefix.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        // Connect, write and read from a blocking thread of another runtime...
        let s = tokio::task::spawn_blocking(move || {
            let s = EtcdStore::connect(&[ep], &prefix).unwrap();
            s.commit(&Batch {
                insert_jobs: vec![job(1, 1)],
                ..Default::default()
            })
            .unwrap();
            assert!(s.get_job(JobId(1)).unwrap().is_some());
            std::sync::Arc::new(s)
        })
        .await
        .unwrap();
        let s2 = s.clone();
        let n = tokio::task::spawn_blocking(move || s2.load_active().unwrap().jobs.len())
            .await
            .unwrap();
        assert_eq!(n, 1);
        // ...and even straight from an async task (it blocks that worker, but works).
        assert_eq!(s.count_jobs().unwrap()[0], (JobState::Pending, 1));
        drop(s); // dropping inside the runtime must not panic
    });
}

#[test]
fn etcd_unreachable_endpoint_is_a_clear_error() {
    let port = free_port();
    let ep = format!("http://127.0.0.1:{port}");
    let err = match EtcdStore::connect(std::slice::from_ref(&ep), "/x") {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Etcd { .. }), "{msg}");
    assert!(msg.contains(&ep), "{msg}");
}

#[test]
fn etcd_prefixes_are_isolated() {
    let fx = EtcdFx::new();
    let a = EtcdStore::connect(std::slice::from_ref(&fx.server.endpoint), "/iso/a").unwrap();
    let b = EtcdStore::connect(std::slice::from_ref(&fx.server.endpoint), "/iso/a2/").unwrap();
    a.commit(&Batch {
        insert_jobs: vec![job(1, 1)],
        events: vec![event(1, 1, None, "submitted")],
        ..Default::default()
    })
    .unwrap();
    assert!(b.get_job(JobId(1)).unwrap().is_none());
    assert!(b.load_active().unwrap().jobs.is_empty());
    assert!(b.events(0, None, 10).unwrap().is_empty());
    assert_eq!(b.prefix(), "/iso/a2");
}
