//! When to restart an instance whose process ended: every timing of the restart policy
//! lives here.
//!
//! A process that had *started* — been up [`START_THRESHOLD`] and, for a web instance,
//! passed its readiness probe — and then exits (a `kill -9`, an OOM kill, a segfault after
//! an hour of service) is restarted at once, whatever happened before: it worked, so its
//! next start most likely will too. The back-off is for processes that fail while starting:
//! the first such failure is retried at once (uWSGI waits ≥ 1 s, s6 1 s; we aim for < 10 ms),
//! the ones that follow back off exponentially. The daemon never gives up: past
//! [`CRASH_LOOP_AFTER`] failed starts in a row the instance is shown as `crash-looping` but
//! is still retried with the capped delay.

use std::time::Duration;

/// How long a process must have been up (and, for a web instance, ready) to count as
/// started. It also bounds how often a process that starts and soon dies is restarted
/// without a back-off: once per second at most.
pub const START_THRESHOLD: Duration = Duration::from_secs(1);
/// Delay before the second consecutive restart; doubles for each further failed start.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// Failed starts in a row after which the instance is reported as crash-looping.
pub const CRASH_LOOP_AFTER: u32 = 5;

/// Whether a process that ended had started: up for [`START_THRESHOLD`], and `ready`.
pub fn had_started(ready: bool, uptime: Duration) -> bool {
    ready && uptime >= START_THRESHOLD
}

/// The start history of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Failed starts in a row, the one just recorded included.
    consecutive: u32,
}

impl Backoff {
    /// Records how a process ended (or that a spawn failed): after it had `started`, or
    /// while starting.
    pub fn record_exit(&mut self, started: bool) {
        if started {
            self.consecutive = 0;
        } else {
            self.consecutive = self.consecutive.saturating_add(1);
        }
    }

    /// Forgets the history: a manual restart or a new spec starts clean.
    pub fn reset(&mut self) {
        self.consecutive = 0;
    }

    /// How long to wait before the next start.
    pub fn delay(&self) -> Duration {
        match self.consecutive {
            0 | 1 => Duration::ZERO,
            n => {
                // 2 -> 100 ms, 3 -> 200 ms, ...; the shift is bounded so it cannot overflow.
                let doublings = (n - 2).min(16);
                FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
            }
        }
    }

    /// Failed starts in a row so far (what an upgrade carries over).
    pub fn failed_starts(&self) -> u32 {
        self.consecutive
    }

    /// The history of `failed_starts` failed starts in a row.
    pub fn after_failed_starts(failed_starts: u32) -> Backoff {
        Backoff {
            consecutive: failed_starts,
        }
    }

    /// Whether the instance should be reported as crash-looping.
    pub fn crash_looping(&self) -> bool {
        self.consecutive >= CRASH_LOOP_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after_failed_starts(n: u32) -> Backoff {
        let mut b = Backoff::default();
        for _ in 0..n {
            b.record_exit(false);
        }
        b
    }

    #[test]
    fn the_first_failed_start_is_retried_at_once() {
        assert_eq!(after_failed_starts(1).delay(), Duration::ZERO);
    }

    #[test]
    fn failed_starts_double_up_to_the_cap() {
        let delays: Vec<u128> = (2..=12)
            .map(|n| after_failed_starts(n).delay().as_millis())
            .collect();
        assert_eq!(
            delays,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
            ]
        );
        assert_eq!(after_failed_starts(1000).delay(), MAX_DELAY);
    }

    #[test]
    fn crash_looping_after_five_failed_starts() {
        assert!(!after_failed_starts(CRASH_LOOP_AFTER - 1).crash_looping());
        assert!(after_failed_starts(CRASH_LOOP_AFTER).crash_looping());
    }

    #[test]
    fn an_exit_after_a_start_restarts_at_once_whatever_came_before() {
        let mut b = after_failed_starts(8);
        b.record_exit(true);
        assert_eq!(b.delay(), Duration::ZERO);
        assert!(!b.crash_looping());
        // ... and again, however often it happens.
        for _ in 0..100 {
            b.record_exit(true);
            assert_eq!(b.delay(), Duration::ZERO);
        }
    }

    #[test]
    fn started_means_ready_and_up_past_the_threshold() {
        assert!(had_started(true, START_THRESHOLD));
        assert!(!had_started(
            true,
            START_THRESHOLD - Duration::from_millis(1)
        ));
        assert!(!had_started(false, Duration::from_secs(3600)));
    }

    #[test]
    fn reset_starts_clean() {
        let mut b = after_failed_starts(8);
        b.reset();
        b.record_exit(false);
        assert_eq!(b.delay(), Duration::ZERO);
    }
}
