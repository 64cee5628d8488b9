//! One long-running instance (`web.2`, `worker.1`): an actor that owns its process.
//!
//! The actor is a state machine in the style of s6-supervise: every (state, event) pair is
//! decided in one `match` with no wildcard arm. Events are the process exiting, the back-off
//! timer, the readiness probe (web: its port accepts a connection) and control messages.
//! Nothing else touches the process, so there is no race between a crash and a stop.

use std::io;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use hyper_proxy_glue::{HealthCheck, wait_healthy};
use piku_proto::InstanceState;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use crate::backoff::Backoff;
use crate::leftovers::Running;
use crate::logs::LogSink;
use crate::snapshot::Shared;
use crate::spawn::{self, Launch, Spawned};
use crate::stop;

/// How soon a starting web instance's port is first tried (apps are often ready within a
/// few milliseconds, and status should say so promptly)...
const PROBE_FIRST: Duration = Duration::from_millis(20);
/// ...doubling up to this...
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// ...with each port probe given this long to answer (loopback: plenty; as short as the
/// glue's probe interval, so it is exactly one probe)...
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// ...and a health path this long (an app's health endpoint may query its database; the
/// glue probes again every 100 ms within it).
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// ...and, once it has been starting for [`PROBE_SLOW_AFTER`] (a slow boot, or an app that
/// never listens), how often after that: a supervisor should not wake up for nothing.
const PROBE_SLOW_EVERY: Duration = Duration::from_secs(1);
const PROBE_SLOW_AFTER: Duration = Duration::from_secs(10);

/// Identity and launch parameters of an instance.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    pub app: String,
    pub kind: String,
    pub index: u32,
    /// The release the process runs: a new release restarts it even if nothing else changed
    /// (the code may have changed under an unchanged workdir path).
    pub release: String,
    pub launch: Launch,
    /// Web instances of an app with a front: `GET` this path must answer 2xx/3xx for the
    /// instance to be `running` (else its port accepting is enough).
    pub health_path: Option<String>,
}

impl InstanceConfig {
    /// Whether a process started for `self` is what `want` asks for.
    pub fn same_process_as(&self, want: &InstanceConfig) -> bool {
        self.launch == want.launch && self.release == want.release
    }

    /// `web.1`: the instance's name in logs, status and reports.
    pub fn name(&self) -> String {
        format!("{}.{}", self.kind, self.index)
    }

    /// What tells this process apart from every other the daemon runs (its cgroup, its
    /// record for the next daemon): during a zero-downtime switch an old and a new `web.1`
    /// run side by side, on different ports.
    pub fn slot(&self) -> String {
        match self.launch.port {
            Some(port) => format!("{}@{port}", self.name()),
            None => self.name(),
        }
    }
}

/// Requests to the actor.
pub enum Control {
    /// Stop the process (if any) and start a fresh one now, forgetting the back-off.
    Restart(oneshot::Sender<()>),
    /// Stop the process and end the actor.
    Stop,
    /// A new stop grace period (settings changed by an apply that left the process alone).
    SetGrace(Duration),
    /// A new health path for the readiness probe (front settings changed by an apply that
    /// left the process alone); used from the next probe on.
    SetHealthPath(Option<String>),
}

/// Resolves once an actor has ended (its process stopped and reaped).
#[derive(Clone)]
pub struct Done(watch::Receiver<bool>);

impl Done {
    /// A `Done` and the sender that completes it.
    pub fn channel() -> (watch::Sender<bool>, Done) {
        let (tx, rx) = watch::channel(false);
        (tx, Done(rx))
    }

    pub async fn wait(mut self) {
        // An Err means the actor is gone, which is what we wait for.
        let _ = self.0.wait_for(|done| *done).await;
    }
}

/// The app manager's handle on a running actor.
pub struct InstanceHandle {
    pub config: InstanceConfig,
    pub sink: LogSink,
    control: mpsc::UnboundedSender<Control>,
    snapshot: Shared,
    done: Done,
}

impl InstanceHandle {
    /// Starts the actor; its first process is spawned once `after` (the instance it
    /// replaces) has stopped, so the two never run at once (a web port can be bound by one).
    pub fn start(
        config: InstanceConfig,
        grace: Duration,
        sink: LogSink,
        running: Arc<Running>,
        after: Option<Done>,
    ) -> InstanceHandle {
        let (control, rx) = mpsc::unbounded_channel();
        let (done_tx, done) = Done::channel();
        let snapshot = Shared::new(InstanceState::Starting);
        let actor = Actor {
            config: config.clone(),
            grace,
            sink: sink.clone(),
            running,
            snapshot: snapshot.clone(),
            state: InstanceState::Starting,
            process: None,
            backoff: Backoff::default(),
            restarts: 0,
            timer: None,
            next_probe: None,
            probe_every: PROBE_FIRST,
            cgroup: None,
        };
        tokio::spawn(async move {
            let mut actor = actor;
            if let Some(after) = after {
                after.wait().await;
            }
            // Only now: the instance this one replaces removes the cgroup when it ends.
            actor.cgroup = crate::cgroup::instance_dir(&actor.config.app, &actor.config.slot());
            actor.run(rx).await;
            let _ = done_tx.send(true);
        });
        InstanceHandle {
            config,
            sink,
            control,
            snapshot,
            done,
        }
    }

    /// Asks for a restart; the receiver fires once the new process is spawned.
    pub fn restart(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.control.send(Control::Restart(tx));
        rx
    }

    pub fn set_grace(&self, grace: Duration) {
        let _ = self.control.send(Control::SetGrace(grace));
    }

    pub fn set_health_path(&mut self, path: Option<String>) {
        if self.config.health_path != path {
            self.config.health_path.clone_from(&path);
            let _ = self.control.send(Control::SetHealthPath(path));
        }
    }

    /// Asks the actor to stop; the returned [`Done`] resolves when it has.
    pub fn stop(self) -> Done {
        let _ = self.control.send(Control::Stop);
        self.done
    }

    /// The live state the actor publishes (the front reads it to know who is up).
    pub fn snapshot(&self) -> &Shared {
        &self.snapshot
    }

    pub fn status(&self) -> piku_proto::InstanceStatus {
        self.snapshot.status(
            &self.config.kind,
            self.config.index,
            self.config.launch.port,
            self.sink.dropped(),
        )
    }
}

enum Event {
    Exited(io::Result<ExitStatus>),
    TimerFired,
    Probe,
    Control(Control),
    /// The handle was dropped without a stop: treated as a stop, never as an orphaned process.
    HandleGone,
}

/// The running process of an instance.
struct Process {
    child: Child,
    pid: u32,
    started: Instant,
}

struct Actor {
    config: InstanceConfig,
    grace: Duration,
    sink: LogSink,
    running: Arc<Running>,
    snapshot: Shared,
    state: InstanceState,
    process: Option<Process>,
    backoff: Backoff,
    /// Restarts after crashes, for status.
    restarts: u32,
    /// When the back-off ends.
    timer: Option<Instant>,
    /// When to try the web port next.
    next_probe: Option<Instant>,
    /// The wait before the next probe: short at first, backing off.
    probe_every: Duration,
    /// The instance's own cgroup, when cgroups are available.
    cgroup: Option<std::path::PathBuf>,
}

/// What the actor does after an event.
enum Next {
    Continue,
    End,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Control>) {
        // Requests that arrived while waiting for the replaced instance: a stop means this
        // instance never needs to run (a quick scale up then down), a restart is what is
        // about to happen anyway.
        while let Ok(control) = rx.try_recv() {
            match control {
                Control::Stop => {
                    self.state = InstanceState::Stopped;
                    self.publish();
                    if let Some(dir) = &self.cgroup {
                        crate::cgroup::remove(dir);
                    }
                    return;
                }
                Control::Restart(reply) => {
                    let _ = reply.send(());
                }
                Control::SetGrace(grace) => self.grace = grace,
                Control::SetHealthPath(path) => self.config.health_path = path,
            }
        }
        self.launch();
        self.publish();
        loop {
            let event = self.next_event(&mut rx).await;
            let next = self.handle(event).await;
            self.publish();
            if let Next::End = next {
                return;
            }
        }
    }

    async fn next_event(&mut self, rx: &mut mpsc::UnboundedReceiver<Control>) -> Event {
        let timer = self.timer;
        let probe = self.next_probe;
        tokio::select! {
            // Exits first: a crash must be seen (and respawned) before anything else.
            biased;
            status = wait_exit(&mut self.process) => Event::Exited(status),
            control = rx.recv() => control.map_or(Event::HandleGone, Event::Control),
            () = sleep_until_some(timer) => Event::TimerFired,
            () = sleep_until_some(probe) => Event::Probe,
        }
    }

    /// The state table. `Stopping` and `Stopped` are passed through inside a stop (which
    /// runs to completion) and `Waiting` is for cron entries, so events in those states
    /// are ignored on purpose.
    async fn handle(&mut self, event: Event) -> Next {
        use InstanceState::*;
        match (self.state, event) {
            (Starting | Running, Event::Exited(status)) => self.on_exit(status),
            (Backoff | CrashLooping | Stopping | Stopped | Waiting, Event::Exited(_)) => {}

            (Backoff | CrashLooping, Event::TimerFired) => {
                self.timer = None;
                self.restarts += 1;
                self.launch();
            }
            (Starting | Running | Stopping | Stopped | Waiting, Event::TimerFired) => {
                self.timer = None;
            }

            (Starting, Event::Probe) => self.probe().await,
            (Running | Backoff | CrashLooping | Stopping | Stopped | Waiting, Event::Probe) => {
                self.next_probe = None;
            }

            (
                Starting | Running | Backoff | CrashLooping | Stopping | Stopped | Waiting,
                Event::Control(Control::Restart(reply)),
            ) => {
                self.sink.note("restart requested");
                self.stop_process().await;
                self.backoff.reset();
                self.timer = None;
                self.launch();
                let _ = reply.send(());
            }
            (
                Starting | Running | Backoff | CrashLooping | Stopping | Stopped | Waiting,
                Event::Control(Control::SetGrace(grace)),
            ) => self.grace = grace,
            (
                Starting | Running | Backoff | CrashLooping | Stopping | Stopped | Waiting,
                Event::Control(Control::SetHealthPath(path)),
            ) => self.config.health_path = path,
            (
                Starting | Running | Backoff | CrashLooping | Stopping | Stopped | Waiting,
                Event::Control(Control::Stop) | Event::HandleGone,
            ) => {
                self.stop_process().await;
                self.timer = None;
                self.state = Stopped;
                if let Some(dir) = &self.cgroup {
                    crate::cgroup::remove(dir);
                }
                self.sink.note("stopped");
                return Next::End;
            }
        }
        Next::Continue
    }

    /// Starts the process; a spawn failure is handled like a crash at once.
    fn launch(&mut self) {
        let spawned = spawn::spawn(
            &self.config.launch,
            &self.config.kind,
            self.config.index,
            self.cgroup.as_deref(),
        );
        match spawned {
            Ok(Spawned { mut child, pid }) => {
                if let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) {
                    self.sink.attach(out, err);
                }
                self.process = Some(Process {
                    child,
                    pid,
                    started: Instant::now(),
                });
                self.running.insert(self.key(), pid);
                if self.config.launch.port.is_some() {
                    self.state = InstanceState::Starting;
                    self.probe_every = PROBE_FIRST;
                    self.next_probe = Some(Instant::now() + PROBE_FIRST);
                } else {
                    self.state = InstanceState::Running;
                }
                self.publish();
                self.sink.note(&format!("started pid {pid}"));
            }
            Err(e) => {
                let why = format!("cannot start `{}`: {e}", self.config.launch.command);
                self.snapshot.update(|s| s.last_exit = Some(why.clone()));
                self.crashed(Duration::ZERO, &why);
            }
        }
    }

    fn on_exit(&mut self, status: io::Result<ExitStatus>) {
        let Some(process) = self.process.take() else {
            return;
        };
        let what = match &status {
            Ok(status) => stop::describe_exit(status),
            Err(e) => format!("wait failed: {e}"),
        };
        let uptime = process.started.elapsed();
        self.snapshot.update(|s| s.last_exit = Some(what.clone()));
        self.crashed(uptime, &format!("exited with {what}"));
        // Anything the process left in its group is cleared off the respawn path.
        let (pid, grace) = (process.pid, self.grace);
        crate::reaper::disown(pid);
        self.running.remove(&self.key(), pid);
        tokio::spawn(stop::clear_group(pid, grace));
    }

    /// Restarts now or after the back-off delay.
    fn crashed(&mut self, uptime: Duration, what: &str) {
        self.backoff.record_crash(uptime);
        let delay = self.backoff.delay();
        tracing::info!(
            app = %self.config.app,
            instance = %self.config.name(),
            delay_ms = delay.as_millis() as u64,
            crash_looping = self.backoff.crash_looping(),
            "{what}"
        );
        self.next_probe = None;
        if delay.is_zero() {
            self.restarts += 1;
            // Noted first so the log reads in order; a note is only a queue push.
            self.sink.note(&format!("{what}, restarting at once"));
            self.launch();
        } else {
            self.timer = Some(Instant::now() + delay);
            self.state = if self.backoff.crash_looping() {
                InstanceState::CrashLooping
            } else {
                InstanceState::Backoff
            };
            self.sink.note(&format!(
                "{what}, restarting in {:.1} s",
                delay.as_secs_f64()
            ));
        }
    }

    async fn probe(&mut self) {
        let Some(port) = self.config.launch.port else {
            self.next_probe = None;
            return;
        };
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        let (check, deadline) = match &self.config.health_path {
            Some(path) => (
                HealthCheck::Http { path: path.clone() },
                HEALTH_PROBE_TIMEOUT,
            ),
            None => (HealthCheck::Tcp, PROBE_TIMEOUT),
        };
        match wait_healthy(addr, &check, deadline).await {
            Ok(()) => {
                self.state = InstanceState::Running;
                self.next_probe = None;
                let what = match &self.config.health_path {
                    Some(path) => format!("healthy on port {port} ({path} answers)"),
                    None => format!("accepting connections on port {port}"),
                };
                self.sink.note(&what);
            }
            Err(_) => {
                let starting_for = self.process.as_ref().map(|p| p.started.elapsed());
                self.probe_every = match starting_for {
                    Some(t) if t >= PROBE_SLOW_AFTER => PROBE_SLOW_EVERY,
                    Some(_) | None => (self.probe_every * 2).min(PROBE_EVERY),
                };
                self.next_probe = Some(Instant::now() + self.probe_every);
            }
        }
    }

    /// Stops the current process, if any (SIGTERM, grace, SIGKILL to the group).
    async fn stop_process(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        self.state = InstanceState::Stopping;
        self.publish();
        let status = stop::stop_group(&mut process.child, process.pid, self.grace).await;
        // What left the process group (setsid) is still in the cgroup.
        if let Some(dir) = &self.cgroup {
            crate::cgroup::kill(dir).await;
        }
        self.running.remove(&self.key(), process.pid);
        let what = status.map_or_else(|| "unknown exit".to_string(), |s| stop::describe_exit(&s));
        self.snapshot.update(|s| s.last_exit = Some(what));
    }

    fn key(&self) -> String {
        format!("{}/{}", self.config.app, self.config.slot())
    }

    fn publish(&self) {
        let (pid, started) = match &self.process {
            Some(p) => (Some(p.pid), Some(p.started.into_std())),
            None => (None, None),
        };
        let (state, restarts) = (self.state, self.restarts);
        self.snapshot.update(|s| {
            s.state = state;
            s.pid = pid;
            s.started = started;
            s.restarts = restarts;
        });
    }
}

async fn wait_exit(process: &mut Option<Process>) -> io::Result<ExitStatus> {
    match process {
        Some(p) => p.child.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
