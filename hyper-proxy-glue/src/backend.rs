//! One instance as the front sees it: its address, the requests on it right now (bounded), how
//! its recent requests went (refused, answered, timed out — and so whether it is *wedged*),
//! what it reports to the supervisor, and its idle keep-alive connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::line::Line;
use crate::upstream::Sender;

/// An app instance the front may send requests to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Names the instance in [`Front::in_flight`](crate::Front::in_flight),
    /// [`Front::drained`](crate::Front::drained), [`BackendEvent`]s and logs, e.g.
    /// `"web.1@41234"`. Unique within a front.
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

/// What the front tells the supervisor about an instance, on
/// [`Front::events`](crate::Front::events). Each is sent once per change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendEvent {
    /// The instance's last `timeouts` requests all went unanswered past the response timeout
    /// (see [`FrontConfig::wedged_after`](crate::FrontConfig::wedged_after)). The front now
    /// avoids it while another instance can take requests; it stays wedged until it answers
    /// again. The supervisor should recycle it (start a replacement, switch, stop this one):
    /// its stuck requests may hold every worker it has.
    Wedged { id: String, timeouts: u32 },
    /// The instance holds `in_flight` requests and finished none of them for
    /// [`FrontConfig::stall_after`](crate::FrontConfig::stall_after): its workers are all held.
    /// It is wedged from now on (the same [`Recovered`](Self::Recovered) ends it), and gets no
    /// requests meanwhile: a replacement should start at once, without waiting for timeouts.
    Stalled { id: String, in_flight: usize },
    /// A wedged instance answered a request again.
    Recovered { id: String },
}

/// Counters of one instance since it joined the front, from
/// [`Front::backend_stats`](crate::Front::backend_stats).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendStats {
    pub id: String,
    pub addr: SocketAddr,
    /// Requests (and open upgraded connections) on it now.
    pub in_flight: usize,
    /// Response heads it sent.
    pub answered: u64,
    /// Requests answered 504 by the front because it did not answer in time.
    pub timed_out: u64,
    /// Requests whose connection broke after they were sent (answered 502, never replayed):
    /// usually the instance crashed.
    pub failed: u64,
    /// Connection attempts it refused (or that timed out).
    pub refused: u64,
    /// See [`BackendEvent::Wedged`].
    pub wedged: bool,
}

/// An unused keep-alive connection and when it became unused.
struct IdleConn {
    sender: Sender,
    since: Instant,
}

/// What the requests of one instance tell the rest of the front: `released` is notified when
/// an instance's in-flight count drops to zero (drain waiters); a place a request frees goes
/// to the oldest request in `line`, if any waits.
pub(crate) struct Signals {
    pub(crate) released: Notify,
    pub(crate) line: Line,
}

/// The live state of one backend, shared by the current set, in-flight requests and their bodies.
pub(crate) struct BackendState {
    pub(crate) backend: Backend,
    max_in_flight: usize,
    in_flight: AtomicUsize,
    /// Requests on it that have no response head yet (an open tunnel or a streaming body is in
    /// flight, but not waiting: it does not count toward a stall).
    waiting: AtomicUsize,
    born: Instant,
    /// Milliseconds after `born` until which the backend is avoided after a refusal; 0 = never.
    down_until_ms: AtomicU64,
    wedged: AtomicBool,
    /// Stalled (see [`BackendEvent::Stalled`]): no request goes to it until it answers one.
    stalled: AtomicBool,
    /// No longer in the front's set: it finishes what it has and gets nothing new.
    retired: AtomicBool,
    /// Milliseconds after `born` of the last sign of work: a response head, a request done, or
    /// a first request on an idle instance.
    progress_ms: AtomicU64,
    /// While wedged: milliseconds after `born` before which no request is tried on it.
    retry_at_ms: AtomicU64,
    consecutive_timeouts: AtomicU32,
    answered: AtomicU64,
    timed_out: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    idle: Mutex<Vec<IdleConn>>,
    signals: Arc<Signals>,
}

impl BackendState {
    pub(crate) fn new(
        backend: Backend,
        max_in_flight: usize,
        signals: Arc<Signals>,
    ) -> BackendState {
        BackendState {
            backend,
            max_in_flight: max_in_flight.max(1),
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            born: Instant::now(),
            down_until_ms: AtomicU64::new(0),
            wedged: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            progress_ms: AtomicU64::new(0),
            retry_at_ms: AtomicU64::new(0),
            consecutive_timeouts: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            signals,
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.in_flight() >= self.max_in_flight
    }

    /// Neither recently refusing nor wedged and waiting for its next try.
    pub(crate) fn is_healthy(&self) -> bool {
        let now = self.millis_since_born();
        now >= self.down_until_ms.load(Ordering::Relaxed)
            && !(self.wedged.load(Ordering::Relaxed)
                && now < self.retry_at_ms.load(Ordering::Relaxed))
    }

    /// Counts one more request on this backend unless it is full.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<InFlightGuard> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_in_flight).then_some(n + 1)
            })
            .ok()?;
        Some(self.counted_guard())
    }

    /// The guard of a place already counted in `in_flight`.
    fn counted_guard(self: &Arc<Self>) -> InFlightGuard {
        if self.waiting.fetch_add(1, Ordering::AcqRel) == 0 {
            // The first request waiting for an answer: the instance's wait starts now, not
            // at its last answer.
            self.note_progress();
        }
        InFlightGuard {
            state: Arc::clone(self),
            answered: false,
            armed: true,
            ended_at: None,
        }
    }

    /// A place freed here may go straight to a waiting request: the instance is in the set,
    /// usable and preferred (a refusing or wedged one is for a waiter's own scan to choose).
    fn may_hand_over(&self) -> bool {
        !self.retired.load(Ordering::Relaxed) && !self.is_stalled() && self.is_healthy()
    }

    /// A wedged backend chosen for a request: the one try it gets per `retry` period. `false`
    /// if another request took that try first.
    pub(crate) fn claim_retry(&self, retry: Duration) -> bool {
        if !self.wedged.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.millis_since_born();
        let due = self.retry_at_ms.load(Ordering::Relaxed);
        now >= due
            && self
                .retry_at_ms
                .compare_exchange(
                    due,
                    now + millis(retry),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    pub(crate) fn mark_refused(&self, period: Duration) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let until = self.millis_since_born() + millis(period);
        self.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Stalled: no request may go to it until it answers.
    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    fn note_progress(&self) {
        self.note_progress_at(Instant::now());
    }

    /// Progress seen at `now`, a clock read the caller had already made (a request's hot path
    /// reads the clock once where several of its steps need the time).
    fn note_progress_at(&self, now: Instant) {
        self.progress_ms.store(
            millis(now.saturating_duration_since(self.born)),
            Ordering::Relaxed,
        );
    }

    /// Marks the backend stalled if at least `min_in_flight` requests on it (or as many as it
    /// may take) wait for an answer and none made progress for `after`; reports it the first
    /// time.
    pub(crate) fn check_stall(
        &self,
        after: Duration,
        min_in_flight: usize,
        retry: Duration,
    ) -> Option<BackendEvent> {
        let in_flight = self.waiting.load(Ordering::Acquire);
        // The common case reads one counter: far below the mark, nothing else is looked at.
        if in_flight < min_in_flight.min(self.max_in_flight).max(1) || self.is_stalled() {
            return None;
        }
        let now = self.millis_since_born();
        if now < self.progress_ms.load(Ordering::Relaxed) + millis(after) {
            return None;
        }
        if self.stalled.swap(true, Ordering::Relaxed) {
            return None;
        }
        self.retry_at_ms
            .store(now + millis(retry), Ordering::Relaxed);
        self.wedged.store(true, Ordering::Relaxed);
        Some(BackendEvent::Stalled {
            id: self.backend.id.clone(),
            in_flight,
        })
    }

    /// The instance sent a response head (at `now`).
    pub(crate) fn record_answer(&self, now: Instant) -> Option<BackendEvent> {
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.note_progress_at(now);
        if self.stalled.load(Ordering::Relaxed) && self.stalled.swap(false, Ordering::Relaxed) {
            // Requests waiting in the front may go to it again.
            self.signals.line.rescan_all();
        }
        // Plain loads first: on the hot path nothing needs writing.
        if self.consecutive_timeouts.load(Ordering::Relaxed) != 0 {
            self.consecutive_timeouts.store(0, Ordering::Relaxed);
        }
        (self.wedged.load(Ordering::Relaxed) && self.wedged.swap(false, Ordering::Relaxed)).then(
            || BackendEvent::Recovered {
                id: self.backend.id.clone(),
            },
        )
    }

    /// A request on it went unanswered past the response timeout.
    pub(crate) fn record_timeout(
        &self,
        wedged_after: u32,
        retry: Duration,
    ) -> Option<BackendEvent> {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
        let timeouts = self.consecutive_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
        if timeouts < wedged_after.max(1) {
            return None;
        }
        self.retry_at_ms
            .store(self.millis_since_born() + millis(retry), Ordering::Relaxed);
        (!self.wedged.swap(true, Ordering::Relaxed)).then(|| BackendEvent::Wedged {
            id: self.backend.id.clone(),
            timeouts,
        })
    }

    /// A request's connection broke after the request was sent.
    pub(crate) fn record_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> BackendStats {
        BackendStats {
            id: self.backend.id.clone(),
            addr: self.backend.addr,
            in_flight: self.in_flight(),
            answered: self.answered.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            wedged: self.wedged.load(Ordering::Relaxed),
        }
    }

    fn millis_since_born(&self) -> u64 {
        millis(self.born.elapsed())
    }

    /// The most recently used idle connection that is still open and younger than `max_age`
    /// at `now`, set to check with the kernel that it is still open before the request is
    /// written (see [`Sender::probe_before_use`]). Older or closed ones found on the way are
    /// dropped (which closes them).
    pub(crate) fn take_idle(&self, max_age: Duration, now: Instant) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(conn) = idle.pop() {
            if now.saturating_duration_since(conn.since) < max_age && !conn.sender.is_closed() {
                conn.sender.probe_before_use();
                return Some(conn.sender);
            }
        }
        None
    }

    /// Keeps `sender` (idle from `now` on) for reuse unless it is closed, `max` connections
    /// are already kept, or the backend left the set (it never returns to it: a backend listed
    /// again gets a fresh state, so its connections would only sit open).
    pub(crate) fn put_idle(&self, sender: Sender, max: usize, now: Instant) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Read under the lock: a backend retired just now has its idle connections dropped
        // (`retire`) either after this push or before this read.
        if idle.len() < max && !self.retired.load(Ordering::Relaxed) {
            idle.push(IdleConn { sender, since: now });
        }
    }

    /// The backend left the front's set, for good (listed again, it gets a fresh state): its
    /// idle connections are closed at once, and none is kept from now on. The supervisor takes
    /// an instance out when it exited or is being stopped, so none of them would carry a
    /// request again.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(idle);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Counts one request as in flight on a backend for as long as it lives.
pub(crate) struct InFlightGuard {
    state: Arc<BackendState>,
    /// The instance answered this request, so its end is progress (a timed-out one's is not:
    /// its worker is probably still held).
    answered: bool,
    /// `false` once [`disarm`](Self::disarm)ed: dropping it then changes nothing.
    armed: bool,
    /// When the request ended, if the one ending it had read the clock already.
    ended_at: Option<Instant>,
}

impl InFlightGuard {
    pub(crate) fn backend(&self) -> &Arc<BackendState> {
        &self.state
    }

    /// A place handed to a waiter that had just given up: it stays counted, for the one handing
    /// it over to pass on or release.
    pub(crate) fn disarm(mut self) {
        if !self.answered {
            self.state.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        self.armed = false;
    }

    /// Releases the place, the request having ended at `now`.
    pub(crate) fn end_at(mut self, now: Instant) {
        self.ended_at = Some(now);
    }

    /// The instance sent this request's response head.
    pub(crate) fn answered(&mut self) {
        if !self.answered {
            self.answered = true;
            self.state.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let state = &self.state;
        if self.answered {
            state.note_progress_at(self.ended_at.unwrap_or_else(Instant::now));
        } else {
            state.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        let line = &state.signals.line;
        // The place goes to the oldest waiter as it is, still counted: nobody can take it in
        // between.
        if !line.is_empty()
            && state.may_hand_over()
            && line.hand_over(state, || state.counted_guard())
        {
            return;
        }
        let before = state.in_flight.fetch_sub(1, Ordering::AcqRel);
        if before == 1 {
            // Holding nothing, it is merely wedged again: tried once per retry period, so an
            // instance that was never replaced is not shut out for good.
            state.stalled.store(false, Ordering::Relaxed);
            state.signals.released.notify_waiters();
        }
        // Someone may have joined the line after the check above, or the place could not be
        // handed over: the head looks for it itself.
        if !line.is_empty() {
            line.rescan_head();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(max_in_flight: usize) -> Arc<BackendState> {
        Arc::new(BackendState::new(
            Backend::new("web.1", SocketAddr::from(([127, 0, 0, 1], 1))),
            max_in_flight,
            Arc::new(Signals {
                released: Notify::new(),
                line: Line::default(),
            }),
        ))
    }

    #[test]
    fn in_flight_is_capped_and_released() {
        let backend = state(2);
        let first = backend.try_acquire().unwrap();
        let second = backend.try_acquire().unwrap();
        assert!(backend.is_full());
        assert!(backend.try_acquire().is_none());
        drop(first);
        assert_eq!(backend.in_flight(), 1);
        assert!(backend.try_acquire().is_some());
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_timeouts_wedge_once_and_an_answer_recovers() {
        let backend = state(8);
        let retry = Duration::from_secs(10);
        assert_eq!(backend.record_timeout(3, retry), None);
        // An answer in between resets the run.
        assert_eq!(backend.record_answer(Instant::now()), None);
        assert_eq!(backend.record_timeout(3, retry), None);
        assert_eq!(backend.record_timeout(3, retry), None);
        assert_eq!(
            backend.record_timeout(3, retry),
            Some(BackendEvent::Wedged {
                id: "web.1".into(),
                timeouts: 3
            })
        );
        assert!(!backend.is_healthy());
        assert_eq!(backend.record_timeout(3, retry), None, "reported once");
        assert!(backend.stats().wedged);

        tokio::time::advance(retry).await;
        assert!(backend.is_healthy(), "due for one try");
        assert!(backend.claim_retry(retry));
        assert!(!backend.claim_retry(retry), "one try per period");
        assert!(!backend.is_healthy());
        assert_eq!(
            backend.record_answer(Instant::now()),
            Some(BackendEvent::Recovered { id: "web.1".into() })
        );
        assert!(backend.is_healthy());
        let stats = backend.stats();
        assert_eq!(
            (stats.answered, stats.timed_out, stats.wedged),
            (2, 5, false)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_requests_without_progress_stall_it_until_it_answers() {
        let backend = state(4);
        let (after, retry) = (Duration::from_secs(1), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(60)).await;
        // Idle a minute, then busy: its wait starts with its first request.
        let held: Vec<_> = (0..3).map(|_| backend.try_acquire().unwrap()).collect();
        assert_eq!(backend.check_stall(after, 3, retry), None);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(backend.check_stall(after, 3, retry), None);
        assert_eq!(backend.check_stall(after, 4, retry), None, "below the mark");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            backend.check_stall(after, 3, retry),
            Some(BackendEvent::Stalled {
                id: "web.1".into(),
                in_flight: 3
            })
        );
        assert!(backend.is_stalled() && backend.stats().wedged);
        assert_eq!(backend.check_stall(after, 3, retry), None, "reported once");
        assert_eq!(
            backend.record_answer(Instant::now()),
            Some(BackendEvent::Recovered { id: "web.1".into() })
        );
        assert!(!backend.is_stalled() && backend.is_healthy());

        // Full counts whatever the mark; an answered request done is progress.
        let mut fourth = backend.try_acquire().unwrap();
        tokio::time::advance(after).await;
        fourth.answered();
        drop(fourth);
        let fourth = backend.try_acquire().unwrap();
        assert_eq!(
            backend.check_stall(after, 8, retry),
            None,
            "an answered request done"
        );
        drop(fourth);
        // A request that timed out is no progress.
        let timed_out = backend.try_acquire().unwrap();
        tokio::time::advance(after).await;
        drop(timed_out);
        let fourth = backend.try_acquire().unwrap();
        assert!(backend.check_stall(after, 8, retry).is_some(), "full");
        // Holding nothing any more, it is merely wedged: tried again after the retry period.
        drop(fourth);
        drop(held);
        assert!(!backend.is_stalled() && backend.stats().wedged);

        // Open tunnels and streaming bodies (answered, still in flight) wait for nothing.
        let backend = state(4);
        let tunnels: Vec<_> = (0..4)
            .map(|_| {
                let mut guard = backend.try_acquire().unwrap();
                guard.answered();
                guard
            })
            .collect();
        tokio::time::advance(after * 10).await;
        assert!(backend.is_full());
        assert_eq!(backend.check_stall(after, 1, retry), None);
        drop(tunnels);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_avoids_the_backend_for_the_period() {
        let backend = state(8);
        backend.mark_refused(Duration::from_secs(2));
        assert!(!backend.is_healthy());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(backend.is_healthy());
        assert_eq!(backend.stats().refused, 1);
    }
}
