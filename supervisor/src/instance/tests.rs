//! The shell around the state machine, with a fake child and tokio's paused clock: what the
//! actor does on a crash, a stop, a restart, a grace period running out, and a cron schedule.

use std::collections::BTreeMap;

use chrono::{DateTime, Local, TimeZone};
use piku_model::{CronSchedule, InstanceId};
use piku_proto::InstanceState;
use tokio::time::Instant;

use super::config::InstanceConfig;
use super::fake::Fake;
use super::*;
use crate::cron::{Clock, Schedule};
use crate::logs::{LogHub, Rotation};
use crate::spawn::Launch;

const GRACE: Duration = Duration::from_secs(10);

fn config(kind: &str, port: Option<u16>, schedule: Option<&str>) -> InstanceConfig {
    InstanceConfig {
        app: "app".into(),
        id: InstanceId::new(kind, 1),
        release: "v1".into(),
        launch: Launch {
            command: "app".into(),
            env: BTreeMap::new(),
            workdir: "/".into(),
            port,
        },
        health_path: None,
        schedule: schedule.map(|s| CronSchedule::parse(s).unwrap()),
        limits: Default::default(),
    }
}

fn sink() -> LogSink {
    // Nothing is written: the fake host takes the notes.
    LogHub::with_journal("/nonexistent/piku-test".into(), None).sink("app", "x.1", Rotation::PIKU)
}

fn start(fake: &Fake, config: InstanceConfig, schedule: Option<Schedule>) -> InstanceHandle {
    start_after(fake, config, schedule, None)
}

fn start_after(
    fake: &Fake,
    config: InstanceConfig,
    schedule: Option<Schedule>,
    after: Option<Done>,
) -> InstanceHandle {
    let with = With {
        host: fake.clone(),
        schedule,
        meter: Arc::new(fake.clone()),
    };
    InstanceHandle::with(config, GRACE, sink(), with, after)
}

/// Waits (on the paused clock, so instantly) until the published state satisfies `f`.
async fn until(handle: &InstanceHandle, f: impl FnMut(&Snapshot) -> bool) -> Snapshot {
    let mut state = handle.watch();
    state.wait_for(f).await.map(|seen| seen.clone()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_process_killed_every_4s_is_respawned_at_once_every_time() {
    let fake = Fake::default();
    let worker = start(&fake, config("worker", None, None), None);
    for pid in 1..=20 {
        until(&worker, |s| s.pid == Some(pid)).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let killed = Instant::now();
        fake.exit(pid, "SIGKILL");
        let s = until(&worker, |s| s.pid == Some(pid + 1)).await;
        assert_eq!(
            Instant::now(),
            killed,
            "kill {pid}: respawned with no delay at all"
        );
        assert_eq!((s.restarts, s.last_exit.as_deref()), (pid, Some("SIGKILL")));
        assert_eq!(s.state, InstanceState::Running);
    }
    worker.stop().wait().await;
}

#[tokio::test(start_paused = true)]
async fn a_process_that_dies_at_once_is_respawned_at_once_then_with_back_off() {
    let fake = Fake::default();
    let worker = start(&fake, config("worker", None, None), None);
    until(&worker, |s| s.pid == Some(1)).await;
    let killed = Instant::now();
    fake.exit(1, "SIGKILL");
    let s = until(&worker, |s| s.pid == Some(2)).await;
    assert_eq!(Instant::now(), killed, "respawned with no delay at all");
    assert_eq!((s.restarts, s.last_exit.as_deref()), (1, Some("SIGKILL")));
    fake.exit(2, "SIGKILL");
    let s = until(&worker, |s| s.state == InstanceState::Backoff).await;
    assert_eq!(s.pid, None);
    until(&worker, |s| s.pid == Some(3)).await;
    assert_eq!(Instant::now() - killed, Duration::from_millis(100));
    assert!(
        fake.log().contains(&"clear 1".to_string()),
        "{:?}",
        fake.log()
    );
    worker.stop().wait().await;
}

#[tokio::test(start_paused = true)]
async fn stop_during_back_off_ends_without_signalling() {
    let fake = Fake::default();
    fake.world().spawn_fails = true;
    let worker = start(&fake, config("worker", None, None), None);
    let s = until(&worker, |s| s.state == InstanceState::Backoff).await;
    assert_eq!(
        s.last_exit.as_deref(),
        Some("cannot start `app`: not found")
    );
    let asked = Instant::now();
    worker.stop().wait().await;
    assert_eq!(Instant::now(), asked);
    let log = fake.log();
    assert!(!log.iter().any(|l| l.starts_with("term")), "{log:?}");
    assert_eq!(log.last().map(String::as_str), Some("ended"));
}

#[tokio::test(start_paused = true)]
async fn stop_during_start_terminates_the_starting_process() {
    let fake = Fake::default();
    let web = start(&fake, config("web", Some(4000), None), None);
    // The probe never passes: the instance stays starting, probed again and again.
    until(&web, |s| s.last_probe.is_some()).await;
    assert_eq!(web.status().state, InstanceState::Starting);
    web.stop().wait().await;
    let log = fake.log();
    let term = log
        .iter()
        .position(|l| l == "term 1")
        .expect("SIGTERM sent");
    assert!(log[term..].contains(&"note stopped".to_string()), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn a_web_instance_runs_once_its_probe_passes() {
    let fake = Fake::default();
    fake.world().probe_passes = true;
    let began = Instant::now();
    let web = start(&fake, config("web", Some(4000), None), None);
    let s = until(&web, Snapshot::ready).await;
    assert_eq!(Instant::now() - began, machine::PROBE_FIRST);
    assert_eq!(s.pid, Some(1));
    let probes = fake.log().iter().filter(|l| *l == "probe").count();
    assert_eq!(probes, 1, "one probe per instance");
}

#[tokio::test(start_paused = true)]
async fn grace_expiry_sends_sigkill_to_a_group_that_ignores_sigterm() {
    let fake = Fake::default();
    fake.world().ignores_term = true;
    let worker = start(&fake, config("worker", None, None), None);
    until(&worker, |s| s.pid == Some(1)).await;
    let asked = Instant::now();
    let done = worker.stop();
    done.wait().await;
    assert_eq!(Instant::now() - asked, GRACE);
    let log = fake.log();
    let signals: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("term") || l.starts_with("kill"))
        .collect();
    assert_eq!(signals, ["term 1", "kill 1"]);
}

#[tokio::test(start_paused = true)]
async fn requests_during_the_grace_period_are_seen() {
    let fake = Fake::default();
    fake.world().ignores_term = true;
    let worker = start(&fake, config("worker", None, None), None);
    until(&worker, |s| s.pid == Some(1)).await;
    let asked = Instant::now();
    let restarted = worker.restart();
    until(&worker, |s| s.state == InstanceState::Stopping).await;
    // The process exits by itself half-way through the grace period: the restart goes on
    // at once instead of waiting for the grace period to end.
    tokio::time::sleep(GRACE / 2).await;
    fake.exit(1, "exit 0");
    restarted.await.unwrap();
    assert_eq!(Instant::now() - asked, GRACE / 2);
    let s = until(&worker, |s| s.pid == Some(2)).await;
    assert_eq!(s.last_exit.as_deref(), Some("exit 0"));
    // A stop asked while a restart's stop is going on ends the instance.
    let restarted = worker.restart();
    until(&worker, |s| s.state == InstanceState::Stopping).await;
    worker.stop().wait().await;
    assert!(restarted.await.is_err(), "no restart happened");
    assert_eq!(fake.spawns().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_the_process() {
    let fake = Fake::default();
    let worker = start(&fake, config("worker", None, None), None);
    let mut state = worker.watch();
    state.wait_for(|s| s.pid == Some(1)).await.unwrap();
    drop(worker);
    let _ = state.wait_for(|s| s.state == InstanceState::Stopped).await;
    assert!(fake.log().contains(&"term 1".to_string()));
}

#[tokio::test(start_paused = true)]
async fn an_instance_starts_only_once_the_one_it_replaces_is_gone() {
    let fake = Fake::default();
    let old = start(&fake, config("worker", None, None), None);
    until(&old, |s| s.pid == Some(1)).await;
    fake.world().ignores_term = true;
    let done = old.stop();
    let new = start_after(&fake, config("worker", None, None), None, Some(done));
    until(&new, |s| s.pid == Some(2)).await;
    let spawns = fake.spawns();
    assert_eq!(
        spawns[1].at - spawns[0].at,
        GRACE,
        "after the old one's SIGKILL"
    );
}

/// Wall time that advances exactly with tokio's (paused) clock.
struct TestClock {
    base: DateTime<Local>,
    start: Instant,
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Local> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap()
    }
}

/// Runs a cron entry on `schedule` whose runs last `runs_for`, for `total`; returns the
/// seconds (from the start) at which runs started, and the fake's log.
async fn drive_cron(
    schedule: &str,
    runs_for: Duration,
    total: Duration,
) -> (Vec<u64>, Vec<String>, Snapshot) {
    let base = Local.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let start = Instant::now();
    let fake = Fake::default();
    fake.world().runs_for = Some(runs_for);
    let clock = TestClock { base, start };
    let config = config("cron1", None, Some(schedule));
    let schedule = Schedule::new(config.schedule.clone().unwrap(), clock);
    let entry = start_cron(&fake, config, schedule);
    tokio::time::sleep(total).await;
    let last = entry.watch().borrow().clone();
    entry.stop().wait().await;
    let started = fake
        .spawns()
        .iter()
        .map(|spawn| (spawn.at - start).as_secs())
        .collect();
    (started, fake.log(), last)
}

fn start_cron(fake: &Fake, config: InstanceConfig, schedule: Schedule) -> InstanceHandle {
    start(fake, config, Some(schedule))
}

#[tokio::test(start_paused = true)]
async fn cron_fires_exactly_on_schedule() {
    let (started, log, last) = drive_cron(
        "*/10 * * * * *",
        Duration::from_secs(1),
        Duration::from_secs(45),
    )
    .await;
    assert_eq!(started, [10, 20, 30, 40]);
    assert!(!log.iter().any(|l| l.contains("skipping")), "{log:?}");
    assert_eq!(last.state, InstanceState::Waiting);
    assert_eq!(last.last_exit.as_deref(), Some("exit 0"));
    assert!(last.next_run.unwrap().starts_with("2026-01-01T00:00:50"));
}

#[tokio::test(start_paused = true)]
async fn overlapping_cron_runs_are_skipped_not_stacked() {
    // Each run lasts 25 s: the runs due at 20 and 30 s find the first still going.
    let (started, log, _) = drive_cron(
        "*/10 * * * * *",
        Duration::from_secs(25),
        Duration::from_secs(75),
    )
    .await;
    assert_eq!(started, [10, 40, 70]);
    let skips = log
        .iter()
        .filter(|l| *l == "note previous run still going, skipping")
        .count();
    assert_eq!(skips, 4, "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn five_field_cron_schedules_fire_on_the_minute() {
    let (started, _, _) = drive_cron(
        "*/2 * * * *",
        Duration::from_secs(1),
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(started, [120, 240]);
}

#[tokio::test(start_paused = true)]
async fn stopping_a_cron_entry_stops_its_run() {
    let base = Local.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let fake = Fake::default();
    fake.world().runs_for = Some(Duration::from_secs(100));
    let config = config("cron1", None, Some("*/10 * * * * *"));
    let clock = TestClock {
        base,
        start: Instant::now(),
    };
    let schedule = Schedule::new(config.schedule.clone().unwrap(), clock);
    let entry = start_cron(&fake, config, schedule);
    let s = until(&entry, |s| s.pid.is_some()).await;
    assert_eq!(s.state, InstanceState::Running);
    let mut state = entry.watch();
    entry.stop().wait().await;
    let s = state.borrow_and_update().clone();
    assert_eq!(s.state, InstanceState::Stopped);
    assert_eq!(s.last_exit.as_deref(), Some("SIGTERM"));
    assert_eq!(s.next_run, None);
    assert!(
        fake.log()
            .contains(&"note run finished: SIGTERM".to_string())
    );
}
