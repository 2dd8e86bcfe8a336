//! The client subcommands: each turns parsed flags into API calls and prints the answer through
//! the [`Output`](crate::output::Output) that `-o` chose, for people (tables) or scripts (JSON).
//!
//! One module per verb; `util` (ids, durations, tables) and `resume` (followed streams) are
//! shared helpers that import none of the verbs, and `submit --wait` uses `wait`.

mod control;
mod events;
mod exec;
mod history;
mod jobs;
mod logs;
mod nodes;
mod output;
mod resume;
mod script;
mod servers;
mod status;
mod submit;
mod util;
mod wait;

pub use control::{hold, kill, retry, rm};
pub use events::events;
pub use exec::exec;
pub use history::history;
pub use jobs::jobs;
pub use logs::logs;
pub use nodes::{node, nodes};
pub use output::output;
pub use servers::servers;
pub use status::status;
pub use submit::submit;
pub(crate) use util::{ago, short_duration, table};
pub use wait::wait;
