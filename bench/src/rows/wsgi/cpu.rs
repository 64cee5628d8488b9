//! Where the CPU of a `wrk` round goes: wrk itself, nginx, the supervisor (ours: the daemon,
//! whose log capture thread is also counted apart; piku: the emperor) and the app server
//! (ours: every process below the daemon; piku: the vassals below the emperor).
//!
//! On a small machine every part of the path shares the same cores, so req/s is about
//! cores ÷ the CPU a request costs in all of them together; this says which part to shrink.
//! CPU time also moves little when other work shares the machine, unlike req/s.
//!
//! Each figure is the difference of two readings around the round: utime + stime of the
//! processes alive at each reading plus cutime + cstime (what they reaped), so a uWSGI
//! worker recycled mid-round (piku's `max-requests`) still counts, through its master.
//! wrk is counted with `getrusage(RUSAGE_CHILDREN)`: it is the only child the bench reaps
//! during a round.

use std::fs;
use std::ops::AddAssign;

use nix::sys::resource::{UsageWho, getrusage};

use crate::procfs::{self, Pid};

/// The supervisor's threads that capture its children's output (supervisor/src/logs).
const LOG_THREADS: [&str; 2] = ["piku-logs", "piku-log-writer"];

/// The processes a round of one target runs through.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub nginx: Pid,
    /// Ours: the daemon; piku: the emperor.
    pub supervisor: Pid,
}

/// CPU seconds spent during some rounds, and the requests they served.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    pub requests: u64,
    pub wrk: f64,
    pub nginx: f64,
    /// The supervisor process itself, every thread (log capture included).
    pub supervisor: f64,
    /// The supervisor's log capture threads (a part of `supervisor`).
    pub logs: f64,
    pub app: f64,
    /// Context switches of the supervisor's live threads: each is a wake-up (voluntary) or
    /// a preemption, the front's largest cost under load (`perf`: a third of its samples in
    /// the switch itself on a 2-core VM).
    pub supervisor_switches: u64,
}

impl AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.requests += o.requests;
        self.wrk += o.wrk;
        self.nginx += o.nginx;
        self.supervisor += o.supervisor;
        self.logs += o.logs;
        self.app += o.app;
        self.supervisor_switches += o.supervisor_switches;
    }
}

impl Cost {
    pub fn total(&self) -> f64 {
        self.wrk + self.nginx + self.supervisor + self.app
    }

    /// Microseconds of CPU per request of `part`, if any request was served.
    pub fn per_request_us(&self, part: f64) -> Option<f64> {
        (self.requests > 0).then(|| part * 1e6 / self.requests as f64)
    }
}

/// One reading of every part, in CPU seconds since each process started.
#[derive(Debug, Clone, Copy)]
struct Reading {
    wrk: f64,
    nginx: f64,
    supervisor: f64,
    logs: f64,
    app: f64,
    supervisor_switches: u64,
}

impl Reading {
    fn take(probe: &Probe) -> Reading {
        let tick = procfs::ticks_per_sec();
        let root = procfs::Stat::read(probe.supervisor);
        let below: u64 = procfs::tree(probe.supervisor)
            .into_iter()
            .filter(|p| *p != probe.supervisor)
            .map(tree_ticks)
            .sum();
        Reading {
            wrk: children_rusage(),
            nginx: procfs::tree(probe.nginx)
                .into_iter()
                .map(tree_ticks)
                .sum::<u64>() as f64
                / tick,
            supervisor: root.map_or(0, |s| s.cpu_ticks) as f64 / tick,
            logs: threads_named(probe.supervisor, &LOG_THREADS),
            // What the supervisor reaped ran below it too (an instance that exited).
            app: (below + root.map_or(0, |s| s.child_ticks)) as f64 / tick,
            supervisor_switches: procfs::threads(probe.supervisor)
                .iter()
                .map(|(_, counts)| counts.ctxt)
                .sum(),
        }
    }
}

/// What a process ran and what the children it reaped ran, in clock ticks.
fn tree_ticks(pid: Pid) -> u64 {
    procfs::Stat::read(pid).map_or(0, |s| s.cpu_ticks + s.child_ticks)
}

/// CPU seconds of the children this process has reaped.
fn children_rusage() -> f64 {
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        secs(u.user_time()) + secs(u.system_time())
    })
}

/// CPU seconds of the live threads of `pid` named one of `names` (scheduler run time, in ns).
fn threads_named(pid: Pid, names: &[&str]) -> f64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        let named = fs::read_to_string(path.join("comm"))
            .is_ok_and(|comm| names.contains(&comm.trim_end()));
        if named {
            ns += fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_ascii_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// A reading before a round; [`Window::finish`] takes the one after.
pub struct Window {
    probe: Probe,
    start: Reading,
}

impl Window {
    pub fn start(probe: Probe) -> Window {
        Window {
            start: Reading::take(&probe),
            probe,
        }
    }

    /// What the round cost, once wrk has been reaped; `requests`: what wrk counted. A
    /// log writer thread that ended during the round is missed (one runs only while the
    /// disk is slow).
    pub fn finish(self, requests: u64) -> Cost {
        let end = Reading::take(&self.probe);
        let d = |a: f64, b: f64| (b - a).max(0.0);
        Cost {
            requests,
            wrk: d(self.start.wrk, end.wrk),
            nginx: d(self.start.nginx, end.nginx),
            supervisor: d(self.start.supervisor, end.supervisor),
            logs: d(self.start.logs, end.logs),
            app: d(self.start.app, end.app),
            supervisor_switches: end
                .supervisor_switches
                .saturating_sub(self.start.supervisor_switches),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_reaped_child_counts_as_wrk_and_work_below_the_supervisor_as_app() {
        let me = std::process::id() as Pid;
        // This process stands in for nginx and the supervisor: a busy child of it counts as
        // the app while it runs, then as wrk once reaped.
        let probe = Probe {
            nginx: me,
            supervisor: me,
        };
        let window = Window::start(probe);
        let status = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let cost = window.finish(10);
        assert!(cost.wrk > 0.01, "{cost:?}");
        assert!(cost.app > 0.01, "{cost:?}");
        assert_eq!(cost.per_request_us(0.5), Some(50_000.0));
        assert_eq!(Cost::default().per_request_us(1.0), None);
    }
}
