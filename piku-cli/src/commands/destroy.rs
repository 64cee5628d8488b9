//! `piku destroy <app>`: stop the app, then remove everything of it except its data.
//!
//! No confirmation, as in piku. Order matters: the supervisor forgets the app first (stopping
//! its processes), so nothing is left running out of deleted directories and a restarted
//! supervisor does not resurrect it. Then `apps/`, `repos/`, `envs/`, `logs/` and the deploy's
//! releases go, plus the app's own files in `nginx/` and its `acme/` link. `data/<app>` and
//! `cache/<app>` are kept. Every path is the exact app name joined to a top-level directory;
//! nothing is globbed (piku removed `<app>*`, which also hit `<app>-staging`).

use std::fs;
use std::io;
use std::path::Path;

use anyhow::{Context, bail};
use piku_proto::Request;

use super::Ctx;
use super::args::{Args, present};
use crate::{daemon, deploy, output};

pub fn destroy(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("destroy", words);
    let app = args.app()?;
    args.finish()?;
    let root = &ctx.root;
    let dirs = [
        root.app_dir(&app),
        root.repo_dir(&app),
        root.env_dir(&app),
        root.log_dir(&app),
    ];
    let known_to_deploy = present(&root.release_dir(&app));
    if !dirs.iter().any(|d| present(d)) && !known_to_deploy {
        bail!("app '{app}' not found.");
    }

    // Asking first tells "never ran" apart from "supervisor down" (which is an error: we must
    // not delete files under running processes).
    if daemon::status_of(root, &app)?.is_some() {
        daemon::call_done(
            root,
            &Request::Remove {
                app: app.to_string(),
            },
        )?;
    }

    for dir in &dirs {
        remove(dir)?;
    }
    deploy::forget(root, &app)?;
    for ext in ["conf", "sock", "key", "crt"] {
        remove(&root.nginx().join(format!("{app}.{ext}")))?;
    }
    remove(&root.acme().join(app.as_str()))?;

    for kept in [root.data_dir(&app), root.cache_dir(&app)] {
        if present(&kept) {
            output::say(format_args!("==> Preserving folder '{}'", kept.display()));
        }
    }
    Ok(0)
}

/// Removes a directory tree, a file or a symlink (never following it), saying so as piku did.
fn remove(path: &Path) -> anyhow::Result<()> {
    let meta = match path.symlink_metadata() {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect '{}'", path.display())),
    };
    if meta.is_dir() {
        output::say(format_args!("--> Removing folder '{}'", path.display()));
        fs::remove_dir_all(path)
    } else {
        output::say(format_args!("--> Removing file '{}'", path.display()));
        fs::remove_file(path)
    }
    .with_context(|| format!("cannot remove '{}'", path.display()))
}
