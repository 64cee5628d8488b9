//! One app's manager: turns its desired state (`AppSpec`, stopped flag) into running
//! instance and cron actors, touching only what differs.
//!
//! Every method runs under the daemon's app table lock and never waits for a process: it
//! sends stop/restart requests and returns them as [`Pending`], which the caller awaits after
//! releasing the lock, so a slow stop never blocks `status` or another app.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use piku_model::CronSchedule;
use piku_proto::{AppSpec, AppStatus, ApplyReport, InstanceState, Role};
use tokio::sync::oneshot;

use crate::cron::CronHandle;
use crate::instance::{Done, InstanceConfig, InstanceHandle};
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

    fn merge(&mut self, other: Pending) {
        self.done.extend(other.done);
        self.restarted.extend(other.restarted);
    }
}

pub struct App {
    pub spec: AppSpec,
    pub stopped: bool,
    /// `web.1` → port, for every web instance of the formation (also while stopped).
    pub ports: BTreeMap<String, u16>,
    instances: BTreeMap<(String, u32), InstanceHandle>,
    crons: BTreeMap<String, CronHandle>,
}

/// What one instance should be.
struct Desired {
    config: InstanceConfig,
    /// `Some` for cron entries.
    schedule: Option<CronSchedule>,
}

impl App {
    pub fn new(spec: AppSpec, stopped: bool, ports: BTreeMap<String, u16>) -> App {
        App {
            spec,
            stopped,
            ports,
            instances: BTreeMap::new(),
            crons: BTreeMap::new(),
        }
    }

    pub fn saved(&self) -> SavedApp {
        SavedApp {
            spec: self.spec.clone(),
            stopped: self.stopped,
            ports: self.ports.clone(),
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
        let wanted: BTreeSet<String> = self
            .spec
            .processes
            .iter()
            .filter(|p| p.role == Role::Web)
            .flat_map(|p| (1..=p.count).map(move |i| format!("{}.{i}", p.kind)))
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
    fn desired(&self) -> BTreeMap<(String, u32), Desired> {
        let mut out = BTreeMap::new();
        if self.stopped {
            return out;
        }
        for p in &self.spec.processes {
            // Cron entries have one instance at most: count 0 disables them.
            let (count, schedule) = match &p.role {
                Role::Cron { schedule } => match CronSchedule::parse(schedule) {
                    Ok(s) => (p.count.min(1), Some(s)),
                    // Validated on apply; a bad schedule in an old state file is skipped.
                    Err(e) => {
                        tracing::warn!(app = %self.spec.app, kind = %p.kind, "skipping cron entry: {e}");
                        continue;
                    }
                },
                Role::Web | Role::Worker => (p.count, None),
            };
            for index in 1..=count {
                let port = match p.role {
                    Role::Web => self.ports.get(&format!("{}.{index}", p.kind)).copied(),
                    Role::Worker | Role::Cron { .. } => None,
                };
                let config = InstanceConfig {
                    app: self.spec.app.clone(),
                    kind: p.kind.clone(),
                    index,
                    release: self.spec.release.clone(),
                    launch: Launch {
                        command: p.command.clone(),
                        env: self.spec.env.clone(),
                        workdir: self.spec.workdir.clone(),
                        port,
                    },
                };
                out.insert(
                    (p.kind.clone(), index),
                    Desired {
                        config,
                        schedule: schedule.clone(),
                    },
                );
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

        let gone: Vec<(String, u32)> = self
            .instances
            .keys()
            .filter(|k| desired.get(*k).is_none_or(|d| d.schedule.is_some()))
            .cloned()
            .collect();
        for key in gone {
            if let Some(handle) = self.instances.remove(&key) {
                report.stopped.push(handle.config.name());
                pending.done.push(handle.stop());
            }
        }
        let gone_crons: Vec<String> = self
            .crons
            .keys()
            .filter(|k| {
                desired
                    .get(&((*k).clone(), 1))
                    .is_none_or(|d| d.schedule.is_none())
            })
            .cloned()
            .collect();
        for kind in gone_crons {
            if let Some(handle) = self.crons.remove(&kind) {
                report.stopped.push(handle.config.name());
                pending.done.push(handle.stop());
            }
        }

        for (key, want) in desired {
            let name = want.config.name();
            let sink = ctx.logs.sink(&self.spec.app, &name, rotation);
            match want.schedule {
                None => {
                    let after = match self.instances.remove(&key) {
                        Some(old) if old.config.same_process_as(&want.config) => {
                            old.set_grace(grace);
                            old.sink.set_rotation(rotation);
                            report.unchanged.push(name);
                            self.instances.insert(key, old);
                            continue;
                        }
                        Some(old) => {
                            report.restarted.push(name);
                            let done = old.stop();
                            pending.done.push(done.clone());
                            Some(done)
                        }
                        None => {
                            report.started.push(name);
                            None
                        }
                    };
                    let handle =
                        InstanceHandle::start(want.config, grace, sink, ctx.running.clone(), after);
                    self.instances.insert(key, handle);
                }
                Some(schedule) => {
                    let kind = key.0;
                    let after = match self.crons.remove(&kind) {
                        Some(old)
                            if old.config.same_process_as(&want.config)
                                && old.schedule == schedule.as_str() =>
                        {
                            old.set_grace(grace);
                            old.sink.set_rotation(rotation);
                            report.unchanged.push(name);
                            self.crons.insert(kind, old);
                            continue;
                        }
                        Some(old) => {
                            report.restarted.push(name);
                            let done = old.stop();
                            pending.done.push(done.clone());
                            Some(done)
                        }
                        None => {
                            report.started.push(name);
                            None
                        }
                    };
                    let handle = CronHandle::start(
                        want.config,
                        schedule,
                        grace,
                        sink,
                        ctx.running.clone(),
                        after,
                    );
                    self.crons.insert(kind, handle);
                }
            }
        }
        (report, pending)
    }

    /// Stops every actor (for `Stop`, `Remove` and shutdown).
    pub fn stop_all(&mut self) -> Pending {
        let mut pending = Pending::default();
        for (_, handle) in std::mem::take(&mut self.instances) {
            pending.done.push(handle.stop());
        }
        for (_, handle) in std::mem::take(&mut self.crons) {
            pending.done.push(handle.stop());
        }
        pending
    }

    /// Restarts every instance, or those of `kind`, bypassing the back-off. Cron entries
    /// are re-created (a run in progress is stopped; the schedule starts afresh).
    pub fn restart(&mut self, ctx: &Ctx, kind: Option<&str>) -> Pending {
        let mut pending = Pending::default();
        if self.stopped {
            self.stopped = false;
            let (_, started) = self.reconcile(ctx);
            pending.merge(started);
            return pending;
        }
        for handle in self.instances.values() {
            if kind.is_none_or(|k| k == handle.config.kind) {
                pending.restarted.push(handle.restart());
            }
        }
        let crons: Vec<String> = self
            .crons
            .keys()
            .filter(|k| kind.is_none_or(|want| want == k.as_str()))
            .cloned()
            .collect();
        for kind in crons {
            let Some(old) = self.crons.remove(&kind) else {
                continue;
            };
            // Validated when it was applied.
            let Ok(schedule) = CronSchedule::parse(&old.schedule) else {
                pending.done.push(old.stop());
                continue;
            };
            let (config, sink) = (old.config.clone(), old.sink.clone());
            let done = old.stop();
            pending.done.push(done.clone());
            // The new scheduler starts once the old one (and any run of it) has stopped.
            let handle = CronHandle::start(
                config,
                schedule,
                self.grace(),
                sink,
                ctx.running.clone(),
                Some(done),
            );
            self.crons.insert(kind, handle);
        }
        pending
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
            .chain(self.crons.values().map(CronHandle::status))
            .collect();
        if self.stopped {
            // Show the formation as stopped, with the ports it keeps.
            for p in &self.spec.processes {
                let count = match p.role {
                    Role::Cron { .. } => p.count.min(1),
                    Role::Web | Role::Worker => p.count,
                };
                for index in 1..=count {
                    instances.push(stopped_status(
                        &p.kind,
                        index,
                        self.ports.get(&format!("{}.{index}", p.kind)).copied(),
                    ));
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
            front: None,
        }
    }
}

fn stopped_status(kind: &str, index: u32, port: Option<u16>) -> piku_proto::InstanceStatus {
    piku_proto::InstanceStatus {
        kind: kind.to_string(),
        index,
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
