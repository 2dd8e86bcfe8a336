//! Wire types of gaffer: what users send (a [`JobSpec`]), what they get back (the views in
//! [`views`]), the task and job state machines ([`state`]) and the messages agents and servers
//! exchange ([`proto`]).
//!
//! This crate is pure: no I/O, no async. Validation of a spec ([`JobSpec::validate`]) lives here
//! so that the server, the CLI and tests agree on what a valid job is, and every error names the
//! field it is about ([`FieldError`]).

pub mod batch;
pub mod cluster;
pub mod ids;
pub mod mounts;
pub mod ports;
pub mod proto;
pub mod spec;
mod spec_parse;
pub mod state;
pub mod units;
pub mod views;

pub use ids::{AttemptKey, JobId};
pub use spec::{FieldError, JobSpec, Network, Placement, Resources};
pub use state::{JobState, TaskState};
pub use units::{ByteSize, DurationSpec};

/// Milliseconds since the Unix epoch; every timestamp on the wire uses it.
pub type UnixMs = u64;

/// The wall clock in [`UnixMs`] (0 if the clock is set before 1970). The one place gaffer reads
/// the time of day; the server's core never calls it from its rules but is handed `now`.
pub fn now_ms() -> UnixMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Largest array a single job may declare.
pub const MAX_ARRAY: u32 = 1_000_000;
