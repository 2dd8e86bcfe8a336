//! The launch spec of a container task: the image's configuration merged with the task's
//! (user, environment, working directory, limits).

use crate::Inner;
use gaffer_api::proto::TaskLaunch;
use gaffer_runtime::LaunchSpec;
use std::path::PathBuf;

/// Why the agent cannot build a task's launch spec; the text becomes the message of the
/// attempt's `spawn_failed` result.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LaunchError {
    /// The job's script or log files could not be set up (the message names the path).
    #[error("{0}")]
    Batch(String),
    /// The task has an image, and this node does not run containers.
    #[error("node {node} cannot run containers (image `{image}`): it needs root and overlayfs")]
    NoContainers {
        /// This node.
        node: String,
        /// The task's image.
        image: String,
    },
    /// The task has no image, and this node does not run host processes.
    #[error("node {node} does not run host processes (start its agent with --allow-host-tasks, or give an image)")]
    NoHostTasks {
        /// This node.
        node: String,
    },
    /// The image store could not be read, or the image's user not be resolved in its rootfs.
    #[error("{source}")]
    Image {
        /// The task's image.
        image: String,
        /// What the store said.
        source: gaffer_runtime::Error,
    },
    /// The image is not in this node's store.
    #[error("image `{image}` is not on node {node}")]
    ImageMissing {
        /// The task's image.
        image: String,
        /// This node.
        node: String,
    },
    /// The task's `user` is not `UID` or `UID:GID` (checked when the job is submitted, so only
    /// an old or hand-made launch gets here).
    #[error("{detail}")]
    User {
        /// The task's `user`.
        user: String,
        /// What is wrong with it (names the value).
        detail: String,
    },
    /// A mount's host directory is not one this agent allows (or does not exist).
    #[error("cannot mount {host} on node {node}: {why}")]
    Mount {
        /// The directory asked for.
        host: String,
        /// This node.
        node: String,
        /// Why not.
        why: String,
    },
    /// The job's shared directory could not be made.
    #[error("cannot make the job's shared directory {path}: {source}")]
    SharedDir {
        /// The directory on this node.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

impl Inner {
    /// A mount of the task, once its host directory resolves (symlinks followed) to one under
    /// a prefix this agent allows.
    fn allowed_mount(
        &self,
        m: &gaffer_api::mounts::MountSpec,
    ) -> Result<gaffer_runtime::BindMount, LaunchError> {
        let refuse = |why: String| LaunchError::Mount {
            host: m.host.clone(),
            node: self.cfg.name.clone(),
            why,
        };
        let real = std::fs::canonicalize(&m.host).map_err(|e| refuse(e.to_string()))?;
        let allowed =
            self.cfg.allow_mounts.iter().any(|a| {
                std::fs::canonicalize(a).is_ok_and(|a| gaffer_api::mounts::under(&real, &a))
            });
        if !allowed {
            let list: Vec<String> = self
                .cfg
                .allow_mounts
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return Err(refuse(format!(
                "it is {}, which is not under a directory the agent allows (--allow-mount: {})",
                real.display(),
                if list.is_empty() {
                    "none".into()
                } else {
                    list.join(", ")
                }
            )));
        }
        if !real.is_dir() {
            return Err(refuse(format!("{} is not a directory", real.display())));
        }
        Ok(gaffer_runtime::BindMount {
            source: real,
            target: PathBuf::from(&m.container),
            read_only: m.read_only,
        })
    }

    /// The job's shared directory on this node, made (owned by the task's user) if new.
    pub(crate) fn shared_dir(
        &self,
        l: &TaskLaunch,
        uid: u32,
        gid: u32,
    ) -> Result<PathBuf, LaunchError> {
        let path = self.cfg.shared_root.join(l.key.job.to_string());
        let err = |source| LaunchError::SharedDir {
            path: path.clone(),
            source,
        };
        match std::fs::create_dir(&path) {
            Ok(()) => std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(err)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.cfg.shared_root).map_err(err)?;
                return self.shared_dir(l, uid, gid);
            }
            Err(e) => return Err(err(e)),
        }
        Ok(path)
    }

    /// Builds the launch spec of a container task from its image.
    pub(crate) fn container_spec(
        &self,
        l: &TaskLaunch,
        image: &str,
    ) -> std::result::Result<LaunchSpec, LaunchError> {
        let store = gaffer_runtime::ImageStore::new(&self.cfg.data_dir);
        let image_err = |source| LaunchError::Image {
            image: image.to_string(),
            source,
        };
        let img =
            store
                .get(image)
                .map_err(image_err)?
                .ok_or_else(|| LaunchError::ImageMissing {
                    image: image.to_string(),
                    node: self.cfg.name.clone(),
                })?;
        let (uid, gid) = match &l.user {
            Some(u) => {
                let (uid, gid) =
                    gaffer_api::spec::parse_user(u).map_err(|detail| LaunchError::User {
                        user: u.clone(),
                        detail,
                    })?;
                (uid, gid.unwrap_or(uid))
            }
            None => img
                .config
                .resolve_user(&img.rootfs)
                .map_err(image_err)?
                .unwrap_or((65534, 65534)),
        };
        let mut mounts = match &l.shared_dir {
            Some(target) => vec![gaffer_runtime::BindMount {
                source: self.shared_dir(l, uid, gid)?,
                target: PathBuf::from(target),
                read_only: false,
            }],
            None => Vec::new(),
        };
        for m in &l.mounts {
            mounts.push(self.allowed_mount(m)?);
        }
        let mut env = img.config.merged_env(&l.env);
        if let Some(d) = &l.shared_dir {
            env.push(("GAFFER_SHARED_DIR".into(), d.clone()));
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push((
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ));
        }
        let hostname = gaffer_api::cluster::hostname(&l.name, l.key.index);
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
                    // Joined once the agent has made the attempt's namespace.
                    Some(gaffer_api::Network::None) | Some(gaffer_api::Network::Bridge) => {
                        gaffer_runtime::Network::None
                    }
                    Some(gaffer_api::Network::Host) | None => gaffer_runtime::Network::Host,
                },
                netns: None,
                files: Vec::new(),
                mounts,
                cpus: Some(l.cpus),
                memory: l.memory,
                pids: l.pids,
            }),
            log_files: Default::default(),
        })
    }
}
