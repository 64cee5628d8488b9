//! The processes running right now, recorded on disk so that the next daemon can clean up
//! after one that died without stopping its apps (SIGKILL, OOM killer, power cut of the
//! daemon alone).
//!
//! Why: such children keep running (re-parented to pid 1) and keep their ports, so the new
//! daemon's instances could not bind them and would crash-loop. Each record is a pid plus
//! the process's start time (field 22 of `/proc/<pid>/stat`): a pid alone could by now name
//! an unrelated process, a pid with the same start time cannot. Only a match is killed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep};

use crate::procinfo;
use crate::stop::signal_group;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Also the process group id: every instance leads its own group.
    pub pid: u32,
    pub start_ticks: u64,
}

/// The live table (`app/web.1` → record) and its file.
pub struct Running {
    path: PathBuf,
    table: Mutex<BTreeMap<String, Record>>,
    /// A rewrite is posted to the chores thread and has not taken its snapshot yet: the
    /// changes of a burst of spawns and exits share one write.
    queued: AtomicBool,
    /// Held from a write's snapshot to its rename, so that an older snapshot never replaces
    /// a newer one (a chore's write and the shutdown's own).
    writing: Mutex<()>,
}

impl Running {
    pub fn new(path: PathBuf) -> Arc<Running> {
        Arc::new(Running {
            path,
            table: Mutex::new(BTreeMap::new()),
            queued: AtomicBool::new(false),
            writing: Mutex::new(()),
        })
    }

    /// Records a freshly spawned process; the file is rewritten on the chores thread, off
    /// the respawn path.
    pub fn insert(self: &Arc<Self>, name: String, pid: u32) {
        let Some(stat) = procinfo::stat(pid) else {
            return; // already gone: nothing to clean up later
        };
        self.lock().insert(
            name,
            Record {
                pid,
                start_ticks: stat.start_ticks,
            },
        );
        self.changed();
    }

    /// Forgets `name` if it still records `pid`.
    pub fn remove(self: &Arc<Self>, name: &str, pid: u32) {
        let mut table = self.lock();
        if table.get(name).is_some_and(|r| r.pid == pid) {
            table.remove(name);
            drop(table);
            self.changed();
        }
    }

    /// Has the file rewritten on the chores thread, unless a rewrite is already queued
    /// (it will see this change: it takes its snapshot when it runs).
    fn changed(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let me = Arc::clone(self);
            crate::chores::post(move || {
                me.queued.store(false, Ordering::Release);
                me.write_now();
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the table now.
    pub fn write_now(&self) {
        let _turn = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let snapshot = self.lock().clone();
        match serde_json::to_vec(&snapshot) {
            Ok(bytes) => {
                // Not synced: the file matters to the next daemon of this boot only (after a
                // reboot nothing it lists still runs), and sees the rename either way.
                if let Err(e) = piku_fs::replace_unsynced(&self.path, &bytes, piku_fs::MODE_PRIVATE)
                {
                    tracing::warn!("cannot write {}: {e}", self.path.display());
                }
            }
            Err(e) => tracing::warn!("cannot serialise the running table: {e}"),
        }
    }
}

/// The table a previous daemon left (empty if none or unreadable).
pub fn read_table(path: &Path) -> BTreeMap<String, Record> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!("ignoring unreadable {}: {e}", path.display());
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

/// Kills what a previous daemon left running (see the module doc), waiting up to `grace`
/// after SIGTERM before SIGKILL. Returns the names of the instances that were found.
/// Processes in `spare` (handed over by an upgrade) are not leftovers.
pub async fn kill_leftovers(path: &Path, grace: Duration, spare: &BTreeSet<u32>) -> Vec<String> {
    let table = read_table(path);
    let found: Vec<(String, Record)> = table
        .into_iter()
        .filter(|(_, r)| !spare.contains(&r.pid) && procinfo::same_process(r.pid, r.start_ticks))
        .collect();
    for (name, r) in &found {
        tracing::info!(
            "stopping {name} (pid {}) left over by a previous daemon",
            r.pid
        );
        signal_group(r.pid, Signal::SIGTERM);
        signal_group(r.pid, Signal::SIGCONT);
    }
    // Leftovers are not our children: their zombies are pid 1's to reap, so "gone" is judged
    // by the leader no longer being a live process with the recorded start time.
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline
        && found
            .iter()
            .any(|(_, r)| procinfo::same_process(r.pid, r.start_ticks))
    {
        sleep(Duration::from_millis(20)).await;
    }
    // Whatever is left of each group (the leader or members that ignored SIGTERM). The group id
    // cannot have been reused this soon: Linux does not hand out a pid still in use as a pgid.
    for (_, r) in &found {
        signal_group(r.pid, Signal::SIGKILL);
    }
    found.into_iter().map(|(name, _)| name).collect()
}
