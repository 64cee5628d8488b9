//! The deploy pipeline, in order: lock → new release `v<N>` → checkout → Procfile → preflight
//! → runtime detection and build → `release` command → activation (supervisor `Apply`, then
//! `apps/<app>` swapped to the new checkout) → pruning.
//!
//! Any failure before activation completes leaves the live release exactly as it was: the
//! new release is marked failed (its build log kept, its checkout removed) and the error is
//! returned, so the git hook exits non-zero and the push is refused.

use std::process::Command;

use piku_model::{AppName, PikuRoot};

use crate::activate::prepare;
use crate::buildlog::BuildLog;
use crate::checkout::{self, read_file, read_procfile, short};
use crate::env::{self, Bootstrap};
use crate::error::DeployError;
use crate::files;
use crate::lock;
use crate::pushed;
use crate::runtime::build::{BuildCtx, RuntimeEnv};
use crate::runtime::python::wsgi::Server;
use crate::runtime::rack::Puma;
use crate::runtime::{self};
use crate::settings::{DEFAULT_KEEP_RELEASES, keep_releases};
use crate::store::{ReleaseRecord, Status, Store};

/// What to deploy.
pub struct Target {
    /// A commit, or anything `git rev-parse` resolves to one.
    pub rev: String,
    /// For a push: the ref being updated and the value it had when the push started. If
    /// another push moved it while we waited for the lock, this one is refused.
    pub expect: Option<(String, Option<String>)>,
    /// Run by the git hook: `piku git-receive-pack` may already hold the app's lock.
    pub from_hook: bool,
}

/// `piku deploy <app>`: rebuilds the live commit (or, before any release, the repo's main
/// branch) as a new release.
pub fn rebuild(root: &PikuRoot, app: &AppName) -> Result<(), DeployError> {
    let store = Store::new(root, app);
    let rev = match store.live_id() {
        Some(id) => store.load(&id)?.commit,
        None => default_branch(root, app)?,
    };
    deploy(
        root,
        app,
        &Target {
            rev,
            expect: None,
            from_hook: false,
        },
    )
}

/// The branch to deploy when nothing is live yet: HEAD if it exists, else main, else master.
fn default_branch(root: &PikuRoot, app: &AppName) -> Result<String, DeployError> {
    let repo = root.repo_dir(app);
    if !repo.join("HEAD").is_file() {
        return Err(DeployError::refused(format!("app '{app}' not found")));
    }
    ["HEAD", "refs/heads/main", "refs/heads/master"]
        .into_iter()
        .find_map(|r| checkout::ref_value(&repo, r))
        .ok_or_else(|| DeployError::refused(format!("app '{app}' has nothing pushed yet")))
}

/// How long `preflight` and `release` may run when `PIKU_RELEASE_TIMEOUT` is unset.
const DEFAULT_STEP_LIMIT_SECS: u64 = 1800;

/// The limit of an app's own build step: `PIKU_RELEASE_TIMEOUT` seconds from `env` (the
/// release's; `preflight` runs before it is known and gets the default).
fn step_limit(env: Option<&piku_model::EnvMap>) -> std::time::Duration {
    let secs = match env {
        Some(env) => crate::settings::number(
            env,
            "PIKU_RELEASE_TIMEOUT",
            DEFAULT_STEP_LIMIT_SECS,
            &mut Vec::new(),
        ),
        None => DEFAULT_STEP_LIMIT_SECS,
    };
    std::time::Duration::from_secs(secs.max(1))
}

/// Deploys `target` as a new release of `app`.
pub fn deploy(root: &PikuRoot, app: &AppName, target: &Target) -> Result<(), DeployError> {
    let mut log = BuildLog::pending();
    if target.from_hook {
        log.under_git();
    }
    let store = Store::new(root, app);
    log.step(format!("Deploying app '{app}'"));
    let _lock = if target.from_hook {
        lock::acquire_in_hook(root, app, lock::held_by_parent(app), &mut log)?
    } else {
        lock::acquire(root, app, &mut log)?
    };
    let repo = root.repo_dir(app);
    if let Some((reference, old)) = &target.expect
        && (checkout::ref_value(&repo, reference) != *old
            || pushed::moved_by_recent_push(root, app, reference, old.as_deref()))
    {
        return Err(DeployError::refused(format!(
            "'{reference}' was changed by another push while this one waited; \
             pull and push again"
        )));
    }
    let commit = checkout::resolve_commit(&repo, &target.rev)?;
    for dir in [root.data_dir(app), root.log_dir(app)] {
        files::create_dir(&dir)?;
    }
    // The app's secrets (ENV, LIVE_ENV) live here: owner only, whatever an older piku made.
    files::create_private_dir(&root.env_dir(app))?;
    mark_interrupted(&store);

    let id = store.next_id()?;
    files::create_dir(&store.path(&id))?;
    let mut record = ReleaseRecord {
        id: id.clone(),
        commit: commit.clone(),
        created: chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        status: Status::Building,
        message: checkout::commit_subject(&repo, &commit),
        runtime: None,
        deps: None,
        wsgi_server: None,
    };
    store.save(&record)?;
    log.attach(&store.build_log(&id))?;
    log.step(format!(
        "Building release {id} from commit {}",
        short(&commit)
    ));

    let mut keep = DEFAULT_KEEP_RELEASES;
    match build_and_activate(root, app, &store, &mut record, &mut keep, &mut log) {
        Ok(()) => {
            if let Some((reference, _)) = &target.expect {
                pushed::record(root, app, reference, &commit);
            }
            Ok(())
        }
        Err(err) => {
            for line in err.lines() {
                log.note(&format!("Error: {line}"));
            }
            log.step(format!(
                "Deploy of '{app}' failed; the live release is unchanged (build log: {})",
                store.build_log(&id).display()
            ));
            record.status = Status::Failed;
            record.message = Some(err.to_string());
            let _ = store.save(&record);
            // The build log is what a failed release is kept for; its files are not needed.
            let _ = std::fs::remove_dir_all(store.src(&id));
            let _ = std::fs::remove_dir_all(store.bin(&id));
            let _ = store.prune(keep, None);
            Err(err)
        }
    }
}

fn build_and_activate(
    root: &PikuRoot,
    app: &AppName,
    store: &Store,
    record: &mut ReleaseRecord,
    keep: &mut usize,
    log: &mut BuildLog,
) -> Result<(), DeployError> {
    let id = record.id.clone();
    let src = store.src(&id);
    let repo = root.repo_dir(app);
    checkout::checkout(&repo, &record.commit, &src, log)?;
    let procfile = read_procfile(&src, log)?;

    if let Some(preflight) = procfile.get("preflight") {
        log.step("Running preflight command");
        // piku runs preflight with an empty environment.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&preflight.command)
            .env_clear()
            .current_dir(&src);
        log.run_bounded(cmd, "preflight command", step_limit(None))?;
    }

    let repo_env = read_file(&src, "ENV")?;
    let overrides = files::read_optional(&root.env_file(app))?;
    let bootstrap = Bootstrap {
        root,
        app,
        src: &src,
        deps: None,
        runtime: RuntimeEnv::default(),
    };
    let config_env = env::merge(
        bootstrap.values(),
        repo_env.as_deref(),
        overrides.as_deref(),
    )?;
    let mut warnings = Vec::new();
    *keep = keep_releases(&config_env, &mut warnings);
    let wsgi = match procfile.get("wsgi") {
        Some(_) => Some(Server::from_env(&config_env)?),
        None => None,
    };
    let rack = match procfile.get("rwsgi") {
        Some(_) => Some(Puma::for_checkout(&src)?),
        None => None,
    };
    let path = std::ffi::OsString::from(config_env.get("PATH").cloned().unwrap_or_default());
    let runtime = runtime::detect(&src, &procfile, &path)?;
    log.step(format!("{} app detected.", runtime.label()));
    if let Some(missing) = runtime.missing_toolchain(&path) {
        return Err(DeployError::Refused(missing));
    }
    let ctx = BuildCtx {
        root,
        app,
        src: &src,
        release_bin: &store.bin(&id),
        commit: &record.commit,
        env: &config_env,
        wsgi,
        rack,
    };
    let built = runtime.build(&ctx, log)?;
    record.runtime = Some(runtime.name().to_owned());
    record.deps = built.deps;
    record.wsgi_server = built.wsgi_server.map(|s| s.name().to_owned());
    store.save(record)?;

    let activation = prepare(root, app, store, record, &procfile, log)?;
    *keep = keep_releases(&activation.spec.env, &mut Vec::new());
    if let Some(release) = procfile.get("release") {
        log.step("Running release command");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&release.command)
            .env_clear()
            .envs(&activation.spec.env)
            .current_dir(&src);
        log.run_bounded(
            cmd,
            "release command",
            step_limit(Some(&activation.spec.env)),
        )?;
    }
    activation.apply(root, app, log)?;
    store.make_live(&id)?;
    record.status = Status::Ok;
    store.save(record)?;
    log.step(format!("Release {id} of '{app}' is live"));
    match store.prune(*keep, Some(&id)) {
        Ok(removed) if !removed.is_empty() => {
            log.step(format!("Removed old releases: {}", removed.join(", ")));
        }
        Ok(_) => {}
        Err(e) => log.step(format!("Warning: pruning old releases failed: {e}")),
    }
    Ok(())
}

/// A release still `building` while we hold the lock belongs to a deploy that died.
fn mark_interrupted(store: &Store) {
    let Ok(records) = store.list() else { return };
    for mut record in records.into_iter().filter(|r| r.status == Status::Building) {
        record.status = Status::Failed;
        record.message = Some("the deploy was interrupted".to_owned());
        let _ = store.save(&record);
    }
}
