//! What an instance shows the rest of the daemon: its state, published by its actor on a
//! `watch` channel. Status reads the latest value without waiting for the actor; the switch
//! and the front's pool await changes of it (readiness, an exit) instead of polling.

use std::time::Instant;

use piku_model::InstanceId;
use piku_proto::{InstanceState, InstanceStatus};
use tokio::sync::watch;

use crate::procinfo;

/// The receiving end: cheap to clone, `borrow()` for the latest value, `changed()` to wait.
pub type Watch = watch::Receiver<Snapshot>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: InstanceState,
    pub pid: Option<u32>,
    /// When the current process started.
    pub started: Option<Instant>,
    /// Processes started again after one exited on its own.
    pub restarts: u32,
    /// Processes that exited on their own or could not start.
    pub exits: u32,
    pub last_exit: Option<String>,
    /// What the last failed readiness probe saw (`connection refused`, `status 500`).
    pub last_probe: Option<String>,
    /// Cron entries: the next run, RFC 3339.
    pub next_run: Option<String>,
}

impl Snapshot {
    pub fn new(state: InstanceState) -> Snapshot {
        Snapshot {
            state,
            pid: None,
            started: None,
            restarts: 0,
            exits: 0,
            last_exit: None,
            last_probe: None,
            next_run: None,
        }
    }

    /// Running with a process: for a web instance, its readiness probe has passed.
    pub fn ready(&self) -> bool {
        self.state == InstanceState::Running && self.pid.is_some()
    }

    /// The wire form, with live figures (RSS, CPU) read from /proc now.
    pub fn status(&self, id: &InstanceId, port: Option<u16>, dropped: u64) -> InstanceStatus {
        InstanceStatus {
            kind: id.kind.clone(),
            index: id.index,
            state: self.state,
            pid: self.pid,
            port,
            uptime_secs: self.started.map(|t| t.elapsed().as_secs()),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            rss_bytes: self.pid.and_then(procinfo::rss_bytes),
            memory_bytes: None,
            cpu_secs: self.pid.and_then(procinfo::cpu_secs),
            next_run: self.next_run.clone(),
            log_lines_dropped: dropped,
            in_flight: None,
            timed_out: None,
        }
    }
}
