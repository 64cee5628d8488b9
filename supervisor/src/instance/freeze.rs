//! An instance's part of an in-place upgrade of the daemon (`handover`): `Control::Freeze`
//! makes its actor stop acting for good and say what the next image takes over, its process
//! (left running) or its back-off.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::host::Host;
use super::machine::{Event, History, State};
use super::{Control, InstanceHandle, Shell};

/// What a frozen instance leaves the next image: its history, and its process or its
/// back-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub history: History,
    pub now: Carried,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// A process left running, up for `up`.
    Process { pid: u32, up: Duration },
    /// No process: the next start is due in `due_in`.
    BackingOff { due_in: Duration },
}

/// What a frozen instance hands over: its running-table key and its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frozen {
    pub key: String,
    pub kept: Kept,
}

impl InstanceHandle {
    /// Freezes the actor (see `Control::Freeze`): `None` when no process of it runs that
    /// the next image could take over (none, or one being stopped).
    pub fn freeze(&self) -> impl Future<Output = Option<Frozen>> + Send + use<> {
        let (tx, rx) = oneshot::channel();
        let _ = self.control.send(Control::Freeze(tx));
        let key = self.config.running_key();
        async move {
            let kept = rx.await.ok()??;
            Some(Frozen { key, kept })
        }
    }
}

impl<H: Host> Shell<H> {
    /// What the next image may take over: a process that runs and is not being stopped, or
    /// the back-off of one waiting to restart.
    pub(super) fn kept(&self) -> Option<Kept> {
        let now = match (self.machine.adoptable(), self.machine.backing_off_until()) {
            (Some((pid, since)), _) => Carried::Process {
                pid,
                up: since.elapsed(),
            },
            (None, Some(until)) => Carried::BackingOff {
                due_in: until.saturating_duration_since(Instant::now()),
            },
            (None, None) => return None,
        };
        Some(Kept {
            history: self.machine.history(),
            now,
        })
    }

    /// The first event: a start, unless the previous image (an upgrade) left a back-off
    /// or a cron run in progress to go on with.
    pub(super) fn begin(&mut self) {
        match self.host.backing_off() {
            Some((history, due_in)) => {
                let until = Instant::now() + due_in;
                self.machine.resume_backing_off(history, until);
            }
            None => {
                self.feed(Event::Start);
                if self.machine.state == State::Waiting && self.host.has_adoption() {
                    // The cron run goes on as this entry's run in progress.
                    self.feed(Event::Due);
                }
            }
        }
    }

    /// Answers what the next image takes over, then holds everything (the exit future among
    /// it: the child is not reaped behind the next image's back) and does nothing until the
    /// execve ends this image.
    pub(super) async fn freeze(self, reply: oneshot::Sender<Option<Kept>>) {
        let _ = reply.send(self.kept());
        std::future::pending::<()>().await;
        drop(self);
    }
}
