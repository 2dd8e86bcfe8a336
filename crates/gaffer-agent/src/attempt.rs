//! Running one attempt: fetching its image, putting it on the bridge network, starting its
//! supervisor, waiting for it and reporting its end; and killing one.

use crate::{images, launch, lock, lost, net, result_from_status, Inner};
use gaffer_api::now_ms;
use gaffer_api::proto::{AgentMsg, AttemptResult, EndKind, TaskLaunch};
use gaffer_api::AttemptKey;
use gaffer_runtime::LaunchSpec;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A host replica's hostfile, in its attempt directory.
const HOST_HOSTFILE: &str = "hostfile";

/// Writes a host replica's hostfile: its peers' addresses, one a line, in replica order.
fn write_host_hostfile(dir: &Path, peers: &[(String, String)]) -> Result<PathBuf, net::NetError> {
    let path = dir.join(HOST_HOSTFILE);
    let text: String = peers.iter().map(|(_, ip)| format!("{ip}\n")).collect();
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, text))
        .map_err(|source| net::NetError::File {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// Sets `name` in the task's environment, replacing what the server set.
fn set_env(spec: &mut LaunchSpec, name: &str, value: String) {
    spec.env.retain(|(k, _)| k != name);
    spec.env.push((name.to_string(), value));
}

impl Inner {
    pub(crate) async fn start(self: Arc<Self>, l: TaskLaunch) {
        let key = l.key;
        let dir = self.cfg.attempt_dir(&key);
        let mut journaled = false;
        if let (Some(image), Some((digest, size)), true) =
            (&l.image, &l.image_archive, self.cfg.containers)
        {
            if !self.images.holds(image, digest) {
                // Fetching can take a while: meanwhile the attempt is journaled and watched
                // like a running one, so that a reconnect reports it as running (not lost, to
                // be started a second time elsewhere). A kill waits for the fetch to end.
                let fetched = match self.journal.add(key) {
                    Ok(()) => {
                        journaled = true;
                        lock(&self.watched).insert(key);
                        let send = |m| self.try_send(m);
                        let r = self.images.ensure(image, digest, *size, &send).await;
                        lock(&self.watched).remove(&key);
                        r
                    }
                    Err(e) => Err(images::FetchFailed {
                        message: format!("cannot record the attempt in the agent journal: {e}"),
                        transient: false,
                    }),
                };
                if let Err(e) = fetched {
                    // Losing the server mid-fetch is no fault of the task: `lost` is placed
                    // again without using up its retries.
                    let kind = if e.transient {
                        EndKind::Lost
                    } else {
                        EndKind::SpawnFailed
                    };
                    let result = AttemptResult {
                        kind,
                        ..lost(e.message)
                    };
                    self.send(AgentMsg::Ended { key, result });
                    return;
                }
            }
        }
        let spec = match &l.image {
            Some(image) if !self.cfg.containers => Err(launch::LaunchError::NoContainers {
                node: self.cfg.name.clone(),
                image: image.clone(),
            }),
            Some(image) => self.container_spec(&l, image),
            None if !self.cfg.allow_host_tasks => Err(launch::LaunchError::NoHostTasks {
                node: self.cfg.name.clone(),
            }),
            None => {
                let mut env = self.base_env.clone();
                for (k, v) in l.env.clone() {
                    env.retain(|(ek, _)| *ek != k);
                    env.push((k, v));
                }
                // A host replica's shared directory is where it is on the node.
                let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
                let shared = l
                    .shared_dir
                    .as_ref()
                    .map(|_| self.shared_dir(&l, uid.as_raw(), gid.as_raw()))
                    .transpose();
                shared.map(|shared| {
                    if let Some(d) = shared {
                        env.push(("GAFFER_SHARED_DIR".into(), d.display().to_string()));
                    }
                    LaunchSpec {
                        argv: l.argv.clone(),
                        env,
                        cwd: l.workdir.clone().map(PathBuf::from),
                        timeout_ms: l.timeout_ms,
                        kill_grace_ms: l.kill_grace_ms,
                        outputs: l.outputs.clone(),
                        container: None,
                        log_files: Default::default(),
                    }
                })
            }
        };
        let spec = spec.and_then(|mut s| {
            crate::script::apply(&dir, &l, &mut s)
                .map(|()| s)
                .map_err(launch::LaunchError::Batch)
        });
        let mut spec = match spec {
            Ok(s) => s,
            Err(e) => {
                let result = AttemptResult {
                    kind: EndKind::SpawnFailed,
                    ..lost(e.to_string())
                };
                self.send(AgentMsg::Ended { key, result });
                return;
            }
        };
        let bridged = l.network == Some(gaffer_api::Network::Bridge);
        let mut ip = None;
        if bridged {
            match self.bridge_attempt(&key, &dir, &mut spec, &l.ports) {
                Ok(addr) => ip = Some(addr.to_string()),
                Err(e) => {
                    let result = AttemptResult {
                        kind: EndKind::SpawnFailed,
                        ..lost(e.to_string())
                    };
                    self.send(AgentMsg::Ended { key, result });
                    return;
                }
            }
        }
        if l.replicas.is_some() {
            // A host replica reports no address: the server knows its node's.
            let addr = ip.clone().unwrap_or_default();
            let (j, ready) = self.barrier(key, &dir, &mut spec, &addr, journaled).await;
            journaled = j;
            if let Err(message) = ready {
                let result = AttemptResult {
                    kind: EndKind::SpawnFailed,
                    ..lost(message)
                };
                if let Some(net) = bridged.then(|| self.net.unmap(&dir)).flatten() {
                    self.net.remove(&dir, &net);
                }
                self.send(AgentMsg::Ended { key, result });
                return;
            }
        }
        let checker = l.ready_cmd.clone().map(|line| {
            let (a, d) = (self.clone(), dir.clone());
            tokio::spawn(a.check_ready(key, d, line))
        });
        let result = self.clone().supervise(key, &dir, spec, journaled, ip).await;
        if let Some(c) = checker {
            c.abort();
        }
        // Its ports go before the end is reported (the server may give them to the next task
        // at once); its veth and namespace after, and its address once they are gone.
        let net = if bridged { self.net.unmap(&dir) } else { None };
        if let Some(result) = result {
            self.send(AgentMsg::Ended { key, result });
        }
        if let Some(net) = net {
            let a = self.clone();
            tokio::task::spawn_blocking(move || a.net.remove(&dir, &net));
        }
    }

    /// Starts the supervisor of a prepared attempt and waits for it. Returns the attempt's
    /// result (`None` when there is nothing to report).
    async fn supervise(
        self: Arc<Self>,
        key: AttemptKey,
        dir: &Path,
        spec: LaunchSpec,
        journaled: bool,
        ip: Option<String>,
    ) -> Option<AttemptResult> {
        let dir = dir.to_path_buf();
        // A few small file operations: cheaper inline than a hop to the blocking pool.
        let journal = if journaled {
            Ok(())
        } else {
            self.journal.add(key)
        };
        let prepared = journal
            .map_err(|e| format!("cannot record the attempt in the agent journal: {e}"))
            .and_then(|()| gaffer_runtime::prepare(&dir, &spec).map_err(|e| e.to_string()));
        if let Err(msg) = prepared {
            let result = AttemptResult {
                kind: EndKind::SpawnFailed,
                ..lost(msg)
            };
            return Some(result);
        }
        if lock(&self.procs).kills.remove(&key) {
            // Killed before it started: do not start it.
            let result = AttemptResult {
                kind: EndKind::Killed,
                ..lost("killed before it started".into())
            };
            return Some(result);
        }
        let container = spec.container.is_some();
        let cmd = gaffer_runtime::shim_command(&self.cfg.shim_exe, &dir);
        lock(&self.watched).insert(key);
        let mut child = match tokio::process::Command::from(cmd).spawn() {
            Ok(c) => c,
            Err(e) => {
                lock(&self.watched).remove(&key);
                let result = AttemptResult {
                    kind: EndKind::SpawnFailed,
                    ..lost(format!(
                        "cannot start the supervisor {}: {e}",
                        self.cfg.shim_exe.display()
                    ))
                };
                return Some(result);
            }
        };
        if let Some(pid) = child.id() {
            let killed = {
                let mut p = lock(&self.procs);
                p.pids.insert(key, pid);
                p.kills.remove(&key)
            };
            if killed {
                // The kill arrived while the supervisor was being started.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        self.send(AgentMsg::Started {
            key,
            at: now_ms(),
            ip,
        });
        let exit = child.wait().await;
        lock(&self.procs).pids.remove(&key);
        let result = match gaffer_runtime::read_status(&dir) {
            Ok(Some(s)) => result_from_status(&s),
            Ok(None) => {
                if let Err(e) = gaffer_runtime::cleanup_attempt(&dir) {
                    tracing::warn!(attempt = %key, error = %e, "cannot clean up after a dead supervisor");
                }
                lost(format!(
                    "the supervisor exited ({exit:?}) without a result; see the agent's log"
                ))
            }
            Err(e) => lost(format!("cannot read the attempt's status: {e}")),
        };
        lock(&self.watched).remove(&key);
        if container {
            // An image removed or replaced while this ran may be deletable now.
            let a = self.clone();
            tokio::task::spawn_blocking(move || a.images.purge_retired());
        }
        Some(result)
    }

    /// The start barrier of a replica: reports it prepared at `ip`, and waits for its peers
    /// (or a kill, which [`Inner::supervise`] then reports). Meanwhile it is journaled and
    /// watched like a running attempt. Returns whether it is journaled, and whether its peers'
    /// names could be written.
    async fn barrier(
        &self,
        key: AttemptKey,
        dir: &Path,
        spec: &mut LaunchSpec,
        ip: &str,
        journaled: bool,
    ) -> (bool, Result<(), String>) {
        let journaled = journaled || self.journal.add(key).is_ok();
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut p = lock(&self.procs);
            if p.kills.contains(&key) {
                return (journaled, Ok(()));
            }
            p.barriers.insert(
                key,
                crate::Barrier {
                    ip: ip.to_string(),
                    tx,
                },
            );
        }
        lock(&self.watched).insert(key);
        self.send(AgentMsg::Prepared {
            key,
            ip: ip.to_string(),
        });
        let peers = rx.await;
        lock(&self.watched).remove(&key);
        if let Ok(peers) = peers {
            let addrs: Vec<&str> = peers.iter().map(|(_, ip)| ip.as_str()).collect();
            set_env(spec, "GAFFER_PEER_ADDRS", addrs.join(" "));
            let written = match spec.container.as_mut() {
                Some(c) => net::write_peers(dir, &peers).map(|hostfile| {
                    c.files
                        .push((hostfile, PathBuf::from(gaffer_api::cluster::HOSTFILE)));
                }),
                // On the host the names resolve to nothing: its hostfile lists addresses.
                None => write_host_hostfile(dir, &peers).map(|path| {
                    set_env(spec, "GAFFER_HOSTFILE", path.display().to_string());
                }),
            };
            if let Err(e) = written {
                return (
                    journaled,
                    Err(format!("cannot write its peers' names: {e}")),
                );
            }
        }
        (journaled, Ok(()))
    }

    /// [`ServerMsg::Peers`](gaffer_api::proto::ServerMsg) for replica `key`: starts it if it
    /// waits at the barrier, else rewrites its `/etc/hosts`.
    pub(crate) fn peers(&self, key: AttemptKey, peers: Vec<(String, String)>) {
        let waiting = lock(&self.procs).barriers.remove(&key);
        match waiting {
            Some(b) => {
                let _ = b.tx.send(peers);
            }
            None => {
                let dir = self.cfg.attempt_dir(&key);
                let written = if dir.join("etc/hosts").exists() {
                    net::write_peers(&dir, &peers).map(drop)
                } else if dir.join(HOST_HOSTFILE).exists() {
                    write_host_hostfile(&dir, &peers).map(drop)
                } else {
                    Ok(())
                };
                if let Err(e) = written {
                    tracing::warn!(attempt = %key, error = %e, "cannot rewrite the peers' names");
                }
            }
        }
    }

    /// Puts a container attempt on the bridge network: its namespace, address and files.
    fn bridge_attempt(
        &self,
        key: &AttemptKey,
        dir: &Path,
        spec: &mut LaunchSpec,
        ports: &[gaffer_api::ports::PortMapping],
    ) -> std::result::Result<std::net::Ipv4Addr, net::NetError> {
        let Some(c) = spec.container.as_mut() else {
            return Err(net::NetError::NoSubnet {
                node: self.cfg.name.clone(),
            });
        };
        std::fs::create_dir_all(dir).map_err(|source| net::NetError::File {
            path: dir.to_path_buf(),
            source,
        })?;
        let (attempt, files) = self.net.attach(key, dir, &c.hostname, ports)?;
        c.network = gaffer_runtime::Network::Join;
        c.netns = Some(attempt.netns);
        c.files = files;
        Ok(attempt.ip)
    }

    /// Applies the server's [`gaffer_api::proto::ServerMsg::Network`].
    pub(crate) fn configure_network(
        &self,
        subnet: &str,
        cluster: &str,
        routes: &[(String, String)],
    ) {
        if !(self.containers() && self.cfg.bridge.is_some()) {
            return;
        }
        let parsed = (|| -> std::result::Result<_, String> {
            let subnet = subnet.parse().map_err(|e| format!("{e}"))?;
            let cluster = cluster.parse().map_err(|e| format!("{e}"))?;
            let mut want = Vec::new();
            for (s, via) in routes {
                let s = s.parse().map_err(|e| format!("{e}"))?;
                let via = via
                    .parse()
                    .map_err(|_| format!("invalid node address `{via}`"))?;
                want.push((s, via));
            }
            Ok((subnet, cluster, want))
        })();
        let result = parsed.and_then(|(subnet, cluster, want)| {
            self.net
                .configure(subnet, cluster, want)
                .map_err(|e| e.to_string())
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot set up the container network");
        }
    }

    pub(crate) fn kill(&self, key: AttemptKey) {
        let dir = self.cfg.attempt_dir(&key);
        match gaffer_runtime::kill_shim(&dir) {
            Ok(true) => {}
            _ => {
                // The shim may not have written its pid file yet: signal the pid we spawned,
                // or, if it is not spawned yet, remember the kill for when it is.
                let mut p = lock(&self.procs);
                match p.pids.get(&key) {
                    Some(pid) => {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(*pid as i32),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                    None => {
                        p.kills.insert(key);
                        // A replica at the start barrier goes on to find the kill.
                        p.barriers.remove(&key);
                    }
                }
            }
        }
    }
}
