//! One instance (`web.2`, `worker.1`, `cron1.1`): an actor that owns its process.
//!
//! The decisions are a pure state machine ([`machine`]); this module is its thin async
//! shell: it waits for the next event (the process exiting, the state's deadline, a probe's
//! result, the group gone, a cron entry due, a request), steps the machine and carries out
//! the actions through a [`Host`] ([`host`]). Every step is published on a `watch` channel
//! ([`Snapshot`]) that status reads and the switch and the front await. Nothing else touches
//! the process, so there is no race between a crash and a stop. An upgrade's freeze and
//! take-over are in `freeze.rs`.
//!
//! Over 500 lines on purpose: the handle, the requests and the shell's loop are one actor and
//! read best together; what each step decides is in `machine/table.rs`.

pub mod config;
#[cfg(test)]
pub mod fake;
mod freeze;
pub mod host;
pub mod machine;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until};

use self::config::InstanceConfig;
pub use self::freeze::{Carried, Frozen, Kept};
use self::host::{GroupSignal, Host, ProcessHost};
use self::machine::{Action, Event, Machine, Probe, State};
use crate::cron::{NextRun, Schedule, SystemClock};
use crate::leftovers::Running;
use crate::logs::LogSink;
use crate::snapshot::{Snapshot, Watch};
use crate::{cgroup, procinfo};

/// Requests to the actor.
enum Control {
    /// Stop the process (if any) and start a fresh one now, forgetting the back-off; the
    /// sender fires once that is done.
    Restart(oneshot::Sender<()>),
    /// Stop the process and end the actor.
    Stop,
    /// A new stop grace period (settings changed by an apply that left the process alone).
    SetGrace(Duration),
    /// A new health path for the readiness probe, from the next probe on.
    SetHealthPath(Option<String>),
    /// Restart the process gracefully because of `reason` (its next last exit).
    Recycle { reason: String, note: String },
    /// Take over the history of the instance this one replaced.
    Inherit { restarts: u32, last_exit: String },
    /// Stop acting for good, leaving the process running, and say what runs (an upgrade
    /// hands it to the next image).
    Freeze(oneshot::Sender<Option<Kept>>),
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

/// How an app starts its instances: as processes ([`Processes`]), or as fakes in tests.
pub trait Launcher: Send + Sync {
    /// Starts an instance actor; its first process starts once `after` (the instance it
    /// replaces) has stopped.
    fn launch(
        &self,
        config: InstanceConfig,
        grace: Duration,
        sink: LogSink,
        after: Option<Done>,
    ) -> InstanceHandle;
}

/// How an instance's memory is measured: [`CgroupMeter`] for real processes, a fake in
/// tests.
pub trait Meter: Send + Sync {
    /// The memory of all of the instance's processes, `pid` leading them.
    fn memory_bytes(&self, config: &InstanceConfig, pid: u32) -> Option<u64>;
    /// OOM kills in the instance's memory cgroup so far (`None` without one).
    fn oom_kills(&self, config: &InstanceConfig) -> Option<u64>;
}

/// The instance's cgroup's working set, else the PSS of its process group.
pub struct CgroupMeter;

impl Meter for CgroupMeter {
    fn memory_bytes(&self, config: &InstanceConfig, pid: u32) -> Option<u64> {
        cgroup::tree()
            .instance(&config.app, &config.slot())
            .memory_bytes()
            .or_else(|| procinfo::group_memory_bytes(pid))
    }

    fn oom_kills(&self, config: &InstanceConfig) -> Option<u64> {
        cgroup::tree()
            .instance(&config.app, &config.slot())
            .oom_kills()
    }
}

/// Instances as real processes, recorded in the running table.
pub struct Processes {
    pub running: Arc<Running>,
}

impl Launcher for Processes {
    fn launch(
        &self,
        config: InstanceConfig,
        grace: Duration,
        sink: LogSink,
        after: Option<Done>,
    ) -> InstanceHandle {
        InstanceHandle::start(config, grace, sink, self.running.clone(), after)
    }
}

/// The app's handle on an instance actor. Dropping it stops the instance.
pub struct InstanceHandle {
    pub config: InstanceConfig,
    pub sink: LogSink,
    control: mpsc::UnboundedSender<Control>,
    state: Watch,
    done: Done,
    meter: Arc<dyn Meter>,
}

/// What an instance actor acts through: its host, its cron clock, its meter.
pub struct With<H: Host> {
    pub host: H,
    pub schedule: Option<Schedule>,
    pub meter: Arc<dyn Meter>,
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
        // An instance with a port serves HTTP: its pipes never go quiet (`logs::pace`).
        sink.set_serves_requests(config.launch.port.is_some());
        let host = ProcessHost::new(config.clone(), sink.clone(), running);
        let schedule = config
            .schedule
            .clone()
            .map(|cron| Schedule::new(cron, SystemClock));
        let with = With {
            host,
            schedule,
            meter: Arc::new(CgroupMeter),
        };
        InstanceHandle::with(config, grace, sink, with, after)
    }

    /// [`InstanceHandle::start`] with any host, schedule clock and meter (tests use fakes).
    pub fn with(
        config: InstanceConfig,
        grace: Duration,
        sink: LogSink,
        with: With<impl Host>,
        after: Option<Done>,
    ) -> InstanceHandle {
        let With {
            host,
            schedule,
            meter,
        } = with;
        let (control, requests) = mpsc::unbounded_channel();
        let (done_tx, done) = Done::channel();
        let machine = Machine::new(config.duty(), grace);
        let (published, state) = watch::channel(Snapshot::new(machine.shown_as()));
        let shell = Shell {
            machine,
            host,
            schedule,
            next_run: None,
            published,
            exit: None,
            probe: None,
            group: None,
            restarted: Vec::new(),
        };
        tokio::spawn(async move {
            shell.run(requests, after).await;
            let _ = done_tx.send(true);
        });
        InstanceHandle {
            config,
            sink,
            control,
            state,
            done,
            meter,
        }
    }

    /// Asks for a restart; the receiver fires once it is done (a fresh process spawned, or
    /// a cron entry waiting again), or errs if the instance ended instead.
    pub fn restart(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.control.send(Control::Restart(tx));
        rx
    }

    /// Asks for a graceful restart in place (SIGTERM, grace, a new process at once) whose
    /// `reason` becomes the last exit; `note` says why in the log.
    pub fn recycle(&self, reason: &str, note: String) {
        let _ = self.control.send(Control::Recycle {
            reason: reason.to_owned(),
            note,
        });
    }

    /// This instance replaced one for `last_exit`: it shows that, and the restarts so far.
    pub fn inherit(&self, restarts: u32, last_exit: &str) {
        let _ = self.control.send(Control::Inherit {
            restarts,
            last_exit: last_exit.to_owned(),
        });
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

    /// The state the actor publishes (the switch and the front await it).
    pub fn watch(&self) -> Watch {
        self.state.clone()
    }

    pub fn status(&self) -> piku_proto::InstanceStatus {
        let mut status = self.state.borrow().status(
            &self.config.id,
            self.config.launch.port,
            self.sink.dropped(),
        );
        status.memory_bytes = self.memory_bytes();
        status
    }

    /// OOM kills in the instance's memory cgroup so far (`None` without one).
    pub fn oom_kills(&self) -> Option<u64> {
        self.meter.oom_kills(&self.config)
    }

    /// The memory of all of the instance's processes now (see [`Meter`]). `None` when no
    /// process runs.
    pub fn memory_bytes(&self) -> Option<u64> {
        let pid = self.state.borrow().pid?;
        self.meter.memory_bytes(&self.config, pid)
    }
}

/// What woke the shell.
enum Woke {
    Event(Event),
    Control(Option<Control>),
    /// A cron timer fired before the wall clock reached the run (the clock was set back).
    Early,
}

/// The actor: the machine, the host it acts through, and what it is waiting for.
struct Shell<H: Host> {
    machine: Machine,
    host: H,
    schedule: Option<Schedule>,
    next_run: Option<NextRun>,
    published: watch::Sender<Snapshot>,
    /// The running process's exit.
    exit: Option<BoxFuture<'static, String>>,
    /// The readiness probe in flight.
    probe: Option<BoxFuture<'static, Result<String, String>>>,
    /// The group emptying after its leader exited, during a stop.
    group: Option<BoxFuture<'static, ()>>,
    /// Requesters of a restart, answered once it is carried out.
    restarted: Vec<oneshot::Sender<()>>,
}

impl<H: Host> Shell<H> {
    async fn run(mut self, requests: mpsc::UnboundedReceiver<Control>, after: Option<Done>) {
        let mut requests = Some(requests);
        let mut after = after.map(|done| Box::pin(done.wait()));
        if after.is_none() {
            self.begin();
        }
        while !self.machine.is_stopped() {
            self.next_run = match (&self.schedule, &self.machine.state) {
                (Some(schedule), state) if *state != State::Idle => schedule.next(),
                _ => None,
            };
            self.publish();
            let deadline = self.machine.deadline();
            let due_in = self.next_run.as_ref().map(|run| run.wait);
            let woke = tokio::select! {
                // Exits first: a crash must be seen (and respawned) before anything else.
                biased;
                what = some(&mut self.exit) => Woke::Event(Event::Exited(what)),
                () = some(&mut self.group) => Woke::Event(Event::GroupGone),
                control = recv(&mut requests) => Woke::Control(control),
                () = some(&mut after) => Woke::Event(Event::Start),
                seen = some(&mut self.probe) => Woke::Event(Event::Probed(seen)),
                () = until(deadline) => Woke::Event(Event::Deadline),
                () = wait(due_in) => match (&self.schedule, &self.next_run) {
                    (Some(schedule), Some(run)) if schedule.is_due(run) => Woke::Event(Event::Due),
                    _ => Woke::Early,
                },
            };
            let event = match woke {
                Woke::Event(event) => event,
                Woke::Control(Some(Control::Freeze(reply))) => return self.freeze(reply).await,
                Woke::Control(control) => {
                    if control.is_none() {
                        // The handle is gone: nothing more can be asked.
                        requests = None;
                    }
                    match self.control(control) {
                        Some(event) => event,
                        None => continue,
                    }
                }
                Woke::Early => continue,
            };
            match &event {
                Event::Exited(_) => self.exit = None,
                Event::GroupGone => self.group = None,
                Event::Probed(_) => self.probe = None,
                Event::Start => after = None,
                _ => {}
            }
            self.feed(event);
        }
        self.next_run = None;
        self.publish();
        self.host.ended();
    }

    /// A request, as an event for the machine (or handled here).
    fn control(&mut self, control: Option<Control>) -> Option<Event> {
        match control {
            // The handle was dropped without a stop: treated as a stop, never as an orphaned
            // process.
            None | Some(Control::Stop) => Some(Event::Stop),
            Some(Control::Restart(reply)) => {
                self.restarted.push(reply);
                Some(Event::Restart)
            }
            Some(Control::SetGrace(grace)) => {
                self.machine.set_grace(grace);
                None
            }
            Some(Control::SetHealthPath(path)) => {
                self.host.set_health_path(path);
                None
            }
            Some(Control::Recycle { reason, note }) => Some(Event::Recycle { reason, note }),
            Some(Control::Inherit {
                restarts,
                last_exit,
            }) => {
                self.machine.inherit(restarts, last_exit);
                self.publish();
                None
            }
            // Taken by `run` before it gets here.
            Some(Control::Freeze(reply)) => {
                let _ = reply.send(self.kept());
                None
            }
        }
    }

    /// Steps the machine with `event`, carries out its actions, and feeds back what they
    /// report at once (a spawn's result) before anything else can happen.
    fn feed(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            let spawned = matches!(event, Event::Spawned { .. });
            let now = Instant::now();
            let (machine, actions) = machine::table::step(self.machine.clone(), event, now);
            self.machine = machine;
            if spawned && let Some((history, up)) = self.host.adopted() {
                // A process the previous image ran: its history goes on.
                self.machine.adopted(history, now.checked_sub(up));
            }
            for action in actions {
                match action {
                    Action::Spawn => match self.host.spawn() {
                        Ok(child) => {
                            self.exit = Some(child.exit);
                            events.push_back(Event::Spawned { pid: child.pid });
                        }
                        Err(why) => events.push_back(Event::SpawnFailed(why)),
                    },
                    Action::Probe => self.probe = Some(self.host.probe()),
                    Action::Terminate { pgid } => self.host.signal(pgid, GroupSignal::Term),
                    Action::Kill { pgid } => self.host.signal(pgid, GroupSignal::Kill),
                    Action::AwaitGroupGone { pgid } => {
                        self.group = Some(self.host.group_gone(pgid))
                    }
                    Action::ClearGroup { pgid, grace } => self.host.clear_group(pgid, grace),
                    Action::Note(msg) => self.host.note(&msg),
                }
            }
        }
        // Waits for what the machine no longer waits for are dropped (a probe of a process
        // that has since exited must not report on the next one).
        if !matches!(self.machine.state, State::Stopping { .. }) {
            self.group = None;
        }
        if !matches!(
            self.machine.state,
            State::Starting {
                probe: Probe::InFlight { .. },
                ..
            }
        ) {
            self.probe = None;
        }
        if self.machine.is_stopped() {
            // Ended instead: the requesters hear that no restart happened.
            self.restarted.clear();
        } else if self.machine.settled() {
            for reply in self.restarted.drain(..) {
                let _ = reply.send(());
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let (pid, since) = self.machine.process();
        let snapshot = Snapshot {
            state: self.machine.shown_as(),
            pid,
            started: since.map(Instant::into_std),
            restarts: self.machine.restarts(),
            exits: self.machine.exits(),
            last_exit: self.machine.last_exit().map(str::to_owned),
            last_probe: self.machine.last_probe().map(str::to_owned),
            next_run: self.next_run.as_ref().map(NextRun::shown),
        };
        self.published.send_if_modified(|current| {
            let changed = *current != snapshot;
            *current = snapshot;
            changed
        });
    }
}

/// Awaits the future in `slot`, or forever when there is none.
async fn some<T>(slot: &mut Option<impl Future<Output = T> + Unpin>) -> T {
    match slot {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

async fn recv<T>(requests: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match requests {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn wait(duration: Option<Duration>) {
    match duration {
        Some(d) => sleep(d).await,
        None => std::future::pending().await,
    }
}
