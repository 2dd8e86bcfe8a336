//! `gaffer exec`: commands run inside a running attempt's container, on a pty or on pipes,
//! their output sent to the server as it comes and their exit status at the end.

use crate::{lock, Inner};
use base64::Engine as _;
use gaffer_api::proto::AgentMsg;
use gaffer_api::AttemptKey;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Exec sessions running here: where their input goes, and their process group.
#[derive(Default)]
pub(crate) struct Execs {
    sessions: Mutex<HashMap<u64, Session>>,
}

struct Session {
    /// Standard input; an empty chunk ends it.
    input: mpsc::Sender<Vec<u8>>,
    /// The command's process group (it leads a session of its own).
    pgid: i32,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

impl Inner {
    /// Starts `argv` in the container of attempt `key`; answers through the uplink.
    pub(crate) fn exec_start(
        self: &Arc<Self>,
        session: u64,
        key: AttemptKey,
        argv: Vec<String>,
        tty: Option<(u16, u16)>,
    ) {
        if let Err(error) = self.clone().spawn_exec(session, key, &argv, tty) {
            self.send(AgentMsg::ExecExit {
                session,
                code: None,
                error: Some(error),
            });
        }
    }

    /// Standard input for session `session` (empty: its end).
    pub(crate) fn exec_input(&self, session: u64, data: &str) {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
            return;
        };
        if let Some(s) = lock(&self.execs.sessions).get(&session) {
            let _ = s.input.send(bytes);
        }
    }

    /// Kills session `session`'s command and what it started.
    pub(crate) fn exec_kill(&self, session: u64) {
        if let Some(s) = lock(&self.execs.sessions).remove(&session) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(s.pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    fn spawn_exec(
        self: Arc<Self>,
        session: u64,
        key: AttemptKey,
        argv: &[String],
        tty: Option<(u16, u16)>,
    ) -> Result<(), String> {
        let dir = self.cfg.attempt_dir(&key);
        let mut cmd =
            gaffer_runtime::exec::exec_in(&dir, argv, tty.is_some()).map_err(|e| match e {
                gaffer_runtime::exec::ExecError::NotRunning { .. } => format!(
                    "attempt {key} has no running container on node {} (only container tasks can be exec'd into, while they run)",
                    self.cfg.name
                ),
                e => e.to_string(),
            })?;
        let cannot =
            |e: std::io::Error| format!("cannot start {:?} in attempt {key}: {e}", argv[0]);
        // Output readers: (stream number, reader).
        let mut outputs: Vec<(u8, Box<dyn Read + Send>)> = Vec::new();
        let input: Box<dyn Write + Send>;
        let mut child = match tty {
            Some((cols, rows)) => {
                let size = nix::pty::Winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                let pty = nix::pty::openpty(Some(&size), None)
                    .map_err(|e| cannot(std::io::Error::from(e)))?;
                let slave = std::fs::File::from(pty.slave);
                cmd.stdin(slave.try_clone().map_err(cannot)?)
                    .stdout(slave.try_clone().map_err(cannot)?)
                    .stderr(slave);
                let child = cmd.spawn().map_err(cannot)?;
                let master = std::fs::File::from(pty.master);
                input = Box::new(master.try_clone().map_err(cannot)?);
                outputs.push((1, Box::new(master)));
                child
            }
            None => {
                use std::process::Stdio;
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = cmd.spawn().map_err(cannot)?;
                input = Box::new(child.stdin.take().expect("piped"));
                outputs.push((1, Box::new(child.stdout.take().expect("piped"))));
                outputs.push((2, Box::new(child.stderr.take().expect("piped"))));
                child
            }
        };
        drop(cmd);
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        lock(&self.execs.sessions).insert(
            session,
            Session {
                input: tx,
                pgid: child.id() as i32,
            },
        );
        let on_tty = tty.is_some();
        std::thread::spawn(move || write_input(input, rx, on_tty));
        let readers: Vec<_> = outputs
            .into_iter()
            .map(|(stream, mut r)| {
                let a = self.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    // A pty's master reads EIO once the command and all it started are gone.
                    while let Ok(n @ 1..) = r.read(&mut buf) {
                        a.send(AgentMsg::ExecOutput {
                            session,
                            stream,
                            data: b64(&buf[..n]),
                        });
                    }
                })
            })
            .collect();
        std::thread::spawn(move || {
            let status = child.wait();
            for r in readers {
                let _ = r.join();
            }
            lock(&self.execs.sessions).remove(&session);
            let (code, error) = match status {
                Ok(s) => (
                    s.code().or_else(|| {
                        std::os::unix::process::ExitStatusExt::signal(&s).map(|n| 128 + n)
                    }),
                    None,
                ),
                Err(e) => (None, Some(format!("cannot wait for the command: {e}"))),
            };
            self.send(AgentMsg::ExecExit {
                session,
                code,
                error,
            });
        });
        Ok(())
    }
}

/// Copies input chunks to the command until an empty one (its end: on a terminal, ^D).
fn write_input(mut to: Box<dyn Write + Send>, rx: mpsc::Receiver<Vec<u8>>, tty: bool) {
    while let Ok(chunk) = rx.recv() {
        if chunk.is_empty() {
            if tty {
                let _ = to.write_all(&[4]);
                continue;
            }
            return;
        }
        if to.write_all(&chunk).and_then(|()| to.flush()).is_err() {
            return;
        }
    }
}
