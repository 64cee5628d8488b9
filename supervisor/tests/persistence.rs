//! The desired state outlives the daemon: a graceful restart brings every app back at its
//! formation and ports; after a SIGKILLed daemon, the next one clears the leftovers first.

mod common;

use std::time::Duration;

use common::*;
use piku_proto::{InstanceState, Request, Response};

fn formation_of(daemon: &Daemon, app: &str) -> Vec<(String, Option<u16>)> {
    daemon
        .status(app)
        .instances
        .into_iter()
        .map(|i| (i.name(), i.port))
        .collect()
}

#[test]
fn desired_state_survives_a_daemon_restart() {
    let root = TestRoot::new();
    let mut daemon = root.start();
    daemon.apply(&spec(
        "keep",
        &root.scratch(),
        vec![web_process(2), sleeper("worker", 1)],
    ));
    daemon.apply(&spec("parked", &root.scratch(), vec![sleeper("worker", 1)]));
    let resp = daemon.call(&Request::Stop {
        app: "parked".into(),
    });
    assert!(matches!(resp, Ok(Response::Done { .. })), "{resp:?}");
    let mut pids = Vec::new();
    for name in ["web.1", "web.2", "worker.1"] {
        pids.push(
            daemon
                .wait_state("keep", name, InstanceState::Running)
                .pid
                .unwrap(),
        );
    }
    let before = formation_of(&daemon, "keep");

    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0), "graceful stop must exit 0");
    for pid in &pids {
        assert!(
            !exists(*pid),
            "pid {pid} outlived the daemon's graceful stop"
        );
    }

    let daemon = root.start();
    for name in ["web.1", "web.2", "worker.1"] {
        let i = daemon.wait_state("keep", name, InstanceState::Running);
        assert!(!pids.contains(&i.pid.unwrap()));
    }
    assert_eq!(
        formation_of(&daemon, "keep"),
        before,
        "same instances on the same ports"
    );
    let port = daemon.instance("keep", "web.2").port.unwrap();
    assert!(ask_port(port).starts_with("web.2 "));
    let parked = daemon.status("parked");
    assert!(parked.stopped, "a stopped app stays stopped");
    assert!(parked.instances.iter().all(|i| i.pid.is_none()));
}

#[test]
fn a_sigkilled_daemon_leaves_nothing_running_after_the_next_start() {
    let root = TestRoot::new();
    let mut daemon = root.start();
    daemon.apply(&spec(
        "orphan",
        &root.scratch(),
        vec![web_process(1), sleeper("worker", 1)],
    ));
    let web = daemon.wait_state("orphan", "web.1", InstanceState::Running);
    let worker = daemon.wait_state("orphan", "worker.1", InstanceState::Running);

    daemon.kill9();
    // The children outlive a SIGKILLed daemon (nothing could stop them)...
    assert!(alive(web.pid.unwrap()) && alive(worker.pid.unwrap()));

    // ...and the next daemon stops them before starting the apps again on the same port.
    let daemon = root.start();
    wait_for(
        "the leftovers to be stopped",
        Duration::from_secs(10),
        || (!alive(web.pid.unwrap()) && !alive(worker.pid.unwrap())).then_some(()),
    );
    let new_web = daemon.wait_state("orphan", "web.1", InstanceState::Running);
    assert_ne!(new_web.pid, web.pid);
    assert_eq!(new_web.port, web.port);
    assert_eq!(
        ask_port(web.port.unwrap()),
        format!("web.1 {}", new_web.pid.unwrap())
    );
    let new_worker = daemon.wait_state("orphan", "worker.1", InstanceState::Running);
    assert_ne!(new_worker.pid, worker.pid);
}

#[test]
fn a_second_daemon_on_the_same_root_refuses_to_start() {
    let root = TestRoot::new();
    let _daemon = root.start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_piku-supervisor"))
        .arg("--root")
        .arg(root.root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another piku-supervisor"), "{err}");
    still_serves(&_daemon);
}

fn still_serves(daemon: &Daemon) {
    let resp = daemon.call(&Request::Status { app: None });
    assert!(matches!(resp, Ok(Response::Status { .. })), "{resp:?}");
}

#[test]
fn sighup_rereads_state_without_touching_running_apps() {
    let root = TestRoot::new();
    let daemon = root.start();
    daemon.apply(&spec("hup", &root.scratch(), vec![sleeper("worker", 2)]));
    let before: Vec<_> = (1..=2)
        .map(|n| {
            daemon
                .wait_state("hup", &format!("worker.{n}"), InstanceState::Running)
                .pid
        })
        .collect();
    // A lost state file is written again from what runs.
    let state = root.root().join("supervisor/state.json");
    std::fs::remove_file(&state).unwrap();
    signal(daemon.pid(), nix::sys::signal::Signal::SIGHUP);
    wait_for(
        "state.json to be rewritten",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&state)
                .ok()
                .filter(|s| s.contains("\"hup\""))
        },
    );
    still_serves(&daemon);
    let after: Vec<_> = (1..=2)
        .map(|n| daemon.instance("hup", &format!("worker.{n}")).pid)
        .collect();
    assert_eq!(before, after, "SIGHUP restarted processes");
}

#[test]
fn a_corrupt_state_file_is_kept_aside_and_the_daemon_still_starts() {
    let root = TestRoot::new();
    let dir = root.root().join("supervisor");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("state.json"), "{ half a file").unwrap();
    let daemon = root.start();
    still_serves(&daemon);
    assert_eq!(
        std::fs::read_to_string(dir.join("state.json.corrupt")).unwrap(),
        "{ half a file"
    );
    daemon.apply(&spec("fresh", &root.scratch(), vec![sleeper("worker", 1)]));
    daemon.wait_state("fresh", "worker.1", InstanceState::Running);
}
