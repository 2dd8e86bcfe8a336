//! Resuming a followed stream that broke (`logs -f`, `events -f`).

use anyhow::{bail, Result};
use std::time::{Duration, Instant};

/// A followed stream (`logs -f`, `events -f`) that breaks when its server goes away, resumed
/// through whichever server answers next.
#[derive(Default)]
pub(super) struct Resume {
    /// When it broke, if nothing arrived since.
    broke_at: Option<Instant>,
}

impl Resume {
    /// How long a stream may stay broken without anything arriving.
    const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

    pub(super) fn resuming(&self) -> bool {
        self.broke_at.is_some()
    }

    pub(super) fn progressed(&mut self) {
        self.broke_at = None;
    }

    /// Says once per break where it resumes, waits a moment; an error once it gave up.
    pub(super) fn broke(
        &mut self,
        what: &str,
        why: &dyn std::fmt::Display,
        at: impl FnOnce() -> String,
    ) -> Result<()> {
        match self.broke_at {
            Some(t) if t.elapsed() > Self::GIVE_UP_AFTER => {
                bail!("the {what} stream broke: {why}")
            }
            Some(_) => {}
            None => {
                eprintln!("gaffer: the {what} stream broke ({why}); {}", at());
                self.broke_at = Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }
}
