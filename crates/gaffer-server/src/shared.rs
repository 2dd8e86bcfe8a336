//! State the core publishes for the API to read without asking it: the event broadcast, the
//! node table, why jobs are not placed, and counters for `/metrics`.

use gaffer_api::views::{EventView, NodeView};
use gaffer_api::JobId;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::RwLock;
use tokio::sync::broadcast;

/// Counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Attempts that started.
    pub tasks_started: AtomicU64,
    /// Attempts that ended.
    pub tasks_finished: AtomicU64,
    /// Tasks waiting to be placed.
    pub queue_depth: AtomicU64,
    /// Tasks assigned or running.
    pub running: AtomicU64,
    /// Jobs submitted since start.
    pub jobs_submitted: AtomicU64,
}

/// Published state; see the module docs.
pub struct Shared {
    /// Every committed event.
    pub events: broadcast::Sender<EventView>,
    /// The node table as of the last round.
    pub nodes: RwLock<Vec<NodeView>>,
    /// Why a job's pending tasks are not placed.
    pub reasons: RwLock<HashMap<JobId, String>>,
    /// Counters.
    pub metrics: Metrics,
}

impl Shared {
    /// Empty state.
    pub fn new() -> Self {
        Shared {
            events: broadcast::channel(8192).0,
            nodes: RwLock::new(Vec::new()),
            reasons: RwLock::new(HashMap::new()),
            metrics: Metrics::default(),
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}
