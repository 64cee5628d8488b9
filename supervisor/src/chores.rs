//! One long-lived thread for the daemon's small blocking chores: moving a new process into
//! its cgroup v1 hierarchies (`cgroup::follow`) and rewriting the running table
//! (`leftovers.rs`). Both happen around every spawn and exit, and must stay off the async
//! workers.
//!
//! Why not tokio's blocking pool: the pool starts a thread for each chore that finds none
//! idle and ends it after 10 s without work, so a burst of spawns once a minute (the cron
//! entries of 10 apps) started and ended three threads every minute, each with its own
//! wake-ups, and ran the chores side by side. Here the chores of a burst run one after
//! the other on one thread that sleeps without a deadline in between (no wake-up while
//! idle), and back to back they are cheaper: each first write into a v1 `cgroup.procs`
//! waits for an RCU grace period, and the writes right after it do not.
//!
//! A chore must not wait for anything but the kernel (no lock held by an async task, no
//! other chore): the ones after it wait for it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel};

type Chore = Box<dyn FnOnce() + Send>;

static QUEUE: OnceLock<Option<Sender<Chore>>> = OnceLock::new();

/// Runs `chore` on the chores thread (started on first use), after those posted before it.
/// Without that thread (it could not be started) the chore runs here and now.
pub fn post(chore: impl FnOnce() + Send + 'static) {
    let queue = QUEUE.get_or_init(start);
    let unsent = match queue {
        Some(tx) => tx.send(Box::new(chore)).err().map(|e| e.0),
        None => Some(Box::new(chore) as Chore),
    };
    if let Some(chore) = unsent {
        chore();
    }
}

fn start() -> Option<Sender<Chore>> {
    let (tx, rx) = channel::<Chore>();
    let started = std::thread::Builder::new()
        .name("piku-chores".into())
        .spawn(move || {
            crate::handover::leave_signals_to_main_thread();
            while let Ok(chore) = rx.recv() {
                // A chore that panics must not take the ones after it down with the thread.
                if catch_unwind(AssertUnwindSafe(chore)).is_err() {
                    tracing::error!("a background chore panicked");
                }
            }
        });
    match started {
        Ok(_) => Some(tx),
        Err(err) => {
            tracing::warn!(%err, "cannot start the chores thread; chores run where they are posted");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;

    #[test]
    fn chores_run_in_order_on_one_thread() {
        let (tx, rx) = channel();
        for n in 0..20 {
            let tx = tx.clone();
            post(move || {
                let _ = tx.send((n, std::thread::current().id()));
            });
        }
        let got: Vec<_> = (0..20)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(
            got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
        assert!(got.iter().all(|(_, id)| *id == got[0].1));
        assert_ne!(got[0].1, std::thread::current().id());
    }

    #[test]
    fn a_panicking_chore_does_not_stop_the_next() {
        post(|| panic!("on purpose"));
        let (tx, rx) = channel();
        post(move || {
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
}
