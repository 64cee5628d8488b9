//! The daemon's table of apps and the operations requests perform on it.
//!
//! One short-held lock guards the table: an operation changes the desired state, lets the
//! app's manager send stop/start requests to its actors, persists the new state, and only
//! then (lock released) waits for the processes. `status` therefore never waits for a stop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use piku_proto::{AppSpec, AppStatus, ApplyReport, Role};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::app::{App, Ctx, Pending};
use crate::front::FrontError;
use crate::state::{self, STATE_VERSION, SavedState, StateError};
use crate::switch::{self, Progress};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
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
    #[error("cannot assign ports: {0}")]
    Ports(std::io::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Front(#[from] FrontError),
    /// A zero-downtime switch was abandoned; the old instances still serve.
    #[error("{0}")]
    Switch(String),
}

/// Lines of an unhealthy instance's log quoted in the error of an abandoned switch.
const SWITCH_LOG_LINES: usize = 10;

pub struct Supervisor {
    pub ctx: Ctx,
    apps: Mutex<BTreeMap<String, App>>,
    state_path: PathBuf,
    /// Serialises writes of the state file, so an older snapshot never overwrites a newer one.
    save_lock: tokio::sync::Mutex<()>,
    /// Set (under the table lock) when shutdown begins.
    shutting_down: AtomicBool,
    /// One changing request at a time per app: a switch waits for health checks without
    /// the table lock, and no scale or second deploy may interleave with it.
    ops: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Supervisor {
    pub fn new(ctx: Ctx, state_path: PathBuf) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            ctx,
            apps: Mutex::new(BTreeMap::new()),
            state_path,
            save_lock: tokio::sync::Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            ops: Mutex::new(BTreeMap::new()),
        })
    }

    /// Waits for the app's turn to change (see `ops`).
    async fn op(&self, app: &str) -> OwnedMutexGuard<()> {
        let lock = self
            .ops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(app.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// The table, for a request that changes it: refused once shutdown has begun, so that
    /// nothing is started behind the shutdown's back.
    fn apps_to_change(&self) -> Result<MutexGuard<'_, BTreeMap<String, App>>, SupervisorError> {
        let apps = self.apps();
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SupervisorError::ShuttingDown);
        }
        Ok(apps)
    }

    fn apps(&self) -> MutexGuard<'_, BTreeMap<String, App>> {
        // Every mutation under this lock is completed before it is released; a panic in
        // one request must not take the whole daemon down.
        self.apps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Brings back every saved app at its formation (those not stopped start now).
    pub fn restore(&self, saved: SavedState) {
        let mut apps = self.apps();
        let mut taken: BTreeSet<u16> = saved
            .apps
            .values()
            .flat_map(|a| a.ports.values().copied().chain(a.front_port))
            .collect();
        for (name, saved_app) in saved.apps {
            if let Err(e) = crate::validate::spec(&saved_app.spec) {
                tracing::error!(app = %name, "not restoring an invalid saved app: {e}");
                continue;
            }
            let mut app = App::new(
                saved_app.spec,
                saved_app.stopped,
                saved_app.ports,
                saved_app.front_port,
            );
            if let Err(e) = app.assign_ports(&mut taken) {
                tracing::error!(app = %name, "cannot assign ports: {e}");
            }
            if let Err(e) = app.ensure_front(&mut taken) {
                tracing::error!(app = %name, "{}", crate::report::chain(&e));
            }
            let (report, _started) = app.reconcile(&self.ctx);
            tracing::info!(
                app = %name,
                stopped = app.stopped,
                started = report.started.len(),
                "restored"
            );
            apps.insert(name, app);
        }
    }

    fn taken_ports(apps: &BTreeMap<String, App>) -> BTreeSet<u16> {
        apps.values().flat_map(App::held_ports).collect()
    }

    /// `Apply`: the app's desired state becomes `spec`; only what differs is touched.
    /// Clears the stopped flag. Returns once stopped/replaced processes are gone and new
    /// ones are spawned.
    ///
    /// With an open front, changed web instances are replaced blue/green (see [`switch`]).
    pub async fn apply(
        &self,
        spec: AppSpec,
        progress: &Progress,
    ) -> Result<ApplyReport, SupervisorError> {
        crate::validate::spec(&spec).map_err(SupervisorError::Invalid)?;
        let _turn = self.op(&spec.app).await;
        if let Some(report) = self.switch(spec.clone(), None, progress).await? {
            return Ok(report);
        }
        let (report, pending) = {
            let mut apps = self.apps_to_change()?;
            let mut taken = Self::taken_ports(&apps);
            let name = spec.app.clone();
            let is_new = !apps.contains_key(&name);
            let app = apps
                .entry(name.clone())
                .or_insert_with(|| App::new(spec.clone(), false, BTreeMap::new(), None));
            let previous = (app.spec.clone(), app.ports.clone());
            app.spec = spec;
            if let Err(e) = app.assign_ports(&mut taken) {
                (app.spec, app.ports) = previous;
                if is_new {
                    apps.remove(&name);
                }
                return Err(SupervisorError::Ports(e));
            }
            app.stopped = false;
            if let Err(e) = app.ensure_front(&mut taken) {
                (app.spec, app.ports) = previous;
                if is_new {
                    let _ = apps.remove(&name).map(|mut app| app.stop_all());
                }
                return Err(e.into());
            }
            app.reconcile(&self.ctx)
        };
        self.save().await?;
        pending.wait().await;
        tracing::info!(
            app = %report.app,
            release = %report.release,
            started = ?report.started,
            stopped = ?report.stopped,
            restarted = ?report.restarted,
            "applied"
        );
        Ok(report)
    }

    /// `Scale`: new counts for the named kinds; other kinds keep theirs. Answers like an
    /// apply (which instances started and stopped). Does not change the stopped flag: a
    /// stopped app records its new formation and starts at it on `Start`.
    pub async fn scale(
        &self,
        app_name: &str,
        formation: &BTreeMap<String, u32>,
    ) -> Result<ApplyReport, SupervisorError> {
        let _turn = self.op(app_name).await;
        let (report, pending) = {
            let mut apps = self.apps_to_change()?;
            let mut taken = Self::taken_ports(&apps);
            let app = apps
                .get_mut(app_name)
                .ok_or_else(|| SupervisorError::UnknownApp(app_name.to_string()))?;
            let mut spec = app.spec.clone();
            for (kind, count) in formation {
                let known = app.kinds().join(", ");
                let p = spec
                    .processes
                    .iter_mut()
                    .find(|p| &p.kind == kind)
                    .ok_or_else(|| SupervisorError::UnknownKind {
                        app: app_name.to_string(),
                        kind: kind.clone(),
                        known,
                    })?;
                let cron = matches!(p.role, Role::Cron { .. });
                crate::validate::count(kind, *count, cron).map_err(SupervisorError::Invalid)?;
                p.count = *count;
            }
            let previous = (app.spec.clone(), app.ports.clone());
            app.spec = spec;
            if let Err(e) = app.assign_ports(&mut taken) {
                (app.spec, app.ports) = previous;
                return Err(SupervisorError::Ports(e));
            }
            app.reconcile(&self.ctx)
        };
        self.save().await?;
        pending.wait().await;
        Ok(report)
    }

    /// `Restart`: every instance of the app (or of `kind`), bypassing the back-off; a
    /// stopped app is started.
    ///
    /// With an open front, web instances are renewed blue/green first (see [`switch`]);
    /// the other kinds restart once that has succeeded.
    pub async fn restart(
        &self,
        app_name: &str,
        kind: Option<&str>,
        progress: &Progress,
    ) -> Result<(), SupervisorError> {
        let _turn = self.op(app_name).await;
        let switch_web = {
            let apps = self.apps_to_change()?;
            let app = apps
                .get(app_name)
                .ok_or_else(|| SupervisorError::UnknownApp(app_name.to_string()))?;
            let web_kind = kind.is_none_or(|k| {
                app.spec
                    .processes
                    .iter()
                    .any(|p| p.kind == k && p.role == Role::Web)
            });
            (app.has_front() && !app.stopped && web_kind).then(|| app.spec.clone())
        };
        if let Some(spec) = &switch_web {
            self.switch(spec.clone(), Some(kind), progress).await?;
        }
        let pending = {
            let mut apps = self.apps_to_change()?;
            let app = apps
                .get_mut(app_name)
                .ok_or_else(|| SupervisorError::UnknownApp(app_name.to_string()))?;
            if let Some(kind) = kind
                && !app.kinds().iter().any(|k| k == kind)
            {
                return Err(SupervisorError::UnknownKind {
                    app: app_name.to_string(),
                    kind: kind.to_string(),
                    known: app.kinds().join(", "),
                });
            }
            let was_stopped = app.stopped;
            let pending = app.restart(&self.ctx, kind, switch_web.is_some());
            if was_stopped {
                let mut taken = Self::taken_ports(&apps);
                if let Some(app) = apps.get_mut(app_name) {
                    app.ensure_front(&mut taken)?;
                    app.sync_members();
                }
            }
            pending
        };
        self.save().await?;
        pending.wait().await;
        Ok(())
    }

    /// `Stop`: stops every process and remembers it (a daemon restart keeps it stopped).
    pub async fn stop(&self, app_name: &str) -> Result<(), SupervisorError> {
        let _turn = self.op(app_name).await;
        let pending = {
            let mut apps = self.apps_to_change()?;
            let app = apps
                .get_mut(app_name)
                .ok_or_else(|| SupervisorError::UnknownApp(app_name.to_string()))?;
            app.stopped = true;
            app.stop_all()
        };
        self.save().await?;
        pending.wait().await;
        Ok(())
    }

    /// `Start`: a stopped app runs again at its formation.
    pub async fn start(&self, app_name: &str) -> Result<ApplyReport, SupervisorError> {
        let _turn = self.op(app_name).await;
        let (report, pending) = {
            let mut apps = self.apps_to_change()?;
            let mut taken = Self::taken_ports(&apps);
            let app = apps
                .get_mut(app_name)
                .ok_or_else(|| SupervisorError::UnknownApp(app_name.to_string()))?;
            app.stopped = false;
            // Listening first: instances join the pool as they come up.
            if let Err(e) = app.ensure_front(&mut taken) {
                app.stopped = true;
                return Err(e.into());
            }
            app.reconcile(&self.ctx)
        };
        self.save().await?;
        pending.wait().await;
        Ok(report)
    }

    /// `Remove`: stops the app and forgets it; its log files stay.
    pub async fn remove(&self, app_name: &str) -> Result<(), SupervisorError> {
        let _turn = self.op(app_name).await;
        let pending = {
            let mut apps = self.apps_to_change()?;
            let mut app = apps
                .remove(app_name)
                .ok_or_else(|| SupervisorError::UnknownApp(app_name.to_string()))?;
            app.stop_all()
        };
        self.save().await?;
        pending.wait().await;
        self.ctx.logs.forget_app(app_name);
        Ok(())
    }

    /// A zero-downtime switch of the app's web instances to `spec` (see [`switch`]), when
    /// the app runs with an open front and some web instance changes (or `renew` asks for
    /// fresh ones: `Some(None)` every web kind, `Some(Some(kind))` one). `Ok(None)`: nothing
    /// to switch, the caller proceeds in place. The caller holds the app's turn.
    async fn switch(
        &self,
        spec: AppSpec,
        renew: Option<Option<&str>>,
        progress: &Progress,
    ) -> Result<Option<ApplyReport>, SupervisorError> {
        let name = spec.app.clone();
        let candidates = {
            let mut apps = self.apps_to_change()?;
            let mut taken = Self::taken_ports(&apps);
            let Some(app) = apps.get_mut(&name) else {
                return Ok(None);
            };
            if app.stopped || !app.has_front() || spec.settings.front.is_none() {
                return Ok(None);
            }
            match app.begin_switch(&spec, renew, &mut taken, &self.ctx) {
                Ok(candidates) => Ok(candidates),
                Err(e) => Err((app.abort_switch(), e)),
            }
        };
        let candidates = match candidates {
            Ok(candidates) if candidates.is_empty() => return Ok(None),
            Ok(candidates) => candidates,
            Err((pending, e)) => {
                pending.wait().await;
                return Err(SupervisorError::Ports(e));
            }
        };
        let settings = spec.settings.front.clone().unwrap_or_default();
        let began = Instant::now();
        let waited = switch::wait_all(
            &candidates,
            Duration::from_millis(settings.health_deadline_ms),
            progress,
        )
        .await;
        if let Err(unhealthy) = waited {
            let pending = self
                .apps()
                .get_mut(&name)
                .map(App::abort_switch)
                .unwrap_or_default();
            pending.wait().await;
            // The instance's last words may still be on their way to its log file.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.ctx.logs.flush_all()).await;
            let tail = self
                .ctx
                .logs
                .tail(&name, Some(&unhealthy.id.to_string()), SWITCH_LOG_LINES)
                .await
                .unwrap_or_default();
            let mut message = format!(
                "{}; not switched: the old instances keep serving",
                unhealthy.reason
            );
            if !tail.is_empty() {
                message.push_str(&format!("\nlast lines of {}:", unhealthy.id));
                for line in tail {
                    message.push_str(&format!("\n  {}", line.line));
                }
            }
            tracing::warn!(app = %name, "switch abandoned: {}", unhealthy.reason);
            return Err(SupervisorError::Switch(message));
        }
        progress.say(format!(
            "{} new web instance(s) healthy after {:.1}s: switching traffic",
            candidates.len(),
            began.elapsed().as_secs_f64()
        ));
        let (report, pending, switched) = {
            let mut apps = self.apps_to_change()?;
            let mut pending = Pending::default();
            let switched = match apps.get_mut(&name) {
                Some(app) => app.commit_switch(&mut pending),
                None => Vec::new(),
            };
            if switched.is_empty() {
                return Err(SupervisorError::Switch(format!(
                    "{name} was stopped during the switch"
                )));
            }
            let mut taken = Self::taken_ports(&apps);
            let Some(app) = apps.get_mut(&name) else {
                return Err(SupervisorError::UnknownApp(name));
            };
            app.spec = spec;
            // Ports only shrink here (kinds scaled down or gone): no allocation can fail.
            if let Err(e) = app.assign_ports(&mut taken) {
                tracing::error!(app = %name, "cannot assign ports after a switch: {e}");
            }
            if let Err(e) = app.ensure_front(&mut taken) {
                tracing::error!(app = %name, "after the switch: {}; the front keeps its old listeners", crate::report::chain(&e));
            }
            let (mut report, rest) = app.reconcile(&self.ctx);
            pending.merge(rest);
            for (instance, replaced) in &switched {
                report.unchanged.retain(|n| n != instance);
                if *replaced {
                    report.restarted.push(instance.clone());
                } else {
                    report.started.push(instance.clone());
                }
            }
            (report, pending, switched.len())
        };
        self.save().await?;
        progress.say(format!(
            "switched {switched} web instance(s) in {:.1}s; draining and stopping the old ones",
            began.elapsed().as_secs_f64()
        ));
        pending.wait().await;
        tracing::info!(
            app = %report.app,
            release = %report.release,
            restarted = ?report.restarted,
            seconds = began.elapsed().as_secs_f64(),
            "switched with no downtime"
        );
        Ok(Some(report))
    }

    pub fn status(&self, app_name: Option<&str>) -> Result<Vec<AppStatus>, SupervisorError> {
        let apps = self.apps();
        match app_name {
            Some(name) => apps
                .get(name)
                .map(|a| vec![a.status()])
                .ok_or_else(|| SupervisorError::UnknownApp(name.to_string())),
            None => Ok(apps.values().map(App::status).collect()),
        }
    }

    pub fn knows(&self, app_name: &str) -> bool {
        self.apps().contains_key(app_name)
    }

    /// The longest stop grace of any app: bounds a shutdown.
    pub fn max_grace(&self) -> Duration {
        self.apps()
            .values()
            .map(|a| Duration::from_millis(a.spec.settings.stop_grace_ms))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Stops every process of every app (daemon shutdown); the desired state is kept, so
    /// the apps come back when the daemon starts again.
    pub async fn shutdown(&self) {
        let pendings: Vec<Pending> = {
            let mut apps = self.apps();
            self.shutting_down.store(true, Ordering::SeqCst);
            apps.values_mut().map(App::stop_all).collect()
        };
        for pending in pendings {
            pending.wait().await;
        }
    }

    /// The desired state as saved on disk.
    pub fn saved(&self) -> SavedState {
        SavedState {
            version: STATE_VERSION,
            apps: self
                .apps()
                .iter()
                .map(|(name, app)| (name.clone(), app.saved()))
                .collect(),
        }
    }

    /// Writes the state file (atomically, off the async threads).
    pub async fn save(&self) -> Result<(), StateError> {
        let _guard = self.save_lock.lock().await;
        let snapshot = self.saved();
        let path = self.state_path.clone();
        tokio::task::spawn_blocking(move || state::save(&path, &snapshot))
            .await
            .map_err(|e| StateError::Write {
                path: self.state_path.clone(),
                source: std::io::Error::other(e),
            })?
    }

    /// SIGHUP: re-reads the state file and reports how it compares with what runs, without
    /// touching any process; the file is rewritten from memory if it is missing or differs.
    pub async fn reload(&self) {
        let on_disk = match state::load(&self.state_path) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "SIGHUP: {}; rewriting it from memory",
                    crate::report::chain(&e)
                );
                if let Err(e) = self.save().await {
                    tracing::error!("SIGHUP: {}", crate::report::chain(&e));
                }
                return;
            }
        };
        let in_memory = self.saved();
        if on_disk == in_memory {
            tracing::info!(
                apps = in_memory.apps.len(),
                "SIGHUP: state file re-read, matches what runs; nothing touched"
            );
        } else {
            tracing::warn!(
                "SIGHUP: state file differs from what runs (edited by hand?); running apps are \
                 left alone and the file is rewritten from memory: use `piku` to change apps"
            );
            if let Err(e) = self.save().await {
                tracing::error!("SIGHUP: {}", crate::report::chain(&e));
            }
        }
    }
}
