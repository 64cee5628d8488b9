//! When a cron entry is due: its schedule read against a wall clock that tests can replace
//! (a paused tokio clock then drives the schedule exactly). The runs themselves go through the
//! instance state machine (`instance/machine.rs`, `Duty::Cron`).

use std::time::Duration;

use chrono::{DateTime, Local, SecondsFormat};
use piku_model::CronSchedule;

/// Where the scheduler gets the wall-clock time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Local>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Local> {
        Local::now()
    }
}

/// A cron entry's schedule and the clock it is read against.
pub struct Schedule {
    cron: CronSchedule,
    clock: Box<dyn Clock>,
}

/// The next run of an entry.
pub struct NextRun {
    pub at: DateTime<Local>,
    /// How long from now.
    pub wait: Duration,
}

impl NextRun {
    /// RFC 3339 in local time, as status shows it.
    pub fn shown(&self) -> String {
        self.at.to_rfc3339_opts(SecondsFormat::Secs, false)
    }
}

impl Schedule {
    pub fn new(cron: CronSchedule, clock: impl Clock) -> Schedule {
        Schedule {
            cron,
            clock: Box::new(clock),
        }
    }

    /// The first run after now; `None` for a schedule that never fires again.
    pub fn next(&self) -> Option<NextRun> {
        let now = self.clock.now();
        let at = self.cron.next_after(&now)?;
        let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
        Some(NextRun { at, wait })
    }

    /// Whether `run` is due now. A timer can wake before the wall clock says so (the clock
    /// was set back): then the next run is computed again.
    pub fn is_due(&self, run: &NextRun) -> bool {
        self.clock.now() >= run.at
    }
}
