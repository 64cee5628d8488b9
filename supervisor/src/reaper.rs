//! Orphaned descendants that the kernel hands to this daemon, and how they are reaped.
//!
//! The daemon is a child subreaper (`PR_SET_CHILD_SUBREAPER`): when an app's process dies and
//! leaves children behind, they are re-parented to us instead of to pid 1 (which, in a
//! container, may never reap them). We then owe them a `waitpid`, but tokio owns the exit
//! status of every process it spawned (it waits on each pid, via pidfd), so a global
//! `waitpid(-1)` would steal those statuses. Instead we keep the set of pids that tokio owns,
//! and reap only zombies that are *not* in it, each by its own pid.

use std::collections::BTreeSet;
use std::fs;
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Pids spawned under [`spawning`] whose status tokio has not collected yet.
static OWNED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn owned() -> MutexGuard<'static, BTreeSet<u32>> {
    // The set stays consistent even if a holder panicked: every update is a single insert/remove.
    OWNED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes this process the reaper of its orphaned descendants. Failure is not fatal: the
/// orphans then go to pid 1, as with any other supervisor.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot become a child subreaper ({e}); orphans of apps go to pid 1");
    }
}

/// The table of owned pids, held while a child is spawned so that [`reap_orphans`] can never
/// see the new child before it is recorded: take it, spawn, then [`Spawning::own`] the pid.
pub struct Spawning(MutexGuard<'static, BTreeSet<u32>>);

pub fn spawning() -> Spawning {
    Spawning(owned())
}

impl Spawning {
    /// Records `pid` (just spawned through tokio) as tokio's to reap.
    pub fn own(mut self, pid: u32) {
        self.0.insert(pid);
    }
}

/// Records `pid`, a child this image did not spawn (handed over by the image before an
/// `execve`), as one whose status is collected by its own waiter (`handover::pidfd`).
pub fn adopt(pid: u32) {
    owned().insert(pid);
}

/// Call once tokio (or an adopted process's waiter) has returned the exit status of `pid`.
pub fn disown(pid: u32) {
    owned().remove(&pid);
}

/// Reaps every zombie child of ours that tokio does not own. Cheap: reads our own
/// `children` lists only.
pub fn reap_orphans() {
    let set = owned();
    for pid in children() {
        if set.contains(&pid) {
            continue;
        }
        if crate::procinfo::stat(pid).is_some_and(|s| s.state == 'Z') {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            // Reaping one specific, non-owned pid: cannot steal a status tokio waits for.
            let _ = waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Our direct children, from every thread's `children` list (a child belongs to the thread
/// that forked it; orphans are attached to one of our threads).
fn children() -> Vec<u32> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids
}

/// Reaps orphans whenever a child dies, for the daemon's whole life.
pub async fn run() {
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGCHLD ({e}); orphans are reaped only on stop");
            return;
        }
    };
    while sigchld.recv().await.is_some() {
        reap_orphans();
    }
}
