//! What `Status` shows of an instance: written by its actor, read by the status handler
//! without waiting for the actor (which may be busy stopping a process).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use piku_proto::{InstanceState, InstanceStatus};

use crate::procinfo;

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: InstanceState,
    pub pid: Option<u32>,
    /// When the current process started.
    pub started: Option<Instant>,
    pub restarts: u32,
    pub last_exit: Option<String>,
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
            last_exit: None,
            next_run: None,
        }
    }
}

/// A snapshot shared between an actor and the status handler.
#[derive(Debug, Clone)]
pub struct Shared(Arc<Mutex<Snapshot>>);

impl Shared {
    pub fn new(state: InstanceState) -> Shared {
        Shared(Arc::new(Mutex::new(Snapshot::new(state))))
    }

    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    pub fn get(&self) -> Snapshot {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The wire form, with live figures (RSS, CPU) read from /proc now.
    pub fn status(
        &self,
        kind: &str,
        index: u32,
        port: Option<u16>,
        dropped: u64,
    ) -> InstanceStatus {
        let snap = self.get();
        InstanceStatus {
            kind: kind.to_string(),
            index,
            state: snap.state,
            pid: snap.pid,
            port,
            uptime_secs: snap.started.map(|t| t.elapsed().as_secs()),
            restarts: snap.restarts,
            last_exit: snap.last_exit,
            rss_bytes: snap.pid.and_then(procinfo::rss_bytes),
            cpu_secs: snap.pid.and_then(procinfo::cpu_secs),
            next_run: snap.next_run,
            log_lines_dropped: dropped,
        }
    }
}
