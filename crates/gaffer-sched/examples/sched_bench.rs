//! Placement throughput of `gaffer-sched`: a full scheduling pass over a simulated cluster.
//!
//! Run with `cargo run --release -p gaffer-sched --example sched_bench`.
//!
//! A pass does what one round of the server core does: walk the pending tasks in priority order,
//! stop when [`Scheduler::exhausted`] says no node has CPUs left, call [`Scheduler::place`] for
//! each task and render the reason of every miss (the core stores it for `gaffer status`). Each
//! task has its own size, so each is modelled as its own job (one `exhausted()` and one `place()`
//! per task, the worst case for the core; array jobs share one demand).
//!
//! The cluster and queue are generated from a fixed seed, so runs are comparable. A pass that
//! runs longer than `SCHED_BENCH_CAP_SECS` (default 4) is cut short; its rates are then over the
//! part that ran and the row is marked `cut`.

use gaffer_sched::{Demand, NodeCapacity, Scheduler, Strategy};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const TARGET: f64 = 50_000.0;

/// splitmix64: small, fast, deterministic; good enough to mix sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    /// True with probability `pct`/100.
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

const ZONES: [&str; 4] = ["a", "b", "c", "d"];

/// `n` nodes: 8-64 CPUs, 16-256 GiB, a zone label each, 10% with `gpu=1`, 20% with
/// `disk=ssd`, 5% without host tasks (containers only), 2% not ready (draining).
fn nodes(n: usize, rng: &mut Rng) -> (Vec<NodeCapacity>, Vec<(f64, u64)>) {
    let mut caps = Vec::with_capacity(n);
    for i in 0..n {
        let cpus = rng.pick(&[8.0, 16.0, 32.0, 48.0, 64.0]);
        // 2-4 GiB per CPU, within 16..=256 GiB.
        let mem = (cpus as u64 * rng.pick(&[2, 3, 4])).clamp(16, 256) * GIB;
        let mut labels = BTreeMap::new();
        labels.insert("zone".to_string(), rng.pick(&ZONES).to_string());
        if rng.chance(10) {
            labels.insert("gpu".to_string(), "1".to_string());
        }
        if rng.chance(20) {
            labels.insert("disk".to_string(), "ssd".to_string());
        }
        caps.push(NodeCapacity {
            name: format!("node-{i:05}"),
            ready: !rng.chance(2),
            allow_host_tasks: !rng.chance(5),
            cpus_free: cpus,
            memory_free: mem,
            tasks: 0,
            labels,
            images: Default::default(),
            bridge: false,
            ports: Default::default(),
            allow_mounts: Vec::new(),
        });
    }
    let totals = caps.iter().map(|c| (c.cpus_free, c.memory_free)).collect();
    (caps, totals)
}

/// `n` tasks: 0.1-4 CPUs (steps of 0.1), 0-8 GiB (steps of 64 MiB), 90% host processes;
/// 15% pinned to a zone, 3% need `gpu=1`, 5% need `disk=ssd`.
fn tasks(n: usize, rng: &mut Rng) -> Vec<Demand> {
    (0..n)
        .map(|_| {
            let mut constraints = BTreeMap::new();
            if rng.chance(15) {
                constraints.insert("zone".to_string(), rng.pick(&ZONES).to_string());
            }
            if rng.chance(3) {
                constraints.insert("gpu".to_string(), "1".to_string());
            }
            if rng.chance(5) {
                constraints.insert("disk".to_string(), "ssd".to_string());
            }
            Demand {
                cpus: (1 + rng.below(40)) as f64 / 10.0,
                memory: rng.below(8 * 16 + 1) * (GIB / 16),
                host: !rng.chance(10),
                constraints,
                image: None,
                bridge: false,
                ports: Vec::new(),
                node: None,
                mounts: Vec::new(),
            }
        })
        .collect()
}

#[derive(Default)]
struct Pass {
    examined: u64,
    placed: u64,
    time: Duration,
    /// Time inside `place` calls that placed / that missed (clock read around every call).
    ok_time: Duration,
    miss_time: Duration,
    cut: bool,
}

/// One scheduling pass as the core runs it.
fn pass(
    nodes: &[NodeCapacity],
    totals: &[(f64, u64)],
    queue: &[Demand],
    strategy: Strategy,
    split: bool,
    cap: Duration,
) -> Pass {
    let mut s = Scheduler::new(nodes.to_vec(), totals.to_vec());
    let mut p = Pass::default();
    let t0 = Instant::now();
    for (k, d) in queue.iter().enumerate() {
        if s.exhausted() {
            break;
        }
        if k % 1024 == 1023 && t0.elapsed() > cap {
            p.cut = true;
            break;
        }
        p.examined += 1;
        let c0 = if split { Some(Instant::now()) } else { None };
        let r = s.place(d, strategy);
        let c1 = c0.map(|c| c.elapsed());
        match r {
            Ok(i) => {
                black_box(i);
                p.placed += 1;
                if let Some(c) = c1 {
                    p.ok_time += c;
                }
            }
            Err(why) => {
                black_box(why.to_string());
                if let Some(c) = c1 {
                    p.miss_time += c;
                }
            }
        }
    }
    p.time = t0.elapsed();
    p
}

fn name(s: Strategy) -> &'static str {
    match s {
        Strategy::MostFreeMemory => "most_free_memory",
        Strategy::Binpack => "binpack",
        Strategy::Spread => "spread",
    }
}

fn rate(n: u64, d: Duration) -> String {
    let secs = d.as_secs_f64();
    if n == 0 || secs == 0.0 {
        return "-".to_string();
    }
    let r = n as f64 / secs;
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn count(n: usize) -> String {
    match n {
        1_000_000.. => format!("{:.0}M", n as f64 / 1e6),
        1000.. => format!("{:.0}k", n as f64 / 1e3),
        _ => n.to_string(),
    }
}

const STRATEGIES: [Strategy; 3] = [
    Strategy::MostFreeMemory,
    Strategy::Binpack,
    Strategy::Spread,
];

fn header() {
    println!(
        "{:<17} {:>6} {:>6} {:>8} {:>9} {:>9} {:>10} {:>11} {:>10} {:>10}",
        "strategy",
        "nodes",
        "tasks",
        "placed",
        "examined",
        "pass s",
        "placed/s",
        "examined/s",
        "fit/s",
        "miss/s"
    );
}

fn row(strategy: Strategy, n_nodes: usize, n_tasks: usize, p: &Pass, split: bool) -> f64 {
    let placed_per_s = p.placed as f64 / p.time.as_secs_f64();
    let (fit, miss) = if split {
        (
            rate(p.placed, p.ok_time),
            rate(p.examined - p.placed, p.miss_time),
        )
    } else {
        ("".to_string(), "".to_string())
    };
    println!(
        "{:<17} {:>6} {:>6} {:>8} {:>9} {:>9.3} {:>10} {:>11} {:>10} {:>10}{}",
        name(strategy),
        n_nodes,
        count(n_tasks),
        p.placed,
        p.examined,
        p.time.as_secs_f64(),
        rate(p.placed, p.time),
        rate(p.examined, p.time),
        fit,
        miss,
        if p.cut { "  cut" } else { "" }
    );
    placed_per_s
}

fn main() {
    let cap = Duration::from_secs_f64(
        std::env::var("SCHED_BENCH_CAP_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4.0),
    );
    let cluster = |n: usize| nodes(n, &mut Rng(0x6166_6665_7200 + n as u64));
    let queue = |n: usize| tasks(n, &mut Rng(0x7461_736b_7300 + n as u64));

    println!("gaffer-sched placement benchmark (one pass = what one core round does)");
    for line in [
        "  nodes: 8-64 cpus, 16-256 GiB, a zone label, 10% gpu=1, 20% disk=ssd,",
        "         5% containers only, 2% not ready",
        "  tasks: 0.1-4 cpus, 0-8 GiB, 10% containers; constraints: 15% zone, 3% gpu, 5% ssd",
        "  placed/s, examined/s: over the pass's wall time (a pass stops once exhausted())",
        "  fit/s, miss/s: place() calls that placed / found no node, each call timed alone",
    ] {
        println!("{line}");
    }
    println!(
        "  cut: pass stopped after {:.0} s (SCHED_BENCH_CAP_SECS); rates over the part that ran",
        cap.as_secs_f64()
    );
    let (n1000, t1000) = cluster(1000);
    let cap_cpus: f64 = t1000.iter().map(|t| t.0).sum();
    let cap_mem: u64 = t1000.iter().map(|t| t.1).sum();
    println!(
        "  1000 nodes hold {:.0} cpus and {} GiB: roughly {:.0} average tasks (2.05 cpus, 4 GiB) fit at once",
        cap_cpus,
        cap_mem / GIB,
        (cap_cpus / 2.05).min((cap_mem / GIB) as f64 / 4.0)
    );

    println!();
    println!("== 1000 nodes, 100k pending tasks, each strategy (headline; target >= {TARGET:.0} placements/s) ==");
    header();
    let q100k = queue(100_000);
    let mut headline = Vec::new();
    for s in STRATEGIES {
        let p = pass(&n1000, &t1000, &q100k, s, true, cap);
        headline.push((s, row(s, 1000, 100_000, &p, true)));
    }

    println!();
    println!("== node count: 100 / 1000 / 5000 nodes, 100k tasks ==");
    header();
    for n in [100, 1000, 5000] {
        let (ns, ts) = if n == 1000 {
            (n1000.clone(), t1000.clone())
        } else {
            cluster(n)
        };
        for s in STRATEGIES {
            let p = pass(&ns, &ts, &q100k, s, false, cap);
            row(s, n, 100_000, &p, false);
        }
    }

    println!();
    println!("== queue length: 10k / 100k / 1M tasks, 1000 nodes ==");
    header();
    for t in [10_000, 100_000, 1_000_000] {
        let q = if t == 100_000 {
            q100k.clone()
        } else {
            queue(t)
        };
        for s in STRATEGIES {
            let p = pass(&n1000, &t1000, &q, s, true, cap);
            row(s, 1000, t, &p, true);
        }
    }

    println!();
    for (s, r) in headline {
        let verdict = if r >= TARGET { "meets" } else { "BELOW" };
        println!(
            "{:<17} 1000 nodes / 100k tasks: {:.0} placements/s ({verdict} the {TARGET:.0}/s target)",
            name(s),
            r
        );
    }
}
