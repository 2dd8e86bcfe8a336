//! The agents' WebSocket endpoint, `GET /v1/agent/connect`: one connection per agent carrying
//! [`AgentMsg`] up and [`ServerMsg`] down as JSON text frames, handed to the [`Gateway`].
//!
//! The agent dials the server (so it works through NAT, and fail-over is a reconnect). The
//! server pings every [`PING`]; a connection that stays silent is dropped by the agent, and a
//! node that stays silent is declared down by the core's heartbeat timeout.

use crate::gateway::Gateway;
use crate::http::AppState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use gaffer_api::proto::{AgentMsg, ServerMsg};
use std::net::SocketAddr;
use std::time::Duration;

/// How often the server pings each agent.
pub const PING: Duration = Duration::from_secs(2);

/// Upgrades an agent's request after checking its join token.
pub async fn connect(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(want) = &st.auth.join_token {
        if !crate::http::bearer_matches(&headers, want) {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": "agents must present the cluster's join token (--join-token-file)"})),
            )
                .into_response();
        }
    }
    let gateway = st.gateway.clone();
    ws.max_message_size(64 << 20)
        .on_upgrade(move |socket| serve(gateway, peer, socket))
}

async fn serve(gateway: Gateway, peer: SocketAddr, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (up_tx, up_rx) = tokio::sync::mpsc::unbounded_channel::<AgentMsg>();
    let (down_tx, mut down_rx) = tokio::sync::mpsc::unbounded_channel::<ServerMsg>();
    let attach = tokio::spawn(gateway.attach(peer.ip().to_string(), up_rx, down_tx));
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING);
        loop {
            tokio::select! {
                msg = down_rx.recv() => {
                    let Some(msg) = msg else { break };
                    let text = match serde_json::to_string(&msg) {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot encode a message to an agent");
                            continue;
                        }
                    };
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    while let Some(frame) = stream.next().await {
        let text = match frame {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        match serde_json::from_str::<AgentMsg>(&text) {
            Ok(msg) => {
                if up_tx.send(msg).is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "agent sent an unreadable message; closing");
                break;
            }
        }
    }
    drop(up_tx);
    writer.abort();
    let _ = attach.await;
}
