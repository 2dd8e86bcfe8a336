//! Fills a state database with finished history and a queue, for the scale benchmark
//! (`bench/scale.sh`): `fill_store DB FINISHED_JOBS TASKS_PER_JOB QUEUED_TASKS`.
//!
//! Finished jobs get one task row, one attempt and three events per task, as real runs leave;
//! the queue is one pending array job of QUEUED_TASKS tasks (stored lazily, as the server does).

use gaffer_api::state::TaskCounts;
use gaffer_api::views::{AttemptView, EventView};
use gaffer_api::{JobId, JobSpec, JobState, TaskState};
use gaffer_store::sqlite::SqliteStore;
use gaffer_store::{Batch, JobRow, Store, TaskRow};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: fill_store DB FINISHED_JOBS TASKS_PER_JOB QUEUED_TASKS");
        std::process::exit(2);
    }
    let db = std::path::Path::new(&args[1]);
    let jobs: u64 = args[2].parse().expect("FINISHED_JOBS");
    let per: u32 = args[3].parse().expect("TASKS_PER_JOB");
    let queued: u32 = args[4].parse().expect("QUEUED_TASKS");
    let store = SqliteStore::open(db).expect("open the database");
    let t0 = Instant::now();
    let mut event = 1u64;
    let spec = |n: u32| JobSpec {
        name: Some("fill".into()),
        command: vec!["/bin/true".into()],
        array: Some(n),
        ..Default::default()
    };
    for chunk in (1..=jobs).collect::<Vec<_>>().chunks(50) {
        let mut b = Batch::default();
        for &id in chunk {
            let now = 1_700_000_000_000 + id * 10;
            b.insert_jobs.push(JobRow {
                id: JobId(id),
                name: format!("fill-{id}"),
                spec: spec(per),
                state: JobState::Succeeded,
                counts: TaskCounts {
                    total: per,
                    succeeded: per,
                    started: per,
                    ..Default::default()
                },
                created_at: now,
                finished_at: Some(now + 5),
                kill_requested: false,
                held: false,
                next_fresh: per,
            });
            for index in 0..per {
                b.tasks.push(TaskRow {
                    job: JobId(id),
                    index,
                    state: TaskState::Succeeded,
                    attempts: 1,
                    lost: 0,
                    node: Some("n1".into()),
                    not_before: None,
                });
                b.attempts.push((
                    JobId(id),
                    index,
                    AttemptView {
                        attempt: 1,
                        node: "n1".into(),
                        state: TaskState::Succeeded,
                        started_at: Some(now + 1),
                        ended_at: Some(now + 2),
                        exit_code: Some(0),
                        signal: None,
                        message: Some("exit code 0".into()),
                        max_rss_bytes: Some(1 << 20),
                        cpu_secs: Some(0.001),
                        outputs: Vec::new(),
                        ip: None,
                        ports: Vec::new(),
                        ready: None,
                    },
                ));
                for (from, to) in [
                    ("pending", "assigned"),
                    ("assigned", "running"),
                    ("running", "succeeded"),
                ] {
                    b.events.push(EventView {
                        id: event,
                        time: now,
                        job: JobId(id),
                        task: Some(index),
                        attempt: Some(1),
                        from: Some(from.into()),
                        to: to.into(),
                        detail: String::new(),
                    });
                    event += 1;
                }
            }
        }
        store.commit(&b).expect("commit");
    }
    let mut b = Batch::default();
    if queued > 0 {
        let id = JobId(jobs + 1);
        b.insert_jobs.push(JobRow {
            id,
            name: "queued".into(),
            spec: JobSpec {
                resources: gaffer_api::Resources {
                    cpus: Some(4096.0),
                    ..Default::default()
                },
                ..spec(queued)
            },
            state: JobState::Pending,
            counts: TaskCounts {
                total: queued,
                pending: queued,
                ..Default::default()
            },
            created_at: 1_800_000_000_000,
            finished_at: None,
            kill_requested: false,
            held: false,
            next_fresh: 0,
        });
    }
    b.next_job_id = Some(jobs + 2);
    store.commit(&b).expect("commit");
    println!(
        "filled {}: {jobs} finished jobs x {per} tasks ({} tasks, {} events) + {queued} queued tasks in {:.1} s",
        db.display(),
        jobs * per as u64,
        event - 1,
        t0.elapsed().as_secs_f64()
    );
}
