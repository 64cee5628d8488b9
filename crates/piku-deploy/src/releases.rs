//! Operations on the releases an app already has: the list `piku releases` shows, `rollback`
//! to an older one, re-applying the live one after a config change, and forgetting them all
//! when the app is destroyed. None of them builds anything.

use piku_model::{AppName, PikuRoot};
use serde::Serialize;

use crate::activate::activate_existing;
use crate::buildlog::BuildLog;
use crate::checkout::short;
use crate::error::DeployError;
use crate::lock;
use crate::store::{Status, Store, release_number};

/// One release of an app as `piku releases` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseInfo {
    pub id: String,
    pub commit: String,
    /// RFC 3339.
    pub created: String,
    pub live: bool,
    /// `"live"`, `"ok"`, `"failed"` (or `"building"` while a deploy runs).
    pub status: String,
    pub message: Option<String>,
}

/// The app's releases, newest first.
pub fn list(root: &PikuRoot, app: &AppName) -> Result<Vec<ReleaseInfo>, DeployError> {
    let store = Store::new(root, app);
    let live = store.live_id();
    Ok(store
        .list()?
        .into_iter()
        .map(|r| {
            let is_live = live.as_deref() == Some(r.id.as_str());
            let status = match (is_live, r.status) {
                (true, _) => "live",
                (false, Status::Ok) => "ok",
                (false, Status::Failed) => "failed",
                (false, Status::Building) => "building",
            };
            ReleaseInfo {
                id: r.id,
                commit: r.commit,
                created: r.created,
                live: is_live,
                status: status.to_owned(),
                message: r.message,
            }
        })
        .collect())
}

/// `piku rollback <app> [release]`: re-activates an older release (default: the newest
/// successful one before the live one) with the current config, without rebuilding.
pub fn rollback(root: &PikuRoot, app: &AppName, release: Option<&str>) -> Result<(), DeployError> {
    let mut log = BuildLog::terminal_only();
    let store = Store::new(root, app);
    let _lock = lock::acquire(root, app, &mut log)?;
    let live = store.live_id();
    let records = store.list()?;
    let live_number = live.as_deref().and_then(release_number).unwrap_or(u64::MAX);
    let target = match release {
        Some(id) => records.iter().find(|r| r.id == id).ok_or_else(|| {
            DeployError::refused(format!(
                "app '{app}' has no release '{id}' (see `piku releases {app}`)"
            ))
        })?,
        None => records
            .iter()
            .find(|r| r.status == Status::Ok && release_number(&r.id) < Some(live_number))
            .ok_or_else(|| {
                DeployError::refused(format!(
                    "app '{app}' has no earlier release to roll back to"
                ))
            })?,
    };
    if target.status != Status::Ok {
        return Err(DeployError::refused(format!(
            "release {} of '{app}' did not build; it cannot be rolled back to",
            target.id
        )));
    }
    if live.as_deref() == Some(target.id.as_str()) {
        return Err(DeployError::refused(format!(
            "release {} of '{app}' is already live",
            target.id
        )));
    }
    log.step(format!(
        "Rolling back '{app}' to {} (commit {})",
        target.id,
        short(&target.commit)
    ));
    activate_existing(root, app, &store, target, &mut log)?;
    log.step(format!("Release {} of '{app}' is live", target.id));
    Ok(())
}

/// Re-sends the live release to the supervisor with the current `envs/<app>/ENV` overrides and
/// `SCALING` (no rebuild); rewrites `LIVE_ENV`.
pub fn reapply(root: &PikuRoot, app: &AppName) -> Result<(), DeployError> {
    let mut log = BuildLog::terminal_only();
    let store = Store::new(root, app);
    let _lock = lock::acquire(root, app, &mut log)?;
    let id = store.live_id().ok_or_else(|| {
        DeployError::refused(format!(
            "app '{app}' has no live release yet; push to deploy it"
        ))
    })?;
    let record = store.load(&id)?;
    log.step(format!("Applying the new config to '{app}' ({id})"));
    activate_existing(root, app, &store, &record, &mut log)
}

/// Removes `releases/<app>` and the app's dependency environments (`destroy` removes the rest),
/// after any deploy in progress has finished.
pub fn forget(root: &PikuRoot, app: &AppName) -> Result<(), DeployError> {
    let store = Store::new(root, app);
    if !store.exists() {
        return Ok(());
    }
    // Wait out a running deploy rather than deleting the directory under it.
    let _lock = lock::acquire(root, app, &mut BuildLog::terminal_only())?;
    store.remove_all()
}
