//! Deploying apps: git receive/upload and the pre-receive hook, the release store, the build
//! pipeline (checkout → preflight → runtime build → release → activation), rollback and
//! re-applying the live release after a config change.
//!
//! Everything here is reached through the functions below; `main.rs` dispatches to them.

use piku_model::{AppName, PikuRoot};
use serde::Serialize;

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

/// Serves `git push` for the app (creating its bare repo on first use); returns git's exit code.
pub fn git_receive_pack(_root: &PikuRoot, _app: &AppName) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}

/// Serves `git clone`/`git fetch` of the app's repo; returns git's exit code.
pub fn git_upload_pack(_root: &PikuRoot, _app: &AppName) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}

/// The git hook: reads `old new ref` lines and deploys the pushed branch once.
pub fn git_hook(
    _root: &PikuRoot,
    _app: &AppName,
    _stdin: &mut dyn std::io::BufRead,
) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

/// `piku deploy <app>`: rebuilds the live commit as a new release.
pub fn deploy(_root: &PikuRoot, _app: &AppName) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

/// `piku rollback <app> [release]`: re-activates an older release (default: the one before the
/// live one) with the current config, without rebuilding.
pub fn rollback(_root: &PikuRoot, _app: &AppName, _release: Option<&str>) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

/// The app's releases, newest first.
pub fn releases(_root: &PikuRoot, _app: &AppName) -> anyhow::Result<Vec<ReleaseInfo>> {
    anyhow::bail!("not implemented yet")
}

/// Re-sends the live release to the supervisor with the current `envs/<app>/ENV` overrides and
/// `SCALING` (no rebuild); rewrites `LIVE_ENV`.
pub fn reapply(_root: &PikuRoot, _app: &AppName) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

/// Removes `releases/<app>` and any deploy state (`destroy` removes the rest).
pub fn forget(_root: &PikuRoot, _app: &AppName) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
