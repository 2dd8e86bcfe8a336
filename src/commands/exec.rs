//! `gaffer exec JOB [--task N] -- CMD`: runs a command inside a running task's container, like
//! `docker exec`, over a WebSocket to the server (which relays it to the task's agent). With a
//! terminal on stdin, the command gets a pty of the same size and the terminal goes raw.

use super::util::job_id;
use crate::cli::ExecArgs;
use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use std::io::{IsTerminal, Read, Write};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// `gaffer exec`: the command's exit status is this one's.
pub fn exec(
    addr: &str,
    token: Option<&str>,
    ca: Option<&std::path::Path>,
    a: ExecArgs,
) -> Result<i32> {
    let id = job_id(&a.job)?;
    let tty = match (a.tty, a.no_tty) {
        (true, _) => true,
        (_, true) => false,
        _ => std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
    };
    let base = addr
        .split(',')
        .next()
        .unwrap_or(addr)
        .trim()
        .trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let ws_base = base
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let argv = serde_json::to_string(&a.command)?;
    let mut url = format!(
        "{ws_base}/v1/jobs/{id}/exec?task={}&argv={}",
        a.task,
        crate::client::enc(&argv)
    );
    if tty {
        let (cols, rows) = terminal_size();
        url.push_str(&format!("&cols={cols}&rows={rows}"));
    }
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| anyhow!("bad server address {base}: {e}"))?;
    if let Some(t) = token {
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {t}")
                .parse()
                .map_err(|_| anyhow!("the token has characters not allowed in a header"))?,
        );
    }
    let tls = match base.starts_with("https://") {
        true => Some(crate::tls::client_config(ca)?),
        false => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _raw = if tty { RawMode::enter() } else { None };
    rt.block_on(session(req, tls))
}

/// Relays stdin to the server and the command's output to stdout and stderr.
async fn session(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<i32> {
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(req, None, true, connector)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                let body = r
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).to_string())
                    .unwrap_or_default();
                let msg = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(body);
                anyhow!("{msg} (HTTP {})", r.status())
            }
            other => anyhow!("cannot reach the server: {other}"),
        })?;
    let (mut sink, mut stream) = ws.split();
    // Standard input on a thread (reads block): chunks, then an empty one at its end.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Vec::new());
                    return;
                }
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut input_open = true;
    loop {
        tokio::select! {
            chunk = rx.recv(), if input_open => {
                let msg = match chunk {
                    Some(c) if !c.is_empty() => Message::Binary(c.into()),
                    _ => {
                        input_open = false;
                        Message::Text(r#"{"eof":true}"#.into())
                    }
                };
                sink.send(msg).await.context("the exec connection broke")?;
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(frame))) => {
                    let Some((&which, data)) = frame.split_first() else { continue };
                    let written = if which == 2 {
                        std::io::stderr().write_all(data).and_then(|()| std::io::stderr().flush())
                    } else {
                        std::io::stdout().write_all(data).and_then(|()| std::io::stdout().flush())
                    };
                    if written.is_err() {
                        return Ok(0);
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    if let Some(e) = v["error"].as_str() {
                        bail!("{e}");
                    }
                    return Ok(v["exit"].as_i64().map_or(255, |c| c as i32));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the exec connection broke: {e}"),
                None => bail!("the server closed the exec connection before the command ended"),
            },
        }
    }
}

/// The terminal's columns and rows (80 × 24 if unknown).
fn terminal_size() -> (u16, u16) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which lives for the call.
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 && ws.ws_row > 0 {
        (ws.ws_col, ws.ws_row)
    } else {
        (80, 24)
    }
}

/// The terminal in raw mode (keys go to the remote command as typed) until dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}
