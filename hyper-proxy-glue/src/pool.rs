//! The set of backends a front spreads requests over: atomic replacement of the set, choice of
//! a backend per request (least in flight, round-robin among equals, refusing and wedged ones
//! avoided, full ones skipped or waited for), and the in-flight bookkeeping that tells the
//! supervisor when an old instance is drained.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use crate::backend::{Backend, BackendEvent, BackendState, BackendStats, InFlightGuard, Signals};
use crate::line::{Grant, Joined, Line};

/// Why no backend was chosen for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoPick {
    /// The set is empty.
    Empty,
    /// Every backend was tried for this request and refused.
    Unreachable,
    /// Every usable backend stayed full until the deadline.
    Busy,
}

pub(crate) struct Pool {
    current: RwLock<Arc<[Arc<BackendState>]>>,
    /// Every backend state that may still be referenced (current, or serving old requests), by
    /// id, so `in_flight` can see backends already removed from the set.
    known: Mutex<HashMap<String, Vec<Weak<BackendState>>>>,
    /// Rotates the starting point of the scan so equal backends take turns.
    next: AtomicUsize,
    signals: Arc<Signals>,
    max_in_flight: usize,
    wedged_retry: Duration,
    stall: StallRule,
    events: broadcast::Sender<BackendEvent>,
}

/// When a backend counts as stalled (`FrontConfig::stall_after`, `stall_in_flight`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StallRule {
    /// `None`: the rule is off.
    pub(crate) after: Option<Duration>,
    pub(crate) in_flight: usize,
}

impl Pool {
    pub(crate) fn new(
        max_in_flight: usize,
        wedged_retry: Duration,
        stall: StallRule,
        events: broadcast::Sender<BackendEvent>,
    ) -> Pool {
        Pool {
            current: RwLock::new(Arc::from(Vec::new())),
            known: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            signals: Arc::new(Signals {
                released: Notify::new(),
                line: Line::default(),
            }),
            max_in_flight,
            wedged_retry,
            stall,
            events,
        }
    }

    /// Tells the supervisor (and the log) about a change of an instance's health.
    pub(crate) fn report(&self, event: Option<BackendEvent>) {
        if let Some(event) = event {
            tracing::warn!(?event, "instance health changed");
            // No subscriber is fine: the state is in `backend_stats` as well.
            let _ = self.events.send(event);
        }
    }

    /// Replaces the set. A backend with the same id and address as before keeps its state
    /// (in-flight count, idle connections, health); others start fresh.
    pub(crate) fn set(&self, backends: Vec<Backend>) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.snapshot();
        let states: Vec<Arc<BackendState>> = backends
            .into_iter()
            .map(
                |backend| match old.iter().find(|state| state.backend == backend) {
                    Some(state) => Arc::clone(state),
                    None => {
                        let state = Arc::new(BackendState::new(
                            backend,
                            self.max_in_flight,
                            Arc::clone(&self.signals),
                        ));
                        known
                            .entry(state.backend.id.clone())
                            .or_default()
                            .push(Arc::downgrade(&state));
                        state
                    }
                },
            )
            .collect();
        for state in old.iter() {
            if !states.iter().any(|kept| Arc::ptr_eq(kept, state)) {
                state.retire();
            }
        }
        // The write lock is what makes the switch exact: `pick` counts a request as in flight
        // under the read lock, so once this returns no request can still start on a backend
        // that is not in the new set.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::from(states);
        drop(old);
        known.retain(|_, states| {
            states.retain(|state| state.strong_count() > 0);
            !states.is_empty()
        });
        // Requests waiting for a free place may find one in the new set.
        self.signals.released.notify_waiters();
        self.signals.line.rescan_all();
    }

    pub(crate) fn snapshot(&self) -> Arc<[Arc<BackendState>]> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn stats(&self) -> Vec<BackendStats> {
        self.snapshot().iter().map(|state| state.stats()).collect()
    }

    /// Chooses a backend for one request, not one of `exclude`, and counts the request on it.
    /// When every usable backend is full, waits for a place until `until`, in line behind the
    /// requests that were waiting before it.
    pub(crate) async fn pick(
        &self,
        exclude: &[Arc<BackendState>],
        until: Instant,
    ) -> Result<InFlightGuard, NoPick> {
        // The common case takes no lock beyond the set's read lock and joins no line.
        if self.signals.line.is_empty() {
            match self.try_pick(exclude) {
                Err(NoPick::Busy) => {}
                decided => return decided,
            }
        }
        self.wait_in_line(exclude, until).await
    }

    async fn wait_in_line(
        &self,
        exclude: &[Arc<BackendState>],
        until: Instant,
    ) -> Result<InFlightGuard, NoPick> {
        let line = &self.signals.line;
        let _in_line = line.enter();
        let mut at_head = false;
        loop {
            let scan = || match self.try_pick(exclude) {
                Err(NoPick::Busy) => None,
                decided => Some(decided),
            };
            let mut grant = match line.join(exclude, at_head, scan) {
                Joined::Now(decided) => return decided,
                Joined::Waiting(grant) => grant,
            };
            loop {
                // Woken at least once per stall period, so that an instance stalling while no
                // new request arrives is still found (by the scan).
                let wake = match self.stall.after {
                    Some(after) => until.min(Instant::now() + after),
                    None => until,
                };
                match tokio::time::timeout_at(wake, &mut grant).await {
                    Ok(Ok(Grant::Place(guard))) => return Ok(guard),
                    // Told to look (or dropped from the line): back at the head if nothing is free.
                    Ok(Ok(Grant::Rescan) | Err(_)) => break,
                    Err(_) if wake == until => {
                        drop(grant);
                        return self.try_pick(exclude);
                    }
                    Err(_) => match self.try_pick(exclude) {
                        Err(NoPick::Busy) => {}
                        decided => return decided,
                    },
                }
            }
            at_head = true;
        }
    }

    /// One scan of the set. Healthy backends come first; refusing or wedged ones are used only
    /// when no healthy one is left at all (a recovered one should not wait out its mark), not
    /// merely when the healthy ones are full.
    fn try_pick(&self, exclude: &[Arc<BackendState>]) -> Result<InFlightGuard, NoPick> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        let count = current.len();
        if count == 0 {
            return Err(NoPick::Empty);
        }
        // A scan can lose its choice to a concurrent request (the place is taken, or the
        // wedged backend's one try is): scan again, a bounded number of times.
        for _ in 0..4 {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let mut best: Option<(&Arc<BackendState>, bool, usize)> = None;
            let mut candidates = false;
            let mut healthy_but_full = false;
            for offset in 0..count {
                let state = &current[(start + offset) % count];
                if exclude.iter().any(|excluded| Arc::ptr_eq(excluded, state)) {
                    continue;
                }
                candidates = true;
                if let Some(after) = self.stall.after {
                    self.report(state.check_stall(after, self.stall.in_flight, self.wedged_retry));
                }
                // A stalled backend would only queue the request behind its stuck ones: it is
                // skipped like a full one, and the request waits here for a place elsewhere.
                if state.is_stalled() {
                    continue;
                }
                let healthy = state.is_healthy();
                if state.is_full() {
                    healthy_but_full |= healthy;
                    continue;
                }
                let load = state.in_flight();
                let better = match best {
                    None => true,
                    Some((_, best_healthy, best_load)) => {
                        (healthy && !best_healthy) || (healthy == best_healthy && load < best_load)
                    }
                };
                if better {
                    best = Some((state, healthy, load));
                }
            }
            let (state, healthy) = match best {
                _ if !candidates => return Err(NoPick::Unreachable),
                None => return Err(NoPick::Busy),
                Some((_, false, _)) if healthy_but_full => return Err(NoPick::Busy),
                Some((state, healthy, _)) => (state, healthy),
            };
            if healthy && !state.claim_retry(self.wedged_retry) {
                continue;
            }
            if let Some(guard) = state.try_acquire() {
                return Ok(guard);
            }
        }
        Err(NoPick::Busy)
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
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before checking, so a count reaching zero in between is not missed.
            let notified = self.signals.released.notified();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn backends(names: &[&str]) -> Vec<Backend> {
        names
            .iter()
            .enumerate()
            .map(|(n, name)| Backend::new(*name, SocketAddr::from(([127, 0, 0, 1], 1 + n as u16))))
            .collect()
    }

    fn test_pool(max_in_flight: usize, retry: Duration) -> Pool {
        let stall = StallRule {
            after: Some(Duration::from_secs(1)),
            in_flight: 8,
        };
        Pool::new(max_in_flight, retry, stall, broadcast::Sender::new(8))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test]
    async fn least_loaded_first_and_equals_take_turns() {
        let pool = test_pool(8, Duration::from_secs(10));
        pool.set(backends(&["a", "b"]));
        let first = pool.pick(&[], far()).await.unwrap();
        let second = pool.pick(&[], far()).await.unwrap();
        assert_ne!(first.backend().backend.id, second.backend().backend.id);
        drop(second);
        // `first`'s backend has one in flight: the other is chosen, whatever the rotation.
        for _ in 0..4 {
            let next = pool.pick(&[], far()).await.unwrap();
            assert_ne!(next.backend().backend.id, first.backend().backend.id);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_set_waits_for_a_place_then_gives_up() {
        let pool = Arc::new(test_pool(1, Duration::from_secs(10)));
        pool.set(backends(&["a"]));
        let held = pool.pick(&[], far()).await.unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        assert_eq!(pool.pick(&[], until).await.err(), Some(NoPick::Busy));
        assert_eq!(Instant::now(), until);

        let waiter = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.pick(&[], far()).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        drop(held);
        assert!(waiter.await.unwrap(), "the freed place goes to the waiter");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_get_places_oldest_first_and_newcomers_queue_behind() {
        let pool = Arc::new(test_pool(1, Duration::from_secs(10)));
        pool.set(backends(&["a"]));
        let held = pool.pick(&[], far()).await.unwrap();
        let (served, mut order) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..3 {
            let (pool, served) = (Arc::clone(&pool), served.clone());
            tokio::spawn(async move {
                let guard = pool.pick(&[], far()).await.unwrap();
                served.send(n).unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(guard);
            });
            // Each is in line before the next comes.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(held);
        // The freed place went to the oldest waiter at once: a newcomer finds none free and
        // would queue behind the others.
        let newcomer = tokio::time::timeout(Duration::ZERO, pool.pick(&[], far())).await;
        assert!(newcomer.is_err(), "a newcomer took the place of a waiter");
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(order.recv().await.unwrap());
        }
        assert_eq!(seen, [0, 1, 2]);
        // Everyone done: the place is free for the next request at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.in_flight("a"), 0);
        assert!(pool.pick(&[], Instant::now()).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gave_up_does_not_keep_the_place_from_the_next() {
        let pool = Arc::new(test_pool(1, Duration::from_secs(10)));
        pool.set(backends(&["a"]));
        let held = pool.pick(&[], far()).await.unwrap();
        let impatient = {
            let pool = Arc::clone(&pool);
            let until = Instant::now() + Duration::from_millis(100);
            tokio::spawn(async move { pool.pick(&[], until).await.err() })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let patient = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.pick(&[], far()).await.is_ok() })
        };
        assert_eq!(impatient.await.unwrap(), Some(NoPick::Busy));
        let released = Instant::now();
        drop(held);
        assert!(patient.await.unwrap());
        assert_eq!(
            Instant::now(),
            released,
            "handed over at once, not at a later scan"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn avoided_backends_serve_only_when_no_healthy_one_exists() {
        let pool = test_pool(1, Duration::from_secs(10));
        pool.set(backends(&["a", "b"]));
        let a = Arc::clone(&pool.snapshot()[0]);
        a.mark_refused(Duration::from_secs(2));
        let on_b = pool.pick(&[], far()).await.unwrap();
        assert_eq!(on_b.backend().backend.id, "b");
        // b is full but healthy: wait for it rather than use the refusing a.
        let until = Instant::now() + Duration::from_millis(500);
        assert_eq!(pool.pick(&[], until).await.err(), Some(NoPick::Busy));
        // Without b at all, a is used despite its mark.
        let b = Arc::clone(on_b.backend());
        assert_eq!(
            pool.pick(&[b], far()).await.unwrap().backend().backend.id,
            "a"
        );
        let both = pool.snapshot().to_vec();
        assert_eq!(
            pool.pick(&both, far()).await.err(),
            Some(NoPick::Unreachable)
        );
        pool.set(Vec::new());
        assert_eq!(pool.pick(&[], far()).await.err(), Some(NoPick::Empty));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wedged_backend_gets_one_try_per_retry_period() {
        let retry = Duration::from_secs(10);
        let pool = test_pool(8, retry);
        pool.set(backends(&["a", "b"]));
        let a = Arc::clone(&pool.snapshot()[0]);
        assert!(a.record_timeout(1, retry).is_some());
        for _ in 0..6 {
            assert_eq!(
                pool.pick(&[], far()).await.unwrap().backend().backend.id,
                "b"
            );
        }
        tokio::time::advance(retry).await;
        let picks: Vec<String> = {
            let mut held = Vec::new();
            for _ in 0..6 {
                held.push(pool.pick(&[], far()).await.unwrap());
            }
            held.iter()
                .map(|g| g.backend().backend.id.clone())
                .collect()
        };
        assert_eq!(picks.iter().filter(|id| *id == "a").count(), 1, "{picks:?}");
    }

    #[tokio::test]
    async fn a_kept_backend_keeps_its_state_across_set() {
        let pool = test_pool(8, Duration::from_secs(10));
        pool.set(backends(&["a"]));
        let guard = pool.pick(&[], far()).await.unwrap();
        pool.set(backends(&["a", "b"]));
        assert_eq!(pool.in_flight("a"), 1);
        pool.set(backends(&["b"]));
        assert_eq!(pool.in_flight("a"), 1, "still counted after removal");
        assert!(!pool.drained(&["a"], Duration::from_millis(10)).await);
        drop(guard);
        assert!(pool.drained(&["a"], Duration::from_secs(1)).await);
    }
}
