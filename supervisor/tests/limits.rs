//! Resource limits for real: `PIKU_MEMORY_MAX`, `PIKU_CPU_QUOTA` and `PIKU_TASKS_MAX` in the
//! instance's cgroups, the OOM killer at the limit, the graceful restart at the soft mark,
//! and `ps` memory over all of an instance's processes.
//!
//! On this machine kind the daemon (root) uses cgroup v1's memory, cpu and pids controllers
//! (its cgroup v2 has none): the enforcement tests read the v1 files of the instance's
//! cgroups. A host without them must say so in the Apply answer; the tests check that
//! first, and fail if a limit is neither enforced nor warned about.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use piku_proto::{AppSpec, ApplyReport, InstanceState, ResourceLimits, Role};

fn limited(app: &str, root: &TestRoot, command: String, limits: ResourceLimits) -> AppSpec {
    let mut spec = spec(
        app,
        &root.scratch(),
        vec![process("worker", command, Role::Worker, 1)],
    );
    spec.settings.limits = limits;
    spec
}

fn memhog(start_mib: u32, rate: f64, delay: f64) -> String {
    format!(
        "{} {} {start_mib} {rate} {delay}",
        python(),
        fixture("memhog.py")
    )
}

/// The v1 cgroup of `pid` for `controller` (`/sys/fs/cgroup/<controller>/<path>`), from
/// `/proc/<pid>/cgroup`.
fn v1_cgroup(pid: u32, controller: &str) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == controller).then(|| {
            PathBuf::from("/sys/fs/cgroup")
                .join(controller)
                .join(path.trim_start_matches('/'))
        })
    })
}

fn read_trimmed(path: PathBuf) -> String {
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Whether the daemon enforces `setting` here: no warning about it in `report`. A warning
/// must name it and say what is still done.
fn enforced(report: &ApplyReport, setting: &str) -> bool {
    match report.warnings.iter().find(|w| w.starts_with(setting)) {
        None => true,
        Some(warning) => {
            assert!(
                warning.contains("is not enforced on this host"),
                "{warning}"
            );
            println!("this host cannot enforce it, and says so: {warning}");
            false
        }
    }
}

#[test]
fn a_worker_past_its_memory_max_is_oom_killed_shown_noted_and_restarted() {
    let root = TestRoot::new();
    let daemon = root.start();
    // Up 1.2 s (it has started), then 100 MiB at once: past the limit in one step, so the
    // kernel, not the soft mark, ends it.
    let spec = limited(
        "oom",
        &root,
        memhog(100, 0.0, 1.2),
        ResourceLimits {
            memory_max_bytes: Some(48 << 20),
            ..ResourceLimits::default()
        },
    );
    let report = daemon.apply(&spec);
    if !enforced(&report, "PIKU_MEMORY_MAX=48M") {
        return;
    }
    let first = daemon
        .wait_state("oom", "worker.1", InstanceState::Running)
        .pid
        .unwrap();
    let cgroup = v1_cgroup(first, "memory").expect("the instance has a memory cgroup");
    assert!(
        cgroup.to_string_lossy().contains("/piku-") && cgroup.ends_with("oom.app/worker.1"),
        "{}",
        cgroup.display()
    );
    assert_eq!(
        read_trimmed(cgroup.join("memory.limit_in_bytes")),
        (48u64 << 20).to_string()
    );
    let killed = wait_for("an OOM kill and a restart", Duration::from_secs(30), || {
        let i = daemon.instance("oom", "worker.1");
        (i.last_exit.as_deref() == Some("oom-killed") && i.pid.is_some_and(|p| p != first))
            .then_some(i)
    });
    assert!(killed.restarts >= 1);
    let log = root.wait_log(
        "oom",
        "worker.1",
        "[piku] killed by the kernel's OOM killer at its memory limit (oom-killed) after",
    );
    assert!(log.contains("restarting at once"), "{log}");
    println!("{log}");
}

#[test]
fn a_leaking_worker_is_restarted_gracefully_at_the_soft_mark_before_the_kernel_kills_it() {
    let root = TestRoot::new();
    let daemon = root.start();
    // 40 MiB at once, then 2 MiB/s: the soft mark (90 % of 64M = 57.6M) comes a few seconds
    // in, the limit 3 s after it (the daemon checks every second).
    let spec = limited(
        "leak",
        &root,
        memhog(40, 2.0, 0.0),
        ResourceLimits {
            memory_max_bytes: Some(64 << 20),
            ..ResourceLimits::default()
        },
    );
    let report = daemon.apply(&spec);
    // Without a memory cgroup the soft mark still applies (to the PSS of its processes).
    let _ = enforced(&report, "PIKU_MEMORY_MAX=64M");
    let first = daemon
        .wait_state("leak", "worker.1", InstanceState::Running)
        .pid
        .unwrap();
    let mut seen = Vec::new();
    let recycled = wait_for(
        "a restart at the soft mark",
        Duration::from_secs(40),
        || {
            let i = daemon.instance("leak", "worker.1");
            let mib = i.memory_bytes.map(|b| b >> 20);
            if i.pid == Some(first) && seen.last() != Some(&mib) {
                seen.push(mib);
            }
            (i.last_exit.is_some() && i.pid.is_some_and(|p| p != first)).then_some(i)
        },
    );
    println!("memory of the first process seen by ps (MiB): {seen:?}");
    assert_eq!(
        recycled.last_exit.as_deref(),
        Some("memory-soft-limit restart"),
        "ended otherwise"
    );
    assert_eq!(recycled.restarts, 1);
    let log = root.wait_log("leak", "worker.1", "restarting gracefully");
    assert!(
        log.contains("crossed the soft mark 57.6M (90 % of PIKU_MEMORY_MAX=64M)"),
        "{log}"
    );
    assert!(!log.contains("oom-killed"), "{log}");
    // ps saw it grow toward the mark.
    assert!(
        seen.iter().flatten().any(|mib| *mib >= 40),
        "memory shown: {seen:?}"
    );
}

/// A supervisor that may write no cgroup: a non-root one on a host whose cgroup v1
/// controllers are not its own (systemd delegates only v2, and this machine's v2 has no
/// controllers). Every limit is a warning of the Apply answer, the process runs unconfined,
/// and the soft mark still restarts a leaking instance, measured by the PSS of its group.
#[test]
fn a_supervisor_without_cgroups_warns_about_each_limit_and_keeps_the_soft_mark() {
    let root = TestRoot::new();
    let daemon = Daemon::start_as_nobody(&root);
    // The system's interpreter: the test's own may live under root's home, out of reach.
    let spec = limited(
        "nocg",
        &root,
        memhog(40, 2.0, 0.0).replacen(&python(), "/usr/bin/python3", 1),
        ResourceLimits {
            memory_max_bytes: Some(64 << 20),
            cpu_quota_percent: Some(50),
            tasks_max: Some(32),
        },
    );
    let report = daemon.apply(&spec);
    println!("{:#?}", report.warnings);
    assert_eq!(report.warnings.len(), 3, "{:?}", report.warnings);
    for setting in [
        "PIKU_MEMORY_MAX=64M",
        "PIKU_CPU_QUOTA=50%",
        "PIKU_TASKS_MAX=32",
    ] {
        assert!(!enforced(&report, setting));
    }
    assert!(report.warnings[0].contains("restarted gracefully when they cross 90 %"));
    let first = daemon
        .wait_state("nocg", "worker.1", InstanceState::Running)
        .pid
        .unwrap();
    assert!(
        !fs::read_to_string(format!("/proc/{first}/cgroup"))
            .unwrap()
            .contains("/piku-"),
        "no cgroup of ours"
    );
    let recycled = wait_for(
        "a restart at the soft mark",
        Duration::from_secs(40),
        || {
            let i = daemon.instance("nocg", "worker.1");
            (i.last_exit.is_some() && i.pid.is_some_and(|p| p != first)).then_some(i)
        },
    );
    assert_eq!(
        recycled.last_exit.as_deref(),
        Some("memory-soft-limit restart")
    );
    root.wait_log("nocg", "worker.1", "crossed the soft mark 57.6M");
}

#[test]
fn ps_memory_counts_every_process_of_an_instance() {
    let root = TestRoot::new();
    let daemon = root.start();
    // A shell that stays (a list), with two children holding 24 MiB each.
    let hold = memhog(24, 0.0, 0.0);
    let command = format!("{hold} & {hold} & wait");
    daemon.apply(&limited("ps", &root, command, ResourceLimits::default()));
    let leader = daemon
        .wait_state("ps", "worker.1", InstanceState::Running)
        .pid
        .unwrap();
    wait_for(
        "both children to hold their memory",
        Duration::from_secs(20),
        || {
            let log = fs::read_to_string(root.log_file("ps", "worker.1")).ok()?;
            (log.matches("holding 24 MiB, growing").count() == 2).then_some(())
        },
    );
    let status = daemon.instance("ps", "worker.1");
    let members = group_members(leader);
    let rss: u64 = members
        .iter()
        .filter_map(|pid| {
            let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
            statm.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum::<u64>()
        * 4096;
    let memory = status.memory_bytes.expect("memory shown");
    println!(
        "ps memory {:.1} MiB (leader alone {:.1} MiB) vs RSS summed over the {} processes \
         in /proc {:.1} MiB",
        memory as f64 / 1048576.0,
        status.rss_bytes.unwrap_or(0) as f64 / 1048576.0,
        members.len(),
        rss as f64 / 1048576.0
    );
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(memory >= 48 << 20, "{memory}");
    assert!(
        status.rss_bytes.unwrap() < 16 << 20,
        "the leader is a shell"
    );
    // Not counted twice: at most the processes' RSS plus what the kernel charges the cgroup.
    assert!(memory <= rss + (16 << 20), "{memory} vs {rss}");
}

#[test]
fn a_cpu_quota_throttles_a_busy_loop() {
    let root = TestRoot::new();
    let daemon = root.start();
    let spec = limited(
        "cpu",
        &root,
        "while :; do :; done".into(),
        ResourceLimits {
            cpu_quota_percent: Some(20),
            ..ResourceLimits::default()
        },
    );
    if !enforced(&daemon.apply(&spec), "PIKU_CPU_QUOTA=20%") {
        return;
    }
    let pid = daemon
        .wait_state("cpu", "worker.1", InstanceState::Running)
        .pid
        .unwrap();
    let cgroup = v1_cgroup(pid, "cpu").expect("the instance has a cpu cgroup");
    assert_eq!(read_trimmed(cgroup.join("cpu.cfs_quota_us")), "20000");
    assert_eq!(read_trimmed(cgroup.join("cpu.cfs_period_us")), "100000");
    let throttled = wait_for("the loop to be throttled", Duration::from_secs(10), || {
        let stat = fs::read_to_string(cgroup.join("cpu.stat")).ok()?;
        let n: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))?
            .parse()
            .ok()?;
        (n > 0).then_some(n)
    });
    println!("busy loop under PIKU_CPU_QUOTA=20%: throttled {throttled} times");
}

#[test]
fn tasks_max_caps_the_processes_of_an_instance() {
    let root = TestRoot::new();
    let daemon = root.start();
    let spec = limited(
        "tasks",
        &root,
        format!("{} {} 10", python(), fixture("forker.py")),
        ResourceLimits {
            tasks_max: Some(4),
            ..ResourceLimits::default()
        },
    );
    if !enforced(&daemon.apply(&spec), "PIKU_TASKS_MAX=4") {
        return;
    }
    let pid = daemon
        .wait_state("tasks", "worker.1", InstanceState::Running)
        .pid
        .unwrap();
    // The app is named like cgroup v1's `tasks` file: its cgroups are made all the same.
    let log = root.wait_log("tasks", "worker.1", "forked 3 of 10");
    assert!(log.contains("Resource temporarily unavailable"), "{log}");
    assert!(!log.contains("cannot create cgroup"), "{log}");
    let cgroup = v1_cgroup(pid, "pids").expect("the instance has a pids cgroup");
    assert_eq!(read_trimmed(cgroup.join("pids.max")), "4");
    let current: u64 = read_trimmed(cgroup.join("pids.current")).parse().unwrap();
    assert!(current <= 4, "{current}");
    assert!(group_members(pid).len() <= 4, "{log}");
}
