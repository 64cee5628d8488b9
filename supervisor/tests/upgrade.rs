//! Issue 15: the in-place upgrade. SIGUSR2 makes the daemon re-execute the binary at its path
//! without stopping any app: a real daemon started from a copy of the binary that the test
//! replaces (as a package upgrade does), real HTTP instances behind the front under load,
//! a worker whose every line is numbered.
//!
//! Lab shortcut: no systemd here; the daemon is signalled directly. The same upgrade under a
//! real systemd (`apt install` of a newer .deb → `systemctl reload`, same MainPID and app pids)
//! is `check_upgrade` in tests/systemd/checks.sh.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use piku_proto::{InstanceState, Role};

/// A copy of the daemon's binary, which the test may replace.
fn copied_binary(root: &TestRoot) -> PathBuf {
    let dir = root.dir.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("piku-supervisor");
    install(
        &exe,
        &std::fs::read(env!("CARGO_BIN_EXE_piku-supervisor")).unwrap(),
    );
    exe
}

/// Puts `content` at `exe` as a package does: a new file renamed over the old one (the
/// running image keeps its own).
fn install(exe: &Path, content: &[u8]) {
    let new = exe.with_extension("new");
    std::fs::write(&new, content).unwrap();
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&new, exe).unwrap();
}

/// Lines of this root's daemon logs that contain `needle`.
fn daemon_lines(root: &TestRoot, needle: &str) -> Vec<String> {
    std::fs::read_dir(root.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("daemon-"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|log| {
            log.lines()
                .filter(|l| l.contains(needle))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn front_addr(daemon: &Daemon) -> String {
    daemon
        .status("up")
        .front
        .and_then(|f| f.tcp)
        .expect("the app has a TCP front")
}

/// [`get`] through the front's Unix socket.
fn get_unix(path: &Path) -> Result<String, String> {
    let stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    get_on(stream)
}

/// 4 threads sending requests one after another through the front.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    served: Arc<Mutex<usize>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Load {
    fn start(addr: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..4)
            .map(|_| {
                let (addr, stop) = (addr.to_string(), stop.clone());
                let (served, failures) = (served.clone(), failures.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match get_once(&addr) {
                            Ok(_) => *served.lock().unwrap() += 1,
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            served,
            failures,
        }
    }

    fn served(&self) -> usize {
        *self.served.lock().unwrap()
    }

    fn wait_more(&self, more: usize) {
        let target = self.served() + more;
        wait_for("requests to be served", Duration::from_secs(20), || {
            (self.served() >= target).then_some(())
        });
    }

    /// Stops the load; returns (served, failures).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (*self.served.lock().unwrap(), failures)
    }
}

/// Every instance's name and pid, and the restarts so far.
fn processes(daemon: &Daemon) -> Vec<(String, Option<u32>, u32)> {
    daemon
        .status("up")
        .instances
        .iter()
        .map(|i| (i.name(), i.pid, i.restarts))
        .collect()
}

#[test]
fn ten_upgrades_under_load_fail_no_request_and_restart_nothing() {
    let root = TestRoot::new();
    let exe = copied_binary(&root);
    let daemon = Daemon::start_from(&root, &exe);
    let pid = daemon.pid();
    daemon.apply(&web_and_ticker_app(&root));
    daemon.wait_state("up", "ticker.1", InstanceState::Running);
    wait_for("2 backends", Duration::from_secs(20), || {
        (daemon.status("up").front?.backends.len() == 2).then_some(())
    });
    let before = processes(&daemon);
    assert!(before.iter().all(|(_, pid, _)| pid.is_some()), "{before:?}");
    let addr = front_addr(&daemon);
    let load = Load::start(&addr);
    load.wait_more(20);
    let binary = std::fs::read(env!("CARGO_BIN_EXE_piku-supervisor")).unwrap();
    for round in 1..=10 {
        // A new file at the path each time, as an upgrade of the package leaves it.
        install(&exe, &binary);
        signal(pid, Signal::SIGUSR2);
        if round == 10 {
            // A second signal while the first is being handled (an impatient admin) must
            // not kill the daemon, whichever image it reaches.
            signal(pid, Signal::SIGUSR2);
        }
        wait_for(&format!("upgrade {round}"), Duration::from_secs(30), || {
            (daemon_lines(&root, "upgraded in place").len() >= round).then_some(())
        });
        load.wait_more(20);
    }
    // Whatever a second upgrade (round 10) is doing, it is over once status answers again.
    let _ = daemon.status("up");
    let (served, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(served > 200, "only {served} requests served");
    get_unix(&root.scratch().join("up.sock")).expect("the front's Unix socket still answers");
    assert!(alive(pid), "the daemon is the same process");
    assert_eq!(processes(&daemon), before, "no process restarted");
    // The worker's lines: every one, in order, across the ten hand-overs of its pipe.
    let last = *ticks(&root).last().unwrap();
    wait_for("the ticker to go on", Duration::from_secs(10), || {
        (ticks(&root).last() > Some(&(last + 2))).then_some(())
    });
    let ticks = ticks(&root);
    let expected: Vec<u64> = (ticks[0]..ticks[0] + ticks.len() as u64).collect();
    assert_eq!(ticks, expected, "ticker lines lost or out of order");
    let times: Vec<String> = daemon_lines(&root, "upgraded in place")
        .iter()
        .filter_map(|l| l.split("serving ").nth(1).map(str::to_owned))
        .collect();
    eprintln!("signal → new image serving: {times:?}; {served} requests served");
}

#[test]
fn a_broken_binary_is_refused_and_the_old_daemon_keeps_serving() {
    let root = TestRoot::new();
    let exe = copied_binary(&root);
    let daemon = Daemon::start_from(&root, &exe);
    let pid = daemon.pid();
    daemon.apply(&web_and_ticker_app(&root));
    daemon.wait_state("up", "ticker.1", InstanceState::Running);
    wait_for("a backend", Duration::from_secs(20), || {
        (!daemon.status("up").front?.backends.is_empty()).then_some(())
    });
    let before = processes(&daemon);
    let addr = front_addr(&daemon);
    for (round, broken) in [
        "#!/bin/sh\necho 'cannot start: missing library' >&2\nexit 127\n",
        // Starts, but speaks another hand-over.
        "#!/bin/sh\necho 'piku-supervisor handover 999'\n",
    ]
    .into_iter()
    .enumerate()
    {
        install(&exe, broken.as_bytes());
        signal(pid, Signal::SIGUSR2);
        wait_for("the refusal", Duration::from_secs(20), || {
            (daemon_lines(&root, "upgrade refused").len() > round).then_some(())
        });
        assert!(alive(pid));
        get_once(&addr).expect("the old daemon still serves");
        assert_eq!(processes(&daemon), before, "nothing restarted");
    }
    let refusals = daemon_lines(&root, "upgrade refused");
    assert!(refusals[0].contains("missing library"), "{refusals:?}");
    assert!(refusals[1].contains("999"), "{refusals:?}");
    assert!(daemon_lines(&root, "handing over").is_empty());
}

#[test]
fn a_crash_looping_instance_keeps_its_back_off_across_an_upgrade() {
    let root = TestRoot::new();
    let exe = copied_binary(&root);
    let daemon = Daemon::start_from(&root, &exe);
    let pid = daemon.pid();
    let starts = root.scratch().join("starts");
    let never = root.scratch().join("never-created");
    let crashy = process(
        "worker",
        format!(
            "{} {} {}",
            fixture("crashy.sh"),
            starts.display(),
            never.display()
        ),
        Role::Worker,
        1,
    );
    daemon.apply(&spec("loop", &root.scratch(), vec![crashy]));
    // Seven restarts take ~3 s of back-off (0, 0, 0.1, 0.2, 0.4, 0.8, 1.6 s): a fresh
    // instance could not have as many right after the upgrade.
    let before = wait_for("7 restarts", Duration::from_secs(30), || {
        let i = daemon.instance("loop", "worker.1");
        (i.restarts >= 7).then_some(i)
    });
    signal(pid, Signal::SIGUSR2);
    wait_for("the upgrade", Duration::from_secs(30), || {
        (!daemon_lines(&root, "upgraded in place").is_empty()).then_some(())
    });
    let after = daemon.instance("loop", "worker.1");
    assert!(
        after.restarts >= before.restarts,
        "restarts went from {} to {}",
        before.restarts,
        after.restarts
    );
    assert_eq!(after.state, InstanceState::CrashLooping, "{after:?}");
    assert_eq!(after.last_exit.as_deref(), Some("exit 3"), "{after:?}");
}

#[test]
fn a_cron_run_in_progress_goes_on_across_an_upgrade() {
    let root = TestRoot::new();
    let exe = copied_binary(&root);
    let daemon = Daemon::start_from(&root, &exe);
    let pid = daemon.pid();
    let out = root.scratch().join("runs");
    daemon.apply(&spec(
        "cr",
        &root.scratch(),
        vec![process(
            "cron1",
            format!(
                "sh -c 'echo begin; sleep 2; echo end >> {}; echo end'",
                out.display()
            ),
            Role::Cron {
                schedule: "*/5 * * * * *".into(),
            },
            1,
        )],
    ));
    let run = daemon.wait_state("cr", "cron1.1", InstanceState::Running);
    signal(pid, Signal::SIGUSR2);
    wait_for("the upgrade", Duration::from_secs(30), || {
        (!daemon_lines(&root, "upgraded in place").is_empty()).then_some(())
    });
    assert_eq!(
        daemon.instance("cr", "cron1.1").pid,
        run.pid,
        "the same run"
    );
    // It ends on its own, and the entry waits for its next run.
    wait_for("the run's end", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).ok().filter(|s| !s.is_empty())
    });
    let after = daemon.wait_state("cr", "cron1.1", InstanceState::Waiting);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "end\n");
    assert_eq!(after.last_exit.as_deref(), Some("exit 0"), "{after:?}");
}

/// systemd's stop racing a reload: the stop is carried out, whichever image it reaches.
#[test]
fn a_stop_asked_during_an_upgrade_stops_every_app() {
    let root = TestRoot::new();
    let exe = copied_binary(&root);
    let mut daemon = Daemon::start_from(&root, &exe);
    let pid = daemon.pid();
    daemon.apply(&spec(
        "quiet",
        &root.scratch(),
        vec![process(
            "ticker",
            format!("{} {}", python(), fixture("ticker.py")),
            Role::Worker,
            1,
        )],
    ));
    let ticker = daemon
        .wait_state("quiet", "ticker.1", InstanceState::Running)
        .pid
        .expect("a pid");
    signal(pid, Signal::SIGUSR2);
    // Once the upgrade has begun: the stop reaches it mid-way (checking the binary,
    // freezing) or the new image.
    wait_for("the upgrade to begin", Duration::from_secs(10), || {
        (!daemon_lines(&root, "SIGUSR2: upgrading").is_empty()).then_some(())
    });
    signal(pid, Signal::SIGTERM);
    // Left in `daemon` until it has exited, so that a failure still stops it.
    let status = wait_for("the daemon to stop", Duration::from_secs(30), || {
        daemon.child.as_mut()?.try_wait().expect("try_wait")
    });
    daemon.child = None;
    assert!(status.success(), "{status:?}");
    assert!(!alive(ticker), "the app was stopped");
    eprintln!(
        "stopped by the new image: {}",
        !daemon_lines(&root, "upgraded in place").is_empty()
    );
}
