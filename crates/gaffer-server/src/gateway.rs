//! Agent gateway: turns one agent's message stream into core commands and gives the core a
//! sender for messages to that agent. In `gaffer dev` the stream is a pair of in-process
//! channels ([`Gateway::connect_local`]); remote transports feed the same [`Gateway::attach`].

use crate::core::{Command, CoreHandle};
use gaffer_api::proto::{AgentMsg, ServerMsg};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Accepts agent streams.
#[derive(Clone)]
pub struct Gateway {
    core: CoreHandle,
    next_conn: Arc<AtomicU64>,
}

impl Gateway {
    /// A gateway feeding `core`.
    pub fn new(core: CoreHandle) -> Self {
        Gateway {
            core,
            next_conn: Arc::new(AtomicU64::new(1)),
        }
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
        let node = match up.recv().await {
            Some(AgentMsg::Register { node, attempts }) => {
                let name = node.name.clone();
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
            if !self.core.send(Command::Agent {
                conn,
                node: node.clone(),
                msg,
            }) {
                return;
            }
        }
        self.core.send(Command::AgentGone { conn, node });
    }
}
