//! Deploying apps: git receive/upload and the hook that turns a push into a deploy, the
//! release store, the build pipeline (checkout → preflight → runtime build → `release` →
//! activation), rollback, and re-applying the live release after a config change.
//!
//! Layout (see [`store`] for the release directories):
//! `repos/<app>` bare repo with `hooks/pre-receive`; `releases/<app>/v<N>/` one release each;
//! `apps/<app>` symlink to the live release's `src`; `envs/<app>/deps/` dependency
//! environments; `envs/<app>/{LIVE_ENV,SCALING}` written at activation.

mod activate;
mod appenv;
mod build;
mod buildlog;
mod checkout;
mod front;
mod git;
mod lock;
mod pipeline;
mod pushed;
mod runtime;
mod store;
mod wsgi;

use anyhow::{Context, bail};
use piku_model::{AppName, PikuRoot};
use serde::Serialize;

use buildlog::BuildLog;
use store::{Status, Store, release_number};

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
///
/// The app's deploy lock is taken before git starts, so a second push waits here (saying so
/// on stderr, which the pusher sees as `remote:` lines) and then reads the refs the first push
/// left: see [`lock`].
pub fn git_receive_pack(root: &PikuRoot, app: &AppName) -> anyhow::Result<i32> {
    let repo = git::prepare_repo(root, app)?;
    let store = Store::new(root, app);
    // stdout is git's protocol stream here: the waiting line must go to stderr.
    let _lock = lock::acquire_with(store.dir(), app, |msg| {
        crate::output::step_stderr(msg);
    })?;
    git::serve_with_env("receive-pack", &repo, &[(lock::HELD_VAR, app.as_str())])
}

/// Serves `git clone`/`git fetch` of the app's repo; returns git's exit code.
pub fn git_upload_pack(root: &PikuRoot, app: &AppName) -> anyhow::Result<i32> {
    let repo = root.repo_dir(app);
    if !repo.join("HEAD").is_file() {
        bail!("app '{app}' not found");
    }
    git::serve("upload-pack", &repo)
}

/// The git hook: reads `old new ref` lines and deploys the pushed branch once. An error
/// makes the hook exit non-zero, which refuses the push.
pub fn git_hook(
    root: &PikuRoot,
    app: &AppName,
    stdin: &mut dyn std::io::BufRead,
) -> anyhow::Result<()> {
    let updates = git::read_updates(stdin)?;
    let Some(update) = git::choose(&updates) else {
        if !updates.is_empty() {
            crate::output::step("No branch pushed (only tags or deletions): nothing to deploy");
        }
        return Ok(());
    };
    let repo = root.repo_dir(app);
    git::adopt_head(&repo, &update.name);
    pipeline::deploy(
        root,
        app,
        &pipeline::Target {
            rev: update.new.clone(),
            expect: Some((update.name.clone(), git::old_value(update))),
            from_hook: true,
        },
    )
}

/// `piku deploy <app>`: rebuilds the live commit (or, before any release, the repo's main
/// branch) as a new release.
pub fn deploy(root: &PikuRoot, app: &AppName) -> anyhow::Result<()> {
    let store = Store::new(root, app);
    let rev = match store.live_id() {
        Some(id) => store.load(&id)?.commit,
        None => default_branch(root, app)?,
    };
    pipeline::deploy(
        root,
        app,
        &pipeline::Target {
            rev,
            expect: None,
            from_hook: false,
        },
    )
}

/// The branch to deploy when nothing is live yet: HEAD if it exists, else main, else master.
fn default_branch(root: &PikuRoot, app: &AppName) -> anyhow::Result<String> {
    let repo = root.repo_dir(app);
    if !repo.join("HEAD").is_file() {
        bail!("app '{app}' not found");
    }
    ["HEAD", "refs/heads/main", "refs/heads/master"]
        .into_iter()
        .find_map(|r| checkout::ref_value(&repo, r))
        .with_context(|| format!("app '{app}' has nothing pushed yet"))
}

/// `piku rollback <app> [release]`: re-activates an older release (default: the newest
/// successful one before the live one) with the current config, without rebuilding.
pub fn rollback(root: &PikuRoot, app: &AppName, release: Option<&str>) -> anyhow::Result<()> {
    let mut log = BuildLog::terminal_only();
    let store = Store::new(root, app);
    let _lock = lock::acquire(store.dir(), app, &mut log)?;
    let live = store.live_id();
    let records = store.list()?;
    let live_number = live.as_deref().and_then(release_number).unwrap_or(u64::MAX);
    let target = match release {
        Some(id) => records.iter().find(|r| r.id == id).with_context(|| {
            format!("app '{app}' has no release '{id}' (see `piku releases {app}`)")
        })?,
        None => records
            .iter()
            .find(|r| r.status == Status::Ok && release_number(&r.id) < Some(live_number))
            .with_context(|| format!("app '{app}' has no earlier release to roll back to"))?,
    };
    if target.status != Status::Ok {
        bail!(
            "release {} of '{app}' did not build; it cannot be rolled back to",
            target.id
        );
    }
    if live.as_deref() == Some(target.id.as_str()) {
        bail!("release {} of '{app}' is already live", target.id);
    }
    log.step(format!(
        "Rolling back '{app}' to {} (commit {})",
        target.id,
        checkout::short(&target.commit)
    ));
    pipeline::activate_existing(root, app, &store, target, &mut log)?;
    log.step(format!("Release {} of '{app}' is live", target.id));
    Ok(())
}

/// The app's releases, newest first.
pub fn releases(root: &PikuRoot, app: &AppName) -> anyhow::Result<Vec<ReleaseInfo>> {
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

/// Re-sends the live release to the supervisor with the current `envs/<app>/ENV` overrides and
/// `SCALING` (no rebuild); rewrites `LIVE_ENV`.
pub fn reapply(root: &PikuRoot, app: &AppName) -> anyhow::Result<()> {
    let mut log = BuildLog::terminal_only();
    let store = Store::new(root, app);
    let _lock = lock::acquire(store.dir(), app, &mut log)?;
    let id = store
        .live_id()
        .with_context(|| format!("app '{app}' has no live release yet; push to deploy it"))?;
    let record = store.load(&id)?;
    log.step(format!("Applying the new config to '{app}' ({id})"));
    pipeline::activate_existing(root, app, &store, &record, &mut log)
}

/// `acme:renew`: renews the app's ACME certificate when it is due. The supervisor runs this
/// daily as the app's `acme-renew` cron entry; it waits for a deploy in progress.
pub fn renew_certificate(root: &PikuRoot, app: &AppName) -> anyhow::Result<()> {
    let mut log = BuildLog::terminal_only();
    let store = Store::new(root, app);
    let _lock = lock::acquire(store.dir(), app, &mut log)?;
    front::renew_certificate(root, app)
}

/// Removes the app's nginx config, socket and certificates and reloads nginx if a config
/// was removed; `Ok(Some(..))` is a warning (nginx could not be reloaded).
pub fn remove_nginx(root: &PikuRoot, app: &AppName) -> anyhow::Result<Option<String>> {
    front::remove_nginx(root, app).map(|(_, warning)| warning)
}

/// One line saying where the app's HTTP front answers, for `ps`; `None` without a front.
pub fn front_line(root: &PikuRoot, status: &piku_proto::AppStatus) -> Option<String> {
    let app: AppName = status.app.parse().ok()?;
    let names = front::nginx_names(root, &app);
    front::describe(status, names.as_deref())
}

/// Removes `releases/<app>` and the app's dependency environments (`destroy` removes the rest).
pub fn forget(root: &PikuRoot, app: &AppName) -> anyhow::Result<()> {
    let store = Store::new(root, app);
    if !store.dir().exists() {
        return Ok(());
    }
    // Wait out a running deploy rather than deleting the directory under it.
    let _lock = lock::acquire(store.dir(), app, &mut BuildLog::terminal_only())?;
    for dir in [store::deps_root(root, app), store.dir().to_path_buf()] {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove '{}'", dir.display())),
        }
    }
    Ok(())
}
