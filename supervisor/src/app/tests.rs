//! The app actor and its switch, with fake children (`instance/fake.rs`) and tokio's paused
//! clock; the front is real (loopback listeners), the log files real (a temporary root).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use piku_proto::{
    AppSettings, AppSpec, AppStatus, ApplyReport, FrontSpec, InstanceState, ProcessSpec, Role,
    TcpFront,
};
use tokio::sync::{mpsc, oneshot};

use super::Ctx;
use super::actor;
use super::command::{AppError, AppHandle, Command, Directory, Progress, Reply};
use crate::instance::fake::{Fake, FakeLauncher};
use crate::logs::LogHub;
use crate::ports::Ports;
use crate::state::Store;

/// Records whether the actor asked to be forgotten, and lets it go.
#[derive(Default)]
struct Forgets(AtomicBool);

impl Directory for Forgets {
    fn retire(&self, _app: &str, _id: u64, idle: &mut dyn FnMut() -> bool) -> bool {
        let retired = idle();
        self.0.store(retired, Ordering::SeqCst);
        retired
    }
}

struct Harness {
    app: AppHandle,
    fake: Fake,
    ctx: Ctx,
    directory: Arc<Forgets>,
    _root: tempfile::TempDir,
}

fn harness() -> Harness {
    let root = tempfile::tempdir().unwrap();
    let launcher = FakeLauncher::default();
    launcher.fake.world().probe_passes = true;
    let fake = launcher.fake.clone();
    let ctx = Ctx {
        logs: LogHub::with_journal(root.path().join("logs"), None),
        launcher: Arc::new(launcher),
        ports: Ports::default(),
        store: Arc::new(Store::new(root.path().join("state.json"), BTreeMap::new())),
    };
    let directory = Arc::new(Forgets::default());
    let app = actor::spawn("shop".into(), 1, ctx.clone(), directory.clone(), None);
    Harness {
        app,
        fake,
        ctx,
        directory,
        _root: root,
    }
}

fn spec(release: &str, web: u32) -> AppSpec {
    AppSpec {
        app: "shop".into(),
        release: release.into(),
        workdir: "/srv/shop".into(),
        env: BTreeMap::new(),
        processes: vec![
            ProcessSpec {
                kind: "web".into(),
                command: "serve".into(),
                role: Role::Web,
                count: web,
            },
            ProcessSpec {
                kind: "worker".into(),
                command: "work".into(),
                role: Role::Worker,
                count: 1,
            },
        ],
        settings: AppSettings::default(),
    }
}

/// `spec` behind a front on a TCP port the daemon chooses.
fn fronted(release: &str, web: u32) -> AppSpec {
    let mut spec = spec(release, web);
    spec.settings.front = Some(FrontSpec {
        tcp: Some(TcpFront {
            bind: "127.0.0.1".into(),
            port: None,
        }),
        health_deadline_ms: 3_000,
        drain_ms: 1_000,
        ..FrontSpec::default()
    });
    spec
}

impl Harness {
    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, AppError> {
        let (reply, answer) = oneshot::channel();
        self.app.mailbox.send(command(reply)).ok().unwrap();
        answer.await.unwrap_or(Err(AppError::ShuttingDown))
    }

    /// Applies `spec`; the answer and the progress lines.
    async fn apply(&self, spec: &AppSpec) -> (Result<ApplyReport, AppError>, Vec<String>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spec = Box::new(spec.clone());
        let answer = self
            .call(|reply| Command::Apply {
                spec,
                progress: Progress::to(tx),
                reply,
            })
            .await;
        let mut progress = Vec::new();
        while let Ok(line) = rx.try_recv() {
            progress.push(line);
        }
        (answer, progress)
    }

    async fn status(&self) -> Option<AppStatus> {
        let (reply, answer) = oneshot::channel();
        self.app
            .mailbox
            .send(Command::Status { reply })
            .ok()
            .unwrap();
        answer.await.unwrap()
    }

    /// Instance name → (pid, port, state).
    async fn instances(&self) -> BTreeMap<String, (Option<u32>, Option<u16>, InstanceState)> {
        self.status()
            .await
            .map(|s| {
                s.instances
                    .into_iter()
                    .map(|i| (i.name(), (i.pid, i.port, i.state)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends an `Apply` without waiting for its answer.
    fn send_apply(&self, spec: AppSpec) -> oneshot::Receiver<Result<ApplyReport, AppError>> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Apply {
            spec: Box::new(spec),
            progress: Progress::default(),
            reply,
        };
        self.app.mailbox.send(command).ok().unwrap();
        answer
    }

    /// Waits until every instance runs.
    async fn all_running(&self) {
        loop {
            let instances = self.instances().await;
            if !instances.is_empty()
                && instances
                    .values()
                    .all(|(_, _, state)| *state == InstanceState::Running)
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

fn names(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

#[tokio::test(start_paused = true)]
async fn apply_starts_what_is_new_and_touches_only_what_changed() {
    let h = harness();
    let (report, _) = h.apply(&spec("v1", 2)).await;
    let report = report.unwrap();
    assert_eq!(names(&report.started), ["web.1", "web.2", "worker.1"]);
    h.all_running().await;
    let before = h.instances().await;
    let ports: Vec<_> = before.values().filter_map(|(_, port, _)| *port).collect();
    assert_eq!(ports.len(), 2);
    assert_ne!(ports[0], ports[1]);

    let (report, _) = h.apply(&spec("v1", 2)).await;
    assert_eq!(
        names(&report.unwrap().unchanged),
        ["web.1", "web.2", "worker.1"]
    );

    let mut changed = spec("v1", 2);
    changed.processes[1].command = "work harder".into();
    let report = h.apply(&changed).await.0.unwrap();
    assert_eq!(names(&report.restarted), ["worker.1"]);
    let old_worker = before["worker.1"].0.unwrap();
    assert!(
        !h.fake.alive().contains(&old_worker),
        "answered before the old one was gone"
    );
    let after = h.instances().await;
    assert_eq!(after["web.1"], before["web.1"], "web.1 untouched");
    assert_eq!(
        h.ctx.store.snapshot().apps["shop"].spec.processes[1].command,
        "work harder"
    );
}

#[tokio::test(start_paused = true)]
async fn scale_changes_only_the_named_kinds_and_refuses_unknown_ones() {
    let h = harness();
    h.apply(&spec("v1", 1)).await.0.unwrap();
    let scale = |formation: &[(&str, u32)]| {
        let formation: BTreeMap<String, u32> =
            formation.iter().map(|(k, c)| (k.to_string(), *c)).collect();
        h.call(move |reply| Command::Scale { formation, reply })
    };
    let report = scale(&[("web", 3)]).await.unwrap();
    assert_eq!(names(&report.started), ["web.2", "web.3"]);
    assert_eq!(names(&report.unchanged), ["web.1", "worker.1"]);
    let report = scale(&[("web", 1)]).await.unwrap();
    assert_eq!(names(&report.stopped), ["web.2", "web.3"]);
    let err = scale(&[("nope", 1)]).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "app shop has no process kind nope (its kinds: web, worker)"
    );
    let err = scale(&[("web", 1000)]).await.unwrap_err().to_string();
    assert!(err.contains("web=1000"), "{err}");
    assert_eq!(h.status().await.unwrap().formation["web"], 1);
}

#[tokio::test(start_paused = true)]
async fn stop_keeps_the_formation_and_ports_and_start_brings_it_back() {
    let h = harness();
    h.apply(&spec("v1", 2)).await.0.unwrap();
    h.all_running().await;
    let before = h.instances().await;
    h.call(|reply| Command::Stop { reply }).await.unwrap();
    assert!(
        h.fake.alive().is_empty(),
        "every process stopped before the answer"
    );
    let stopped = h.status().await.unwrap();
    assert!(stopped.stopped);
    for i in &stopped.instances {
        assert_eq!(i.state, InstanceState::Stopped);
        assert_eq!(i.port, before[&i.name()].1, "{} keeps its port", i.name());
    }
    assert!(h.ctx.store.snapshot().apps["shop"].stopped, "remembered");
    let report = h
        .call(|reply| Command::Start {
            progress: Progress::default(),
            reply,
        })
        .await
        .unwrap();
    assert_eq!(report.started.len(), 3);
    h.all_running().await;
    assert_eq!(h.instances().await["web.2"].1, before["web.2"].1);
}

#[tokio::test(start_paused = true)]
async fn remove_stops_everything_and_the_actor_retires() {
    let h = harness();
    h.apply(&spec("v1", 1)).await.0.unwrap();
    h.call(|reply| Command::Remove { reply }).await.unwrap();
    assert!(h.fake.alive().is_empty());
    assert!(!h.ctx.store.snapshot().apps.contains_key("shop"));
    // The actor asks to be forgotten once idle, and ends: its mailbox closes.
    h.app.mailbox.closed().await;
    assert!(h.directory.0.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn commands_for_an_app_that_does_not_exist_are_refused() {
    let h = harness();
    let err = h.call(|reply| Command::Stop { reply }).await.unwrap_err();
    assert_eq!(err.to_string(), "no app named shop");
    // An actor without an app does not linger.
    h.app.mailbox.closed().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_release_behind_a_front_is_switched_to_blue_green() {
    let h = harness();
    h.apply(&fronted("v1", 2)).await.0.unwrap();
    h.all_running().await;
    let old = h.instances().await;
    let (report, progress) = h.apply(&fronted("v2", 2)).await;
    let report = report.unwrap();
    // The switched ones come after the rest, which changed in place.
    assert_eq!(names(&report.restarted), ["worker.1", "web.1", "web.2"]);
    for needle in [
        "waiting for web.1 on port",
        "web.2 healthy after",
        "2 new web instance(s) healthy after",
        "switched 2 web instance(s)",
    ] {
        assert!(
            progress.iter().any(|p| p.contains(needle)),
            "{needle}: {progress:?}"
        );
    }
    let new = h.instances().await;
    for name in ["web.1", "web.2"] {
        assert_ne!(new[name].1, old[name].1, "{name} on a fresh port");
        assert!(
            !h.fake.alive().contains(&old[name].0.unwrap()),
            "old {name} stopped"
        );
    }
    let status = h.status().await.unwrap();
    assert_eq!(status.release, "v2");
    // The pool is the new pair (ports of the new ones).
    let front = status.front.unwrap();
    assert_eq!(front.backends, ["web.1", "web.2"]);
    // One new process per web instance, no more.
    let v2_web: Vec<_> = h
        .fake
        .spawns()
        .into_iter()
        .filter(|s| s.release == "v2" && s.port.is_some())
        .collect();
    assert_eq!(v2_web.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_release_that_never_becomes_ready_is_not_switched_to() {
    let h = harness();
    h.apply(&fronted("v1", 2)).await.0.unwrap();
    h.all_running().await;
    let old = h.instances().await;
    let ports_before = h.ctx.store.snapshot().apps["shop"].ports.clone();
    h.fake.world().unready.insert("v2".into());
    let err = h.apply(&fronted("v2", 2)).await.0.unwrap_err().to_string();
    assert!(
        err.contains("not healthy after 3.0s: last probe: connection refused; not switched: the old instances keep serving"),
        "{err}"
    );
    assert!(err.contains("\nlast lines of web."), "{err}");
    assert!(
        err.contains("[piku] started pid"),
        "the log is quoted: {err}"
    );
    assert_eq!(h.instances().await, old, "the old instances run on");
    assert_eq!(h.status().await.unwrap().release, "v1");
    assert_eq!(h.ctx.store.snapshot().apps["shop"].ports, ports_before);
    let v2_alive = h
        .fake
        .spawns()
        .iter()
        .filter(|s| s.release == "v2")
        .any(|s| h.fake.alive().contains(&s.pid));
    assert!(!v2_alive, "the new instances were stopped");
}

#[tokio::test(start_paused = true)]
async fn a_release_that_exits_at_start_is_abandoned_without_waiting() {
    let h = harness();
    h.apply(&fronted("v1", 1)).await.0.unwrap();
    h.all_running().await;
    h.fake
        .world()
        .exit_at_start
        .insert("v2".into(), "exit 3".into());
    let began = tokio::time::Instant::now();
    let err = h.apply(&fronted("v2", 1)).await.0.unwrap_err().to_string();
    assert!(
        err.starts_with("web.1 exited before it became healthy (exit 3); not switched"),
        "{err}"
    );
    assert!(
        began.elapsed() < std::time::Duration::from_secs(3),
        "did not wait for the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn status_is_answered_during_a_switch_and_changes_wait_their_turn() {
    let h = harness();
    h.apply(&fronted("v1", 1)).await.0.unwrap();
    h.all_running().await;
    h.fake.world().unready.insert("v2".into());
    let deploy = h.send_apply(fronted("v2", 1));
    let (reply, mut scale) = oneshot::channel();
    let formation = BTreeMap::from([("worker".to_string(), 2)]);
    h.app
        .mailbox
        .send(Command::Scale { formation, reply })
        .ok()
        .unwrap();
    // Answered at once, while the switch waits: the old release still serves.
    let status = h.status().await.unwrap();
    assert_eq!(status.release, "v1");
    assert_eq!(status.formation["worker"], 1);
    assert!(scale.try_recv().is_err(), "the scale waits for the switch");
    h.fake.world().unready.clear();
    let report = deploy.await.unwrap().unwrap();
    assert_eq!(names(&report.restarted), ["worker.1", "web.1"]);
    let report = scale.await.unwrap().unwrap();
    assert_eq!(names(&report.started), ["worker.2"]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_cuts_a_switch_short_and_stops_every_process() {
    let h = harness();
    h.apply(&fronted("v1", 1)).await.0.unwrap();
    h.all_running().await;
    h.fake.world().unready.insert("v2".into());
    let deploy = h.send_apply(fronted("v2", 1));
    // The switch has started its new instance.
    while !h.fake.spawns().iter().any(|s| s.release == "v2") {
        tokio::task::yield_now().await;
    }
    let (reply, stopped) = oneshot::channel();
    h.app
        .mailbox
        .send(Command::Shutdown { reply })
        .ok()
        .unwrap();
    stopped.await.unwrap();
    assert!(h.fake.alive().is_empty(), "old and new instances stopped");
    assert!(deploy.await.is_err(), "the deploy hears the shutdown");
    let err = h.call(|reply| Command::Stop { reply }).await.unwrap_err();
    assert!(matches!(err, AppError::ShuttingDown), "{err}");
    assert!(
        !h.ctx.store.snapshot().apps["shop"].stopped,
        "kept for the next start"
    );
}

#[tokio::test(start_paused = true)]
async fn restart_behind_a_front_renews_web_blue_green_then_the_rest() {
    let h = harness();
    h.apply(&fronted("v1", 1)).await.0.unwrap();
    h.all_running().await;
    let old = h.instances().await;
    h.call(|reply| Command::Restart {
        kind: None,
        progress: Progress::default(),
        reply,
    })
    .await
    .unwrap();
    h.all_running().await;
    let new = h.instances().await;
    assert_ne!(
        new["web.1"].1, old["web.1"].1,
        "web.1 renewed on a fresh port"
    );
    assert_ne!(new["worker.1"].0, old["worker.1"].0, "worker.1 restarted");
    assert_eq!(new["worker.1"].1, None);
    // A restart of one kind that is not web touches web not at all.
    h.call(|reply| Command::Restart {
        kind: Some("worker".into()),
        progress: Progress::default(),
        reply,
    })
    .await
    .unwrap();
    assert_eq!(h.instances().await["web.1"].0, new["web.1"].0);
}

#[tokio::test(start_paused = true)]
async fn a_first_apply_behind_a_front_answers_once_its_web_instances_are_ready() {
    let h = harness();
    let (report, progress) = h.apply(&fronted("v1", 2)).await;
    let report = report.unwrap();
    assert_eq!(names(&report.started), ["web.1", "web.2", "worker.1"]);
    for needle in [
        "waiting for web.1 on port",
        "web.2 healthy after",
        "2 web instance(s) healthy",
    ] {
        assert!(
            progress.iter().any(|p| p.contains(needle)),
            "{needle}: {progress:?}"
        );
    }
    // Ready when answered: the front already sends traffic to both.
    let status = h.status().await.unwrap();
    assert_eq!(status.front.unwrap().backends, ["web.1", "web.2"]);
    // Web first, then the rest.
    let order: Vec<Option<u16>> = h.fake.spawns().iter().map(|s| s.port).collect();
    assert!(
        order[..2].iter().all(Option::is_some) && order[2].is_none(),
        "{order:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_first_release_that_never_becomes_ready_leaves_nothing_running() {
    let h = harness();
    h.fake.world().unready.insert("v1".into());
    let err = h.apply(&fronted("v1", 2)).await.0.unwrap_err().to_string();
    assert!(
        err.contains("not healthy after 3.0s: last probe: connection refused; not started: its processes were stopped"),
        "{err}"
    );
    assert!(
        err.contains("[piku] started pid"),
        "the log is quoted: {err}"
    );
    assert!(h.fake.alive().is_empty(), "nothing left running");
    assert!(
        !h.fake.spawns().iter().any(|s| s.port.is_none()),
        "the worker never started"
    );
    assert!(
        !h.ctx.store.snapshot().apps.contains_key("shop"),
        "no app recorded"
    );
    // The app does not exist: its actor is gone.
    h.app.mailbox.closed().await;
}

#[tokio::test(start_paused = true)]
async fn starting_a_stopped_app_whose_release_fails_keeps_it_stopped() {
    let h = harness();
    h.apply(&fronted("v1", 1)).await.0.unwrap();
    h.call(|reply| Command::Stop { reply }).await.unwrap();
    h.fake
        .world()
        .exit_at_start
        .insert("v1".into(), "exit 1".into());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let err = h
        .call(|reply| Command::Start {
            progress: Progress::to(tx),
            reply,
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("web.1 exited before it became healthy (exit 1); not started"),
        "{err}"
    );
    assert!(
        rx.try_recv()
            .unwrap()
            .starts_with("waiting for web.1 on port")
    );
    let status = h.status().await.unwrap();
    assert!(status.stopped);
    assert!(status.front.is_none(), "the front is closed again");
    assert!(h.fake.alive().is_empty());
    assert!(h.ctx.store.snapshot().apps["shop"].stopped);
}

/// `fronted` with `PIKU_MEMORY_MAX=100M` (soft mark 90M).
fn capped(release: &str) -> AppSpec {
    let mut spec = fronted(release, 1);
    spec.settings.limits.memory_max_bytes = Some(100 << 20);
    spec
}

impl Harness {
    /// The status of one instance.
    async fn instance(&self, name: &str) -> piku_proto::InstanceStatus {
        let status = self.status().await.expect("the app exists");
        status
            .instances
            .into_iter()
            .find(|i| i.name() == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }
}

#[tokio::test(start_paused = true)]
async fn under_the_soft_mark_nothing_happens() {
    let h = harness();
    h.apply(&capped("v1")).await.0.unwrap();
    h.all_running().await;
    let before = h.instances().await;
    for (pid, _, _) in before.values() {
        h.fake.world().memory.insert(pid.unwrap(), 89 << 20);
    }
    tokio::time::sleep(super::ceiling::CHECK_EVERY * 5).await;
    assert_eq!(h.instances().await, before);
    assert!(!h.fake.log().iter().any(|l| l.contains("soft mark")));
}

#[tokio::test(start_paused = true)]
async fn a_worker_over_the_soft_mark_is_restarted_in_place_and_says_why() {
    let h = harness();
    h.apply(&capped("v1")).await.0.unwrap();
    h.all_running().await;
    let old = h.instance("worker.1").await.pid.unwrap();
    h.fake.world().memory.insert(old, 91 << 20);
    tokio::time::sleep(super::ceiling::CHECK_EVERY * 2).await;
    h.all_running().await;
    let worker = h.instance("worker.1").await;
    assert_ne!(worker.pid, Some(old));
    assert_eq!(
        worker.last_exit.as_deref(),
        Some("memory-soft-limit restart")
    );
    assert_eq!(worker.restarts, 1);
    let log = h.fake.log();
    let note = log
        .iter()
        .position(|l| l.contains("crossed the soft mark 90M (90 % of PIKU_MEMORY_MAX=100M)"))
        .unwrap_or_else(|| panic!("{log:?}"));
    assert_eq!(log[note + 1], format!("term {old}"), "{log:?}");
    // Asked once per process: the old one's figure does not ask again.
    assert_eq!(
        log.iter().filter(|l| l.contains("soft mark")).count(),
        1,
        "{log:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_web_instance_over_the_soft_mark_is_replaced_through_the_switch() {
    let h = harness();
    h.apply(&capped("v1")).await.0.unwrap();
    h.all_running().await;
    let old = h.instance("web.1").await;
    let worker = h.instance("worker.1").await.pid;
    h.fake.world().memory.insert(old.pid.unwrap(), 95 << 20);
    // The check, the new instance's readiness, the drain of the old one.
    tokio::time::sleep(super::ceiling::CHECK_EVERY * 3).await;
    h.all_running().await;
    let new = h.instance("web.1").await;
    assert_ne!(new.pid, old.pid);
    assert_ne!(
        new.port, old.port,
        "a replacement on a fresh port, beside the old one"
    );
    assert_eq!(new.last_exit.as_deref(), Some("memory-soft-limit restart"));
    assert_eq!(new.restarts, 1);
    assert_eq!(
        h.instance("worker.1").await.pid,
        worker,
        "the worker is left alone"
    );
    let log = h.fake.log();
    // The new one was spawned before the old one was told to stop.
    let spawned = log
        .iter()
        .position(|l| *l == format!("spawn {}", new.pid.unwrap()))
        .unwrap();
    let stopped = log
        .iter()
        .position(|l| *l == format!("term {}", old.pid.unwrap()))
        .unwrap_or_else(|| panic!("the old one is stopped: {log:?}"));
    assert!(spawned < stopped, "{log:?}");
    h.ctx.logs.flush_all().await;
    let lines: Vec<String> = h
        .ctx
        .logs
        .tail("shop", Some("web.1"), 50)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("crossed the soft mark 90M")
            && l.ends_with("a new instance takes over first")),
        "{lines:?}"
    );
}
