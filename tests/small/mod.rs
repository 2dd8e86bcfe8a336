//! A small harness for tests that start `gaffer server` / `gaffer agent` processes by hand:
//! processes killed on drop, a free port, the CLI against an address, and deadline waits.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const GAFFER: &str = env!("CARGO_BIN_EXE_gaffer");

/// Child processes, killed and reaped on drop (also when a test panics).
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    /// Starts `gaffer ARGS` with its output discarded.
    pub fn spawn(&mut self, cmd: &mut Command) {
        self.0.push(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn gaffer"),
        );
    }
}

/// `gaffer ARGS` as a command to add paths to.
pub fn gaffer_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(GAFFER);
    c.args(args);
    c
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the CLI with `args` (no GAFFER_* from the environment).
pub fn cli(args: &[&str]) -> Output {
    Command::new(GAFFER)
        .args(args)
        .env_remove("GAFFER_ADDR")
        .env_remove("GAFFER_TOKEN")
        .env_remove("GAFFER_CA")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs the CLI against `addr`.
pub fn cli_at(addr: &str, args: &[&str]) -> Output {
    let mut all = vec!["--addr", addr];
    all.extend_from_slice(args);
    cli(&all)
}

/// Polls `f` until it holds, panicking after 30 s.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
