//! Reading `/proc`: process trees, memory (RSS/PSS), CPU time and context switches, and the
//! identity of a process (its fixture tags in the environment, its executable).
//!
//! Every figure in the suite comes from here, so all three supervisors are measured with the
//! same code.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A process id as the kernel and `/proc` spell it.
pub type Pid = i32;

/// A process, identified so that a recycled pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcId {
    pub pid: Pid,
    /// Field 22 of `/proc/<pid>/stat`, in clock ticks since boot.
    pub start_time: u64,
}

impl ProcId {
    pub fn of(pid: Pid) -> Option<ProcId> {
        let stat = Stat::read(pid)?;
        Some(ProcId {
            pid,
            start_time: stat.start_time,
        })
    }

    /// Whether this very process still exists (a zombie counts as gone: it runs nothing).
    pub fn alive(&self) -> bool {
        matches!(Stat::read(self.pid), Some(s) if s.start_time == self.start_time && s.state != 'Z')
    }
}

/// The fields of `/proc/<pid>/stat` the suite uses.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub state: char,
    pub ppid: Pid,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// cutime + cstime: what its children that it has reaped ran, in clock ticks.
    pub child_ticks: u64,
    pub start_time: u64,
}

impl Stat {
    pub fn read(pid: Pid) -> Option<Stat> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        let rest = &text[text.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        // `rest` starts at field 3 (state), so field N is f[N - 3].
        Some(Stat {
            state: f.first()?.chars().next()?,
            ppid: f.get(1)?.parse().ok()?,
            cpu_ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
            child_ticks: f.get(13)?.parse::<u64>().ok()? + f.get(14)?.parse::<u64>().ok()?,
            start_time: f.get(19)?.parse().ok()?,
        })
    }
}

/// Clock ticks per second (for `cpu_ticks`).
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a constant of the C library; no memory is shared.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The direct children of `pid`, from every thread's `children` file (a multi-threaded parent
/// forks from any thread, and each thread lists only its own children).
pub fn children(pid: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let mut p = task.path();
        p.push("children");
        if let Ok(text) = fs::read_to_string(p) {
            out.extend(
                text.split_ascii_whitespace()
                    .filter_map(|s| s.parse::<Pid>().ok()),
            );
        }
    }
    out
}

/// `root` and every process below it.
pub fn tree(root: Pid) -> Vec<Pid> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if seen.insert(p) {
            stack.extend(children(p));
        }
    }
    seen.into_iter().collect()
}

/// The executable of a process (`/usr/bin/python3.11`), if it can be read.
pub fn exe(pid: Pid) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The kernel's short command name (`python3`, `uwsgi`, …).
pub fn comm(pid: Pid) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// One variable of the environment a process was started with.
pub fn env_var(pid: Pid, key: &str) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|b| *b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

/// Resident and proportional set size of a process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            rss_kib: self.rss_kib + o.rss_kib,
            pss_kib: self.pss_kib + o.pss_kib,
        }
    }
}

pub fn mem(pid: Pid) -> Option<Mem> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let mut m = Mem::default();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        match (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) {
            (Some("Rss:"), Some(v)) => m.rss_kib = v,
            (Some("Pss:"), Some(v)) => m.pss_kib = v,
            _ => {}
        }
    }
    Some(m)
}

/// Memory summed over `pids` (processes that vanished count as zero).
pub fn mem_sum(pids: &[Pid]) -> Mem {
    pids.iter()
        .filter_map(|p| mem(*p))
        .fold(Mem::default(), |a, b| a + b)
}

/// Context switches (voluntary + involuntary) and scheduler run time (ns) of every live
/// thread of `pid`, by thread id. (The process's own `status` file counts only its main
/// thread.)
pub fn threads(pid: Pid) -> Vec<(Pid, ThreadCounts)> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<Pid>().ok())
        else {
            continue;
        };
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let ctxt = status
            .lines()
            .filter_map(|line| {
                line.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum();
        let sched_ns = fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_ascii_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        out.push((tid, ThreadCounts { ctxt, sched_ns }));
    }
    out
}

/// What one thread has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadCounts {
    pub ctxt: u64,
    pub sched_ns: u64,
}

/// How often an [`Activity`] window looks at the threads while it waits.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// CPU time and context switches of a set of processes over a window, counted thread by
/// thread: a thread that starts during the window counts from zero, one that ends counts up
/// to the last sample that saw it. Two samples of the whole process would lose what threads
/// that exit in between did (tokio's blocking-pool threads and a supervisor's writer threads
/// come and go) and could even go backwards, so the window samples every
/// [`SAMPLE_EVERY`] while it waits ([`Activity::wait`]).
#[derive(Debug, Clone)]
pub struct Activity {
    pids: Vec<Pid>,
    /// utime + stime of the processes at the start (includes threads that have exited; 10 ms
    /// resolution).
    start_ticks: u64,
    /// (pid, tid) → (counts at the start, or zero for a thread born in the window; counts at
    /// the last sample).
    threads: BTreeMap<(Pid, Pid), (ThreadCounts, ThreadCounts)>,
}

impl Activity {
    pub fn start(pids: &[Pid]) -> Activity {
        let mut a = Activity {
            pids: pids.to_vec(),
            start_ticks: cpu_ticks(pids),
            threads: BTreeMap::new(),
        };
        for &pid in pids {
            for (tid, counts) in threads(pid) {
                a.threads.insert((pid, tid), (counts, counts));
            }
        }
        a
    }

    /// Looks at every thread now.
    pub fn sample(&mut self) {
        for &pid in &self.pids {
            for (tid, counts) in threads(pid) {
                self.threads
                    .entry((pid, tid))
                    .and_modify(|(_, last)| *last = counts)
                    .or_insert((ThreadCounts::default(), counts));
            }
        }
    }

    /// Sleeps for `d`, sampling meanwhile.
    pub fn wait(&mut self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sleep(left.min(SAMPLE_EVERY));
            self.sample();
        }
    }

    /// CPU seconds and context switches since the start. The CPU figure is the larger of
    /// the two clocks: ticks are coarse, per-thread run time misses what an exited thread
    /// did after its last sample.
    pub fn finish(mut self) -> (f64, u64) {
        self.sample();
        let ticks = cpu_ticks(&self.pids).saturating_sub(self.start_ticks) as f64 / ticks_per_sec();
        let (mut ns, mut ctxt) = (0u64, 0u64);
        for (first, last) in self.threads.values() {
            ns += last.sched_ns.saturating_sub(first.sched_ns);
            ctxt += last.ctxt.saturating_sub(first.ctxt);
        }
        (ticks.max(ns as f64 / 1e9), ctxt)
    }
}

pub fn cpu_ticks(pids: &[Pid]) -> u64 {
    // CPU of exited children is folded into cutime, which we leave out on purpose: the
    // question is what the supervisor itself burns.
    pids.iter()
        .filter_map(|p| Stat::read(*p))
        .map(|s| s.cpu_ticks)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id() as Pid;
        let stat = Stat::read(me).unwrap();
        assert!(stat.ppid > 0);
        assert!(mem(me).unwrap().rss_kib > 0);
        assert!(threads(me).iter().map(|(_, c)| c.ctxt).sum::<u64>() > 0);
        assert!(ProcId::of(me).unwrap().alive());
        assert!(tree(me).contains(&me));
    }

    #[test]
    fn a_thread_that_ends_within_the_window_still_counts() {
        let me = std::process::id() as Pid;
        let mut window = Activity::start(&[me]);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            for _ in 0..50 {
                sleep(Duration::from_millis(1));
            }
            let _ = rx.recv();
        });
        sleep(Duration::from_millis(200));
        window.sample();
        drop(tx);
        worker.join().unwrap();
        let (_, switches) = window.finish();
        assert!(switches >= 50, "{switches}");
    }

    #[test]
    fn finds_a_child_and_its_environment() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .env("BENCH_PROBE", "yes")
            .spawn()
            .unwrap();
        let pid = child.id() as Pid;
        let me = std::process::id() as Pid;
        assert!(tree(me).contains(&pid), "child {pid} not under {me}");
        // spawn() returns while execve is still setting up the new image, when environ reads
        // empty for a moment; the suite's pollers simply look again, and so does this test.
        let t0 = std::time::Instant::now();
        while env_var(pid, "BENCH_PROBE").is_none() && t0.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            env_var(pid, "BENCH_PROBE").as_deref(),
            Some("yes"),
            "environ of {pid}"
        );
        assert_eq!(comm(pid).as_deref(), Some("sleep"), "comm of {pid}");
        let id = ProcId::of(pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!id.alive());
    }
}
