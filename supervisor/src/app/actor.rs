//! An app's actor: the task that owns one [`App`] and carries out its commands.
//!
//! It takes one changing command at a time, in order. A command changes the app at once
//! (nothing else can touch it) and leaves the actor *busy* with what must happen before it
//! is answered: stops to be done, a switch's new instances to become ready. That wait is a
//! future in the actor's own loop, never an inline await, so `Status` is answered meanwhile
//! and a shutdown can cut it short; changing commands that arrive meanwhile queue. The only
//! inline await is a front's bind, bounded at 0.5 s (`front.rs`).
//!
//! An actor whose app is removed, or whose first `Apply` failed, asks the registry to
//! forget it and ends.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use piku_model::InstanceId;
use piku_proto::ApplyReport;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::command::{AppError, AppHandle, Command, Directory, Progress, Reply};
use super::switch::{Switch, Unhealthy};
use super::wedged::{WedgedWatch, front_news};
use super::{App, Ctx, Pending};
use crate::logs::LogSink;
use crate::state::SavedApp;

/// Starts the actor of `name`: with the app saved in the state file (`restore`, at boot),
/// or with none (its first command is an `Apply`).
pub fn spawn(
    name: String,
    id: u64,
    ctx: Ctx,
    directory: Arc<dyn Directory>,
    restore: Option<SavedApp>,
) -> AppHandle {
    let (mailbox, commands) = mpsc::unbounded_channel();
    let actor = Actor {
        name,
        id,
        ctx,
        directory,
        app: None,
        busy: None,
        queue: VecDeque::new(),
        shutting_down: false,
        ceiling_at: None,
        wedged: WedgedWatch::default(),
    };
    tokio::spawn(actor.run(commands, restore));
    AppHandle { id, mailbox }
}

pub(super) struct Actor {
    pub(super) name: String,
    id: u64,
    pub(super) ctx: Ctx,
    directory: Arc<dyn Directory>,
    /// `None` before the first `Apply` and after `Remove`.
    pub(super) app: Option<App>,
    /// What the current command waits for before it is answered.
    busy: Option<BoxFuture<'static, Resume>>,
    /// Changing commands that arrived while busy.
    pub(super) queue: VecDeque<Command>,
    pub(super) shutting_down: bool,
    /// When the memory ceiling is next checked (`ceiling.rs`).
    pub(super) ceiling_at: Option<Instant>,
    /// The front's reports of wedged instances (`wedged.rs`).
    pub(super) wedged: WedgedWatch,
}

/// What the actor does once the work it was busy with is over.
pub(super) enum Resume {
    /// Nothing more: the work answered its requester itself.
    Answered,
    /// A first start's web instances are ready, or one is not.
    Started {
        start: Box<FirstStart>,
        ready: Result<(), Unhealthy>,
    },
    /// A switch's new instances are ready, or one is not.
    Switched {
        switch: Box<Switch>,
        ready: Result<(), Unhealthy>,
        progress: Progress,
        then: AfterSwitch,
    },
}

/// The command a switch was for.
pub(super) enum AfterSwitch {
    Apply(Reply<ApplyReport>),
    /// Then the app's other kinds (or the one kind) restart in place.
    Restart {
        kind: Option<String>,
        reply: Reply<()>,
    },
    /// A web instance replaced for its memory or because it is wedged (`reason`): the new
    /// one takes over its history (`restarts` + 1); a failure is noted in the old one's log
    /// (`sink`).
    Recycle {
        id: InstanceId,
        restarts: u32,
        sink: LogSink,
        reason: &'static str,
    },
}

/// A first start waiting for its web instances (`lifecycle.rs`).
pub(super) struct FirstStart {
    /// The app as it was (`None`: new), put back if the start fails.
    pub previous: Option<SavedApp>,
    /// What starting the web instances did.
    pub web: ApplyReport,
    pub began: Instant,
    pub progress: Progress,
    /// Sends the answer to the requester.
    pub answer: Answer,
}

/// Sends a command's answer, whatever the command's reply type.
pub(super) type Answer = Box<dyn FnOnce(Result<ApplyReport, AppError>) + Send>;

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        restore: Option<SavedApp>,
    ) {
        if let Some(saved) = restore {
            self.restore(saved).await;
        }
        loop {
            let ceiling = self.next_ceiling_check();
            self.follow_front();
            let wedged = self.next_wedged_check();
            let resumed = tokio::select! {
                biased;
                resume = busy(&mut self.busy) => Some(resume),
                command = commands.recv() => match command {
                    Some(command) => {
                        self.accept(command).await;
                        None
                    }
                    // The registry is gone: the daemon is exiting.
                    None => return,
                },
                () = until(ceiling) => {
                    self.check_ceiling();
                    None
                }
                news = front_news(&mut self.wedged) => {
                    self.front_news(news);
                    None
                }
                () = until(wedged) => {
                    self.check_wedged();
                    None
                }
            };
            if let Some(resume) = resumed {
                self.busy = None;
                self.resume(resume).await;
            }
            while self.busy.is_none()
                && let Some(command) = self.queue.pop_front()
            {
                self.carry_out(command).await;
            }
            if self.busy.is_none()
                && self.app.is_none()
                && self
                    .directory
                    .retire(&self.name, self.id, &mut || commands.is_empty())
            {
                return;
            }
        }
    }

    /// A command just received: queries are answered now, changes now or after the work
    /// in progress.
    async fn accept(&mut self, command: Command) {
        match command {
            query @ (Command::Status { .. } | Command::Shutdown { .. }) => {
                self.carry_out(query).await
            }
            command if self.shutting_down => command.refuse(AppError::ShuttingDown),
            command if self.busy.is_some() => self.queue.push_back(command),
            command => self.carry_out(command).await,
        }
    }

    /// Carries out a command (see `apply.rs`, `restart.rs`, `lifecycle.rs`).
    async fn carry_out(&mut self, command: Command) {
        match command {
            Command::Apply {
                spec,
                progress,
                reply,
            } => self.apply(*spec, progress, reply).await,
            Command::Scale { formation, reply } => self.scale(&formation, reply),
            Command::Restart {
                kind,
                progress,
                reply,
            } => self.restart(kind, progress, reply).await,
            Command::Stop { reply } => self.stop(reply),
            Command::Start { progress, reply } => self.start(progress, reply).await,
            Command::Remove { reply } => self.remove(reply),
            Command::Status { reply } => {
                let _ = reply.send(self.app.as_ref().map(App::status));
            }
            Command::Shutdown { reply } => self.shutdown(reply),
            Command::Recycle { id, pid, reason } => self.recycle(id, pid, reason),
            Command::Freeze { reply } => self.freeze(reply).await,
        }
    }

    /// Queues a command of the actor's own, carried out in turn.
    pub(super) fn post(&mut self, command: Command) {
        if !self.shutting_down {
            self.queue.push_back(command);
        }
    }

    async fn resume(&mut self, resume: Resume) {
        match resume {
            Resume::Answered => {}
            Resume::Started { start, ready } => self.started(*start, ready).await,
            Resume::Switched {
                switch,
                ready,
                progress,
                then,
            } => self.switched(*switch, ready, progress, then).await,
        }
    }

    /// Stays busy with `work` until it resolves.
    pub(super) fn busy_with(&mut self, work: impl Future<Output = Resume> + Send + 'static) {
        self.busy = Some(Box::pin(work));
    }

    /// Answers `reply` once the state file is written and `pending` is done.
    pub(super) fn answer_after<T: Send + 'static>(
        &mut self,
        pending: Pending,
        reply: Reply<T>,
        answer: Result<T, AppError>,
    ) {
        self.answer_with(
            pending,
            move |result| {
                let _ = reply.send(result);
            },
            answer,
        );
    }

    /// [`Actor::answer_after`], answering through `send`.
    pub(super) fn answer_with<T: Send + 'static>(
        &mut self,
        pending: Pending,
        send: impl FnOnce(Result<T, AppError>) + Send + 'static,
        answer: Result<T, AppError>,
    ) {
        let store = self.ctx.store.clone();
        self.busy_with(async move {
            let saved = store.save().await.map_err(AppError::from);
            pending.wait().await;
            send(saved.and(answer));
            Resume::Answered
        });
    }

    /// Puts the app back as it was before a change that did not go through (`None`: it did
    /// not exist), once none of that change's processes run any more.
    pub(super) fn put_back(&mut self, previous: Option<SavedApp>) {
        match (previous, self.app.as_mut()) {
            (Some(previous), Some(app)) => {
                app.spec = previous.spec;
                app.stopped = previous.stopped;
                app.ports = previous.ports;
            }
            (Some(previous), None) => self.app = Some(App::from_saved(previous)),
            (None, _) => self.app = None,
        }
        self.record();
    }

    /// Puts the app's desired state (or its absence) in the daemon's state, and its ports
    /// in the port table; written to disk by the next [`Actor::answer_after`].
    pub(super) fn record(&self) {
        match &self.app {
            Some(app) => {
                self.ctx.store.put(&self.name, app.saved());
                app.publish_ports(&self.ctx.ports);
            }
            None => {
                self.ctx.store.remove(&self.name);
                self.ctx.ports.hold(&self.name, Default::default());
            }
        }
    }

    /// Shutdown: what was awaited is abandoned (its requesters hear that the supervisor is
    /// shutting down), queued commands are refused, and every process stops. The desired
    /// state is kept, so the app comes back when the daemon starts again.
    fn shutdown(&mut self, reply: oneshot::Sender<()>) {
        self.shutting_down = true;
        self.busy = None;
        for command in self.queue.drain(..) {
            command.refuse(AppError::ShuttingDown);
        }
        let pending = self.app.as_mut().map(App::stop_all).unwrap_or_default();
        self.busy_with(async move {
            pending.wait().await;
            let _ = reply.send(());
            Resume::Answered
        });
    }
}

/// The app, for a command that needs it to exist (else the command is answered so).
pub(super) fn existing<'a, T>(
    app: &'a mut Option<App>,
    name: &str,
    reply: Reply<T>,
) -> Option<(&'a mut App, Reply<T>)> {
    match app.as_mut() {
        Some(app) => Some((app, reply)),
        None => {
            let _ = reply.send(Err(AppError::UnknownApp(name.to_string())));
            None
        }
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn busy(work: &mut Option<BoxFuture<'static, Resume>>) -> Resume {
    match work {
        Some(work) => work.await,
        None => std::future::pending().await,
    }
}
