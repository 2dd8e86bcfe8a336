//! Container runtime latency, without the agent or the server: N times,
//! prepare an attempt directory whose spec runs `/bin/true` in a container on
//! ROOTFS, run `GAFFER shim <dir>` (cgroup + namespaces + overlay, run, reap,
//! clean up) and remove the directory. With `--crun-bundle B`, the same loop
//! runs `crun run --bundle B <id>` (create + start + wait + delete) from the
//! same harness for comparison.
//!
//! Usage: `container_bench --gaffer PATH --rootfs DIR [--n 100] [--memory BYTES]
//! [--cpus N] [--crun-bundle DIR] [--crun PATH]`
//!
//! Prints one line per runtime: `<name>: n=.. median=..ms p90=..ms min=..ms max=..ms`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use gaffer_runtime::{
    prepare, read_status, shim_command, ContainerSpec, EndReason, LaunchSpec, Network,
};

struct Args {
    gaffer: PathBuf,
    rootfs: PathBuf,
    n: usize,
    memory: Option<u64>,
    cpus: Option<f64>,
    crun_bundle: Option<PathBuf>,
    crun: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        gaffer: PathBuf::new(),
        rootfs: PathBuf::new(),
        n: 100,
        memory: None,
        cpus: None,
        crun_bundle: None,
        crun: "crun".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || {
            it.next()
                .unwrap_or_else(|| panic!("{k} needs a value"))
                .to_string()
        };
        match k.as_str() {
            "--gaffer" => a.gaffer = v().into(),
            "--rootfs" => a.rootfs = v().into(),
            "--n" => a.n = v().parse().expect("--n"),
            "--memory" => a.memory = Some(v().parse().expect("--memory")),
            "--cpus" => a.cpus = Some(v().parse().expect("--cpus")),
            "--crun-bundle" => a.crun_bundle = Some(v().into()),
            "--crun" => a.crun = v(),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        !a.gaffer.as_os_str().is_empty() && !a.rootfs.as_os_str().is_empty(),
        "--gaffer and --rootfs are required"
    );
    a
}

fn report(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "{name}: n={} median={:.2}ms p90={:.2}ms min={:.2}ms max={:.2}ms",
        ms.len(),
        q(0.5),
        q(0.9),
        ms[0],
        ms[ms.len() - 1]
    );
}

fn main() {
    let a = parse_args();
    let tmp = std::env::temp_dir().join(format!("gaffer-container-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();

    let mut gaffer_ms = Vec::with_capacity(a.n);
    for i in 0..a.n {
        let dir = tmp.join(format!("a{i}"));
        let spec = LaunchSpec {
            argv: vec!["/bin/true".into()],
            env: vec![("PATH".into(), "/bin".into())],
            cwd: None,
            timeout_ms: Some(30_000),
            kill_grace_ms: 1000,
            outputs: vec![],
            container: Some(ContainerSpec {
                rootfs: a.rootfs.clone(),
                hostname: "bench".into(),
                uid: 0,
                gid: 0,
                network: Network::None,
                netns: None,
                files: Vec::new(),
                mounts: Vec::new(),
                cpus: a.cpus,
                memory: a.memory,
                pids: None,
            }),
            log_files: Default::default(),
        };
        let t0 = Instant::now();
        prepare(&dir, &spec).unwrap();
        let st = shim_command(&a.gaffer, &dir).status().unwrap();
        let elapsed = t0.elapsed();
        let status = read_status(&dir).unwrap().expect("status.json");
        assert!(
            st.success() && status.reason == EndReason::Exited && status.exit_code == Some(0),
            "attempt {i} failed: {status:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        gaffer_ms.push(elapsed.as_secs_f64() * 1000.0);
    }
    report("gaffer shim", gaffer_ms);

    if let Some(bundle) = &a.crun_bundle {
        let mut crun_ms = Vec::with_capacity(a.n);
        for i in 0..a.n {
            let id = format!("gaffer-bench-{}-{i}", std::process::id());
            let t0 = Instant::now();
            let st = Command::new(&a.crun)
                .arg("run")
                .arg("--bundle")
                .arg(bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .status()
                .unwrap();
            let elapsed = t0.elapsed();
            assert!(st.success(), "crun run {id} failed: {st}");
            crun_ms.push(elapsed.as_secs_f64() * 1000.0);
        }
        report("crun", crun_ms);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
