//! What the kernel says about a running process: memory, CPU time, start time, group.
//!
//! Read from `/proc/<pid>/stat`, `statm` and `smaps_rollup`; every function returns `None`
//! when the process is gone or the file does not parse, because a process can vanish at any
//! time.

use std::fs;
use std::sync::OnceLock;
use std::time::Duration;

/// The fields of `/proc/<pid>/stat` this daemon uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// One-letter state: `R`, `S`, `Z`, …
    pub state: char,
    pub ppid: u32,
    pub pgrp: i32,
    /// User + system time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks (field 22): with the pid, it names a process
    /// uniquely, since pids are reused but never at the same start time.
    pub start_ticks: u64,
}

/// Parses the content of a `/proc/<pid>/stat` file.
pub fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may itself contain spaces and
    // parentheses, so the fields are counted from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let field = |n: usize| fields.get(n - 3).copied();
    Some(Stat {
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        cpu_ticks: field(14)?.parse::<u64>().ok()? + field(15)?.parse::<u64>().ok()?,
        start_ticks: field(22)?.parse().ok()?,
    })
}

pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Resident memory in bytes (second field of `statm`, in pages).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Proportional set size in bytes: the process's private memory plus its share of what it
/// shares (a forked worker's pages it still shares with its master count half to each), so
/// that a sum over processes counts every page once.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The processes of process group `pgid`, zombies aside.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat(*pid).is_some_and(|s| i64::from(s.pgrp) == i64::from(pgid) && s.state != 'Z')
        })
        .collect()
}

/// The memory of every process of group `pgid`: PSS summed (RSS for a process whose PSS
/// cannot be read). `None` when the group is gone.
pub fn group_memory_bytes(pgid: u32) -> Option<u64> {
    let members = group_members(pgid);
    if members.is_empty() {
        return None;
    }
    Some(
        members
            .into_iter()
            .filter_map(|pid| pss_bytes(pid).or_else(|| rss_bytes(pid)))
            .sum(),
    )
}

/// CPU time (user + system) in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    Some(stat(pid)?.cpu_ticks as f64 / clock_ticks_per_sec() as f64)
}

/// How long a process that started `start_ticks` clock ticks after boot has been running.
pub fn running_for(start_ticks: u64) -> Duration {
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .unwrap_or_default();
    let started = Duration::from_secs_f64(start_ticks as f64 / clock_ticks_per_sec() as f64);
    uptime.saturating_sub(started)
}

/// Whether `pid` still names the process that started at `start_ticks`.
pub fn same_process(pid: u32, start_ticks: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_ticks == start_ticks && s.state != 'Z')
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(4096)
    })
}

fn clock_ticks_per_sec() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|v| u64::try_from(v).ok())
            .filter(|&v| v > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_name_with_spaces_and_parens() {
        let line = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 123456 1000 50";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(s.start_ticks, 123456);
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(parse_stat("no parens here"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_secs(me).is_some());
        let s = stat(me).unwrap();
        assert!(same_process(me, s.start_ticks));
        assert!(!same_process(me, s.start_ticks + 1));
        let pss = pss_bytes(me).unwrap();
        assert!(pss > 0 && pss <= rss_bytes(me).unwrap() * 2, "{pss}");
    }

    /// A group of three: the sum covers all of them (each at least its own PSS).
    #[test]
    fn a_group_is_measured_whole() {
        use std::os::unix::process::CommandExt;
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = leader.id();
        let mut members = Vec::new();
        for _ in 0..500 {
            members = group_members(pgid);
            if members.len() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let total = group_memory_bytes(pgid);
        let one = pss_bytes(pgid);
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let _ = leader.wait();
        assert_eq!(members.len(), 3, "{members:?}");
        assert!(total.unwrap() > one.unwrap(), "{total:?} vs {one:?}");
    }
}
