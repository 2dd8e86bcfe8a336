//! The run configuration of an image (environment, user, working directory, entrypoint and
//! command), and how a task's launch is derived from it.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The run configuration of an image (from its OCI/Docker config, empty for
/// a plain rootfs tarball).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`; `None` if unset.
    #[serde(default)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Entrypoint argv prefix.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Default command (arguments to the entrypoint).
    #[serde(default)]
    pub cmd: Vec<String>,
}

impl ImageConfig {
    /// The task environment: the image's variables overridden by the task's.
    pub fn merged_env(&self, task: &[(String, String)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        for e in &self.env {
            let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        for (k, v) in task {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// The argv of a task: entrypoint followed by `command`, or by the
    /// image's `cmd` when `command` is empty.
    pub fn argv(&self, command: &[String]) -> Vec<String> {
        let mut argv = self.entrypoint.clone();
        argv.extend_from_slice(if command.is_empty() {
            &self.cmd
        } else {
            command
        });
        argv
    }

    /// `(uid, gid)` of the image's user, looked up in `rootfs/etc/passwd` and
    /// `rootfs/etc/group` when given by name. `Ok(None)` when the image sets
    /// no user (the caller then uses 65534).
    pub fn resolve_user(&self, rootfs: &Path) -> Result<Option<(u32, u32)>> {
        let Some(user) = self.user.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let passwd_path = rootfs.join("etc/passwd");
        let passwd = fs::read_to_string(&passwd_path).unwrap_or_default();
        let entry = |name_or_id: &str| {
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && (f[0] == name_or_id || f[2] == name_or_id))
                    .then(|| Some((f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?)))?
            })
        };
        let (uid, default_gid) = match u.parse::<u32>() {
            Ok(uid) => (uid, entry(u).map(|(_, g)| g).unwrap_or(0)),
            Err(_) => entry(u).ok_or_else(|| Error::ImageFormat {
                path: passwd_path.clone(),
                detail: format!("user {u:?} of the image is not in /etc/passwd"),
            })?,
        };
        let gid = match g {
            None | Some("") => default_gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    let group_path = rootfs.join("etc/group");
                    let groups = fs::read_to_string(&group_path).unwrap_or_default();
                    groups
                        .lines()
                        .find_map(|l| {
                            let f: Vec<&str> = l.split(':').collect();
                            (f.len() >= 3 && f[0] == g).then(|| f[2].parse::<u32>().ok())?
                        })
                        .ok_or_else(|| Error::ImageFormat {
                            path: group_path,
                            detail: format!("group {g:?} of the image is not in /etc/group"),
                        })?
                }
            },
        };
        Ok(Some((uid, gid)))
    }
}
