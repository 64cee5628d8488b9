//! The set of backends a front spreads requests over: atomic replacement of the set, choice of
//! a backend per request (least in flight, round-robin among equals, refusing ones avoided),
//! and the in-flight bookkeeping that tells the supervisor when an old instance is drained.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::backend::{Backend, BackendState, InFlightGuard};

pub(crate) struct Pool {
    current: RwLock<Arc<[Arc<BackendState>]>>,
    /// Every backend state that may still be referenced (current, or serving old requests), by
    /// id, so `in_flight` can see backends already removed from the set.
    known: Mutex<HashMap<String, Vec<Weak<BackendState>>>>,
    /// Rotates the starting point of the scan so equal backends take turns.
    next: AtomicUsize,
    drained: Arc<Notify>,
}

impl Pool {
    pub(crate) fn new() -> Pool {
        Pool {
            current: RwLock::new(Arc::from(Vec::new())),
            known: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            drained: Arc::new(Notify::new()),
        }
    }

    /// Replaces the set. A backend with the same id and address as before keeps its state
    /// (in-flight count, idle connections, down mark); others start fresh.
    pub(crate) fn set(&self, backends: Vec<Backend>) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.snapshot();
        let states: Vec<Arc<BackendState>> = backends
            .into_iter()
            .map(
                |backend| match old.iter().find(|state| state.backend == backend) {
                    Some(state) => Arc::clone(state),
                    None => {
                        let state = Arc::new(BackendState::new(backend, Arc::clone(&self.drained)));
                        known
                            .entry(state.backend.id.clone())
                            .or_default()
                            .push(Arc::downgrade(&state));
                        state
                    }
                },
            )
            .collect();
        // The write lock is what makes the switch exact: `pick` counts a request as in flight
        // under the read lock, so once this returns no request can still start on a backend
        // that is not in the new set.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::from(states);
        drop(old);
        known.retain(|_, states| {
            states.retain(|state| state.strong_count() > 0);
            !states.is_empty()
        });
    }

    pub(crate) fn snapshot(&self) -> Arc<[Arc<BackendState>]> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Chooses a backend for one request and counts the request on it. Backends marked down are
    /// used only when no other is left (a recovered one should not wait out its mark).
    pub(crate) fn pick(&self, exclude: &[Arc<BackendState>]) -> Option<InFlightGuard> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        let count = current.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(&Arc<BackendState>, bool, usize)> = None;
        for offset in 0..count {
            let state = &current[(start + offset) % count];
            if exclude.iter().any(|excluded| Arc::ptr_eq(excluded, state)) {
                continue;
            }
            let (up, load) = (state.is_up(), state.in_flight());
            let better = match best {
                None => true,
                Some((_, best_up, best_load)) => {
                    (up && !best_up) || (up == best_up && load < best_load)
                }
            };
            if better {
                best = Some((state, up, load));
            }
        }
        best.map(|(state, _, _)| InFlightGuard::new(Arc::clone(state)))
    }

    pub(crate) fn in_flight(&self, id: &str) -> usize {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known
            .get(id)
            .map(|states| {
                states
                    .iter()
                    .filter_map(Weak::upgrade)
                    .map(|state| state.in_flight())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Waits until none of `ids` has a request in flight, for at most `timeout`.
    pub(crate) async fn drained<S: AsRef<str>>(&self, ids: &[S], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before checking, so a count reaching zero in between is not missed.
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ids.iter().all(|id| self.in_flight(id.as_ref()) == 0) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return ids.iter().all(|id| self.in_flight(id.as_ref()) == 0);
            }
        }
    }
}
