//! What an app's actor is asked, and how it answers: the typed commands, each with its
//! reply on a oneshot channel, and the errors a reply can carry.

use std::collections::BTreeMap;

use piku_model::InstanceId;
use piku_proto::{AppSpec, AppStatus, ApplyReport};
use tokio::sync::{mpsc, oneshot};

use crate::front::FrontError;
use crate::state::StateError;

/// The answer to one command.
pub type Reply<T> = oneshot::Sender<Result<T, AppError>>;

/// A request to an app's actor. Changing commands are carried out one at a time, in order;
/// `Status` and `Shutdown` are answered at once, even while a change is in progress.
pub enum Command {
    /// The app's desired state becomes `spec` (the app is created if new).
    Apply {
        spec: Box<AppSpec>,
        progress: Progress,
        reply: Reply<ApplyReport>,
    },
    /// New counts for the named kinds.
    Scale {
        formation: BTreeMap<String, u32>,
        reply: Reply<ApplyReport>,
    },
    /// Fresh processes for the app or one kind, bypassing the back-off.
    Restart {
        kind: Option<String>,
        progress: Progress,
        reply: Reply<()>,
    },
    Stop {
        reply: Reply<()>,
    },
    Start {
        progress: Progress,
        reply: Reply<ApplyReport>,
    },
    /// Stop the app and forget it.
    Remove {
        reply: Reply<()>,
    },
    /// `None` when the app does not exist.
    Status {
        reply: oneshot::Sender<Option<AppStatus>>,
    },
    /// Stop every process (the daemon is exiting); the desired state is kept.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Replace web instance `id` through the switch if it still runs process `pid`: its
    /// memory crossed the soft mark (`ceiling.rs`), or it is wedged (`wedged.rs`); `reason`
    /// is the last exit `ps` shows. The actor posts it to itself.
    Recycle {
        id: InstanceId,
        pid: u32,
        reason: &'static str,
    },
    /// Stop acting for good and leave every process running, for an upgrade: the front stops
    /// accepting, the instances say what they run (`upgrade.rs`).
    Freeze {
        reply: oneshot::Sender<super::upgrade::FrozenApp>,
    },
}

impl Command {
    /// Answers the command with `error` without carrying it out.
    pub fn refuse(self, error: AppError) {
        match self {
            Command::Apply { reply, .. }
            | Command::Scale { reply, .. }
            | Command::Start { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Restart { reply, .. }
            | Command::Stop { reply }
            | Command::Remove { reply } => {
                let _ = reply.send(Err(error));
            }
            Command::Status { reply } => {
                let _ = reply.send(None);
            }
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
            // Asked by nobody: nothing to answer.
            Command::Recycle { .. } => {}
            // Dropped: the daemon learns that this app hands nothing over.
            Command::Freeze { .. } => {}
        }
    }
}

/// The daemon's handle on an app's actor: its mailbox. Cheap to clone.
#[derive(Clone)]
pub struct AppHandle {
    /// Tells this actor apart from a later one of the same app name.
    pub id: u64,
    pub mailbox: mpsc::UnboundedSender<Command>,
}

/// Where an actor that no longer has an app asks to be forgotten (the daemon's registry).
pub trait Directory: Send + Sync {
    /// Forgets actor `id` of `app` if `idle()` holds while no command can reach it any
    /// more; `true` when forgotten (the actor then ends).
    fn retire(&self, app: &str, id: u64, idle: &mut dyn FnMut() -> bool) -> bool;
}

/// Where `Progress` frames for the requester go (nowhere for internal callers).
#[derive(Clone, Default)]
pub struct Progress(Option<mpsc::UnboundedSender<String>>);

impl Progress {
    pub fn to(sender: mpsc::UnboundedSender<String>) -> Progress {
        Progress(Some(sender))
    }

    pub fn say(&self, message: impl Into<String>) {
        if let Some(sender) = &self.0 {
            // A requester that hung up still gets its switch done.
            let _ = sender.send(message.into());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("no app named {0}")]
    UnknownApp(String),
    #[error("app {app} has no process kind {kind} (its kinds: {known})")]
    UnknownKind {
        app: String,
        kind: String,
        known: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot assign ports")]
    Ports(#[source] std::io::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Front(#[from] FrontError),
    /// New web instances did not become ready: the message says which, why, and their last
    /// log lines.
    #[error("{0}")]
    NotReady(String),
}
