//! When to restart a crashed instance: every timing of the restart policy lives here.
//!
//! The first crash restarts at once (uWSGI waits ≥ 1 s, s6 1 s; we aim for < 10 ms). Crashes
//! that keep coming back off exponentially, and a process that stayed up long enough is
//! forgiven. The daemon never gives up: past [`CRASH_LOOP_AFTER`] quick crashes the instance
//! is shown as `crash-looping` but is still retried with the capped delay.

use std::time::Duration;

/// Delay before the second consecutive restart; doubles for each further crash.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A process that ran at least this long before exiting resets the crash count.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Consecutive quick crashes after which the instance is reported as crash-looping.
pub const CRASH_LOOP_AFTER: u32 = 5;

/// The crash history of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Quick crashes in a row, the one just recorded included.
    consecutive: u32,
}

impl Backoff {
    /// Records an exit (or a failed spawn) after `uptime` of running.
    pub fn record_crash(&mut self, uptime: Duration) {
        if uptime >= STABLE_AFTER {
            self.consecutive = 1;
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

    /// Whether the instance should be reported as crash-looping.
    pub fn crash_looping(&self) -> bool {
        self.consecutive >= CRASH_LOOP_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after_quick_crashes(n: u32) -> Backoff {
        let mut b = Backoff::default();
        for _ in 0..n {
            b.record_crash(Duration::from_millis(5));
        }
        b
    }

    #[test]
    fn first_crash_restarts_immediately() {
        assert_eq!(after_quick_crashes(1).delay(), Duration::ZERO);
    }

    #[test]
    fn repeated_crashes_double_up_to_the_cap() {
        let delays: Vec<u128> = (2..=12)
            .map(|n| after_quick_crashes(n).delay().as_millis())
            .collect();
        assert_eq!(
            delays,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
            ]
        );
        assert_eq!(after_quick_crashes(1000).delay(), MAX_DELAY);
    }

    #[test]
    fn crash_looping_after_five_quick_crashes() {
        assert!(!after_quick_crashes(CRASH_LOOP_AFTER - 1).crash_looping());
        assert!(after_quick_crashes(CRASH_LOOP_AFTER).crash_looping());
    }

    #[test]
    fn a_stable_run_forgives_the_past() {
        let mut b = after_quick_crashes(8);
        b.record_crash(STABLE_AFTER);
        assert_eq!(b.delay(), Duration::ZERO);
        assert!(!b.crash_looping());
    }

    #[test]
    fn reset_starts_clean() {
        let mut b = after_quick_crashes(8);
        b.reset();
        b.record_crash(Duration::ZERO);
        assert_eq!(b.delay(), Duration::ZERO);
    }
}
