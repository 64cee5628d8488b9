//! The deploy pipeline, in order: lock → new release `v<N>` → checkout → Procfile → preflight
//! → runtime detection and build → `release` command → activation (supervisor `Apply`, then
//! `apps/<app>` swapped to the new checkout) → pruning.
//!
//! Any failure before activation completes leaves the live release exactly as it was: the
//! new release is marked failed (its build log kept, its checkout removed) and the error is
//! returned, so the git hook exits non-zero and the push is refused.
//!
//! [`prepare`] (the environment and the supervisor spec of a built release) is shared with
//! rollback and config re-apply, which activate an existing release without building.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, anyhow, bail};
use piku_model::{AppName, PikuRoot, Procfile, parse_procfile};
use piku_proto::AppSpec;

use super::activate::{self, Activation, WsgiRunner};
use super::appenv::{self, Bootstrap, read_optional};
use super::build::{self, BuildCtx};
use super::buildlog::BuildLog;
use super::checkout::{self, short};
use super::front;
use super::lock;
use super::pushed;
use super::runtime::{detect, missing_toolchain};
use super::store::{ReleaseRecord, Status, Store, deps_root};
use super::wsgi::Server;

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

/// Deploys `target` as a new release of `app`.
pub fn deploy(root: &PikuRoot, app: &AppName, target: &Target) -> anyhow::Result<()> {
    let mut log = BuildLog::pending();
    let store = Store::new(root, app);
    log.step(format!("Deploying app '{app}'"));
    let _lock = if target.from_hook {
        lock::acquire_in_hook(store.dir(), app, lock::held_by_parent(app), &mut log)?
    } else {
        lock::acquire(store.dir(), app, &mut log)?
    };
    let repo = root.repo_dir(app);
    if let Some((reference, old)) = &target.expect
        && (checkout::ref_value(&repo, reference) != *old
            || pushed::moved_by_recent_push(&store, reference, old.as_deref()))
    {
        bail!(
            "'{reference}' was changed by another push while this one waited; \
             pull and push again"
        );
    }
    let commit = checkout::resolve_commit(&repo, &target.rev)?;
    for dir in [root.data_dir(app), root.log_dir(app), root.env_dir(app)] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create '{}'", dir.display()))?;
    }
    mark_interrupted(&store);

    let id = store.next_id()?;
    std::fs::create_dir_all(store.path(&id))
        .with_context(|| format!("cannot create '{}'", store.path(&id).display()))?;
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

    let mut keep = 5;
    match build_and_activate(root, app, &store, &mut record, &mut keep, &mut log) {
        Ok(()) => {
            if let Some((reference, _)) = &target.expect {
                pushed::record(&store, reference, &commit);
            }
            Ok(())
        }
        Err(err) => {
            log.note(&format!("Error: {err:#}"));
            log.step(format!(
                "Deploy of '{app}' failed; the live release is unchanged (build log: {})",
                store.build_log(&id).display()
            ));
            record.status = Status::Failed;
            record.message = Some(format!("{err:#}"));
            let _ = store.save(&record);
            // The build log is what a failed release is kept for; its files are not needed.
            let _ = std::fs::remove_dir_all(store.src(&id));
            let _ = std::fs::remove_dir_all(store.path(&id).join("bin"));
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
) -> anyhow::Result<()> {
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
        log.run(cmd, "preflight command")?;
    }

    let repo_env = read_optional(&src.join("ENV"))?;
    let overrides = read_optional(&root.env_file(app))?;
    let bootstrap = Bootstrap {
        root,
        app,
        src: &src,
        deps: None,
        release_bin: None,
    };
    let config_env = appenv::merge(
        bootstrap.values(),
        repo_env.as_deref(),
        overrides.as_deref(),
    )?;
    let mut warnings = Vec::new();
    *keep = appenv::keep_releases(&config_env, &mut warnings);
    let wsgi = match procfile.get("wsgi") {
        Some(_) => Some(Server::from_env(&config_env)?),
        None => None,
    };
    let path = std::ffi::OsString::from(config_env.get("PATH").cloned().unwrap_or_default());
    let runtime = detect(&src, &procfile, &path)?;
    log.step(format!("{} app detected.", runtime.label()));
    if let Some(missing) = missing_toolchain(runtime, &path) {
        bail!(missing);
    }
    let ctx = BuildCtx {
        root,
        app,
        src: &src,
        release_dir: &store.path(&id),
        commit: &record.commit,
        env: &config_env,
        wsgi,
    };
    let built = build::build(runtime, &ctx, log)?;
    record.runtime = Some(runtime.name().to_owned());
    record.deps = built.deps;
    record.wsgi_server = built.wsgi_server.map(|s| s.name().to_owned());
    store.save(record)?;

    let activation = prepare(root, app, store, record, &procfile, log)?;
    *keep = appenv::keep_releases(&activation.spec.env, &mut Vec::new());
    if let Some(release) = procfile.get("release") {
        log.step("Running release command");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&release.command)
            .env_clear()
            .envs(&activation.spec.env)
            .current_dir(&src);
        log.run(cmd, "release command")?;
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
        Err(e) => log.step(format!("Warning: pruning old releases failed: {e:#}")),
    }
    Ok(())
}

/// Reads and parses the checkout's Procfile, printing its warnings. A missing or broken
/// Procfile is a one-line error.
pub fn read_procfile(src: &Path, log: &mut BuildLog) -> anyhow::Result<Procfile> {
    let text = read_optional(&src.join("Procfile"))?.ok_or_else(|| {
        anyhow!("no Procfile in this commit; add one, e.g. 'web: python3 -m http.server $PORT'")
    })?;
    let procfile = parse_procfile(&text).map_err(|e| anyhow!("{e}"))?;
    for warning in &procfile.warnings {
        log.step(format!("Warning: {warning}"));
    }
    Ok(procfile)
}

/// The environment and supervisor spec of built release `record`, with the current
/// `config:set` overrides and formation.
pub fn prepare(
    root: &PikuRoot,
    app: &AppName,
    store: &Store,
    record: &ReleaseRecord,
    procfile: &Procfile,
    log: &mut BuildLog,
) -> anyhow::Result<Activation> {
    let src = store.src(&record.id);
    let deps = record.deps.as_ref().map(|d| deps_root(root, app).join(d));
    if let Some(dir) = &deps
        && !dir.is_dir()
    {
        bail!(
            "the dependencies of {} are gone ('{}'); deploy again to rebuild them",
            record.id,
            dir.display()
        );
    }
    let release_bin = store.path(&record.id).join("bin");
    let bootstrap = Bootstrap {
        root,
        app,
        src: &src,
        deps: deps.as_deref(),
        release_bin: release_bin.is_dir().then_some(release_bin.as_path()),
    };
    let mut values = bootstrap.values();
    values.extend(build::runtime_env(
        record.runtime.as_deref(),
        deps.as_deref(),
    ));
    let repo_env = read_optional(&src.join("ENV"))?;
    let overrides = read_optional(&root.env_file(app))?;
    let mut env = appenv::merge(values, repo_env.as_deref(), overrides.as_deref())?;
    for said in appenv::finish(&mut env) {
        log.step(said);
    }

    let mut warnings = Vec::new();
    let built_server = record.wsgi_server.as_deref().and_then(Server::from_name);
    if let (Some(built), Ok(wanted)) = (built_server, Server::from_env(&env))
        && procfile.get("wsgi").is_some()
        && built != wanted
    {
        warnings.push(format!(
            "Warning: {} was built with {}; PIKU_WSGI_SERVER={} takes effect at the next deploy",
            record.id,
            built.name(),
            wanted.name()
        ));
    }
    let runner = match (built_server, deps.as_deref()) {
        (Some(server), Some(venv)) => Some(WsgiRunner { server, venv }),
        _ => None,
    };
    let mut settings = appenv::settings(&env, &mut warnings);
    let front = front::plan(root, app, &env, procfile, &src, &mut warnings)?;
    settings.front = front.spec.clone();
    let existing = activate::current_scaling(root, app, log);
    let formation = activate::formation(procfile, &existing);
    let mut processes =
        activate::processes(procfile, &formation, runner.as_ref(), &env, &mut warnings)?;
    processes.extend(front::renewal_process(root, app, &front, &env, procfile)?);
    for warning in warnings {
        log.step(warning);
    }
    Ok(Activation {
        spec: AppSpec {
            app: app.to_string(),
            release: record.id.clone(),
            workdir: src,
            env,
            processes,
            settings,
        },
        formation,
        front,
    })
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

/// Activates an existing, already built release (rollback, config re-apply).
pub fn activate_existing(
    root: &PikuRoot,
    app: &AppName,
    store: &Store,
    record: &ReleaseRecord,
    log: &mut BuildLog,
) -> anyhow::Result<()> {
    let src = store.src(&record.id);
    if !src.is_dir() {
        bail!(
            "release {} has no checkout left; it cannot be activated",
            record.id
        );
    }
    let procfile = read_procfile(&src, log)?;
    let activation = prepare(root, app, store, record, &procfile, log)?;
    activation.apply(root, app, log)?;
    store.make_live(&record.id)
}
