//! Cron entries: each `cron*` kind runs its command on its schedule, with the app's env and
//! cwd, its output in `<kind>.1.log`. A run still going when the next one is due is never
//! stacked: the new one is skipped and the skip is written to the log (uWSGI's `unique-cron`).
//!
//! The scheduler ([`run_schedule`]) reads time from a [`Clock`] and starts runs through a
//! [`Runner`], so a unit test drives it exactly with a paused tokio clock and a fake runner;
//! [`ProcessRunner`] is the real one.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local, SecondsFormat};
use piku_model::CronSchedule;
use piku_proto::InstanceState;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::instance::{Done, InstanceConfig};
use crate::leftovers::Running;
use crate::logs::LogSink;
use crate::snapshot::Shared;
use crate::spawn;
use crate::stop;

/// Where the scheduler gets the wall-clock time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Local>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Local> {
        Local::now()
    }
}

/// One run in progress.
pub struct Run {
    pub pid: Option<u32>,
    /// Resolves with the run's exit (`exit 0`, `signal 9`) when it ends.
    pub finished: JoinHandle<String>,
    /// Asks the run to stop within the given grace period.
    pub cancel: oneshot::Sender<Duration>,
}

/// Starts runs of one cron entry and writes notes to its log.
pub trait Runner: Send + 'static {
    fn start(&mut self) -> Result<Run, String>;
    fn note(&self, msg: &str);
}

pub enum CronControl {
    Stop,
    SetGrace(Duration),
}

/// Runs `schedule` until told to stop (or the handle is dropped); a run in progress is then
/// stopped like any instance.
pub async fn run_schedule(
    clock: impl Clock,
    schedule: CronSchedule,
    mut runner: impl Runner,
    snapshot: Shared,
    mut control: mpsc::UnboundedReceiver<CronControl>,
    mut grace: Duration,
) {
    enum Event {
        Control(Option<CronControl>),
        Finished(String),
        Due(DateTime<Local>),
    }
    let mut current: Option<Run> = None;
    loop {
        let now = clock.now();
        let next = schedule.next_after(&now);
        snapshot.update(|s| {
            s.next_run = next.map(|n| n.to_rfc3339_opts(SecondsFormat::Secs, false));
            if current.is_none() {
                s.state = InstanceState::Waiting;
            }
        });
        let wait = next.map(|n| (n - now).to_std().unwrap_or(Duration::ZERO));
        let event = tokio::select! {
            biased;
            c = control.recv() => Event::Control(c),
            out = finished(&mut current) => Event::Finished(out),
            () = sleep_some(wait) => match next {
                Some(next) => Event::Due(next),
                None => continue,
            },
        };
        match event {
            Event::Control(Some(CronControl::SetGrace(g))) => grace = g,
            Event::Control(Some(CronControl::Stop) | None) => {
                if let Some(run) = current.take() {
                    let _ = run.cancel.send(grace);
                    let out = run
                        .finished
                        .await
                        .unwrap_or_else(|e| format!("run failed: {e}"));
                    snapshot.update(|s| s.last_exit = Some(out));
                }
                snapshot.update(|s| {
                    s.state = InstanceState::Stopped;
                    s.pid = None;
                    s.started = None;
                    s.next_run = None;
                });
                return;
            }
            Event::Finished(out) => {
                current = None;
                snapshot.update(|s| {
                    s.last_exit = Some(out);
                    s.pid = None;
                    s.started = None;
                });
            }
            // Woke before time (the wall clock was set back): compute the next run again.
            Event::Due(due) if clock.now() < due => {}
            Event::Due(_) if current.is_some() => {
                runner.note("previous run still going, skipping");
            }
            Event::Due(_) => match runner.start() {
                Ok(run) => {
                    let pid = run.pid;
                    current = Some(run);
                    snapshot.update(|s| {
                        s.state = InstanceState::Running;
                        s.pid = pid;
                        s.started = Some(std::time::Instant::now());
                    });
                }
                Err(why) => {
                    runner.note(&why);
                    snapshot.update(|s| s.last_exit = Some(why));
                }
            },
        }
    }
}

async fn finished(current: &mut Option<Run>) -> String {
    match current {
        Some(run) => (&mut run.finished)
            .await
            .unwrap_or_else(|e| format!("run failed: {e}")),
        None => std::future::pending().await,
    }
}

async fn sleep_some(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Runs the entry's command as a process (instance 1 of its kind).
pub struct ProcessRunner {
    pub config: InstanceConfig,
    pub sink: LogSink,
    pub running: Arc<Running>,
}

impl Runner for ProcessRunner {
    fn start(&mut self) -> Result<Run, String> {
        let cgroup = crate::cgroup::instance_dir(&self.config.app, &self.config.name());
        let spawned = spawn::spawn(
            &self.config.launch,
            &self.config.kind,
            self.config.index,
            cgroup.as_deref(),
        )
        .map_err(|e| format!("cannot start `{}`: {e}", self.config.launch.command))?;
        let mut child = spawned.child;
        let pid = spawned.pid;
        if let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) {
            self.sink.attach(out, err);
        }
        let key = format!("{}/{}", self.config.app, self.config.name());
        self.running.insert(key.clone(), pid);
        self.sink.note(&format!("run started, pid {pid}"));
        let (cancel, cancelled) = oneshot::channel::<Duration>();
        let (sink, running) = (self.sink.clone(), self.running.clone());
        let finished = tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => {
                    crate::reaper::disown(pid);
                    stop::clear_group(pid, Duration::from_secs(1)).await;
                    status.ok()
                }
                grace = cancelled => {
                    let grace = grace.unwrap_or(Duration::ZERO);
                    stop::stop_group(&mut child, pid, grace).await
                }
            };
            // A run leaves nothing behind, not even processes that left its group.
            if let Some(dir) = &cgroup {
                crate::cgroup::kill(dir).await;
            }
            running.remove(&key, pid);
            let out =
                status.map_or_else(|| "unknown exit".to_string(), |s| stop::describe_exit(&s));
            sink.note(&format!("run finished: {out}"));
            out
        });
        Ok(Run {
            pid: Some(pid),
            finished,
            cancel,
        })
    }

    fn note(&self, msg: &str) {
        self.sink.note(msg);
    }
}

/// The app manager's handle on a cron entry.
pub struct CronHandle {
    pub config: InstanceConfig,
    pub schedule: String,
    pub sink: LogSink,
    control: mpsc::UnboundedSender<CronControl>,
    snapshot: Shared,
    done: Done,
}

impl CronHandle {
    /// Starts the scheduler once `after` (the entry it replaces) has stopped.
    pub fn start(
        config: InstanceConfig,
        schedule: CronSchedule,
        grace: Duration,
        sink: LogSink,
        running: Arc<Running>,
        after: Option<Done>,
    ) -> CronHandle {
        let (control, rx) = mpsc::unbounded_channel();
        let (done_tx, done) = Done::channel();
        let snapshot = Shared::new(InstanceState::Waiting);
        let runner = ProcessRunner {
            config: config.clone(),
            sink: sink.clone(),
            running,
        };
        let schedule_text = schedule.as_str().to_string();
        let (config_app, config_name) = (config.app.clone(), config.name());
        let shared = snapshot.clone();
        tokio::spawn(async move {
            if let Some(after) = after {
                after.wait().await;
            }
            let (app, name) = (config_app, config_name);
            run_schedule(SystemClock, schedule, runner, shared, rx, grace).await;
            if let Some(dir) = crate::cgroup::existing_dir(&app, &name) {
                crate::cgroup::remove(&dir);
            }
            let _ = done_tx.send(true);
        });
        CronHandle {
            config,
            schedule: schedule_text,
            sink,
            control,
            snapshot,
            done,
        }
    }

    pub fn set_grace(&self, grace: Duration) {
        let _ = self.control.send(CronControl::SetGrace(grace));
    }

    pub fn stop(self) -> Done {
        let _ = self.control.send(CronControl::Stop);
        self.done
    }

    pub fn status(&self) -> piku_proto::InstanceStatus {
        self.snapshot.status(
            &self.config.kind,
            self.config.index,
            None,
            self.sink.dropped(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::Mutex;
    use tokio::time::Instant;

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

    /// Records when runs start; each run lasts `run_for`.
    struct FakeRunner {
        clock_base: DateTime<Local>,
        start: Instant,
        run_for: Duration,
        started: Arc<Mutex<Vec<i64>>>,
        notes: Arc<Mutex<Vec<String>>>,
    }

    impl Runner for FakeRunner {
        fn start(&mut self) -> Result<Run, String> {
            let at = self.clock_base + chrono::Duration::from_std(self.start.elapsed()).unwrap();
            self.started
                .lock()
                .unwrap()
                .push((at - self.clock_base).num_seconds());
            let run_for = self.run_for;
            let (cancel, cancelled) = oneshot::channel::<Duration>();
            let finished = tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(run_for) => "exit 0".to_string(),
                    _ = cancelled => "signal 15".to_string(),
                }
            });
            Ok(Run {
                pid: None,
                finished,
                cancel,
            })
        }

        fn note(&self, msg: &str) {
            self.notes.lock().unwrap().push(msg.to_string());
        }
    }

    async fn drive(
        schedule: &str,
        run_for: Duration,
        total: Duration,
    ) -> (Vec<i64>, Vec<String>, Shared) {
        let base = Local.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let start = Instant::now();
        let started = Arc::new(Mutex::new(Vec::new()));
        let notes = Arc::new(Mutex::new(Vec::new()));
        let runner = FakeRunner {
            clock_base: base,
            start,
            run_for,
            started: started.clone(),
            notes: notes.clone(),
        };
        let snapshot = Shared::new(InstanceState::Waiting);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_schedule(
            TestClock { base, start },
            CronSchedule::parse(schedule).unwrap(),
            runner,
            snapshot.clone(),
            rx,
            Duration::from_secs(1),
        ));
        tokio::time::sleep(total).await;
        tx.send(CronControl::Stop).unwrap();
        task.await.unwrap();
        let started = started.lock().unwrap().clone();
        let notes = notes.lock().unwrap().clone();
        (started, notes, snapshot)
    }

    #[tokio::test(start_paused = true)]
    async fn fires_exactly_on_schedule() {
        let (started, notes, _) = drive(
            "*/10 * * * * *",
            Duration::from_secs(1),
            Duration::from_secs(45),
        )
        .await;
        assert_eq!(started, [10, 20, 30, 40]);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_runs_are_skipped_not_stacked() {
        // Each run lasts 25 s: the runs due at 20 and 30 s find the first still going.
        let (started, notes, _) = drive(
            "*/10 * * * * *",
            Duration::from_secs(25),
            Duration::from_secs(75),
        )
        .await;
        assert_eq!(started, [10, 40, 70]);
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(
            notes
                .iter()
                .all(|n| n == "previous run still going, skipping")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn five_field_schedules_fire_on_the_minute() {
        let (started, _, _) = drive(
            "*/2 * * * *",
            Duration::from_secs(1),
            Duration::from_secs(300),
        )
        .await;
        assert_eq!(started, [120, 240]);
    }

    #[tokio::test(start_paused = true)]
    async fn status_shows_the_next_run_and_stop_ends_a_run() {
        let (started, _, snapshot) = drive(
            "*/10 * * * * *",
            Duration::from_secs(100),
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(started, [10]);
        let snap = snapshot.get();
        assert_eq!(snap.state, InstanceState::Stopped);
        assert_eq!(snap.last_exit.as_deref(), Some("signal 15"));
    }
}
