//! The apps: one actor per app, which owns the app's instances, ports, front and switch and
//! takes typed commands ("Actors with Tokio": the actor owns its state outright, others hold
//! a handle to its mailbox, replies come back on oneshot channels).
//!
//! - [`command`]: the commands, their replies and errors; the handle.
//! - [`actor`]: the actor's loop: one changing command at a time, never waiting inline for
//!   a process, so `Status` is always answered at once.
//! - `apply.rs` (`Apply`, `Scale`), `restart.rs` (`Restart`), `lifecycle.rs` (`Stop`,
//!   `Start`, `Remove`, restore at boot, shutdown): what each command does to the app.
//! - `formation.rs`: which instances the spec asks for, and their ports.
//! - `reconcile.rs`: starting, stopping and replacing instances to match.
//! - `listen.rs`: the app's front (listeners opened, rebound, closed; its members).
//! - `switch.rs`: the zero-downtime switch of web instances, and readiness waits.
//! - `ceiling.rs`: the memory soft mark of `PIKU_MEMORY_MAX` (`Recycle`).
//! - `wedged.rs`: instances whose requests all time out at the front (`Recycle`).
//! - `upgrade.rs`: freezing the app for an in-place upgrade of the daemon (`Freeze`).
//! - `status.rs`: what `Status` shows.

pub mod actor;
mod apply;
mod ceiling;
pub mod command;
mod formation;
mod lifecycle;
mod listen;
mod reconcile;
mod restart;
mod status;
mod switch;
#[cfg(test)]
mod tests;
pub mod upgrade;
mod wedged;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use piku_model::InstanceId;
use piku_proto::AppSpec;
use tokio::sync::oneshot;

use crate::front::AppFront;
use crate::instance::{Done, InstanceHandle, Launcher};
use crate::logs::{LogHub, Rotation};
use crate::ports::Ports;
use crate::state::{SavedApp, Store};

/// What every app's actor shares with the daemon.
#[derive(Clone)]
pub struct Ctx {
    pub logs: LogHub,
    pub launcher: Arc<dyn Launcher>,
    pub ports: Ports,
    pub store: Arc<Store>,
}

/// One app as its actor holds it: its desired state and what realises it.
pub struct App {
    pub spec: AppSpec,
    pub stopped: bool,
    /// `web.1` → port, for every web instance of the formation (also while stopped).
    pub ports: BTreeMap<InstanceId, u16>,
    /// The port of the front's TCP listener when the daemon chose it (kept while the app
    /// exists, stopped or not, so its public port never changes).
    pub front_port: Option<u16>,
    /// Every instance that runs (cron entries included).
    instances: BTreeMap<InstanceId, InstanceHandle>,
    /// The open front, when the app has one and runs.
    front: Option<AppFront>,
    /// New web instances of a switch in progress, started beside those in `instances`.
    switching: BTreeMap<InstanceId, InstanceHandle>,
    /// The process of each instance last recycled for its memory (recycled once).
    recycled: BTreeMap<InstanceId, u32>,
    /// The OOM kills last seen in each instance's cgroup, and the process it then ran.
    oom_kills_seen: BTreeMap<InstanceId, (u32, u64)>,
}

impl App {
    pub fn new(spec: AppSpec) -> App {
        App::from_saved(SavedApp {
            spec,
            stopped: false,
            ports: BTreeMap::new(),
            front_port: None,
        })
    }

    pub fn from_saved(saved: SavedApp) -> App {
        App {
            spec: saved.spec,
            stopped: saved.stopped,
            ports: saved.ports,
            front_port: saved.front_port,
            instances: BTreeMap::new(),
            front: None,
            switching: BTreeMap::new(),
            recycled: BTreeMap::new(),
            oom_kills_seen: BTreeMap::new(),
        }
    }

    pub fn saved(&self) -> SavedApp {
        SavedApp {
            spec: self.spec.clone(),
            stopped: self.stopped,
            ports: self.ports.clone(),
            front_port: self.front_port,
        }
    }

    /// Every port this app holds: its instances', a switch's new instances', its front's.
    pub fn held_ports(&self) -> BTreeSet<u16> {
        self.ports
            .values()
            .copied()
            .chain(self.front_port)
            .chain(self.pinned_port())
            .chain(self.switching.values().filter_map(|h| h.config.launch.port))
            .collect()
    }

    /// The front's TCP port when the spec pins it (`PORT`): held like a chosen one, so no
    /// other app can take it.
    pub fn pinned_port(&self) -> Option<u16> {
        pinned_port(&self.spec)
    }

    /// Tells the daemon's port table exactly which ports this app holds now.
    pub fn publish_ports(&self, ports: &Ports) {
        ports.hold(&self.spec.app, self.held_ports());
    }

    fn grace(&self) -> Duration {
        Duration::from_millis(self.spec.settings.stop_grace_ms)
    }

    fn rotation(&self) -> Rotation {
        Rotation {
            max_bytes: self.spec.settings.log_max_bytes,
            backups: self.spec.settings.log_backups,
        }
    }

    /// The kinds of the Procfile, for error messages.
    fn kinds(&self) -> Vec<String> {
        self.spec.processes.iter().map(|p| p.kind.clone()).collect()
    }
}

/// Stops and restarts asked for, to be awaited before a command is answered.
#[derive(Default)]
#[must_use = "await the pending work before answering"]
pub struct Pending {
    done: Vec<Done>,
    restarted: Vec<oneshot::Receiver<()>>,
}

impl Pending {
    pub async fn wait(self) {
        for done in self.done {
            done.wait().await;
        }
        for restarted in self.restarted {
            let _ = restarted.await;
        }
    }

    pub fn merge(&mut self, other: Pending) {
        self.done.extend(other.done);
        self.restarted.extend(other.restarted);
    }
}

/// The TCP port `spec`'s front pins, if any.
pub fn pinned_port(spec: &piku_proto::AppSpec) -> Option<u16> {
    spec.settings.front.as_ref()?.tcp.as_ref()?.port
}
