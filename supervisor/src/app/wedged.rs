//! Wedged web instances (uWSGI's harakiri, done by the platform): the app's front reports an
//! instance whose last requests all went unanswered past the response timeout
//! (`BackendEvent::Wedged`), or one that holds many requests and finished none for a moment
//! (`BackendEvent::Stalled`: every worker held, long before any request times out), and routes
//! around it meanwhile. The actor gives a wedged instance one more response timeout to answer
//! something while other instances serve; a stalled one, or the app's only serving one, gets
//! no wait, since meanwhile the app answers nothing. One still wedged then is recycled like an instance
//! over its memory soft mark (`ceiling.rs`): a new one starts beside it through the
//! zero-downtime switch, takes the traffic once ready, and the wedged one is drained (its
//! stuck requests get the front's 504) and stopped. `ps` shows `wedged restart` as the new
//! one's last exit.
//!
//! The actor listens to the events of the front it has now: a front replaced (new listeners
//! or timeouts) is followed at the next turn of its loop.

use std::time::Duration;

use hyper_proxy_glue::BackendEvent;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::actor::Actor;
use super::command::Command;
use crate::exit::WEDGED_RESTART;

/// A stalled instance younger than this is replaced only once it is this old.
const STALLED_MIN_UPTIME: Duration = Duration::from_secs(5);

/// The front whose events the actor follows, and the wedged instances it gives a last chance.
#[derive(Default)]
pub(super) struct WedgedWatch {
    /// The front's serial and its events (`None`: the app has no open front).
    events: Option<(u64, broadcast::Receiver<BackendEvent>)>,
    /// Backend ids (`web.1@41002`) reported wedged, when to look at them again, and why.
    due: Vec<(Instant, String, Why)>,
}

/// Why an instance is due for a look.
#[derive(Clone, Copy)]
enum Why {
    /// Its last requests timed out.
    TimedOut,
    /// It held this many requests and finished none for the front's stall period.
    Stalled(usize),
}

/// What the actor's loop got from the front.
pub(super) enum FrontNews {
    Event(BackendEvent),
    /// Events were missed: every instance's state is read from the front instead.
    Missed,
    /// The front is gone (closed); the next turn follows its successor, if any.
    Closed,
}

impl Actor {
    /// Subscribes to the events of the app's front if it changed since the last turn.
    pub(super) fn follow_front(&mut self) {
        let current = self
            .app
            .as_ref()
            .and_then(|app| app.front.as_ref())
            .map(|front| (front.serial(), front));
        let followed = self.wedged.events.as_ref().map(|(serial, _)| *serial);
        match current {
            Some((serial, front)) if followed != Some(serial) => {
                self.wedged.events = Some((serial, front.front().events()));
                self.wedged.due.clear();
            }
            Some(_) => {}
            None => {
                self.wedged.events = None;
                self.wedged.due.clear();
            }
        }
    }

    /// When the next wedged instance is due for its second look.
    pub(super) fn next_wedged_check(&self) -> Option<Instant> {
        self.wedged.due.iter().map(|(at, _, _)| *at).min()
    }

    /// A front event: a wedged instance gets one response timeout to answer again, unless no
    /// other instance can serve meanwhile (it is the only one, or every one is wedged) or it
    /// stalled (every worker held): then its replacement starts at once, since each moment
    /// waiting is a moment the app answers nothing.
    pub(super) fn front_news(&mut self, news: FrontNews) {
        let wait = self.response_timeout();
        match news {
            FrontNews::Event(BackendEvent::Wedged { id, timeouts }) => {
                let wait = if self.no_other_serves(&id) {
                    Duration::ZERO
                } else {
                    wait
                };
                tracing::warn!(
                    app = %self.name,
                    backend = %id,
                    timeouts,
                    "instance wedged: recycled unless it answers within {wait:?}"
                );
                self.due_at(Instant::now() + wait, id, Why::TimedOut);
            }
            FrontNews::Event(BackendEvent::Stalled { id, in_flight }) => {
                tracing::warn!(
                    app = %self.name,
                    backend = %id,
                    in_flight,
                    "instance stalled: recycled now"
                );
                self.due_at(Instant::now(), id, Why::Stalled(in_flight));
            }
            FrontNews::Event(BackendEvent::Recovered { id }) => {
                self.wedged.due.retain(|(_, due, _)| *due != id);
            }
            FrontNews::Missed => {
                let stats = self
                    .app
                    .as_ref()
                    .and_then(|app| app.front.as_ref())
                    .map(|front| front.front().backend_stats())
                    .unwrap_or_default();
                self.wedged.due.clear();
                let at = Instant::now() + wait;
                self.wedged.due.extend(
                    stats
                        .into_iter()
                        .filter(|s| s.wedged)
                        .map(|stats| (at, stats.id, Why::TimedOut)),
                );
            }
            FrontNews::Closed => self.wedged.events = None,
        }
    }

    /// Looks at `id` again at `at` (the earlier of two looks, if it is already due).
    fn due_at(&mut self, at: Instant, id: String, why: Why) {
        let earlier = self
            .wedged
            .due
            .iter()
            .filter(|(_, due, _)| *due == id)
            .map(|(at, _, _)| *at)
            .min();
        if earlier.is_some_and(|earlier| earlier <= at) {
            return;
        }
        self.wedged.due.retain(|(_, due, _)| *due != id);
        self.wedged.due.push((at, id, why));
    }

    /// Whether every backend of the front other than `id` is wedged too (or there is none).
    fn no_other_serves(&self, id: &str) -> bool {
        self.app
            .as_ref()
            .and_then(|app| app.front.as_ref())
            .is_some_and(|front| {
                front
                    .front()
                    .backend_stats()
                    .iter()
                    .all(|stats| stats.id == id || stats.wedged)
            })
    }

    /// The second look: instances still wedged are recycled, in turn behind the app's other
    /// changes.
    pub(super) fn check_wedged(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wedged.due)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.wedged.due = later;
        let Some(app) = self.app.as_ref() else {
            return;
        };
        let Some(front) = app.front.as_ref() else {
            return;
        };
        let stats = front.front().backend_stats();
        let mut recycle = Vec::new();
        let mut deferred = Vec::new();
        for (_, backend, why) in due {
            let Some(stats) = stats.iter().find(|s| s.id == backend && s.wedged) else {
                continue;
            };
            let Some((id, handle)) = app.instances.iter().find(|(id, h)| {
                h.config
                    .launch
                    .port
                    .is_some_and(|port| crate::front::backend_id(id, port) == backend)
            }) else {
                continue;
            };
            let (pid, started) = {
                let state = handle.watch();
                let state = state.borrow();
                (state.pid, state.started)
            };
            let Some(pid) = pid else {
                continue;
            };
            // An app whose every request is slow would stall each replacement in turn: one
            // stalled early in its life waits until it has served a while, so replacements
            // (each old one draining meanwhile) never pile up.
            if let (Why::Stalled(_), Some(started)) = (why, started) {
                let settled = Instant::from_std(started) + STALLED_MIN_UPTIME;
                if settled > now {
                    deferred.push((settled, backend, why));
                    continue;
                }
            }
            let what = match why {
                Why::TimedOut => format!(
                    "its last {} requests got no answer within the response timeout, and none \
                     since",
                    front.front().config().wedged_after
                ),
                Why::Stalled(held) => format!(
                    "it held {held} requests and finished none for {:?}",
                    front.front().config().stall_after.unwrap_or_default()
                ),
            };
            handle.sink.note(&format!(
                "wedged: {what} ({} in flight, {} timed out in all): a new instance takes over \
                 first",
                stats.in_flight, stats.timed_out,
            ));
            recycle.push(Command::Recycle {
                id: id.clone(),
                pid,
                reason: WEDGED_RESTART,
            });
        }
        self.wedged.due.extend(deferred);
        for command in recycle {
            self.post(command);
        }
    }

    fn response_timeout(&self) -> Duration {
        self.app
            .as_ref()
            .and_then(|app| app.front.as_ref())
            .map_or(Duration::from_secs(30), |front| {
                front.front().config().response_timeout
            })
    }
}

/// The next event of the front the actor follows (never, without one).
pub(super) async fn front_news(watch: &mut WedgedWatch) -> FrontNews {
    let Some((_, events)) = watch.events.as_mut() else {
        return std::future::pending().await;
    };
    match events.recv().await {
        Ok(event) => FrontNews::Event(event),
        Err(RecvError::Lagged(_)) => FrontNews::Missed,
        Err(RecvError::Closed) => FrontNews::Closed,
    }
}
