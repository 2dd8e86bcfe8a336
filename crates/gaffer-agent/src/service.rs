//! Cluster jobs on a node: replicas' readiness checks, and the front doors of services (every
//! node listens on a job's service port and forwards each TCP connection to a ready replica).

use crate::{lock, Inner};
use gaffer_api::proto::AgentMsg;
use gaffer_api::{AttemptKey, JobId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often a replica's readiness is checked.
const READY_EVERY: Duration = Duration::from_secs(1);
/// Checks between two reports of an unchanged readiness.
const RESEND_EVERY: u32 = 10;
/// Longest a readiness check may run; one that takes longer counts as not ready.
const READY_LIMIT: Duration = Duration::from_secs(5);
/// Longest a front door waits to reach one replica before it tries the next.
const CONNECT_LIMIT: Duration = Duration::from_secs(1);

/// One job's front door.
struct Door {
    host: u16,
    backends: Arc<RwLock<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The node's front doors, by job.
#[derive(Default)]
pub(crate) struct FrontDoors {
    doors: Mutex<HashMap<JobId, Door>>,
}

impl FrontDoors {
    /// The server's word on job `job`'s service: listen on `host` and send connections to
    /// `backends` (`ip:port`), or, without `open`, stop listening.
    pub(crate) fn update(&self, job: JobId, host: u16, backends: Vec<String>, open: bool) {
        let mut doors = lock(&self.doors);
        if !open {
            if let Some(d) = doors.remove(&job) {
                d.task.abort();
                tracing::info!(%job, port = d.host, "front door closed");
            }
            return;
        }
        let addrs: Vec<SocketAddr> = backends.iter().filter_map(|b| b.parse().ok()).collect();
        if let Some(d) = doors.get(&job).filter(|d| d.host == host) {
            *d.backends.write().unwrap_or_else(|p| p.into_inner()) = addrs;
            return;
        }
        let listener = match bind(host) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%job, port = host, error = %e, "cannot open the front door");
                return;
            }
        };
        tracing::info!(%job, port = host, "front door open");
        let backends = Arc::new(RwLock::new(addrs));
        let task = tokio::spawn(serve(listener, backends.clone()));
        if let Some(old) = doors.insert(
            job,
            Door {
                host,
                backends,
                task,
            },
        ) {
            old.task.abort();
        }
    }
}

impl FrontDoors {
    /// Closes every door (the connection to the server is gone; it sends the open ones
    /// again when the agent registers).
    pub(crate) fn close_all(&self) {
        for (job, d) in lock(&self.doors).drain() {
            d.task.abort();
            tracing::info!(%job, port = d.host, "front door closed until the server is back");
        }
    }
}

/// A listener on every address of this node, port `host`.
fn bind(host: u16) -> std::io::Result<tokio::net::TcpListener> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(SocketAddr::from(([0, 0, 0, 0], host)))?;
    s.listen(1024)
}

/// Accepts connections and splices each to the first backend that answers.
async fn serve(listener: tokio::net::TcpListener, backends: Arc<RwLock<Vec<SocketAddr>>>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            // Out of descriptors, say: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let order = backends.read().unwrap_or_else(|p| p.into_inner()).clone();
        tokio::spawn(async move {
            for addr in order {
                let Ok(Ok(mut out)) =
                    tokio::time::timeout(CONNECT_LIMIT, tokio::net::TcpStream::connect(addr)).await
                else {
                    continue;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                return;
            }
            // No ready replica answered: the client sees the connection close.
        });
    }
}

impl Inner {
    /// Checks replica `key`'s readiness (`line`, run inside its container) every second and
    /// reports each change, until the task is aborted when the attempt ends.
    pub(crate) async fn check_ready(self: Arc<Self>, key: AttemptKey, dir: PathBuf, line: String) {
        let mut last = None;
        let mut since = 0u32;
        loop {
            tokio::time::sleep(READY_EVERY).await;
            let ready = run_check(&dir, &line).await;
            since += 1;
            // Changes at once; the same now and then too, in case a report was lost to a
            // reconnect or a new server (the server ignores repeats).
            if last != Some(ready) || since >= RESEND_EVERY {
                last = Some(ready);
                since = 0;
                self.send(AgentMsg::Ready { key, ready });
            }
        }
    }
}

/// Runs one readiness check: true when it exits 0 within [`READY_LIMIT`].
async fn run_check(dir: &std::path::Path, line: &str) -> bool {
    let Ok(cmd) = gaffer_runtime::exec::command_in(dir, line) else {
        return false;
    };
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    matches!(
        tokio::time::timeout(READY_LIMIT, child.wait()).await,
        Ok(Ok(s)) if s.success()
    )
}
