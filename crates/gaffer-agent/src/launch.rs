//! The launch spec of a container task: the image's configuration merged with the task's
//! (user, environment, working directory, limits).

use crate::Inner;
use gaffer_api::proto::TaskLaunch;
use gaffer_runtime::LaunchSpec;
use std::path::PathBuf;

impl Inner {
    /// Builds the launch spec of a container task from its image.
    pub(crate) fn container_spec(
        &self,
        l: &TaskLaunch,
        image: &str,
    ) -> std::result::Result<LaunchSpec, String> {
        let store = gaffer_runtime::ImageStore::new(&self.cfg.data_dir);
        let img = store
            .get(image)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("image `{image}` is not on node {}", self.cfg.name))?;
        let (uid, gid) = match &l.user {
            Some(u) => {
                let (uid, gid) = gaffer_api::spec::parse_user(u)?;
                (uid, gid.unwrap_or(uid))
            }
            None => img
                .config
                .resolve_user(&img.rootfs)
                .map_err(|e| e.to_string())?
                .unwrap_or((65534, 65534)),
        };
        let mut env = img.config.merged_env(&l.env);
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push((
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ));
        }
        let hostname: String = format!("{}-{}", l.name, l.key.index)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(63)
            .collect();
        Ok(LaunchSpec {
            argv: img.config.argv(&l.argv),
            env,
            cwd: Some(PathBuf::from(
                l.workdir
                    .clone()
                    .or_else(|| img.config.workdir.clone().filter(|w| !w.is_empty()))
                    .unwrap_or_else(|| "/work".into()),
            )),
            timeout_ms: l.timeout_ms,
            kill_grace_ms: l.kill_grace_ms,
            outputs: l.outputs.clone(),
            container: Some(gaffer_runtime::ContainerSpec {
                rootfs: img.rootfs.clone(),
                hostname,
                uid,
                gid,
                network: match l.network {
                    Some(gaffer_api::Network::None) => gaffer_runtime::Network::None,
                    Some(gaffer_api::Network::Host) | None => gaffer_runtime::Network::Host,
                },
                cpus: Some(l.cpus),
                memory: l.memory,
                pids: l.pids,
            }),
        })
    }
}
