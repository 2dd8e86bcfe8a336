//! Agent gateway: turns one agent's message stream into core commands and gives the core a
//! sender for messages to that agent. In `gaffer dev` the stream is a pair of in-process
//! channels ([`Gateway::connect_local`]); the WebSocket endpoint feeds the same
//! [`Gateway::attach`]. It also answers file reads (remote logs, outputs) itself: those are
//! request/response exchanges with one agent that the core never sees.

use crate::core::{Command, CoreHandle};
use crate::images::Catalog;
use gaffer_api::proto::{AgentMsg, ServerMsg};
use gaffer_api::AttemptKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

/// Accepts agent streams.
#[derive(Clone)]
pub struct Gateway {
    core: CoreHandle,
    /// Where agents fetch image archives from ([`AgentMsg::ReadBlob`]).
    catalog: Option<Catalog>,
    next_conn: Arc<AtomicU64>,
    next_req: Arc<AtomicU64>,
    /// The current stream of each connected node.
    conns: Arc<Mutex<HashMap<String, UnboundedSender<ServerMsg>>>>,
    /// File reads waiting for their answer.
    reads: Arc<Mutex<HashMap<u64, oneshot::Sender<AgentMsg>>>>,
    /// Exec sessions: their node, and where their output goes.
    execs: ExecRoutes,
}

/// Exec sessions by id: their node, and where their output goes.
type ExecRoutes = Arc<Mutex<HashMap<u64, (String, UnboundedSender<AgentMsg>)>>>;

/// The most an answer to [`AgentMsg::ReadBlob`] carries.
pub const MAX_BLOB_CHUNK: u32 = 4 << 20;
/// Archive reads one agent may have in progress at once.
const BLOB_READS_PER_AGENT: usize = 4;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bytes read from an attempt file on an agent.
#[derive(Debug, Clone)]
pub struct RemoteChunk {
    /// The bytes.
    pub data: Vec<u8>,
    /// The attempt has ended.
    pub ended: bool,
}

impl Gateway {
    /// A gateway feeding `core`; agents read image archives from `catalog`.
    pub fn new(core: CoreHandle, catalog: Option<Catalog>) -> Self {
        Gateway {
            core,
            catalog,
            next_conn: Arc::new(AtomicU64::new(1)),
            next_req: Arc::new(AtomicU64::new(1)),
            conns: Arc::new(Mutex::new(HashMap::new())),
            reads: Arc::new(Mutex::new(HashMap::new())),
            execs: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Starts `argv` in the container of attempt `key` on `node` (`gaffer exec`): its
    /// output and end arrive on the session's receiver, which closes if the agent goes.
    pub fn exec(
        &self,
        node: &str,
        key: AttemptKey,
        argv: Vec<String>,
        tty: Option<(u16, u16)>,
    ) -> Result<ExecSession, String> {
        let Some(conn) = lock(&self.conns).get(node).cloned() else {
            return Err(format!("node {node} is not connected"));
        };
        let session = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = unbounded_channel();
        lock(&self.execs).insert(session, (node.to_string(), tx));
        let start = ServerMsg::ExecStart {
            session,
            key,
            argv,
            tty,
        };
        if conn.send(start).is_err() {
            lock(&self.execs).remove(&session);
            return Err(format!("node {node} is not connected"));
        }
        Ok(ExecSession {
            session,
            conn,
            rx,
            execs: self.execs.clone(),
        })
    }

    /// Sends `msg` to every connected agent; returns their node names.
    pub fn broadcast(&self, msg: &ServerMsg) -> Vec<String> {
        let conns = lock(&self.conns);
        let mut names: Vec<String> = conns
            .iter()
            .filter(|(_, tx)| tx.send(msg.clone()).is_ok())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// Reads part of an attempt file from the agent of `node`.
    pub async fn read_file(
        &self,
        node: &str,
        key: AttemptKey,
        path: &str,
        offset: u64,
        max: u32,
    ) -> Result<RemoteChunk, String> {
        use base64::Engine as _;
        let Some(conn) = lock(&self.conns).get(node).cloned() else {
            return Err(format!("node {node} is not connected"));
        };
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.reads).insert(req, tx);
        let sent = conn.send(ServerMsg::ReadFile {
            req,
            key,
            path: path.to_string(),
            offset,
            max,
        });
        if sent.is_err() {
            lock(&self.reads).remove(&req);
            return Err(format!("node {node} is not connected"));
        }
        let answer = tokio::time::timeout(Duration::from_secs(15), rx).await;
        lock(&self.reads).remove(&req);
        match answer {
            Ok(Ok(AgentMsg::FileData {
                data, ended, error, ..
            })) => match error {
                Some(e) => Err(e),
                None => base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map(|data| RemoteChunk { data, ended })
                    .map_err(|e| format!("node {node} sent undecodable data: {e}")),
            },
            Ok(_) => Err(format!("node {node} disconnected")),
            Err(_) => Err(format!("node {node} did not answer within 15s")),
        }
    }

    /// Answers one [`AgentMsg::ReadBlob`] on `to`, reading the archive off the event loop.
    fn send_blob(
        &self,
        to: &UnboundedSender<ServerMsg>,
        slots: &Arc<tokio::sync::Semaphore>,
        req: u64,
        digest: String,
        offset: u64,
        max: u32,
    ) {
        let to = to.clone();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let _ = to.send(ServerMsg::BlobData {
                req,
                data: String::new(),
                error: Some(format!(
                    "more than {BLOB_READS_PER_AGENT} archive reads at once from one node"
                )),
            });
            return;
        };
        let catalog = self.catalog.clone();
        // Bounded so that one agent cannot make the server hold huge buffers.
        let max = max.min(MAX_BLOB_CHUNK);
        tokio::task::spawn_blocking(move || {
            use base64::Engine as _;
            let read = match &catalog {
                Some(c) => c.read_blob(&digest, offset, max),
                None => Err("this server keeps no image archives".to_string()),
            };
            let msg = match read {
                Ok(data) => ServerMsg::BlobData {
                    req,
                    data: base64::engine::general_purpose::STANDARD.encode(data),
                    error: None,
                },
                Err(e) => ServerMsg::BlobData {
                    req,
                    data: String::new(),
                    error: Some(e),
                },
            };
            let _ = to.send(msg);
            drop(slot);
        });
    }

    /// Connects an in-process agent: returns its uplink and downlink.
    pub fn connect_local(&self) -> (UnboundedSender<AgentMsg>, UnboundedReceiver<ServerMsg>) {
        let (up_tx, up_rx) = unbounded_channel::<AgentMsg>();
        let (down_tx, down_rx) = unbounded_channel::<ServerMsg>();
        tokio::spawn(self.clone().attach("local".into(), up_rx, down_tx));
        (up_tx, down_rx)
    }

    /// Serves one agent stream until it closes. The first message must be `Register`.
    pub async fn attach(
        self,
        address: String,
        mut up: UnboundedReceiver<AgentMsg>,
        down: UnboundedSender<ServerMsg>,
    ) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mine = down.clone();
        // Archive reads of this agent in progress: an agent reads one chunk at a time, so a
        // few are plenty, and more could make the server hold many 4 MiB buffers for it.
        let blob_reads = Arc::new(tokio::sync::Semaphore::new(BLOB_READS_PER_AGENT));
        let address_again = address.clone();
        let node = match up.recv().await {
            Some(AgentMsg::Register { node, attempts }) => {
                let name = node.name.clone();
                lock(&self.conns).insert(name.clone(), down.clone());
                self.core.send(Command::AgentConnected {
                    conn,
                    address,
                    node,
                    attempts,
                    tx: down,
                });
                name
            }
            Some(other) => {
                tracing::warn!(?other, "agent spoke before registering; closing its stream");
                return;
            }
            None => return,
        };
        while let Some(msg) = up.recv().await {
            if let AgentMsg::Register {
                node: info,
                attempts,
            } = msg
            {
                // A fresh registration on the same stream (after `Reregister`).
                if !self.core.send(Command::AgentConnected {
                    conn,
                    address: address_again.clone(),
                    node: info,
                    attempts,
                    tx: mine.clone(),
                }) {
                    return;
                }
                continue;
            }
            if let AgentMsg::ReadBlob {
                req,
                digest,
                offset,
                max,
            } = msg
            {
                self.send_blob(&mine, &blob_reads, req, digest, offset, max);
                continue;
            }
            if let AgentMsg::ExecOutput { session, .. } | AgentMsg::ExecExit { session, .. } = &msg
            {
                let tx = lock(&self.execs).get(session).map(|(_, tx)| tx.clone());
                if let Some(tx) = tx {
                    let _ = tx.send(msg);
                }
                continue;
            }
            if let AgentMsg::FileData { req, .. } = &msg {
                if let Some(waiter) = lock(&self.reads).remove(req) {
                    let _ = waiter.send(msg);
                }
                continue;
            }
            if !self.core.send(Command::Agent {
                conn,
                node: node.clone(),
                msg,
            }) {
                return;
            }
        }
        {
            let mut conns = lock(&self.conns);
            if conns.get(&node).is_some_and(|c| c.same_channel(&mine)) {
                conns.remove(&node);
                // Their agent is gone: its exec sessions end (their receivers close).
                lock(&self.execs).retain(|_, (n, _)| *n != node);
            }
        }
        self.core.send(Command::AgentGone { conn, node });
    }
}

/// One `gaffer exec` command on an agent. Dropping it stops the command.
pub struct ExecSession {
    session: u64,
    conn: UnboundedSender<ServerMsg>,
    /// [`AgentMsg::ExecOutput`]s, then one [`AgentMsg::ExecExit`].
    pub rx: UnboundedReceiver<AgentMsg>,
    execs: ExecRoutes,
}

impl ExecSession {
    /// Sends standard input; empty `data` ends it.
    pub fn input(&self, data: &[u8]) {
        use base64::Engine as _;
        let _ = self.conn.send(ServerMsg::ExecInput {
            session: self.session,
            data: base64::engine::general_purpose::STANDARD.encode(data),
        });
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        if lock(&self.execs).remove(&self.session).is_some() {
            let _ = self.conn.send(ServerMsg::ExecKill {
                session: self.session,
            });
        }
    }
}
