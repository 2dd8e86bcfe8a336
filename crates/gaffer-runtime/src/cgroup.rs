//! Per-attempt cgroups for containers: creation with limits (memory, CPU
//! quota, pids), joining, signalling every member, reading OOM kills and
//! usage, and removal. Both hierarchies are supported:
//!
//! - **v1** (also "hybrid" hosts whose controllers are all on v1): one
//!   directory per controller, `<mount of c>/gaffer/<id>/` for `c` in memory,
//!   cpu, cpuacct, pids (a combined `cpu,cpuacct` mount is used once). The
//!   mount points are read from `/proc/self/mounts`.
//! - **v2** (a pure unified hierarchy at `/sys/fs/cgroup`):
//!   `/sys/fs/cgroup/gaffer/<id>/`, with `+memory +cpu +pids` enabled in the
//!   parents' `cgroup.subtree_control`.
//!
//! This module only manipulates cgroupfs files; it knows nothing about the
//! shim's state. The v2 code cannot be exercised end to end on the v1 build
//! machines, so it is kept small and its file parsers are unit-tested on
//! recorded samples.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::DriverError;

/// Where cgroup filesystems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Parent directory of every attempt's cgroup, below each hierarchy root.
pub(crate) const PARENT: &str = "gaffer";
/// CFS period used for CPU quotas, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Limits applied to a new cgroup.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    /// Memory limit in bytes (swap included where the kernel accounts it).
    pub memory: Option<u64>,
    /// CPU quota in cores, over a period of [`CPU_PERIOD_US`].
    pub cpus: Option<f64>,
    /// Most processes at once.
    pub pids: Option<u32>,
}

/// What the cgroup measured once the attempt is over.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Usage {
    /// Peak memory usage in bytes.
    pub max_memory: Option<u64>,
    /// CPU time in seconds.
    pub cpu_secs: Option<f64>,
    /// Number of processes killed by the OOM killer.
    pub oom_kills: u64,
}

/// The cgroup(s) of one attempt.
#[derive(Debug, Clone)]
pub(crate) enum Cgroup {
    /// One directory per v1 controller.
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    /// A single v2 directory.
    V2 { dir: PathBuf },
}

/// v1 controller mount points from the content of `/proc/self/mounts`:
/// `(controller, mount point)` for memory, cpu, cpuacct and pids.
fn v1_mounts(mounts: &str) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();
    for line in mounts.lines() {
        let mut f = line.split(' ');
        let (Some(_), Some(target), Some(fstype), Some(opts)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if fstype != "cgroup" {
            continue;
        }
        for c in ["memory", "cpu", "cpuacct", "pids"] {
            if opts.split(',').any(|o| o == c) && !out.iter().any(|(k, _)| *k == c) {
                out.push((c, PathBuf::from(target)));
            }
        }
    }
    out
}

/// Whether `/sys/fs/cgroup` is a pure cgroup v2 hierarchy.
fn is_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

fn write_file(path: &Path, value: &str) -> Result<(), DriverError> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| DriverError::CgroupWrite {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line),
/// e.g. `oom_kill` in v1 `memory.oom_control` or v2 `memory.events`, or
/// `usage_usec` in v2 `cpu.stat`.
pub(crate) fn keyed_value(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|l| {
        let mut it = l.split_ascii_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

/// Parse a single-number file such as v2 `memory.peak` or v1
/// `memory.max_usage_in_bytes` / `cpuacct.usage` (`max` reads as `None`).
pub(crate) fn single_value(content: &str) -> Option<u64> {
    content.trim().parse().ok()
}

/// v2 `cpu.max` content for a limit of `cpus` cores.
fn v2_cpu_max(cpus: f64) -> String {
    format!("{} {CPU_PERIOD_US}", cpu_quota_us(cpus))
}

fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

impl Cgroup {
    /// The cgroup paths of attempt `id`, without creating anything.
    pub(crate) fn locate(id: &str) -> Result<Cgroup, DriverError> {
        if is_v2() {
            return Ok(Cgroup::V2 {
                dir: Path::new(CGROUP_ROOT).join(PARENT).join(id),
            });
        }
        let mounts = fs::read_to_string("/proc/self/mounts")
            .map_err(|e| DriverError::io("read", "/proc/self/mounts", e))?;
        let found = v1_mounts(&mounts);
        let get = |c: &str| {
            found
                .iter()
                .find(|(k, _)| *k == c)
                .map(|(_, m)| m.join(PARENT).join(id))
        };
        let cg = Cgroup::V1 {
            memory: get("memory"),
            cpu: get("cpu"),
            cpuacct: get("cpuacct"),
            pids: get("pids"),
        };
        if cg.dirs().is_empty() {
            return Err(DriverError::NoCgroup);
        }
        Ok(cg)
    }

    /// The distinct directories (a combined cpu,cpuacct mount counts once).
    pub(crate) fn dirs(&self) -> Vec<&Path> {
        match self {
            Cgroup::V2 { dir } => vec![dir.as_path()],
            Cgroup::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
            } => {
                let mut v: Vec<&Path> = Vec::new();
                for p in [memory, cpu, cpuacct, pids].into_iter().flatten() {
                    if !v.contains(&p.as_path()) {
                        v.push(p);
                    }
                }
                v
            }
        }
    }

    /// Create the directories and apply `limits`. On error, whatever was
    /// created is left for [`Cgroup::remove`].
    pub(crate) fn create(&self, limits: &Limits) -> Result<(), DriverError> {
        match self {
            Cgroup::V2 { dir } => {
                let root = Path::new(CGROUP_ROOT);
                let parent = root.join(PARENT);
                mkdir(&parent)?;
                for p in [root, parent.as_path()] {
                    // Controllers the kernel lacks are skipped (ENOENT etc.).
                    for c in ["+memory", "+cpu", "+pids"] {
                        let _ = write_file(&p.join("cgroup.subtree_control"), c);
                    }
                }
                mkdir(dir)?;
                if let Some(m) = limits.memory {
                    write_file(&dir.join("memory.max"), &m.to_string())?;
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write_file(&swap, "0")?;
                    }
                }
                if let Some(c) = limits.cpus {
                    write_file(&dir.join("cpu.max"), &v2_cpu_max(c))?;
                }
                if let Some(p) = limits.pids {
                    write_file(&dir.join("pids.max"), &p.to_string())?;
                }
            }
            Cgroup::V1 {
                memory, cpu, pids, ..
            } => {
                for d in self.dirs() {
                    if let Some(parent) = d.parent() {
                        mkdir(parent)?;
                    }
                    mkdir(d)?;
                }
                if let (Some(d), Some(m)) = (memory, limits.memory) {
                    write_file(&d.join("memory.limit_in_bytes"), &m.to_string())?;
                    // Without swap accounting the file is absent and there is
                    // nothing more to limit.
                    let memsw = d.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write_file(&memsw, &m.to_string())?;
                    }
                }
                if let (Some(d), Some(c)) = (cpu, limits.cpus) {
                    write_file(&d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write_file(&d.join("cpu.cfs_quota_us"), &cpu_quota_us(c).to_string())?;
                }
                if let (Some(d), Some(p)) = (pids, limits.pids) {
                    write_file(&d.join("pids.max"), &p.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Move the calling process into the cgroup (writes `0` to every
    /// `cgroup.procs`). Meant for the container's first process.
    pub(crate) fn join_self(&self) -> Result<(), DriverError> {
        for d in self.dirs() {
            write_file(&d.join("cgroup.procs"), "0")?;
        }
        Ok(())
    }

    /// Pids of the member processes (from one hierarchy: every member is in
    /// all of them).
    pub(crate) fn procs(&self) -> Vec<i32> {
        let Some(d) = self.dirs().first().map(|d| d.join("cgroup.procs")) else {
            return Vec::new();
        };
        fs::read_to_string(d)
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Send `sig` to every member process.
    pub(crate) fn signal(&self, sig: Signal) {
        if sig == Signal::SIGKILL {
            if let Cgroup::V2 { dir } = self {
                if write_file(&dir.join("cgroup.kill"), "1").is_ok() {
                    return;
                }
            }
        }
        for pid in self.procs() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// OOM kills and usage, read before [`Cgroup::remove`].
    pub(crate) fn usage(&self) -> Usage {
        let read = |p: PathBuf| fs::read_to_string(p).ok();
        match self {
            Cgroup::V2 { dir } => Usage {
                max_memory: read(dir.join("memory.peak")).and_then(|s| single_value(&s)),
                cpu_secs: read(dir.join("cpu.stat"))
                    .and_then(|s| keyed_value(&s, "usage_usec"))
                    .map(|us| us as f64 / 1e6),
                oom_kills: read(dir.join("memory.events"))
                    .and_then(|s| keyed_value(&s, "oom_kill"))
                    .unwrap_or(0),
            },
            Cgroup::V1 {
                memory, cpuacct, ..
            } => Usage {
                max_memory: memory
                    .as_ref()
                    .and_then(|d| read_u64(&d.join("memory.max_usage_in_bytes"))),
                cpu_secs: cpuacct
                    .as_ref()
                    .and_then(|d| read_u64(&d.join("cpuacct.usage")))
                    .map(|ns| ns as f64 / 1e9),
                oom_kills: memory
                    .as_ref()
                    .and_then(|d| read(d.join("memory.oom_control")))
                    .and_then(|s| keyed_value(&s, "oom_kill"))
                    .unwrap_or(0),
            },
        }
    }

    /// SIGKILL every member until none is left, then remove the
    /// directories. Waits up to `patience` for exiting processes to leave.
    pub(crate) fn remove(&self, patience: Duration) -> Result<(), DriverError> {
        let deadline = Instant::now() + patience;
        let mut errors = Vec::new();
        for d in self.dirs() {
            loop {
                let err = match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => e,
                };
                if Instant::now() >= deadline {
                    errors.push(DriverError::CgroupRemove {
                        path: d.to_path_buf(),
                        source: err,
                    });
                    break;
                }
                // Busy: members (or dying zombies) remain.
                self.signal(Signal::SIGKILL);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        DriverError::all(errors)
    }
}

fn mkdir(p: &Path) -> Result<(), DriverError> {
    match fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(DriverError::CgroupCreate {
            path: p.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_mounts_including_combined_cpu_cpuacct() {
        let mounts = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
        let m = v1_mounts(mounts);
        let get = |c: &str| m.iter().find(|(k, _)| *k == c).map(|(_, p)| p.clone());
        assert_eq!(
            get("cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(get("cpuacct"), get("cpu"));
        assert_eq!(get("memory"), Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(get("pids"), Some(PathBuf::from("/sys/fs/cgroup/pids")));
        let cg = Cgroup::V1 {
            memory: get("memory").map(|p| p.join("gaffer/x")),
            cpu: get("cpu").map(|p| p.join("gaffer/x")),
            cpuacct: get("cpuacct").map(|p| p.join("gaffer/x")),
            pids: None,
        };
        assert_eq!(cg.dirs().len(), 2);
    }

    #[test]
    fn parses_v2_memory_events() {
        let sample = "low 0\nhigh 0\nmax 17\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(sample, "oom_kill"), Some(1));
        assert_eq!(keyed_value(sample, "oom"), Some(2));
        assert_eq!(keyed_value(sample, "oom_group_kill"), Some(0));
        assert_eq!(keyed_value(sample, "missing"), None);
    }

    #[test]
    fn parses_v2_cpu_stat_and_memory_peak() {
        let cpu_stat = "usage_usec 1503421\nuser_usec 1200000\nsystem_usec 303421\n\
nr_periods 20\nnr_throttled 18\nthrottled_usec 912345\nnr_bursts 0\nburst_usec 0\n";
        assert_eq!(keyed_value(cpu_stat, "usage_usec"), Some(1_503_421));
        assert_eq!(keyed_value(cpu_stat, "nr_throttled"), Some(18));
        assert_eq!(single_value("33554432\n"), Some(33_554_432));
        assert_eq!(single_value("max\n"), None);
    }

    #[test]
    fn parses_v1_oom_control() {
        let sample = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(sample, "oom_kill"), Some(3));
        assert_eq!(
            keyed_value("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"),
            None
        );
    }

    #[test]
    fn cpu_quota() {
        assert_eq!(v2_cpu_max(0.5), "50000 100000");
        assert_eq!(v2_cpu_max(2.0), "200000 100000");
        assert_eq!(cpu_quota_us(0.001), 1000);
    }
}
