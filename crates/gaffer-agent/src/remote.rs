//! The agent's side of the network link: dials the server's WebSocket endpoint
//! (`/v1/agent/connect`), runs one [`Agent::session`] per connection, and reconnects with
//! back-off, trying each given server URL in turn. A server that stays silent longer than
//! [`SILENCE`] (it pings every 2 s) is treated as gone.

use crate::Agent;
use futures_util::{SinkExt, StreamExt};
use gaffer_api::proto::{AgentMsg, ServerMsg};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Longest silence from the server before the agent reconnects.
pub const SILENCE: Duration = Duration::from_secs(10);

/// `http://host:port` → `ws://host:port/v1/agent/connect` (`https` → `wss`).
pub fn ws_url(server: &str) -> String {
    let s = server.trim_end_matches('/');
    let s = if let Some(rest) = s.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = s.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if s.starts_with("ws://") || s.starts_with("wss://") {
        s.to_string()
    } else {
        format!("ws://{s}")
    };
    format!("{s}/v1/agent/connect")
}

/// Keeps the agent connected to one of `servers` forever. An HA follower answers with the
/// leader's URL, which is tried next; after losing a connection the agent moves on to the next
/// URL, so a dead leader is left behind at once.
pub async fn run_remote(
    agent: Agent,
    servers: Vec<String>,
    join_token: Option<String>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut i = 0usize;
    let mut hint: Option<String> = None;
    loop {
        let server = hint
            .take()
            .unwrap_or_else(|| servers[i % servers.len().max(1)].clone());
        let url = ws_url(&server);
        match connect(&url, join_token.as_deref(), tls.clone()).await {
            Ok(ws) => {
                tracing::info!(%url, "connected to the server");
                backoff = Duration::from_millis(100);
                connection(&agent, ws).await;
                tracing::warn!(%url, "lost the connection to the server; reconnecting");
                i += 1;
            }
            Err(Refused {
                leader: Some(leader),
                ..
            }) if leader != server => {
                tracing::info!(%url, %leader, "this server is a follower; trying the leader");
                hint = Some(leader);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(%url, error = %e.message, "cannot connect to the server");
                i += 1;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why a connection attempt failed, and the leader a follower named.
struct Refused {
    message: String,
    leader: Option<String>,
}

impl From<String> for Refused {
    fn from(message: String) -> Self {
        Refused {
            message,
            leader: None,
        }
    }
}

async fn connect(
    url: &str,
    token: Option<&str>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Ws, Refused> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(t) = token {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| "the join token has characters not allowed in a header".to_string())?;
        req.headers_mut().insert("Authorization", v);
    }
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    // Nagle off (`true`): reports are small messages, and Nagle held one back until the
    // server's delayed ACK of the one before.
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_tls_with_config(req, None, true, connector),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => Refused {
            message: format!(
                "the server refused the agent: HTTP {} {}",
                r.status(),
                r.body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).to_string())
                    .unwrap_or_default()
            ),
            leader: r
                .headers()
                .get("gaffer-leader")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        },
        other => other.to_string().into(),
    })?;
    Ok(ws)
}

async fn connection(agent: &Agent, ws: Ws) {
    let (mut sink, mut stream) = ws.split();
    let (up_tx, mut up_rx) = tokio::sync::mpsc::unbounded_channel::<AgentMsg>();
    let (down_tx, down_rx) = tokio::sync::mpsc::unbounded_channel::<ServerMsg>();
    let a = agent.clone();
    let session = tokio::spawn(async move { a.session(up_tx, down_rx).await });
    let mut writer = tokio::spawn(async move {
        while let Some(msg) = up_rx.recv().await {
            let Ok(text) = serde_json::to_string(&msg) else {
                continue;
            };
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    loop {
        tokio::select! {
            _ = &mut writer => break,
            frame = tokio::time::timeout(SILENCE, stream.next()) => {
                let text = match frame {
                    Err(_) => {
                        tracing::warn!("the server has been silent for {SILENCE:?}");
                        break;
                    }
                    Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => break,
                    Ok(Some(Ok(Message::Text(t)))) => t,
                    Ok(Some(Ok(_))) => continue,
                };
                match serde_json::from_str::<ServerMsg>(&text) {
                    Ok(m) => {
                        if down_tx.send(m).is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable message from the server"),
                }
            }
        }
    }
    drop(down_tx);
    let _ = session.await;
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_become_websocket_urls() {
        assert_eq!(ws_url("http://h:6464"), "ws://h:6464/v1/agent/connect");
        assert_eq!(ws_url("https://h:6464/"), "wss://h:6464/v1/agent/connect");
        assert_eq!(ws_url("h:6464"), "ws://h:6464/v1/agent/connect");
    }
}
