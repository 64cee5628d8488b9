//! The line of requests waiting for a place on an instance when every usable one is full:
//! oldest first. A request that ends hands its place straight to the oldest waiter that may
//! use it, so a newcomer never takes a place from someone who waited longer, and nobody is
//! woken for nothing (waking every waiter for each freed place costs CPU per request and lets
//! the unlucky ones wait many turns: the p99 of a bounded instance).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::oneshot;

use crate::backend::{BackendState, InFlightGuard};

/// What a waiter gets.
pub(crate) enum Grant {
    /// A place on an instance, already counted as in flight.
    Place(InFlightGuard),
    /// Look again yourself: a place may have freed that could not be handed over (the set
    /// changed, an instance recovered, or the place was on an instance this line may not use).
    Rescan,
}

struct Waiter {
    tx: oneshot::Sender<Grant>,
    /// Instances this request may not use (they refused it); empty on the common path.
    exclude: Vec<Weak<BackendState>>,
}

impl Waiter {
    fn excludes(&self, state: &Arc<BackendState>) -> bool {
        self.exclude
            .iter()
            .any(|weak| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(state)))
    }
}

/// The waiting requests of one front.
#[derive(Default)]
pub(crate) struct Line {
    queue: Mutex<VecDeque<Waiter>>,
    /// Requests between [`Line::enter`] and the end of their wait (entries in `queue` may be
    /// stale: a request that gave up leaves its entry behind until someone passes it).
    live: AtomicUsize,
}

/// Holds a request's place among the [`Line::live`] ones until dropped.
pub(crate) struct InLine<'a>(&'a Line);

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The outcome of [`Line::join`].
pub(crate) enum Joined<T> {
    /// The scan decided (a place, or a reason there is none to wait for).
    Now(T),
    /// In line: the grant arrives here.
    Waiting(oneshot::Receiver<Grant>),
}

impl Line {
    /// Nobody waits: a new request may take a free place without queueing. Read by every
    /// request, and by every release after its count dropped (see [`Line::enter`]).
    pub(crate) fn is_empty(&self) -> bool {
        fence(Ordering::SeqCst);
        self.live.load(Ordering::SeqCst) == 0
    }

    /// Counts a request as waiting, before it scans for a place: a release that comes after
    /// the scan then sees it ([`Line::is_empty`] after the release's count dropped: the two
    /// fences order the count and the scan either way).
    pub(crate) fn enter(&self) -> InLine<'_> {
        self.live.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        InLine(self)
    }

    /// Joins the line, at its head after a [`Grant::Rescan`] (the waiter had reached the head).
    /// Only a request with nobody ahead of it scans for a free place (`scan`: `None` when
    /// every usable instance is full), under the line's lock, so that a place freed meanwhile
    /// is handed to it or to someone ahead.
    pub(crate) fn join<T>(
        &self,
        exclude: &[Arc<BackendState>],
        at_head: bool,
        scan: impl FnOnce() -> Option<T>,
    ) -> Joined<T> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        while queue.front().is_some_and(|waiter| waiter.tx.is_closed()) {
            queue.pop_front();
        }
        if (at_head || queue.is_empty())
            && let Some(decided) = scan()
        {
            return Joined::Now(decided);
        }
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            tx,
            exclude: exclude.iter().map(Arc::downgrade).collect(),
        };
        if at_head {
            queue.push_front(waiter);
        } else {
            queue.push_back(waiter);
        }
        Joined::Waiting(rx)
    }

    /// Gives the place `place` makes (a guard on `state`, counted already) to the oldest waiter
    /// that may use `state`. `false` if nobody took it.
    pub(crate) fn hand_over(
        &self,
        state: &Arc<BackendState>,
        mut place: impl FnMut() -> InFlightGuard,
    ) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mut i = 0;
        while i < queue.len() {
            if queue[i].tx.is_closed() {
                queue.remove(i);
                continue;
            }
            if queue[i].excludes(state) {
                i += 1;
                continue;
            }
            let Some(waiter) = queue.remove(i) else {
                break;
            };
            match waiter.tx.send(Grant::Place(place())) {
                Ok(()) => return true,
                // It gave up just now: the place was never its.
                Err(Grant::Place(unused)) => unused.disarm(),
                Err(Grant::Rescan) => {}
            }
        }
        false
    }

    /// Tells the oldest live waiter to look for a place itself.
    pub(crate) fn rescan_head(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(waiter) = queue.pop_front() {
            if waiter.tx.send(Grant::Rescan).is_ok() {
                return;
            }
        }
    }

    /// Tells every waiter to look again (the set changed, an instance is usable again).
    pub(crate) fn rescan_all(&self) {
        let waiters =
            std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
        for waiter in waiters {
            let _ = waiter.tx.send(Grant::Rescan);
        }
    }
}
