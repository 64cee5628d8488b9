//! The state table of an instance: [`step`] and the three transitions several of its arms
//! share (an exit, the start of a stop, the end of one).

use tokio::time::Instant;

use super::{
    AFTER_KILL, Action, CRON_CLEAR_GRACE, Duty, Event, Machine, PROBE_EVERY, PROBE_FIRST,
    PROBE_SLOW_AFTER, PROBE_SLOW_EVERY, Probe, State, Then,
};
use crate::backoff::had_started;
use crate::exit;

/// The state table: the next machine and what to do, for `event` at `now`.
pub fn step(machine: Machine, event: Event, now: Instant) -> (Machine, Vec<Action>) {
    let mut m = machine;
    let state = std::mem::replace(&mut m.state, State::Stopped);
    let mut actions = Vec::new();
    m.state = match (state, event) {
        // --- starting up ---
        (State::Idle, Event::Start) => match m.duty {
            Duty::Cron => State::Waiting,
            Duty::Service | Duty::Web => {
                actions.push(Action::Spawn);
                State::Spawning
            }
        },
        // A restart before the first start: the first start is fresh anyway.
        (State::Idle, Event::Restart) => State::Idle,
        // Never started: nothing to stop.
        (State::Idle, Event::Stop) => State::Stopped,
        // No process, no timer, no schedule yet: nothing else can concern it.
        (
            State::Idle,
            Event::Spawned { .. }
            | Event::SpawnFailed(_)
            | Event::Exited(_)
            | Event::Deadline
            | Event::Probed(_)
            | Event::GroupGone
            | Event::Due
            | Event::Recycle { .. },
        ) => State::Idle,

        (State::Spawning, Event::Spawned { pid }) => match m.duty {
            Duty::Web => {
                actions.push(Action::Note(format!("started pid {pid}")));
                State::Starting {
                    pid,
                    since: now,
                    probe: Probe::Due {
                        at: now + PROBE_FIRST,
                        every: PROBE_FIRST,
                    },
                }
            }
            Duty::Service => {
                actions.push(Action::Note(format!("started pid {pid}")));
                State::Running { pid, since: now }
            }
            Duty::Cron => {
                actions.push(Action::Note(format!("run started, pid {pid}")));
                State::Running { pid, since: now }
            }
        },
        (State::Spawning, Event::SpawnFailed(why)) => {
            m.exits += 1;
            m.last_exit = Some(why.clone());
            match m.duty {
                Duty::Cron => {
                    actions.push(Action::Note(why));
                    State::Waiting
                }
                // A failure while starting.
                Duty::Service | Duty::Web => after_exit(&mut m, &why, false, now, &mut actions),
            }
        }
        // The shell feeds the spawn's result before any other event: these never reach
        // `Spawning`, and would change nothing if they did.
        (
            State::Spawning,
            Event::Start
            | Event::Exited(_)
            | Event::Deadline
            | Event::Probed(_)
            | Event::GroupGone
            | Event::Due
            | Event::Restart
            | Event::Stop
            | Event::Recycle { .. },
        ) => State::Spawning,

        // --- readiness (web) ---
        (
            State::Starting {
                pid,
                since,
                probe: Probe::Due { every, .. },
            },
            Event::Deadline,
        ) => {
            actions.push(Action::Probe);
            State::Starting {
                pid,
                since,
                probe: Probe::InFlight { every },
            }
        }
        (
            State::Starting {
                pid,
                since,
                probe: Probe::InFlight { .. },
            },
            Event::Probed(Ok(what)),
        ) => {
            m.last_probe = None;
            actions.push(Action::Note(what));
            State::Running { pid, since }
        }
        (
            State::Starting {
                pid,
                since,
                probe: Probe::InFlight { every },
            },
            Event::Probed(Err(seen)),
        ) => {
            m.last_probe = Some(seen);
            let every = if now.saturating_duration_since(since) >= PROBE_SLOW_AFTER {
                PROBE_SLOW_EVERY
            } else {
                (every * 2).min(PROBE_EVERY)
            };
            State::Starting {
                pid,
                since,
                probe: Probe::Due {
                    at: now + every,
                    every,
                },
            }
        }
        // No probe is running (its result would be stale), or the probe has no deadline.
        (
            State::Starting {
                pid,
                since,
                probe: probe @ Probe::Due { .. },
            },
            Event::Probed(_),
        )
        | (
            State::Starting {
                pid,
                since,
                probe: probe @ Probe::InFlight { .. },
            },
            Event::Deadline,
        ) => State::Starting { pid, since, probe },

        // --- running ---
        (State::Starting { pid, since, .. }, Event::Exited(what)) => {
            exited(&mut m, pid, since, false, what, now, &mut actions)
        }
        (State::Running { pid, since }, Event::Exited(what)) => {
            exited(&mut m, pid, since, true, what, now, &mut actions)
        }
        (State::Starting { pid, .. } | State::Running { pid, .. }, Event::Restart) => {
            actions.push(Action::Note("restart requested".into()));
            actions.push(Action::Terminate { pgid: pid });
            stopping(&m, pid, Then::Resume, now)
        }
        (State::Starting { pid, .. } | State::Running { pid, .. }, Event::Stop) => {
            actions.push(Action::Terminate { pgid: pid });
            stopping(&m, pid, Then::End, now)
        }
        // A graceful restart the app asked for (a memory soft mark crossed): like a restart,
        // but the next process shows why the last one ended. A cron run is never recycled.
        (
            State::Starting { pid, .. } | State::Running { pid, .. },
            Event::Recycle { reason, note },
        ) if m.duty != Duty::Cron => {
            actions.push(Action::Note(note));
            actions.push(Action::Terminate { pgid: pid });
            m.recycling = Some(reason);
            stopping(&m, pid, Then::Resume, now)
        }
        (state @ (State::Starting { .. } | State::Running { .. }), Event::Recycle { .. }) => state,
        (State::Running { pid, since }, Event::Due) => {
            if m.duty == Duty::Cron {
                actions.push(Action::Note("previous run still going, skipping".into()));
            }
            State::Running { pid, since }
        }
        // Running waits for nothing but an exit or a request.
        (
            State::Running { pid, since },
            Event::Start
            | Event::Spawned { .. }
            | Event::SpawnFailed(_)
            | Event::Deadline
            | Event::Probed(_)
            | Event::GroupGone,
        ) => State::Running { pid, since },
        (
            State::Starting { pid, since, probe },
            Event::Start
            | Event::Spawned { .. }
            | Event::SpawnFailed(_)
            | Event::GroupGone
            | Event::Due,
        ) => State::Starting { pid, since, probe },

        // --- back-off ---
        (State::BackingOff { .. }, Event::Deadline) => {
            m.restarts += 1;
            actions.push(Action::Spawn);
            State::Spawning
        }
        (State::BackingOff { .. }, Event::Restart) => {
            m.backoff.reset();
            actions.push(Action::Note("restart requested".into()));
            actions.push(Action::Spawn);
            State::Spawning
        }
        (State::BackingOff { .. }, Event::Stop) => {
            actions.push(Action::Note("stopped".into()));
            State::Stopped
        }
        (
            State::BackingOff { until },
            Event::Start
            | Event::Spawned { .. }
            | Event::SpawnFailed(_)
            | Event::Exited(_)
            | Event::Probed(_)
            | Event::GroupGone
            | Event::Due
            | Event::Recycle { .. },
        ) => State::BackingOff { until },

        // --- cron, between runs ---
        (State::Waiting, Event::Due) => {
            actions.push(Action::Spawn);
            State::Spawning
        }
        // Nothing runs; the schedule goes on.
        (State::Waiting, Event::Restart) => State::Waiting,
        (State::Waiting, Event::Stop) => {
            actions.push(Action::Note("stopped".into()));
            State::Stopped
        }
        (
            State::Waiting,
            Event::Start
            | Event::Spawned { .. }
            | Event::SpawnFailed(_)
            | Event::Exited(_)
            | Event::Deadline
            | Event::Probed(_)
            | Event::GroupGone
            | Event::Recycle { .. },
        ) => State::Waiting,

        // --- stopping ---
        (
            State::Stopping {
                pid,
                deadline,
                killed,
                then,
                ..
            },
            Event::Exited(what),
        ) => {
            if m.duty == Duty::Cron {
                actions.push(Action::Note(format!("run finished: {what}")));
            }
            m.last_exit = Some(what);
            actions.push(Action::AwaitGroupGone { pgid: pid });
            State::Stopping {
                pid,
                deadline,
                killed,
                leader_exited: true,
                then,
            }
        }
        (State::Stopping { then, .. }, Event::GroupGone) => finish_stop(&mut m, then, &mut actions),
        (
            State::Stopping {
                pid,
                killed: false,
                leader_exited,
                then,
                ..
            },
            Event::Deadline,
        ) => {
            actions.push(Action::Kill { pgid: pid });
            State::Stopping {
                pid,
                deadline: now + AFTER_KILL,
                killed: true,
                leader_exited,
                then,
            }
        }
        // Only a process stuck in the kernel outlives SIGKILL this long: stop waiting.
        (
            State::Stopping {
                pid,
                killed: true,
                then,
                ..
            },
            Event::Deadline,
        ) => {
            actions.push(Action::Note(format!(
                "process group {pid} still has members {} s after SIGKILL; no longer waiting",
                AFTER_KILL.as_secs()
            )));
            finish_stop(&mut m, then, &mut actions)
        }
        // A stop wins over a restart; a restart asked during a restart is the same restart.
        (
            State::Stopping {
                pid,
                deadline,
                killed,
                leader_exited,
                ..
            },
            Event::Stop,
        ) => State::Stopping {
            pid,
            deadline,
            killed,
            leader_exited,
            then: Then::End,
        },
        (stopping @ State::Stopping { then, .. }, Event::Due) => {
            if m.duty == Duty::Cron && then == Then::Resume {
                actions.push(Action::Note("previous run still going, skipping".into()));
            }
            stopping
        }
        (
            stopping @ State::Stopping { .. },
            Event::Restart
            | Event::Start
            | Event::Spawned { .. }
            | Event::SpawnFailed(_)
            | Event::Probed(_)
            | Event::Recycle { .. },
        ) => stopping,

        // --- the end ---
        (
            State::Stopped,
            Event::Start
            | Event::Spawned { .. }
            | Event::SpawnFailed(_)
            | Event::Exited(_)
            | Event::Deadline
            | Event::Probed(_)
            | Event::GroupGone
            | Event::Due
            | Event::Restart
            | Event::Stop
            | Event::Recycle { .. },
        ) => State::Stopped,
    };
    (m, actions)
}

/// The process that ran since `since` exited (`what`); `ready`: it had passed its probe.
fn exited(
    m: &mut Machine,
    pid: u32,
    since: Instant,
    ready: bool,
    what: String,
    now: Instant,
    actions: &mut Vec<Action>,
) -> State {
    m.exits += 1;
    m.last_exit = Some(what.clone());
    match m.duty {
        // The run is over; what it left in its group goes before the next run.
        Duty::Cron => {
            actions.push(Action::Note(format!("run finished: {what}")));
            actions.push(Action::Terminate { pgid: pid });
            actions.push(Action::AwaitGroupGone { pgid: pid });
            State::Stopping {
                pid,
                deadline: now + CRON_CLEAR_GRACE,
                killed: false,
                leader_exited: true,
                then: Then::Resume,
            }
        }
        Duty::Service | Duty::Web => {
            actions.push(Action::ClearGroup {
                pgid: pid,
                grace: m.grace,
            });
            let uptime = now.saturating_duration_since(since);
            let mut how = format!("{} after {:.1} s", exit::ended(&what), uptime.as_secs_f64());
            if !ready {
                how.push_str(", before it was ready");
            }
            after_exit(m, &how, had_started(ready, uptime), now, actions)
        }
    }
}

/// A long-running process ended on its own (`how`), or could not start: a new one at once
/// if it had `started` or this is its first failed start, else after the back-off delay.
fn after_exit(
    m: &mut Machine,
    how: &str,
    started: bool,
    now: Instant,
    actions: &mut Vec<Action>,
) -> State {
    m.backoff.record_exit(started);
    let delay = m.backoff.delay();
    if delay.is_zero() {
        m.restarts += 1;
        // Noted before the spawn, so the log reads in order.
        actions.push(Action::Note(format!("{how}, restarting at once")));
        actions.push(Action::Spawn);
        State::Spawning
    } else {
        actions.push(Action::Note(format!(
            "{how}, restarting in {:.1} s",
            delay.as_secs_f64()
        )));
        State::BackingOff { until: now + delay }
    }
}

/// SIGTERM was sent to `pid`'s group: wait for it, at most the grace period.
fn stopping(m: &Machine, pid: u32, then: Then, now: Instant) -> State {
    State::Stopping {
        pid,
        deadline: now + m.grace,
        killed: false,
        leader_exited: false,
        then,
    }
}

/// The stop is over: end, or carry on fresh.
fn finish_stop(m: &mut Machine, then: Then, actions: &mut Vec<Action>) -> State {
    let recycled = m.recycling.take();
    match (then, m.duty) {
        (Then::End, _) => {
            actions.push(Action::Note("stopped".into()));
            State::Stopped
        }
        (Then::Resume, Duty::Cron) => State::Waiting,
        (Then::Resume, Duty::Service | Duty::Web) => {
            if let Some(reason) = recycled {
                m.last_exit = Some(reason);
                m.restarts += 1;
            }
            m.backoff.reset();
            actions.push(Action::Spawn);
            State::Spawning
        }
    }
}
