//! The memory ceiling of an app with `PIKU_MEMORY_MAX` (uWSGI's `reload-on-rss`, done by
//! the platform): once a second the actor measures each long-running instance (its
//! cgroup's working set, else the PSS of its process group), and one whose memory has
//! crossed the soft mark, [`SOFT_MARK_PERCENT`] of the limit, is restarted gracefully
//! before the kernel's OOM killer ends it at the limit itself:
//!
//! - a web instance behind the app's front is *replaced* through the zero-downtime switch
//!   (`switch.rs`): a new one starts beside it, takes the traffic once ready, and the old
//!   one is drained, then stopped; no request is lost. This waits its turn behind the app's
//!   other changes (`Command::Recycle`).
//! - any other instance (a worker, a web instance without a front) is restarted in place:
//!   SIGTERM, its grace period, a new process at once.
//!
//! Either way `ps` shows `memory-soft-limit restart` as its last exit. A process is
//! recycled once: if its replacement never becomes ready it keeps serving, and the kernel's
//! limit remains. Cron runs are never recycled (the hard limit applies to them). The check
//! also notes in an instance's log when the OOM killer ended one of its processes that is not
//! its main one (a gunicorn worker: the master lives on and replaces it).

use std::time::Duration;

use piku_model::InstanceId;
use piku_model::limits::{MEMORY_MAX, Size};
use tokio::time::Instant;

use super::App;
use super::actor::{Actor, AfterSwitch};
use super::command::{Command, Progress};
use super::switch::{Renew, Switch};
use crate::exit::MEMORY_SOFT_LIMIT;

/// The soft mark, in percent of `PIKU_MEMORY_MAX`.
pub const SOFT_MARK_PERCENT: u64 = 90;
/// How often instances are measured (only in apps with a memory limit).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What a check found about one instance.
enum Finding {
    /// Over the soft mark: replace it through the switch.
    Replace {
        id: InstanceId,
        pid: u32,
        note: String,
    },
    /// Over the soft mark: restart it in place.
    RestartInPlace { id: InstanceId, note: String },
}

impl App {
    /// The soft mark and the limit, in bytes, when the app has a memory limit.
    fn soft_mark(&self) -> Option<(u64, u64)> {
        let max = self.spec.settings.limits.memory_max_bytes?;
        Some((max / 100 * SOFT_MARK_PERCENT, max))
    }

    /// Whether the actor must check the ceiling.
    pub(super) fn has_ceiling(&self) -> bool {
        !self.stopped && self.soft_mark().is_some()
    }

    /// Measures every long-running instance; returns those over the soft mark (each
    /// process once), and notes OOM kills of processes other than an instance's main one.
    fn check_ceiling(&mut self) -> Vec<Finding> {
        let Some((soft, max)) = self.soft_mark() else {
            return Vec::new();
        };
        let behind_front = self.has_front();
        let mut found = Vec::new();
        for (id, handle) in &self.instances {
            let Some(pid) = handle.watch().borrow().pid else {
                continue;
            };
            if let Some(kills) = handle.oom_kills() {
                let seen = self.oom_kills_seen.insert(id.clone(), (pid, kills));
                if let Some((seen_pid, before)) = seen
                    && seen_pid == pid
                    && kills > before
                {
                    handle.sink.note(&format!(
                        "the kernel's OOM killer ended {} of this instance's processes at \
                         {MEMORY_MAX}={}; its main process (pid {pid}) lives on",
                        kills - before,
                        Size(max)
                    ));
                }
            }
            if handle.config.schedule.is_some() || self.recycled.get(id) == Some(&pid) {
                continue;
            }
            let Some(used) = handle.memory_bytes() else {
                continue;
            };
            if used < soft {
                continue;
            }
            self.recycled.insert(id.clone(), pid);
            let note = format!(
                "memory {} crossed the soft mark {} ({SOFT_MARK_PERCENT} % of {MEMORY_MAX}={}): \
                 restarting gracefully",
                Size(used),
                Size(soft),
                Size(max)
            );
            found.push(if behind_front && handle.config.launch.port.is_some() {
                Finding::Replace {
                    id: id.clone(),
                    pid,
                    note,
                }
            } else {
                Finding::RestartInPlace {
                    id: id.clone(),
                    note,
                }
            });
        }
        found
    }
}

impl Actor {
    /// When the ceiling is next checked (`None`: the app has none, or is stopped).
    pub(super) fn next_ceiling_check(&mut self) -> Option<Instant> {
        if self.app.as_ref().is_some_and(App::has_ceiling) {
            Some(
                *self
                    .ceiling_at
                    .get_or_insert_with(|| Instant::now() + CHECK_EVERY),
            )
        } else {
            self.ceiling_at = None;
            None
        }
    }

    /// The ceiling check: in-place restarts now, replacements behind the app's other work.
    pub(super) fn check_ceiling(&mut self) {
        self.ceiling_at = None;
        let Some(app) = self.app.as_mut() else {
            return;
        };
        let mut replace = Vec::new();
        for finding in app.check_ceiling() {
            match finding {
                Finding::RestartInPlace { id, note } => {
                    if let Some(handle) = app.instances.get(&id) {
                        handle.recycle(MEMORY_SOFT_LIMIT, note);
                    }
                }
                Finding::Replace { id, pid, note } => {
                    if let Some(handle) = app.instances.get(&id) {
                        handle
                            .sink
                            .note(&format!("{note}: a new instance takes over first"));
                    }
                    replace.push(Command::Recycle {
                        id,
                        pid,
                        reason: MEMORY_SOFT_LIMIT,
                    });
                }
            }
        }
        for command in replace {
            self.post(command);
        }
    }

    /// `Recycle`: replaces web instance `id` through the switch, if it still runs process
    /// `pid` (a deploy may have replaced it meanwhile); `reason` is its last exit in `ps`.
    pub(super) fn recycle(&mut self, id: InstanceId, pid: u32, reason: &'static str) {
        let Some(app) = self.app.as_mut() else {
            return;
        };
        let Some(handle) = app.instances.get(&id) else {
            return;
        };
        let (restarts, sink) = {
            let state = handle.watch();
            let state = state.borrow();
            if state.pid != Some(pid) || app.stopped || !app.has_front() {
                return;
            }
            (state.restarts, handle.sink.clone())
        };
        let spec = app.spec.clone();
        match Switch::begin(app, &spec, &Renew::Instance(id.clone()), &self.ctx) {
            Ok(Some(switch)) => self.await_switch(
                switch,
                Progress::default(),
                AfterSwitch::Recycle {
                    id,
                    restarts,
                    sink,
                    reason,
                },
            ),
            Ok(None) => {}
            Err(e) => sink.note(&format!(
                "no replacement started: {}; this instance keeps serving",
                crate::report::chain(&e)
            )),
        }
    }
}
