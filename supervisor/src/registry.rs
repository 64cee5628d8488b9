//! The daemon's table of apps: each app's name and the handle of its actor (`app/`).
//!
//! The table's lock is held only to find (or create) an actor and put a command in its
//! mailbox, never across an await: all the work happens in the actors. Sending under the
//! lock is what lets an actor whose app is gone retire safely (`Directory::retire`): no
//! command can slip into its mailbox between its last look and its removal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use piku_proto::{AppSpec, AppStatus, ApplyReport};
use tokio::sync::oneshot;

use crate::app::Ctx;
use crate::app::actor;
use crate::app::command::{AppError, AppHandle, Command, Directory, Reply};
use crate::state::SavedState;

pub struct Registry {
    ctx: Ctx,
    table: Mutex<Table>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Table {
    apps: BTreeMap<String, AppHandle>,
    /// Set when shutdown begins: nothing is started behind its back.
    shutting_down: bool,
}

impl Registry {
    pub fn new(ctx: Ctx) -> Arc<Registry> {
        Arc::new(Registry {
            ctx,
            table: Mutex::new(Table::default()),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// Brings back every saved app at its formation (those not stopped start now). Ports
    /// saved for any app are reserved before any actor picks new ones.
    pub fn restore(self: &Arc<Self>, saved: SavedState) {
        let mut valid = BTreeMap::new();
        for (name, mut app) in saved.apps {
            // A state file from before the cap: the app comes back, its grace bounded.
            let grace = &mut app.spec.settings.stop_grace_ms;
            *grace = (*grace).min(piku_proto::MAX_STOP_GRACE_MS);
            if let Some(front) = &mut app.spec.settings.front {
                front.health_deadline_ms =
                    front.health_deadline_ms.min(piku_proto::MAX_FRONT_WAIT_MS);
                front.drain_ms = front.drain_ms.min(piku_proto::MAX_FRONT_WAIT_MS);
            }
            match crate::validate::spec(&app.spec) {
                Ok(()) => {
                    let ports = app
                        .ports
                        .values()
                        .copied()
                        .chain(app.front_port)
                        .chain(crate::app::pinned_port(&app.spec))
                        .collect();
                    self.ctx.ports.hold(&name, ports);
                    valid.insert(name, app);
                }
                Err(e) => tracing::error!(app = %name, "not restoring an invalid saved app: {e}"),
            }
        }
        let mut table = self.lock();
        for (name, app) in valid {
            self.ctx.store.put(&name, app.clone());
            let handle = self.spawn(&name, Some(app));
            table.apps.insert(name, handle);
        }
    }

    fn spawn(self: &Arc<Self>, name: &str, restore: Option<crate::state::SavedApp>) -> AppHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let directory: Arc<dyn Directory> = self.clone();
        actor::spawn(name.to_string(), id, self.ctx.clone(), directory, restore)
    }

    /// `Apply`, to the app's actor (created for a new app).
    pub async fn apply(
        self: &Arc<Self>,
        spec: AppSpec,
        progress: crate::app::command::Progress,
    ) -> Result<ApplyReport, AppError> {
        let name = spec.app.clone();
        let (reply, answer) = oneshot::channel();
        let command = Command::Apply {
            spec: Box::new(spec),
            progress,
            reply,
        };
        {
            let mut table = self.lock_to_change()?;
            let handle = match table.apps.get(&name) {
                Some(handle) => handle.clone(),
                None => {
                    let handle = self.spawn(&name, None);
                    table.apps.insert(name.clone(), handle.clone());
                    handle
                }
            };
            send(&handle, command);
        }
        answer.await.unwrap_or(Err(AppError::ShuttingDown))
    }

    /// A changing command to an existing app's actor, made with its reply channel.
    pub async fn request<T>(
        &self,
        app: &str,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, AppError> {
        let (reply, answer) = oneshot::channel();
        {
            let table = self.lock_to_change()?;
            let handle = table
                .apps
                .get(app)
                .ok_or_else(|| AppError::UnknownApp(app.to_string()))?;
            send(handle, command(reply));
        }
        answer.await.unwrap_or(Err(AppError::ShuttingDown))
    }

    /// `Status` of one app or of every app; never waits for a change in progress.
    pub async fn status(&self, app: Option<&str>) -> Result<Vec<AppStatus>, AppError> {
        let asked: Vec<oneshot::Receiver<Option<AppStatus>>> = {
            let table = self.lock();
            let handles: Vec<&AppHandle> = match app {
                Some(name) => vec![
                    table
                        .apps
                        .get(name)
                        .ok_or_else(|| AppError::UnknownApp(name.to_string()))?,
                ],
                None => table.apps.values().collect(),
            };
            handles
                .into_iter()
                .map(|handle| {
                    let (reply, answer) = oneshot::channel();
                    send(handle, Command::Status { reply });
                    answer
                })
                .collect()
        };
        let mut apps = Vec::new();
        for answer in asked {
            // `None`: an actor whose app was just removed.
            if let Ok(Some(status)) = answer.await {
                apps.push(status);
            }
        }
        match app {
            Some(name) if apps.is_empty() => Err(AppError::UnknownApp(name.to_string())),
            _ => Ok(apps),
        }
    }

    /// Whether an app of that name exists (for `Logs` of an app with no log yet).
    pub fn knows(&self, app: &str) -> bool {
        self.lock().apps.contains_key(app)
    }

    /// The longest stop grace of any app: bounds a shutdown.
    pub fn max_grace(&self) -> Duration {
        self.ctx.store.max_grace()
    }

    /// Stops every process of every app (daemon shutdown); the desired state is kept, so
    /// the apps come back when the daemon starts again.
    pub async fn shutdown(&self) {
        let stopped: Vec<oneshot::Receiver<()>> = {
            let mut table = self.lock();
            table.shutting_down = true;
            table
                .apps
                .values()
                .map(|handle| {
                    let (reply, stopped) = oneshot::channel();
                    send(handle, Command::Shutdown { reply });
                    stopped
                })
                .collect()
        };
        for stopped in stopped {
            let _ = stopped.await;
        }
    }

    /// SIGHUP: the state file is compared with what runs; no process is touched.
    /// Freezes every app for an upgrade (`app/upgrade.rs`); every change is refused from
    /// now on. An app that has not answered by `deadline` (a command still waiting) hands
    /// nothing over: its processes will be the next image's leftovers.
    pub async fn freeze(
        &self,
        deadline: tokio::time::Instant,
    ) -> Vec<crate::app::upgrade::FrozenApp> {
        let asked: Vec<(String, oneshot::Receiver<crate::app::upgrade::FrozenApp>)> = {
            let mut table = self.lock();
            table.shutting_down = true;
            table
                .apps
                .iter()
                .map(|(name, handle)| {
                    let (reply, frozen) = oneshot::channel();
                    send(handle, Command::Freeze { reply });
                    (name.clone(), frozen)
                })
                .collect()
        };
        let mut frozen = Vec::new();
        for (name, answer) in asked {
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(app)) => frozen.push(app),
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::error!(app = %name, "not frozen in time for the upgrade; its processes will be restarted")
                }
            }
        }
        frozen
    }

    pub async fn reload(&self) {
        self.ctx.store.reload().await;
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every change under this lock is one insert or remove: consistent even if a holder
        // panicked, and a panic in one request must not take the daemon down.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The table, for a request that changes an app: refused once shutdown has begun.
    fn lock_to_change(&self) -> Result<MutexGuard<'_, Table>, AppError> {
        let table = self.lock();
        if table.shutting_down {
            return Err(AppError::ShuttingDown);
        }
        Ok(table)
    }
}

impl Directory for Registry {
    fn retire(&self, app: &str, id: u64, idle: &mut dyn FnMut() -> bool) -> bool {
        let mut table = self.lock();
        let mine = table.apps.get(app).is_some_and(|h| h.id == id);
        if mine && idle() {
            table.apps.remove(app);
            return true;
        }
        // Replaced already (cannot happen while it lives), or commands are waiting for it.
        !mine
    }
}

/// Puts `command` in the actor's mailbox. An actor only ends once retired from the table
/// (under its lock), so a handle found in the table always reaches a live actor.
fn send(handle: &AppHandle, command: Command) {
    if let Err(refused) = handle.mailbox.send(command) {
        refused.0.refuse(AppError::ShuttingDown);
    }
}
