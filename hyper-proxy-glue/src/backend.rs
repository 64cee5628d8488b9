//! One backend instance as the front sees it: its address, how many requests it is serving
//! right now, whether it recently refused a connection, and its idle keep-alive connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::upstream::Sender;

/// An app instance the front may send requests to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Names the instance for [`Front::in_flight`](crate::Front::in_flight) and
    /// [`Front::drained`](crate::Front::drained), e.g. `"web.1@v3"`. Unique within a front.
    pub id: String,
    /// Where the instance listens (its `$PORT`).
    pub addr: SocketAddr,
}

impl Backend {
    pub fn new(id: impl Into<String>, addr: SocketAddr) -> Backend {
        Backend {
            id: id.into(),
            addr,
        }
    }
}

/// An unused keep-alive connection and when it became unused.
struct IdleConn {
    sender: Sender,
    since: Instant,
}

/// The live state of one backend, shared by the current set, in-flight requests and their bodies.
pub(crate) struct BackendState {
    pub(crate) backend: Backend,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` until which the backend is avoided; 0 = never marked.
    down_until_ms: AtomicU64,
    born: Instant,
    idle: Mutex<Vec<IdleConn>>,
    /// Shared with the pool: woken whenever some backend's in-flight count drops to zero.
    drained: Arc<Notify>,
}

impl BackendState {
    pub(crate) fn new(backend: Backend, drained: Arc<Notify>) -> BackendState {
        BackendState {
            backend,
            in_flight: AtomicUsize::new(0),
            down_until_ms: AtomicU64::new(0),
            born: Instant::now(),
            idle: Mutex::new(Vec::new()),
            drained,
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn is_up(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until == 0 || self.millis_since_born() >= until
    }

    pub(crate) fn mark_down(&self, period: Duration) {
        let until = self.millis_since_born() + period.as_millis() as u64;
        // `max(1)`: 0 means "never marked".
        self.down_until_ms.store(until.max(1), Ordering::Relaxed);
    }

    fn millis_since_born(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// The most recently used idle connection that is still open and younger than `max_age`.
    /// Older or closed ones found on the way are dropped (which closes them).
    pub(crate) fn take_idle(&self, max_age: Duration) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < max_age && !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Keeps `sender` for reuse unless it is closed or `max` connections are already kept.
    pub(crate) fn put_idle(&self, sender: Sender, max: usize) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < max {
            idle.push(IdleConn {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// Counts one request as in flight on a backend for as long as it lives.
pub(crate) struct InFlightGuard {
    state: Arc<BackendState>,
}

impl InFlightGuard {
    pub(crate) fn new(state: Arc<BackendState>) -> InFlightGuard {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightGuard { state }
    }

    pub(crate) fn backend(&self) -> &Arc<BackendState> {
        &self.state
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.drained.notify_waiters();
        }
    }
}
