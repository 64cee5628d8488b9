//! One app's manager: turns its desired state (`AppSpec`, stopped flag) into running
//! instance and cron actors, touching only what differs.
//!
//! Every method runs under the daemon's app table lock and never waits for a process: it
//! sends stop/restart requests and returns them as [`Pending`], which the caller awaits after
//! releasing the lock, so a slow stop never blocks `status` or another app.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use piku_model::{CronSchedule, InstanceId};
use piku_proto::{AppSpec, AppStatus, ApplyReport, InstanceState, Role};
use tokio::sync::oneshot;

use crate::front::{AppFront, FrontError, Listen, Member};
use crate::instance::config::InstanceConfig;
use crate::instance::{Done, InstanceHandle};
use crate::leftovers::Running;
use crate::logs::{LogHub, Rotation};
use crate::ports;
use crate::spawn::Launch;
use crate::state::SavedApp;

/// What every app manager needs from the daemon.
#[derive(Clone)]
pub struct Ctx {
    pub logs: LogHub,
    pub running: Arc<Running>,
}

/// Stops and restarts requested under the lock, to be awaited after it.
#[derive(Default)]
#[must_use = "await the pending work after releasing the lock"]
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
    /// New web instances of a switch in progress, started beside the ones in `instances`.
    switching: BTreeMap<InstanceId, InstanceHandle>,
}

/// A new web instance of a switch, to be waited for.
pub struct Candidate {
    pub id: InstanceId,
    pub port: u16,
    pub state: crate::snapshot::Watch,
}

impl App {
    pub fn new(
        spec: AppSpec,
        stopped: bool,
        ports: BTreeMap<InstanceId, u16>,
        front_port: Option<u16>,
    ) -> App {
        App {
            spec,
            stopped,
            ports,
            front_port,
            instances: BTreeMap::new(),
            front: None,
            switching: BTreeMap::new(),
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
    pub fn held_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports
            .values()
            .copied()
            .chain(self.front_port)
            .chain(self.switching.values().filter_map(|h| h.config.launch.port))
    }

    /// Whether web instances are replaced blue/green: the app has a front and it is open.
    pub fn has_front(&self) -> bool {
        self.front.is_some()
    }

    /// Opens, rebinds or closes the front to match the spec (closed while stopped). The TCP
    /// port, when the spec does not pin one, is chosen once and kept in `front_port`. On a
    /// bind error the previous front (if any) stays as it was.
    pub fn ensure_front(&mut self, taken: &mut BTreeSet<u16>) -> Result<(), FrontError> {
        let Some(spec) = self.spec.settings.front.clone() else {
            if let Some(front) = self.front.take() {
                front.close(None);
            }
            if let Some(port) = self.front_port.take() {
                taken.remove(&port);
            }
            return Ok(());
        };
        let wants_chosen_port = spec.tcp.as_ref().is_some_and(|tcp| tcp.port.is_none());
        if wants_chosen_port && self.front_port.is_none() {
            let port = ports::allocate(taken).map_err(|source| FrontError::Tcp {
                app: self.spec.app.clone(),
                addr: "a free port".into(),
                source,
            })?;
            taken.insert(port);
            self.front_port = Some(port);
        } else if !wants_chosen_port && let Some(port) = self.front_port.take() {
            taken.remove(&port);
        }
        if self.stopped {
            if let Some(front) = self.front.take() {
                front.close(None);
            }
            return Ok(());
        }
        let listen = Listen::of(&spec, self.front_port);
        if self.front.as_ref().is_some_and(|f| *f.listen() == listen) {
            return Ok(());
        }
        // Listeners that stay are handed over, so the rebind refuses no connection.
        let front = AppFront::open(&self.spec.app, listen, self.members(), self.front.as_ref())?;
        if let Some(old) = self.front.replace(front) {
            old.close(self.front.as_ref());
        }
        Ok(())
    }

    /// Tells the front which web instances exist now (no-op without a front).
    pub fn sync_members(&self) {
        if let Some(front) = &self.front {
            front.set_members(self.members());
        }
    }

    /// The web instances, as the front sees them.
    fn members(&self) -> Vec<Member> {
        self.instances
            .values()
            .filter_map(|h| {
                h.config.launch.port.map(|port| Member {
                    id: h.config.id.clone(),
                    port,
                    state: h.watch(),
                })
            })
            .collect()
    }

    /// Stops web instances that have left the pool: waits until their in-flight requests
    /// are done (at most the app's `drain_ms`), then stops them. The caller has already
    /// removed them from the members.
    fn retire(&self, handles: Vec<InstanceHandle>, pending: &mut Pending) {
        let drain = self
            .spec
            .settings
            .front
            .as_ref()
            .map_or(Duration::ZERO, |f| Duration::from_millis(f.drain_ms));
        let front = self.front.as_ref().map(|f| f.front().clone());
        for handle in handles {
            let (tx, done) = Done::channel();
            let front = front.clone();
            pending.done.push(done);
            tokio::spawn(async move {
                if let (Some(front), Some(port)) = (front, handle.config.launch.port) {
                    let id = crate::front::backend_id(&handle.config.id, port);
                    if !front.drained(&[id], drain).await {
                        handle.sink.note(&format!(
                            "still serving requests after {:.1} s of draining; stopping anyway",
                            drain.as_secs_f64()
                        ));
                    }
                }
                handle.stop().wait().await;
                let _ = tx.send(true);
            });
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_millis(self.spec.settings.stop_grace_ms)
    }

    pub fn rotation(&self) -> Rotation {
        Rotation {
            max_bytes: self.spec.settings.log_max_bytes,
            backups: self.spec.settings.log_backups,
        }
    }

    /// Gives every web instance of the formation a port (keeping the ones it has) and
    /// releases the ports of instances that no longer exist. `taken` holds every port
    /// assigned in the daemon, and is kept up to date.
    pub fn assign_ports(&mut self, taken: &mut BTreeSet<u16>) -> std::io::Result<()> {
        let wanted: BTreeSet<InstanceId> = self
            .spec
            .processes
            .iter()
            .filter(|p| p.role == Role::Web)
            .flat_map(|p| (1..=p.count).map(move |i| InstanceId::new(p.kind.clone(), i)))
            .collect();
        self.ports.retain(|name, port| {
            let keep = wanted.contains(name);
            if !keep {
                taken.remove(port);
            }
            keep
        });
        for name in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.ports.entry(name) {
                let port = ports::allocate(taken)?;
                taken.insert(port);
                slot.insert(port);
            }
        }
        Ok(())
    }

    /// The instances the spec asks for (none when stopped). Ports must be assigned first.
    fn desired(&self) -> BTreeMap<InstanceId, InstanceConfig> {
        let mut out = BTreeMap::new();
        if self.stopped {
            return out;
        }
        let health_path = self
            .spec
            .settings
            .front
            .as_ref()
            .and_then(|f| f.health_path.clone());
        for p in &self.spec.processes {
            // Cron entries have one instance at most: count 0 disables them.
            let (count, schedule) = match &p.role {
                Role::Cron { schedule } => match CronSchedule::parse(schedule) {
                    Ok(s) => (piku_model::running_count(p.count, true), Some(s)),
                    // Validated on apply; a bad schedule in an old state file is skipped.
                    Err(e) => {
                        tracing::warn!(app = %self.spec.app, kind = %p.kind, "skipping cron entry: {e}");
                        continue;
                    }
                },
                Role::Web | Role::Worker => (p.count, None),
            };
            for index in 1..=count {
                let id = InstanceId::new(p.kind.clone(), index);
                let (port, health_path) = match p.role {
                    Role::Web => (self.ports.get(&id).copied(), health_path.clone()),
                    Role::Worker | Role::Cron { .. } => (None, None),
                };
                let config = InstanceConfig {
                    app: self.spec.app.clone(),
                    id: id.clone(),
                    release: self.spec.release.clone(),
                    launch: Launch {
                        command: p.command.clone(),
                        env: self.spec.env.clone(),
                        workdir: self.spec.workdir.clone(),
                        port,
                    },
                    health_path,
                    schedule: schedule.clone(),
                };
                out.insert(id, config);
            }
        }
        out
    }

    /// Makes the actors match the desired state: starts what is missing, stops what is no
    /// longer wanted, replaces what changed (release, command, env, workdir, port, schedule)
    /// and leaves the rest running.
    pub fn reconcile(&mut self, ctx: &Ctx) -> (ApplyReport, Pending) {
        let mut report = ApplyReport {
            app: self.spec.app.clone(),
            release: self.spec.release.clone(),
            ..ApplyReport::default()
        };
        let mut pending = Pending::default();
        let desired = self.desired();
        let (grace, rotation) = (self.grace(), self.rotation());

        let gone: Vec<InstanceId> = self
            .instances
            .keys()
            .filter(|id| !desired.contains_key(*id))
            .cloned()
            .collect();
        // With a front, web instances leave the pool first and are drained before they stop.
        let mut retiring = Vec::new();
        for id in gone {
            if let Some(handle) = self.instances.remove(&id) {
                report.stopped.push(id.to_string());
                if self.front.is_some() && handle.config.launch.port.is_some() {
                    retiring.push(handle);
                } else {
                    pending.done.push(handle.stop());
                }
            }
        }
        self.sync_members();
        self.retire(retiring, &mut pending);

        for (id, want) in desired {
            let name = id.to_string();
            let after = match self.instances.remove(&id) {
                Some(mut old) if old.config.same_process_as(&want) => {
                    old.set_grace(grace);
                    old.set_health_path(want.health_path.clone());
                    old.sink.set_rotation(rotation);
                    report.unchanged.push(name);
                    self.instances.insert(id, old);
                    continue;
                }
                Some(old) => {
                    report.restarted.push(name.clone());
                    let done = old.stop();
                    pending.done.push(done.clone());
                    Some(done)
                }
                None => {
                    report.started.push(name.clone());
                    None
                }
            };
            let sink = ctx.logs.sink(&self.spec.app, &name, rotation);
            let handle = InstanceHandle::start(want, grace, sink, ctx.running.clone(), after);
            self.instances.insert(id, handle);
        }
        self.sync_members();
        (report, pending)
    }

    /// Stops every actor (for `Stop`, `Remove` and shutdown) and closes the front (its TCP
    /// port stays reserved in `front_port`).
    pub fn stop_all(&mut self) -> Pending {
        let mut pending = Pending::default();
        if let Some(front) = self.front.take() {
            front.close(None);
        }
        for (_, handle) in std::mem::take(&mut self.switching) {
            pending.done.push(handle.stop());
        }
        for (_, handle) in std::mem::take(&mut self.instances) {
            pending.done.push(handle.stop());
        }
        pending
    }

    /// Restarts every instance, or those of `kind`, bypassing the back-off.
    pub fn restart(&mut self, ctx: &Ctx, kind: Option<&str>, skip_web: bool) -> Pending {
        let mut pending = Pending::default();
        if self.stopped {
            self.stopped = false;
            let (_, started) = self.reconcile(ctx);
            pending.merge(started);
            return pending;
        }
        // Cron entries too: a run in progress is stopped, the schedule goes on.
        for handle in self.instances.values() {
            let switched = skip_web && handle.config.launch.port.is_some();
            if kind.is_none_or(|k| k == handle.config.id.kind) && !switched {
                pending.restarted.push(handle.restart());
            }
        }
        pending
    }

    /// First step of a zero-downtime switch to `spec`: starts, beside the running ones, a new
    /// web instance for each one `spec` wants that is missing or would run differently (with
    /// `renew`, every web instance, or those of one kind), each on a fresh port. Returns what
    /// to wait for; empty when no web instance changes.
    pub fn begin_switch(
        &mut self,
        spec: &AppSpec,
        renew: Option<Option<&str>>,
        taken: &mut BTreeSet<u16>,
        ctx: &Ctx,
    ) -> std::io::Result<Vec<Candidate>> {
        let current = std::mem::replace(&mut self.spec, spec.clone());
        let desired = self.desired();
        let (grace, rotation) = (self.grace(), self.rotation());
        self.spec = current;
        let web_kinds: BTreeSet<&str> = spec
            .processes
            .iter()
            .filter(|p| p.role == Role::Web)
            .map(|p| p.kind.as_str())
            .collect();
        let mut candidates = Vec::new();
        for (id, want) in desired {
            if !web_kinds.contains(id.kind.as_str()) {
                continue;
            }
            let renewed = renew.is_some_and(|kind| kind.is_none_or(|k| k == id.kind));
            let changed = self
                .instances
                .get(&id)
                .is_none_or(|old| !old.config.same_process_as(&want));
            if !(renewed || changed) {
                continue;
            }
            let port = ports::allocate(taken)?;
            taken.insert(port);
            let mut config = want;
            config.launch.port = Some(port);
            let name = id.to_string();
            let sink = ctx.logs.sink(&spec.app, &name, rotation);
            sink.note(&format!(
                "switch: starting a new {name} (release {}) on port {port} beside the old one",
                spec.release
            ));
            let handle = InstanceHandle::start(config, grace, sink, ctx.running.clone(), None);
            candidates.push(Candidate {
                id: id.clone(),
                port,
                state: handle.watch(),
            });
            if let Some(stale) = self.switching.insert(id, handle) {
                // Only one switch runs per app; a leftover would be a bug, never kept running.
                let _ = stale.stop();
            }
        }
        Ok(candidates)
    }

    /// Abandons a switch: its new instances stop, the old ones were never touched.
    pub fn abort_switch(&mut self) -> Pending {
        let mut pending = Pending::default();
        for (_, handle) in std::mem::take(&mut self.switching) {
            handle
                .sink
                .note("switch: abandoned, this new instance stops; the old one keeps serving");
            pending.done.push(handle.stop());
        }
        pending
    }

    /// Completes a switch whose new instances are healthy: each takes its name's place and
    /// port, the pool becomes the new set at once, and the instances they replace are
    /// drained and stopped (in `pending`). Returns the names switched and whether each
    /// replaced an old instance; empty if the switch was cancelled meanwhile (`Stop`).
    pub fn commit_switch(&mut self, pending: &mut Pending) -> Vec<(String, bool)> {
        let mut switched = Vec::new();
        let mut replaced = Vec::new();
        for (id, handle) in std::mem::take(&mut self.switching) {
            let name = id.to_string();
            if let Some(port) = handle.config.launch.port {
                self.ports.insert(id.clone(), port);
            }
            handle
                .sink
                .note("switch: this new instance now receives the traffic");
            let old = self.instances.insert(id, handle);
            switched.push((name, old.is_some()));
            if let Some(old) = old {
                old.sink
                    .note("switch: the old instance left the pool; draining, then stopping it");
                replaced.push(old);
            }
        }
        self.sync_members();
        self.retire(replaced, pending);
        switched
    }

    /// The kinds of the Procfile, for error messages.
    pub fn kinds(&self) -> Vec<String> {
        self.spec.processes.iter().map(|p| p.kind.clone()).collect()
    }

    pub fn status(&self) -> AppStatus {
        let mut instances: Vec<_> = self
            .instances
            .values()
            .map(InstanceHandle::status)
            .collect();
        if self.stopped {
            // Show the formation as stopped, with the ports it keeps.
            for p in &self.spec.processes {
                let count = piku_model::running_count(p.count, matches!(p.role, Role::Cron { .. }));
                for index in 1..=count {
                    let id = InstanceId::new(p.kind.clone(), index);
                    let port = self.ports.get(&id).copied();
                    instances.push(stopped_status(&id, port));
                }
            }
        }
        instances.sort_by(|a, b| (&a.kind, a.index).cmp(&(&b.kind, b.index)));
        AppStatus {
            app: self.spec.app.clone(),
            release: self.spec.release.clone(),
            stopped: self.stopped,
            formation: self
                .spec
                .processes
                .iter()
                .map(|p| (p.kind.clone(), p.count))
                .collect(),
            instances,
            front: self.front.as_ref().map(AppFront::status),
        }
    }
}

fn stopped_status(id: &InstanceId, port: Option<u16>) -> piku_proto::InstanceStatus {
    piku_proto::InstanceStatus {
        kind: id.kind.clone(),
        index: id.index,
        state: InstanceState::Stopped,
        pid: None,
        port,
        uptime_secs: None,
        restarts: 0,
        last_exit: None,
        rss_bytes: None,
        cpu_secs: None,
        next_run: None,
        log_lines_dropped: 0,
    }
}
