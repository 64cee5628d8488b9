//! The life of one instance as a pure state machine, in the style of s6-supervise: its
//! states, events and actions here, and every (state, event) pair decided in the one `match`
//! of [`table::step`], with no wildcard arm.
//!
//! The machine does no I/O and reads no clock: the shell (`instance/mod.rs`) passes the time
//! with each event and carries out the [`Action`]s (spawn, signal the group, probe, note in
//! the log). Every wait is a state with its deadline (`BackingOff { until }`, `Stopping {
//! deadline }`, the probe's `at`), so nothing here blocks: an exit or a stop request that
//! arrives while a process is stopping is an event like any other.
//!
//! Long-running instances (`Duty::Service`, `Duty::Web`) restart when they exit: at once if
//! the process had started (`backoff::had_started`), else with the back-off of
//! `backoff.rs`; a web instance is `Starting` until its readiness probe passes. A `Recycle`
//! (the app's memory ceiling) restarts one gracefully and says why in its last exit. Cron entries (`Duty::Cron`) use the same machine: `Waiting`
//! between runs, one run per `Due` event, a due run finding the previous one still going
//! skipped and noted.

use std::time::Duration;

use piku_proto::InstanceState;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::backoff::Backoff;

pub mod table;
#[cfg(test)]
mod tests;

/// How soon a starting web instance is first probed (apps are often ready within a few
/// milliseconds, and status should say so promptly)...
pub const PROBE_FIRST: Duration = Duration::from_millis(20);
/// ...doubling up to this...
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// ...and once it has been starting for [`PROBE_SLOW_AFTER`] (a slow boot, or an app that
/// never listens), this often: a supervisor should not wake up for nothing.
pub const PROBE_SLOW_EVERY: Duration = Duration::from_secs(1);
pub const PROBE_SLOW_AFTER: Duration = Duration::from_secs(10);
/// How long SIGKILLed processes get to disappear before the stop gives up waiting (they
/// cannot refuse; only an uninterruptible sleep in the kernel delays them).
pub const AFTER_KILL: Duration = Duration::from_secs(5);
/// What a finished cron run left in its process group gets between SIGTERM and SIGKILL.
pub const CRON_CLEAR_GRACE: Duration = Duration::from_secs(1);

/// What kind of life the instance leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// A long-running process (a worker): running as soon as it is spawned.
    Service,
    /// A long-running process that serves HTTP: running once its readiness probe passes.
    Web,
    /// A cron entry: one run per due time, never two at once.
    Cron,
}

/// Where the instance is. Each variant carries what it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Created, not started yet: waits for `Start` (the instance it replaces is gone).
    Idle,
    /// `Action::Spawn` was asked for; its result (`Spawned` or `SpawnFailed`) is the next
    /// event, which the shell feeds before any other.
    Spawning,
    /// A web process runs but is not known to be ready; the probe is `probe`.
    Starting {
        pid: u32,
        since: Instant,
        probe: Probe,
    },
    Running {
        pid: u32,
        since: Instant,
    },
    /// The process exited; the next one starts at `until`.
    BackingOff {
        until: Instant,
    },
    /// A cron entry between runs.
    Waiting,
    /// The process group was sent SIGTERM (SIGKILL once `killed`); at `deadline` it gets
    /// SIGKILL (or, once killed, the stop stops waiting). Ends when the leader has exited and
    /// the group is gone (`GroupGone`), then does `then`.
    Stopping {
        pid: u32,
        deadline: Instant,
        killed: bool,
        leader_exited: bool,
        then: Then,
    },
    /// Final: the shell ends the instance.
    Stopped,
}

/// The readiness probe of a starting web instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The next probe runs at `at`; `every` is the wait that led here (it doubles).
    Due { at: Instant, every: Duration },
    /// A probe runs; its result is `Probed`.
    InFlight { every: Duration },
}

/// What a stop leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Carry on: a fresh process (restart), or back to waiting (cron).
    Resume,
    /// The instance ends.
    End,
}

/// What happens to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The instance may start (the one it replaces is gone).
    Start,
    Spawned {
        pid: u32,
    },
    /// The process could not be started (the reason, for status and the log).
    SpawnFailed(String),
    /// The process (the group's leader) exited: `exit 1`, `SIGKILL`, `oom-killed`.
    Exited(String),
    /// The current state's deadline has passed.
    Deadline,
    /// The readiness probe's result: `Ok` with what to note, or `Err` with what it saw.
    Probed(Result<String, String>),
    /// After the leader exited during a stop: nothing is left of its group (nor cgroup).
    GroupGone,
    /// A cron entry's scheduled time has come.
    Due,
    /// Fresh process now, forgetting the back-off (a stop first if one runs).
    Restart,
    /// Stop the process, if any, and end.
    Stop,
    /// Restart the process gracefully (a stop, then a fresh one) because of `reason`, which
    /// becomes its last exit (`memory-soft-limit restart`); `note` explains it in the log.
    Recycle {
        reason: String,
        note: String,
    },
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a process; report `Spawned` or `SpawnFailed`.
    Spawn,
    /// Run the readiness probe; report `Probed`.
    Probe,
    /// SIGTERM (and SIGCONT, so a stopped process can act on it) to the process group.
    Terminate { pgid: u32 },
    /// SIGKILL to the process group.
    Kill { pgid: u32 },
    /// Report `GroupGone` once the group (and the instance's cgroup) is empty.
    AwaitGroupGone { pgid: u32 },
    /// What a crashed leader left in its group gets SIGTERM, `grace`, SIGKILL, off the
    /// respawn path (nothing is reported back).
    ClearGroup { pgid: u32, grace: Duration },
    /// A `[piku]` line in the instance's log.
    Note(String),
}

/// The counters an upgrade carries over (`Machine::history`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    pub restarts: u32,
    pub exits: u32,
    pub last_exit: Option<String>,
    /// Failed starts in a row: the back-off.
    pub failed_starts: u32,
}

/// The instance's state and the history its decisions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub state: State,
    duty: Duty,
    /// SIGTERM to SIGKILL when stopping.
    grace: Duration,
    backoff: Backoff,
    /// Processes started again after one exited on its own (status shows it).
    restarts: u32,
    /// Processes that exited on their own, or could not start (a switch gives up on a new
    /// instance at the first).
    exits: u32,
    last_exit: Option<String>,
    /// What the last failed readiness probe saw (a switch quotes it when it gives up).
    last_probe: Option<String>,
    /// Why the stop in progress was asked for, when it is a recycle: the last exit once done.
    recycling: Option<String>,
}

impl Machine {
    pub fn new(duty: Duty, grace: Duration) -> Machine {
        Machine {
            state: State::Idle,
            duty,
            grace,
            backoff: Backoff::default(),
            restarts: 0,
            exits: 0,
            last_exit: None,
            last_probe: None,
            recycling: None,
        }
    }

    /// Takes over the history of the instance this one replaces for the same reason it
    /// would have restarted itself (a web instance recycled through a switch).
    pub fn inherit(&mut self, restarts: u32, last_exit: String) {
        self.restarts = restarts;
        self.last_exit = Some(last_exit);
    }

    /// What an upgrade carries over to the next image of the daemon.
    pub fn history(&self) -> History {
        History {
            restarts: self.restarts,
            exits: self.exits,
            last_exit: self.last_exit.clone(),
            failed_starts: self.backoff.failed_starts(),
        }
    }

    fn carry_on(&mut self, history: History) {
        self.restarts = history.restarts;
        self.exits = history.exits;
        self.last_exit = history.last_exit;
        self.backoff = Backoff::after_failed_starts(history.failed_starts);
    }

    /// The process just spawned was in fact taken over from the previous image of the
    /// daemon (an upgrade): it keeps its history and has been running `since`.
    pub fn adopted(&mut self, history: History, since: Option<Instant>) {
        self.carry_on(history);
        if let (
            Some(since),
            State::Starting { since: started, .. } | State::Running { since: started, .. },
        ) = (since, &mut self.state)
        {
            *started = since;
        }
    }

    /// Instead of a first start: the previous image of the daemon (an upgrade) was waiting
    /// to restart this instance at `until`, after the failed starts of `history`.
    pub fn resume_backing_off(&mut self, history: History, until: Instant) {
        self.carry_on(history);
        self.state = State::BackingOff { until };
    }

    /// When the instance restarts, while it backs off.
    pub fn backing_off_until(&self) -> Option<Instant> {
        match self.state {
            State::BackingOff { until } => Some(until),
            _ => None,
        }
    }

    /// The process that runs and is not being stopped, and since when: what an upgrade
    /// hands to the next image.
    pub fn adoptable(&self) -> Option<(u32, Instant)> {
        match &self.state {
            State::Starting { pid, since, .. } | State::Running { pid, since } => {
                Some((*pid, *since))
            }
            State::Idle
            | State::Spawning
            | State::BackingOff { .. }
            | State::Waiting
            | State::Stopping { .. }
            | State::Stopped => None,
        }
    }

    /// A new grace period, from the next stop on (an apply changed the settings only).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// When the shell must send `Deadline`, if the state waits for a time.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Starting {
                probe: Probe::Due { at, .. },
                ..
            } => Some(*at),
            State::BackingOff { until } => Some(*until),
            State::Stopping { deadline, .. } => Some(*deadline),
            State::Idle
            | State::Spawning
            | State::Starting {
                probe: Probe::InFlight { .. },
                ..
            }
            | State::Running { .. }
            | State::Waiting
            | State::Stopped => None,
        }
    }

    /// Whether a restart asked for earlier has been carried out (requesters are answered).
    pub fn settled(&self) -> bool {
        !matches!(
            self.state,
            State::Idle | State::Spawning | State::Stopping { .. }
        )
    }

    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    pub fn exits(&self) -> u32 {
        self.exits
    }

    pub fn last_exit(&self) -> Option<&str> {
        self.last_exit.as_deref()
    }

    pub fn last_probe(&self) -> Option<&str> {
        self.last_probe.as_deref()
    }

    /// The process running now, and since when (a stopping one keeps its pid until its
    /// leader has exited).
    pub fn process(&self) -> (Option<u32>, Option<Instant>) {
        match &self.state {
            State::Starting { pid, since, .. } | State::Running { pid, since } => {
                (Some(*pid), Some(*since))
            }
            State::Stopping {
                pid,
                leader_exited: false,
                ..
            } => (Some(*pid), None),
            State::Stopping {
                leader_exited: true,
                ..
            }
            | State::Idle
            | State::Spawning
            | State::BackingOff { .. }
            | State::Waiting
            | State::Stopped => (None, None),
        }
    }

    /// What `Status` calls the state (the protocol's coarser view).
    pub fn shown_as(&self) -> InstanceState {
        match (&self.state, self.duty) {
            (State::Idle, Duty::Cron) => InstanceState::Waiting,
            (State::Idle | State::Spawning | State::Starting { .. }, _) => InstanceState::Starting,
            (State::Running { .. }, _) => InstanceState::Running,
            (State::BackingOff { .. }, _) if self.backoff.crash_looping() => {
                InstanceState::CrashLooping
            }
            (State::BackingOff { .. }, _) => InstanceState::Backoff,
            (State::Waiting, _) => InstanceState::Waiting,
            // A finished run's leftovers being cleared: to the user it is between runs.
            (
                State::Stopping {
                    leader_exited: true,
                    then: Then::Resume,
                    ..
                },
                Duty::Cron,
            ) => InstanceState::Waiting,
            (State::Stopping { .. }, _) => InstanceState::Stopping,
            (State::Stopped, _) => InstanceState::Stopped,
        }
    }
}
