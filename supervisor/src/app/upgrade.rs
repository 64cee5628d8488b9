//! `Freeze`: the app's part of an in-place upgrade of the daemon (`handover`). The actor
//! carries it out like any changing command (after the work in progress, so no switch is
//! cut in half), then refuses everything: its front stops accepting and keeps its listening
//! sockets, its instances stop acting and say which processes run, and none of them is
//! stopped. The next image restores the app from the state file and takes those over.

use tokio::sync::oneshot;

use super::App;
use super::actor::Actor;
use super::command::AppError;
use crate::front::FrozenFront;
use crate::instance::Frozen;

/// What a frozen app hands over.
#[derive(Default)]
pub struct FrozenApp {
    pub app: String,
    pub front: Option<FrozenFront>,
    pub instances: Vec<Frozen>,
}

impl Actor {
    pub(super) async fn freeze(&mut self, reply: oneshot::Sender<FrozenApp>) {
        self.shutting_down = true;
        for command in self.queue.drain(..) {
            command.refuse(AppError::ShuttingDown);
        }
        let mut frozen = FrozenApp {
            app: self.name.clone(),
            ..FrozenApp::default()
        };
        if let Some(app) = self.app.as_mut() {
            frozen.front = app.front.take().map(crate::front::AppFront::freeze);
            for waiting in app.freeze_instances() {
                frozen.instances.extend(waiting.await);
            }
        }
        let _ = reply.send(frozen);
    }
}

impl App {
    /// Freezes every instance actor; each future says what its process is.
    fn freeze_instances(&self) -> Vec<impl Future<Output = Option<Frozen>> + Send + use<>> {
        self.instances
            .values()
            .chain(self.switching.values())
            .map(|instance| instance.freeze())
            .collect()
    }
}
