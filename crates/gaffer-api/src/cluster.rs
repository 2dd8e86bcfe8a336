//! Cluster jobs (`replicas`): their limits, names and restart policy, and the checks of a
//! spec's cluster fields.

use crate::spec::{FieldError, JobSpec, Network};
use serde::{Deserialize, Serialize};

/// Most replicas of a cluster job.
pub const MAX_REPLICAS: u32 = 1024;

/// Where a replica finds its peers' hostnames, one a line, inside its container.
pub const HOSTFILE: &str = "/etc/gaffer/hostfile";

/// The hostname of task `index` of job `name` in its container: `name-index`, lowercase,
/// anything but letters, digits and `-` made `-`, at most 63 characters.
pub fn hostname(name: &str, index: u32) -> String {
    let suffix = format!("-{index}");
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63 - suffix.len())
        .collect();
    stem + &suffix
}

/// Checks a directory path inside a container that something is mounted at: absolute, plain
/// components only, and not `/`, `/work` or under `/proc`, `/sys` or `/dev`.
pub fn container_dir(d: &str) -> Result<(), String> {
    let p = std::path::Path::new(d);
    if !p.is_absolute() || d.contains('\0') {
        return Err(format!("`{d}` must be an absolute path"));
    }
    if d.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("`{d}` must not contain `.` or `..`"));
    }
    let mut parts = d.split('/').filter(|c| !c.is_empty());
    match (parts.next(), parts.next()) {
        (None, _) => Err("`/` cannot be a mount point".into()),
        (Some("proc" | "sys" | "dev"), _) => Err(format!("`{d}` is under /proc, /sys or /dev")),
        (Some("work"), None) => Err("`/work` is the attempt's own workspace".into()),
        _ => Ok(()),
    }
}

/// What a failed replica of a cluster job restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Every replica, placed and started together again (the failed one uses a retry).
    #[default]
    Group,
    /// The failed replica alone, keeping its name; its peers keep running.
    Replica,
    /// Nothing: the job fails, and the other replicas are stopped.
    Never,
}

impl Restart {
    /// Its name in specs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Group => "group",
            Restart::Replica => "replica",
            Restart::Never => "never",
        }
    }
}

impl std::str::FromStr for Restart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "group" => Ok(Restart::Group),
            "replica" => Ok(Restart::Replica),
            "never" => Ok(Restart::Never),
            _ => Err(format!(
                "unknown restart policy `{s}` (expected group, replica or never)"
            )),
        }
    }
}

/// A cluster job's front door: every node listens on `host` and forwards each TCP connection
/// to `port` of a ready replica (see [`JobSpec::ready_cmd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The port every node listens on (its addresses and 127.0.0.1).
    pub host: u16,
    /// The replicas' port connections go to.
    pub port: u16,
}

impl std::str::FromStr for Service {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not HOSTPORT:PORT (e.g. 2379:2379)");
        let (h, p) = s.split_once(':').ok_or_else(bad)?;
        Ok(Service {
            host: h.parse().map_err(|_| bad())?,
            port: p.parse().map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// What is wrong with the cluster fields of `spec` (`replicas`, `restart`, `service`,
/// `ready_cmd`).
pub fn check(spec: &JobSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut err = |field: &str, message: &str| {
        errs.push(FieldError {
            index: None,
            field: field.to_string(),
            message: message.to_string(),
        })
    };
    let Some(r) = spec.replicas else {
        for (field, set) in [
            ("restart", spec.restart.is_some()),
            ("service", spec.service.is_some()),
            ("ready_cmd", spec.ready_cmd.is_some()),
            ("shared_dir", spec.shared_dir.is_some()),
        ] {
            if set {
                err(field, "only applies to cluster jobs (give replicas)");
            }
        }
        return errs;
    };
    if spec.ready_cmd.is_some() && spec.image.is_none() {
        err(
            "ready_cmd",
            "runs inside a replica's container: host replicas cannot have one",
        );
    }
    if let Some(svc) = spec.service {
        if svc.host == 0 || svc.port == 0 {
            err("service", "ports are 1 to 65535");
        }
        if spec.image.is_none() && svc.host == svc.port {
            err(
                "service",
                &format!("host replicas listen on their node's port {}, which the front door there takes too: use another HOSTPORT", svc.port),
            );
        }
        if spec.ports.iter().any(|p| p.host == Some(svc.host)) {
            err(
                "service",
                &format!("host port {} is also in `ports`", svc.host),
            );
        }
    }
    if let Some(d) = &spec.shared_dir {
        if let Err(why) = container_dir(d) {
            err("shared_dir", &why);
        }
    }
    if spec
        .ready_cmd
        .as_deref()
        .is_some_and(|c| c.trim().is_empty() || c.contains('\0'))
    {
        err("ready_cmd", "must be a non-empty command line");
    }
    if !(2..=MAX_REPLICAS).contains(&r) {
        err(
            "replicas",
            &format!("{r} is out of range: expected 2 to {MAX_REPLICAS}"),
        );
    }
    if spec.array.is_some() {
        err(
            "replicas",
            "cannot be combined with `array` (replicas are one program; an array is independent tasks)",
        );
    }
    if matches!(spec.network, Some(Network::Host | Network::None)) {
        err(
            "replicas",
            "need the bridge network (replicas reach each other by name on it), not `host` or `none`",
        );
    }
    if spec.restart == Some(Restart::Never) && spec.retries > 0 {
        err(
            "restart",
            "`never` restarts nothing, so `retries` cannot be used with it",
        );
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_dns_labels() {
        assert_eq!(hostname("ring", 2), "ring-2");
        assert_eq!(hostname("My Job_1", 0), "my-job-1-0");
        let long = hostname(&"x".repeat(100), 1023);
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("x-1023"));
    }

    #[test]
    fn cluster_fields_are_checked() {
        let fields = |s: &JobSpec| -> Vec<String> {
            check(s)
                .into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect()
        };
        let ok = JobSpec {
            image: Some("busybox".into()),
            replicas: Some(3),
            ..JobSpec::default()
        };
        assert!(fields(&ok).is_empty());
        let never = JobSpec {
            restart: Some(Restart::Never),
            retries: 2,
            ..ok.clone()
        };
        assert_eq!(fields(&never).len(), 1);
        assert!(fields(&never)[0].starts_with("restart: `never`"));
        let lonely = JobSpec {
            restart: Some(Restart::Replica),
            ..JobSpec::default()
        };
        assert_eq!(
            fields(&lonely),
            ["restart: only applies to cluster jobs (give replicas)"]
        );
        assert_eq!("replica".parse(), Ok(Restart::Replica));
        assert!("sometimes".parse::<Restart>().is_err());
    }
}
