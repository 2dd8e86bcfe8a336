//! Reads of attempt files for the server: remote `logs -f` and output downloads.

use crate::{lock, Inner};
use gaffer_api::proto::AgentMsg;
use gaffer_api::AttemptKey;

impl Inner {
    /// Reads part of an attempt file for the server (remote `logs -f`, output downloads).
    pub(crate) fn read_file(
        &self,
        req: u64,
        key: AttemptKey,
        path: &str,
        offset: u64,
        max: u32,
    ) -> AgentMsg {
        use base64::Engine as _;
        use std::io::{Read, Seek, SeekFrom};
        let dir = self.cfg.attempt_dir(&key);
        // Ended: the status is written, or nothing here runs or will run it (an attempt told
        // to start but not yet spawned is in the journal, not yet watched).
        let ended = dir.join("status.json").exists()
            || (!lock(&self.watched).contains(&key) && !self.journal.contains(&key));
        let allowed = path == "stdout"
            || path == "stderr"
            || (path.starts_with("outputs/")
                && !path.split('/').any(|c| c == ".." || c.is_empty()));
        let fail = |e: String| AgentMsg::FileData {
            req,
            data: String::new(),
            ended,
            error: Some(e),
        };
        if !allowed {
            return fail(format!("`{path}` is not an attempt file"));
        }
        let mut f = match std::fs::File::open(dir.join(path)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !path.starts_with("outputs/") => {
                // The task has not written anything yet.
                return AgentMsg::FileData {
                    req,
                    data: String::new(),
                    ended,
                    error: None,
                };
            }
            Err(e) => return fail(format!("{key} {path}: {e}")),
        };
        let mut buf = vec![0u8; max.min(1 << 20) as usize];
        let n = f
            .seek(SeekFrom::Start(offset))
            .and_then(|_| f.read(&mut buf));
        match n {
            Ok(n) => AgentMsg::FileData {
                req,
                data: base64::engine::general_purpose::STANDARD.encode(&buf[..n]),
                ended,
                error: None,
            },
            Err(e) => fail(format!("{key} {path}: {e}")),
        }
    }
}
