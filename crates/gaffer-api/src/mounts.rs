//! Host directories bound into containers (`--mount HOST:CONTAINER[:ro]`): the spec form and
//! its checks, and which node may bind what (`gaffer agent --allow-mount DIR`).

use crate::spec::FieldError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A host directory bound into a container task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// The directory on the node (absolute; under a prefix its agent allows).
    pub host: String,
    /// Where it appears inside the container (absolute).
    pub container: String,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

impl std::str::FromStr for MountSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not HOST:CONTAINER[:ro] (e.g. /srv/data:/data:ro)");
        let mut parts = s.split(':');
        let (Some(host), Some(container)) = (parts.next(), parts.next()) else {
            return Err(bad());
        };
        let read_only = match parts.next() {
            None => false,
            Some("ro") => true,
            Some("rw") => false,
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() || host.is_empty() || container.is_empty() {
            return Err(bad());
        }
        Ok(MountSpec {
            host: host.into(),
            container: container.into(),
            read_only,
        })
    }
}

impl std::fmt::Display for MountSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.container)?;
        if self.read_only {
            write!(f, ":ro")?;
        }
        Ok(())
    }
}

/// A host path is plain: absolute, without `.` or `..` (which could climb out of a prefix).
pub fn plain_host_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || p.contains('\0') {
        return Err(format!("`{p}` must be an absolute path"));
    }
    if p.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("`{p}` must not contain `.` or `..`"));
    }
    Ok(())
}

/// Whether `path` is `prefix` or under it, component by component (so `/srv/data2` is not
/// under `/srv/data`).
pub fn under(path: &Path, prefix: &Path) -> bool {
    path.starts_with(prefix)
}

/// What is wrong with a spec's `mounts` (`image`: whether it has one).
pub fn check(mounts: &[MountSpec], image: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut err = |i: usize, message: String| {
        errs.push(FieldError {
            index: None,
            field: format!("mounts[{i}]"),
            message,
        })
    };
    for (i, m) in mounts.iter().enumerate() {
        if !image {
            err(i, "only applies to container tasks (give an image)".into());
        }
        if let Err(e) = plain_host_path(&m.host) {
            err(i, format!("host: {e}"));
        }
        if let Err(e) = crate::cluster::container_dir(&m.container) {
            err(i, format!("container: {e}"));
        }
        if mounts[..i].iter().any(|o| o.container == m.container) {
            err(i, format!("`{}` is mounted twice", m.container));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse_and_are_checked() {
        let m: MountSpec = "/srv/data:/data:ro".parse().unwrap();
        assert!(m.read_only);
        assert_eq!(m.to_string(), "/srv/data:/data:ro");
        assert!("/a".parse::<MountSpec>().is_err());
        assert!("/a:/b:rx".parse::<MountSpec>().is_err());
        let bad: MountSpec = "/srv/../etc:/data".parse().unwrap();
        let errs = check(&[bad], true);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("`.` or `..`"), "{errs:?}");
        assert!(under(Path::new("/srv/data/x"), Path::new("/srv/data")));
        assert!(!under(Path::new("/srv/data2"), Path::new("/srv/data")));
    }
}
