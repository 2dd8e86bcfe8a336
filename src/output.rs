//! How the CLI prints its answers. `-o` is read once, in `main`, into an [`Output`]; a command
//! then says what its answer is (a value for scripts, a rendering for people) and the `Output`
//! prints the one it stands for, so no command looks at the format itself.

use crate::cli::Format;
use anyhow::Result;
use serde::Serialize;

/// The form of a command's answers on standard output, chosen by `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Tables and sentences for people (`-o human`, the default).
    Human,
    /// JSON for scripts (`-o json`).
    Json,
    /// The job's state alone (`-o state`). Only `gaffer status` prints it (main refuses it for
    /// the other commands, see `Format::check`); the methods below refuse it too.
    State,
}

impl From<Format> for Output {
    fn from(f: Format) -> Self {
        match f {
            Format::Human => Output::Human,
            Format::Json => Output::Json,
            Format::State => Output::State,
            // Only `gaffer history` takes it (see `Format::check`), and prints it itself.
            Format::Csv => Output::Human,
        }
    }
}

impl Output {
    /// True when people read the answer: only they get progress bars, progress lines and the
    /// lines a command prints as it goes.
    pub fn is_human(self) -> bool {
        self == Output::Human
    }

    /// Prints the answer: `value` as pretty JSON, or whatever `human` prints.
    pub fn print<T: Serialize + ?Sized>(self, value: &T, human: impl FnOnce()) -> Result<()> {
        match self {
            Output::Json => print_json(value),
            Output::Human => {
                human();
                Ok(())
            }
            Output::State => state_refused(),
        }
    }

    /// Prints `value` as pretty JSON for scripts; nothing for people (who got their lines while
    /// the command went, see [`Output::human`]).
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        self.print(value, || {})
    }

    /// Like [`Output::json`], with a value that is only worth computing for scripts: `make`
    /// does not run for people.
    pub fn json_with<T: Serialize>(self, make: impl FnOnce() -> Result<T>) -> Result<()> {
        match self {
            Output::Json => print_json(&make()?),
            Output::Human => Ok(()),
            Output::State => state_refused(),
        }
    }

    /// Runs `f`, which prints a line for people, only when the answer is for people.
    pub fn human(self, f: impl FnOnce()) {
        if self.is_human() {
            f();
        }
    }

    /// The answer as one line, for streams and summaries: `value` as compact JSON, or the text
    /// `human` gives. The caller prints it where it belongs.
    pub fn line<T: Serialize + ?Sized>(
        self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> Result<String> {
        Ok(match self {
            Output::Json => serde_json::to_string(value)?,
            Output::Human => human(),
            Output::State => return state_refused(),
        })
    }
}

fn state_refused<T>() -> Result<T> {
    anyhow::bail!("-o state is only for `gaffer status`")
}

fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
