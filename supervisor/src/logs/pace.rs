//! When the capture thread reads a pipe: at once, on its next short tick, or on its next
//! one-second tick. A pure policy over instants, so its timing is tested without a clock.
//!
//! Every wake-up of the capture thread costs a context switch whatever it reads, so the
//! thread reads a pipe the moment it becomes readable only while that buys something:
//!
//! - **Armed**: woken by the pipe (epoll). A process that just started, or that writes
//!   every now and then but more often than every [`QUIET_AFTER`], gets its lines into the
//!   file within microseconds.
//! - **Hot**: a pipe that gives data again within [`HOT_GAP`] of the last read is flooding;
//!   being woken for every few lines would cost more CPU per line than the writing itself.
//!   It is read every [`HOT_TICK`] instead (its pipe is enlarged so the writer rarely waits
//!   meanwhile), and goes back to Armed the first time such a read finds it empty. While
//!   the hot pipes give little per read (an HTTP server's line per request: ~1.5 MB/s at
//!   10k requests a second), they are read every [`CALM_HOT_TICK`] instead ([`hot_tick`]).
//! - **Quiet**: a pipe silent for [`QUIET_AFTER`] is checked on the one-second tick, with
//!   every other quiet pipe in the same wake-up: a worker printing a line every few seconds
//!   costs nothing beyond that tick (the same cadence as supervisord's 1 s poll), at the price
//!   of its next line reaching the file up to a second late. Data found there arms it again.
//!   The pipes of an instance that serves HTTP requests never go quiet: such a server writes
//!   a line per request, and after a silence a burst of requests fills its 64 KiB pipe within
//!   a fraction of a second, then every worker waits in its log write until the tick (uWSGI at
//!   5k requests a second stalled 0.1-0.9 s at the start of each burst, all its threads in
//!   `anon_pipe_write`). Idle, it writes nothing and costs no wake-up anyway.

use std::time::{Duration, Instant};

/// The tick on which quiet pipes are checked (and armed ones found silent become quiet).
pub(super) const TICK: Duration = Duration::from_secs(1);
/// Silence after which an armed pipe becomes quiet.
pub(super) const QUIET_AFTER: Duration = Duration::from_secs(2);
/// Two reads with data this close together make a pipe hot.
pub(super) const HOT_GAP: Duration = Duration::from_millis(1);
/// How often a hot pipe is read; its pipe is enlarged to [`super::capture::HOT_PIPE_BYTES`],
/// which holds several ticks' worth of the fastest writer, so the writer rarely waits.
pub(super) const HOT_TICK: Duration = Duration::from_millis(2);

/// How often hot pipes are read while no hot read gave [`BUSY_READ`] bytes or more. Each
/// wake-up of the capture thread costs ~40 µs of CPU on a small VM (the switch in and out,
/// epoll, read, stat, write) whatever it reads: at one every [`HOT_TICK`] that was ~2 µs of
/// the supervisor's CPU per request of a uWSGI serving 9k requests a second (`piku-bench
/// wsgi`), where a few more milliseconds before a line reaches its file buy nothing.
pub(super) const CALM_HOT_TICK: Duration = Duration::from_millis(8);
/// A hot read this large makes the next wait [`HOT_TICK`]. A read below it over the last
/// tick means a writer below ~4 MB/s (32 KiB in 8 ms); at that rate a [`CALM_HOT_TICK`]
/// fills a fraction of even an unenlarged 64 KiB pipe, so no writer waits for the longer
/// tick; a writer speeding up meets the short tick after one read.
pub(super) const BUSY_READ: usize = 32 * 1024;
// A writer just below the mark may double its rate and still not fill an unenlarged pipe
// (64 KiB) within a calm tick.
const _: () = assert!(2 * BUSY_READ <= 64 * 1024);

/// The wait until hot pipes are read again, from the largest read of one on this tick.
pub(super) fn hot_tick(largest_read: usize) -> Duration {
    if largest_read >= BUSY_READ {
        HOT_TICK
    } else {
        CALM_HOT_TICK
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Armed,
    Hot,
    Quiet,
}

/// The mode of one pipe and when it last gave data.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    mode: Mode,
    last_data: Instant,
}

impl Pace {
    /// A new pipe is armed: a starting process's first lines are what someone deploying it
    /// waits for.
    pub(super) fn new(now: Instant) -> Pace {
        Pace {
            mode: Mode::Armed,
            last_data: now,
        }
    }

    pub(super) fn mode(&self) -> Mode {
        self.mode
    }

    /// A read gave data at `now`; returns the new mode if it changed.
    pub(super) fn data(&mut self, now: Instant) -> Option<Mode> {
        let since = now.saturating_duration_since(self.last_data);
        self.last_data = now;
        let next = match self.mode {
            Mode::Armed if since < HOT_GAP => Mode::Hot,
            Mode::Quiet => Mode::Armed,
            mode => mode,
        };
        self.change(next)
    }

    /// A read found the pipe empty.
    pub(super) fn empty(&mut self) -> Option<Mode> {
        let next = match self.mode {
            Mode::Hot => Mode::Armed,
            mode => mode,
        };
        self.change(next)
    }

    /// The one-second tick at `now`; `serving`: the pipe is an HTTP-serving instance's, which
    /// stays armed.
    pub(super) fn tick(&mut self, now: Instant, serving: bool) -> Option<Mode> {
        let next = match self.mode {
            Mode::Armed
                if !serving && now.saturating_duration_since(self.last_data) >= QUIET_AFTER =>
            {
                Mode::Quiet
            }
            mode => mode,
        };
        self.change(next)
    }

    fn change(&mut self, next: Mode) -> Option<Mode> {
        (std::mem::replace(&mut self.mode, next) != next).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_worker_printing_every_five_seconds_is_read_on_the_tick() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        assert_eq!(pace.data(t0 + ms(30)), None, "its first line, at once");
        assert_eq!(pace.tick(t0 + ms(1000), false), None);
        assert_eq!(
            pace.tick(t0 + ms(2000), false),
            None,
            "silent 1.97 s: still armed"
        );
        assert_eq!(pace.tick(t0 + ms(3000), false), Some(Mode::Quiet));
        // The next line (t0 + 5.03 s) is found by the tick at t0 + 6 s.
        assert_eq!(pace.data(t0 + ms(6000)), Some(Mode::Armed));
        assert_eq!(pace.tick(t0 + ms(7000), false), None);
        assert_eq!(pace.tick(t0 + ms(8000), false), Some(Mode::Quiet));
    }

    #[test]
    fn a_server_silent_between_bursts_stays_armed() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        assert_eq!(pace.data(t0 + ms(30)), None);
        for s in 1..60 {
            assert_eq!(pace.tick(t0 + ms(1000 * s), true), None, "{s} s");
        }
        assert_eq!(pace.mode(), Mode::Armed);
        // The same silence quiets any other process.
        assert_eq!(pace.tick(t0 + ms(60_000), false), Some(Mode::Quiet));
    }

    #[test]
    fn a_process_writing_ten_lines_a_second_stays_armed() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        for n in 1..=100u64 {
            let now = t0 + ms(100 * n);
            assert_eq!(pace.data(now), None);
            if n % 10 == 0 {
                assert_eq!(pace.tick(now + ms(50), false), None);
            }
        }
        assert_eq!(pace.mode(), Mode::Armed);
    }

    #[test]
    fn a_flood_is_read_on_the_short_tick_until_it_pauses() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        assert_eq!(pace.data(t0 + ms(5)), None);
        let flood = t0 + ms(5) + Duration::from_micros(300);
        assert_eq!(pace.data(flood), Some(Mode::Hot));
        // Hot reads every HOT_TICK keep finding data: it stays hot, the 1 s tick leaves it.
        for n in 1..=1000u32 {
            assert_eq!(pace.data(flood + HOT_TICK * n), None);
        }
        assert_eq!(pace.tick(flood + HOT_TICK * 1000, false), None);
        assert_eq!(pace.mode(), Mode::Hot);
        assert_eq!(pace.empty(), Some(Mode::Armed), "the flood paused");
        assert_eq!(pace.empty(), None);
    }

    #[test]
    fn hot_pipes_that_give_little_are_read_less_often() {
        // uWSGI at 10k requests a second: ~1.5 MB/s, 12 KB per calm tick.
        assert_eq!(hot_tick(12_000), CALM_HOT_TICK);
        assert_eq!(hot_tick(0), CALM_HOT_TICK);
        // A flood (90 MB/s: 180 KB per short tick) keeps the short tick.
        assert_eq!(hot_tick(180_000), HOT_TICK);
        assert_eq!(hot_tick(BUSY_READ), HOT_TICK);
    }

    #[test]
    fn lines_a_few_milliseconds_apart_do_not_make_a_pipe_hot() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        for n in 1..=50u64 {
            assert_eq!(pace.data(t0 + ms(3 * n)), None);
        }
        assert_eq!(pace.mode(), Mode::Armed);
    }
}
