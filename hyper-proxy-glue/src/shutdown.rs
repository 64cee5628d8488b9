//! The front's stop signal: set once by [`Front::shutdown`](crate::Front::shutdown), awaited by
//! every listener, client connection and tunnel.

use tokio::sync::watch;

/// The sending side; cheap to share behind the front's `Arc`.
pub(crate) struct Shutdown {
    sender: watch::Sender<bool>,
}

impl Shutdown {
    pub(crate) fn new() -> Shutdown {
        Shutdown {
            sender: watch::Sender::new(false),
        }
    }

    /// Idempotent and final.
    pub(crate) fn trigger(&self) {
        self.sender.send_replace(true);
    }

    pub(crate) fn is_triggered(&self) -> bool {
        *self.sender.borrow()
    }

    pub(crate) fn subscribe(&self) -> Stopped {
        Stopped {
            receiver: self.sender.subscribe(),
        }
    }
}

/// One waiter's view of the signal.
pub(crate) struct Stopped {
    receiver: watch::Receiver<bool>,
}

impl Stopped {
    /// Resolves once the front is shut down (or dropped). The borrow of the watched value ends
    /// inside, so callers' futures stay `Send`.
    pub(crate) async fn wait(&mut self) {
        let _ = self.receiver.wait_for(|stop| *stop).await;
    }
}
