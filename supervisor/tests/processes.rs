//! Real processes under the real daemon: respawn, back-off, scaling, stopping trees,
//! apply diffing, environment and ports, cron.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use piku_proto::{InstanceState, Request, Response, Role};

/// The restart policy on a worker that had started: 20 × `kill -9`, 4 s apart, each followed
/// by a new process at once. Two respawn times of each are printed: the kill to the daemon's
/// `started pid N` (its own log's timestamp: the new process has been exec'd) and the kill
/// to the new process's first line of shell (which adds `sh` and `date` starting). What is
/// asserted is that none is missed and none waits out a back-off, not a time that a loaded
/// machine could stretch.
#[test]
fn twenty_kills_4s_apart_give_twenty_new_processes_at_once() {
    const KILLS: usize = 20;
    let root = TestRoot::new();
    let scratch = root.scratch();
    let starts = scratch.join("starts");
    let daemon = root.start();
    let cmd = format!("date +%s%N >> {}; exec sleep 1000", starts.display());
    daemon.apply(&spec(
        "app",
        &scratch,
        vec![process("worker", cmd, Role::Worker, 1)],
    ));
    let start_times = || -> Vec<u128> {
        fs::read_to_string(&starts)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    let mut pids = BTreeSet::new();
    let mut spawned_ms = Vec::new();
    let mut first_line_ms = Vec::new();
    for kill in 0..KILLS {
        // The current process, seen running with its start recorded.
        let (pid, started) = wait_for("the worker to run", Duration::from_secs(10), || {
            let i = daemon.instance("app", "worker.1");
            let times = start_times();
            match (i.state, i.pid) {
                (InstanceState::Running, Some(pid)) if alive(pid) && times.len() == kill + 1 => {
                    Some((pid, times[kill]))
                }
                _ => None,
            }
        });
        pids.insert(pid);
        let due = started + 4_000_000_000;
        let now = epoch_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos((due - now) as u64));
        }
        let killed_at = epoch_ns();
        signal(pid, Signal::SIGKILL);
        let next = wait_for(
            &format!("a new process after kill {}", kill + 1),
            Duration::from_secs(5),
            || start_times().get(kill + 1).copied(),
        );
        first_line_ms.push(next.saturating_sub(killed_at) as f64 / 1e6);
        let pid = wait_for("the new pid", Duration::from_secs(5), || {
            daemon.instance("app", "worker.1").pid.filter(|p| *p != pid)
        });
        let spawned = root.daemon_log_time(&format!("started pid {pid}"));
        spawned_ms.push(spawned.saturating_sub(killed_at) as f64 / 1e6);
    }
    let last = daemon.wait_state("app", "worker.1", InstanceState::Running);
    pids.insert(last.pid.unwrap());
    assert_eq!(
        pids.len(),
        KILLS + 1,
        "every kill gave a new process: {pids:?}"
    );
    assert_eq!(start_times().len(), KILLS + 1);
    assert_eq!(last.restarts as usize, KILLS);
    assert_eq!(last.last_exit.as_deref(), Some("SIGKILL"));
    let log = fs::read_to_string(root.log_file("app", "worker.1")).unwrap();
    assert_eq!(
        log.matches("exited with SIGKILL after").count(),
        KILLS,
        "{log}"
    );
    assert!(
        !log.contains("restarting in"),
        "a kill waited out a back-off:\n{log}"
    );
    for (what, times) in [
        ("kill -> daemon's `started pid`", &spawned_ms),
        ("kill -> new process's first line", &first_line_ms),
    ] {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "respawn ({what}), {KILLS} kills 4 s apart: median {:.1} ms, p90 {:.1} ms, \
             max {:.1} ms; all: {:?}",
            sorted[KILLS / 2],
            sorted[KILLS * 9 / 10],
            sorted[KILLS - 1],
            times
                .iter()
                .map(|ms| format!("{ms:.1}"))
                .collect::<Vec<_>>()
        );
    }
}

fn epoch_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn crash_loop_backs_off_is_shown_and_recovers_when_fixed() {
    let root = TestRoot::new();
    let scratch = root.scratch();
    let starts = scratch.join("starts");
    let fixed = scratch.join("fixed");
    let daemon = root.start();
    let cmd = format!(
        "sh {} {} {}",
        fixture("crashy.sh"),
        starts.display(),
        fixed.display()
    );
    daemon.apply(&spec(
        "loop",
        &scratch,
        vec![process("worker", cmd, Role::Worker, 1)],
    ));

    // Crashes 1..5 come after delays 0, 0.1, 0.2, 0.4 (s), then 0.8 before the 6th start.
    let looping = daemon.wait_state("loop", "worker.1", InstanceState::CrashLooping);
    assert_eq!(looping.last_exit.as_deref(), Some("exit 3"));
    let times: Vec<u128> = wait_for("six starts", Duration::from_secs(10), || {
        let t: Vec<u128> = fs::read_to_string(&starts)
            .ok()?
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        (t.len() >= 6).then_some(t)
    });
    let gaps_ms: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    println!("back-off curve, gaps between starts (ms): {gaps_ms:?}");
    // Each gap is the back-off delay plus the script's short life. The delays are floors
    // (timers never fire early), so the checks hold on a loaded machine too; 50 ms covers
    // the jitter between a process starting and its `date` running.
    assert!(
        gaps_ms[0] < 250,
        "first restart must be immediate: {gaps_ms:?}"
    );
    for (gap, delay) in gaps_ms[1..5].iter().zip([100, 200, 400, 800]) {
        assert!(
            *gap + 50 >= delay,
            "restarted before its back-off delay: {gaps_ms:?}"
        );
    }
    assert!(
        gaps_ms[4] > 2 * gaps_ms[1],
        "back-off does not grow: {gaps_ms:?}"
    );

    fs::write(&fixed, "").unwrap();
    let recovered = wait_for("recovery", Duration::from_secs(10), || {
        let i = daemon.instance("loop", "worker.1");
        (i.state == InstanceState::Running && i.pid.is_some_and(alive) && fixed.exists())
            .then_some(i)
    });
    assert!(recovered.restarts >= 5);
    root.wait_log("loop", "worker.1", "restarting in");
    // Fixed and up past the start threshold: a kill now restarts at once, whatever the
    // crash loop before.
    std::thread::sleep(Duration::from_millis(1500));
    let old = recovered.pid.unwrap();
    signal(old, Signal::SIGKILL);
    let back = wait_for("a new process at once", Duration::from_secs(5), || {
        let i = daemon.instance("loop", "worker.1");
        (i.state == InstanceState::Running && i.pid.is_some_and(|p| p != old && alive(p)))
            .then_some(i)
    });
    assert_eq!(back.last_exit.as_deref(), Some("SIGKILL"));
    root.wait_log("loop", "worker.1", "exited with SIGKILL after");
}

#[test]
fn manual_restart_bypasses_the_back_off() {
    let root = TestRoot::new();
    let scratch = root.scratch();
    let starts = scratch.join("starts");
    let fixed = scratch.join("fixed");
    let daemon = root.start();
    let cmd = format!(
        "sh {} {} {}",
        fixture("crashy.sh"),
        starts.display(),
        fixed.display()
    );
    daemon.apply(&spec(
        "rs",
        &scratch,
        vec![process("worker", cmd, Role::Worker, 1)],
    ));
    // After the 6th crash in a row (5 restarts so far) the back-off is 1.6 s.
    wait_for("the 6th crash", Duration::from_secs(10), || {
        let i = daemon.instance("rs", "worker.1");
        (i.state == InstanceState::CrashLooping && i.restarts >= 5).then_some(())
    });
    let starts_before = fs::read_to_string(&starts).unwrap().lines().count();
    fs::write(&fixed, "").unwrap();
    let asked = Instant::now();
    let resp = daemon.call(&Request::Restart {
        app: "rs".into(),
        kind: None,
    });
    assert!(matches!(resp, Ok(Response::Done { .. })), "{resp:?}");
    let i = daemon.wait_state("rs", "worker.1", InstanceState::Running);
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "restart waited out the back-off: {took:?}"
    );
    assert!(alive(i.pid.unwrap()));
    // One new start, which stays up now that the fault is fixed.
    wait_for(
        "the restarted process to run",
        Duration::from_secs(5),
        || {
            let n = fs::read_to_string(&starts).ok()?.lines().count();
            (n == starts_before + 1).then_some(())
        },
    );
    assert!(alive(i.pid.unwrap()));
}

#[test]
fn scale_up_and_down_touches_only_what_changes() {
    let root = TestRoot::new();
    let daemon = root.start();
    let report = daemon.apply(&spec("sc", &root.scratch(), vec![web_process(1)]));
    assert_eq!(report.started, ["web.1"]);
    let one = daemon.wait_state("sc", "web.1", InstanceState::Running);

    let report = daemon.scale("sc", &[("web", 3)]);
    assert_eq!(report.started, ["web.2", "web.3"]);
    assert_eq!(report.unchanged, ["web.1"]);
    assert!(report.stopped.is_empty() && report.restarted.is_empty());
    let mut ports = BTreeSet::new();
    let mut pids = Vec::new();
    for n in 1..=3 {
        let i = daemon.wait_state("sc", &format!("web.{n}"), InstanceState::Running);
        let (port, pid) = (i.port.unwrap(), i.pid.unwrap());
        assert!(ports.insert(port), "port {port} given twice");
        // The instance on that port is the one status names.
        assert_eq!(ask_port(port), format!("web.{n} {pid}"));
        pids.push(pid);
    }
    assert_eq!(
        pids[0],
        one.pid.unwrap(),
        "web.1 was restarted by a scale-up"
    );
    assert_eq!(daemon.instance("sc", "web.1").port, one.port);

    let report = daemon.scale("sc", &[("web", 0)]);
    assert_eq!(report.stopped, ["web.1", "web.2", "web.3"]);
    for pid in pids {
        assert!(!exists(pid), "pid {pid} survived the scale-down");
    }
    let status = daemon.status("sc");
    assert!(status.instances.is_empty(), "{:?}", status.instances);
    assert_eq!(status.formation["web"], 0);
}

#[test]
fn stopping_a_tree_with_a_term_ignoring_grandchild_leaves_nothing() {
    let root = TestRoot::new();
    let daemon = root.start();
    let mut s = spec(
        "tree",
        &root.scratch(),
        vec![process(
            "worker",
            format!("sh {} {}", fixture("tree.sh"), python()),
            Role::Worker,
            1,
        )],
    );
    s.settings.stop_grace_ms = 500;
    daemon.apply(&s);
    let leader = daemon
        .wait_state("tree", "worker.1", InstanceState::Running)
        .pid
        .unwrap();
    let log = root.log_file("tree", "worker.1");
    wait_for("the grandchild", Duration::from_secs(10), || {
        fs::read_to_string(&log)
            .ok()?
            .contains("grandchild up")
            .then_some(())
    });
    let members = group_members(leader);
    assert!(
        members.len() >= 3,
        "expected sh + python + sleep, got {members:?}"
    );

    let resp = daemon.call(&Request::Stop { app: "tree".into() });
    assert!(matches!(resp, Ok(Response::Done { .. })), "{resp:?}");
    for pid in &members {
        assert!(
            !exists(*pid),
            "pid {pid} of the group is still there (zombie or alive)"
        );
    }
    assert!(group_members(leader).is_empty());
    let status = daemon.status("tree");
    assert!(status.stopped);
    assert!(
        status
            .instances
            .iter()
            .all(|i| i.state == InstanceState::Stopped)
    );
    // Start brings it back.
    let resp = daemon.call(&Request::Start { app: "tree".into() });
    assert!(matches!(resp, Ok(Response::Done { .. })), "{resp:?}");
    let again = daemon.wait_state("tree", "worker.1", InstanceState::Running);
    assert_ne!(again.pid, Some(leader));
}

/// A stop reaches the app as SIGTERM first, and the app gets to exit cleanly within its grace
/// (the daemon's threads block SIGTERM for themselves: a child inheriting that mask would sit
/// out every SIGTERM until SIGKILL; `spawn::tests::a_process_starts_with_no_signal_blocked`
/// checks the mask on both spawn paths, this one runs whichever the host gives).
#[test]
fn a_stop_reaches_the_app_as_sigterm() {
    let root = TestRoot::new();
    let daemon = root.start();
    let mut s = spec(
        "polite",
        &root.scratch(),
        vec![process(
            "worker",
            format!("{} -u {}", python(), fixture("graceful.py")),
            Role::Worker,
            2,
        )],
    );
    s.settings.stop_grace_ms = 3000;
    daemon.apply(&s);
    for instance in ["worker.1", "worker.2"] {
        daemon.wait_state("polite", instance, InstanceState::Running);
        let log = root.log_file("polite", instance);
        wait_for("the worker to start", Duration::from_secs(10), || {
            fs::read_to_string(&log).ok()?.contains("up").then_some(())
        });
    }
    let resp = daemon.call(&Request::Stop {
        app: "polite".into(),
    });
    assert!(matches!(resp, Ok(Response::Done { .. })), "{resp:?}");
    for instance in ["worker.1", "worker.2"] {
        let log = fs::read_to_string(root.log_file("polite", instance)).unwrap_or_default();
        assert!(log.contains("got SIGTERM"), "{instance}: {log}");
    }
}

#[test]
fn apply_restarts_only_the_kinds_that_changed() {
    let root = TestRoot::new();
    let daemon = root.start();
    let mut s = spec(
        "diff",
        &root.scratch(),
        vec![web_process(1), sleeper("worker", 1), sleeper("other", 1)],
    );
    daemon.apply(&s);
    let web = daemon.wait_state("diff", "web.1", InstanceState::Running);
    let worker = daemon.wait_state("diff", "worker.1", InstanceState::Running);
    let other = daemon.wait_state("diff", "other.1", InstanceState::Running);

    let report = daemon.apply(&s);
    assert_eq!(report.unchanged, ["other.1", "web.1", "worker.1"]);
    assert!(report.started.is_empty() && report.stopped.is_empty() && report.restarted.is_empty());

    s.processes[1].command = "sleep 1001".into();
    let report = daemon.apply(&s);
    assert_eq!(report.restarted, ["worker.1"]);
    assert!(!exists(worker.pid.unwrap()), "old worker still there");
    let new_worker = daemon.wait_state("diff", "worker.1", InstanceState::Running);
    assert_ne!(new_worker.pid, worker.pid);
    assert_eq!(daemon.instance("diff", "web.1").pid, web.pid);
    assert_eq!(daemon.instance("diff", "other.1").pid, other.pid);

    // A kind removed from the Procfile stops.
    s.processes.remove(2);
    let report = daemon.apply(&s);
    assert_eq!(report.stopped, ["other.1"]);
    assert!(!exists(other.pid.unwrap()));

    // An env change restarts everything that runs.
    s.env.insert("NEW".into(), "1".into());
    let report = daemon.apply(&s);
    assert_eq!(report.restarted, ["web.1", "worker.1"]);
    assert_eq!(
        daemon.instance("diff", "web.1").port,
        web.port,
        "port kept across restarts"
    );

    // A new release restarts everything, even under the same workdir and command.
    s.release = "v2".into();
    let report = daemon.apply(&s);
    assert_eq!(report.release, "v2");
    assert_eq!(report.restarted, ["web.1", "worker.1"]);
}

#[test]
fn env_is_cleared_and_port_is_per_web_instance() {
    let root = TestRoot::new();
    let scratch = root.scratch();
    let daemon = root.start();
    let dump = |name: &str| {
        format!(
            "sh {} {}",
            fixture("envdump.sh"),
            scratch.join(name).display()
        )
    };
    daemon.apply(&spec(
        "env",
        &scratch,
        vec![
            process("worker", dump("worker"), Role::Worker, 1),
            process("web", dump("web"), Role::Web, 2),
        ],
    ));
    let read = |name: &str| {
        let path = scratch.join(name);
        wait_for(&format!("{name} env dump"), Duration::from_secs(10), || {
            fs::read_to_string(&path).ok()
        })
    };
    let worker = read("worker");
    assert!(!worker.contains("PIKU_TEST_DAEMON_ONLY"), "{worker}");
    assert!(worker.contains("APP_SETTING=from-spec"), "{worker}");
    assert!(worker.contains("PROC_TYPE=worker"), "{worker}");
    assert!(worker.contains("PIKU_INSTANCE=1"), "{worker}");
    assert!(!worker.contains("PORT="), "a worker got a PORT: {worker}");
    // Both web instances wrote to the same file name; the status tells their ports apart.
    let web = read("web");
    assert!(web.contains("PROC_TYPE=web"), "{web}");
    assert!(web.lines().any(|l| l.starts_with("PORT=")), "{web}");
    let status = daemon.status("env");
    let ports: BTreeSet<u16> = status
        .instances
        .iter()
        .filter(|i| i.kind == "web")
        .map(|i| i.port.expect("web has a port"))
        .collect();
    assert_eq!(ports.len(), 2);
    // The workdir is the cwd. The child may have written its dump before the daemon took
    // note of its pid (seen under load): wait for the status to show it.
    let pid = wait_for("worker.1's pid", Duration::from_secs(10), || {
        daemon.instance("env", "worker.1").pid
    });
    assert_eq!(fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), scratch);
}

#[test]
fn cron_fires_for_real_and_is_not_stacked() {
    let root = TestRoot::new();
    let scratch = root.scratch();
    let out = scratch.join("runs");
    let daemon = root.start();
    daemon.apply(&spec(
        "cr",
        &scratch,
        vec![process(
            "cron1",
            format!("sh {} {}", fixture("cron.sh"), out.display()),
            Role::Cron {
                schedule: "*/2 * * * * *".into(),
            },
            1,
        )],
    ));
    let next = wait_for("the next run in status", Duration::from_secs(5), || {
        daemon.instance("cr", "cron1.1").next_run
    });
    assert!(
        chrono::DateTime::parse_from_rfc3339(&next).is_ok(),
        "{next}"
    );
    wait_for("two cron runs", Duration::from_secs(10), || {
        (fs::read_to_string(&out).ok()?.lines().count() >= 2).then_some(())
    });
    root.wait_log("cr", "cron1.1", "cron ran");
    assert_eq!(
        daemon.instance("cr", "cron1.1").last_exit.as_deref(),
        Some("exit 0")
    );
    // A restart re-creates the entry; it keeps firing.
    let runs = fs::read_to_string(&out).unwrap().lines().count();
    let resp = daemon.call(&Request::Restart {
        app: "cr".into(),
        kind: Some("cron1".into()),
    });
    assert!(matches!(resp, Ok(Response::Done { .. })), "{resp:?}");
    wait_for("a run after the restart", Duration::from_secs(10), || {
        (fs::read_to_string(&out).ok()?.lines().count() > runs).then_some(())
    });
    // A count of 0 disables the entry.
    let report = daemon.scale("cr", &[("cron1", 0)]);
    assert_eq!(report.stopped, ["cron1.1"]);
    assert!(daemon.status("cr").instances.is_empty());
}

#[test]
fn requests_for_unknown_apps_and_kinds_are_errors() {
    let root = TestRoot::new();
    let daemon = root.start();
    daemon.apply(&spec("known", &root.scratch(), vec![sleeper("worker", 1)]));
    let err = daemon
        .call(&Request::Status {
            app: Some("nope".into()),
        })
        .unwrap_err();
    assert!(err.contains("no app named nope"), "{err}");
    let err = daemon
        .call(&Request::Scale {
            app: "known".into(),
            formation: [("web".to_string(), 2)].into(),
        })
        .unwrap_err();
    assert!(err.contains("no process kind web"), "{err}");
    let err = daemon
        .call(&Request::Stop {
            app: "../etc".into(),
        })
        .unwrap_err();
    assert!(err.contains("../etc") || err.contains(".."), "{err}");
    let resp = daemon.call(&Request::Remove {
        app: "known".into(),
    });
    assert!(matches!(resp, Ok(Response::Done { .. })), "{resp:?}");
    assert!(
        daemon
            .call(&Request::Status {
                app: Some("known".into())
            })
            .is_err()
    );
}

#[test]
fn stop_ends_processes_that_left_the_group_when_cgroups_are_available() {
    let root = TestRoot::new();
    let scratch = root.scratch();
    let pid_file = scratch.join("escapee");
    let daemon = root.start();
    let cmd = format!("sh {} {}", fixture("escape.sh"), pid_file.display());
    daemon.apply(&spec(
        "esc",
        &scratch,
        vec![process("worker", cmd, Role::Worker, 1)],
    ));
    let leader = daemon
        .wait_state("esc", "worker.1", InstanceState::Running)
        .pid
        .unwrap();
    let escapee: u32 = wait_for("the escapee's pid", Duration::from_secs(10), || {
        fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    assert!(
        !group_members(leader).contains(&escapee),
        "setsid did not leave the group"
    );
    let confined = fs::read_to_string(format!("/proc/{escapee}/cgroup"))
        .unwrap()
        .contains("/piku-");

    let resp = daemon.call(&Request::Stop { app: "esc".into() });
    assert!(matches!(resp, Ok(Response::Done { .. })), "{resp:?}");
    assert!(!exists(leader));
    if confined {
        assert!(!exists(escapee), "cgroup.kill missed a setsid escapee");
    } else {
        println!(
            "no writable cgroup2 here: the escapee is out of reach, as expected without cgroups"
        );
        signal(escapee, Signal::SIGKILL);
    }
}

#[test]
fn a_command_that_cannot_start_is_a_crash_with_a_clear_note() {
    let root = TestRoot::new();
    let daemon = root.start();
    daemon.apply(&spec(
        "nobin",
        &root.scratch(),
        vec![process(
            "worker",
            "no-such-program-piku --flag".into(),
            Role::Worker,
            1,
        )],
    ));
    let i = wait_for("repeated spawn failures", Duration::from_secs(10), || {
        let i = daemon.instance("nobin", "worker.1");
        (i.restarts >= 2).then_some(i)
    });
    assert!(i.pid.is_none());
    assert!(
        matches!(
            i.state,
            InstanceState::Backoff | InstanceState::CrashLooping
        ),
        "{i:?}"
    );
    let why = i.last_exit.unwrap();
    assert!(
        why.contains("cannot start `no-such-program-piku --flag`"),
        "{why}"
    );
    root.wait_log("nobin", "worker.1", "cannot start");
}
