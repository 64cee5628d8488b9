//! `piku destroy <app>`: stop the app, then remove everything of it except its data.
//!
//! No confirmation, as in piku. Order matters: the supervisor forgets the app first (stopping
//! its processes), so nothing is left running out of deleted directories and a restarted
//! supervisor does not resurrect it. Then `apps/`, `repos/`, `envs/`, `logs/` and the deploy's
//! releases go, plus the app's own files in `nginx/` and its `acme/` link. `data/<app>` and
//! `cache/<app>` are kept. Every path is the exact app name joined to a top-level directory;
//! nothing is globbed (piku removed `<app>*`, which also hit `<app>-staging`).
//!
//! An install migrated from piku may still hold uWSGI vassals of the app in
//! `uwsgi-available/` and `uwsgi-enabled/` (`<app>_<kind>.<n>.ini`); they are removed too, so
//! a leftover uWSGI emperor stops running the destroyed app. Because `_` may appear in app names
//! and kinds alike, a file is only taken as ours when no other app's name is a longer match.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piku_deploy::{front, releases};
use piku_model::{AppName, InstanceId, PikuRoot};
use piku_proto::Request;

use super::Ctx;
use super::args::{Args, present};
use crate::{daemon, output};

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
    releases::forget(root, &app)?;
    // The app's nginx files go, then nginx reloads so it stops answering for the app's names.
    match front::nginx::remove(root, &app) {
        Ok(Some(warning)) => output::warn(warning),
        Ok(None) => {}
        Err(e) => output::warn(e),
    }
    for file in [
        root.nginx_conf(&app),
        root.nginx_socket(&app),
        root.nginx_key(&app),
        root.nginx_crt(&app),
        root.acme_app_dir(&app),
    ] {
        remove(&file)?;
    }
    for dir in root.legacy_uwsgi_dirs() {
        for file in legacy_vassals(&dir, &app, &other_apps(root, &app))? {
            remove(&file)?;
        }
    }

    for kept in [root.data_dir(&app), root.cache_dir(&app)] {
        if present(&kept) {
            output::say(format_args!("==> Preserving folder '{}'", kept.display()));
        }
    }
    Ok(0)
}

/// The names of every other app this installation knows (from `apps/`, `repos/`, `envs/`).
fn other_apps(root: &PikuRoot, app: &AppName) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for dir in [root.apps(), root.repos(), root.envs()] {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if let Some(name) = entry.file_name().to_str()
                    && name != app.as_str()
                {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

/// piku's uWSGI vassal files of `app` in `dir`: `<app>_<kind>.<n>.ini`, unless another app's
/// name explains the file better (`blog_x_web.1.ini` belongs to `blog_x`, not to `blog`).
fn legacy_vassals(
    dir: &Path,
    app: &AppName,
    others: &BTreeSet<String>,
) -> anyhow::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list '{}'", dir.display())),
    };
    let prefix = format!("{app}_");
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(rest) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".ini"))
        else {
            continue;
        };
        // `<kind>.<n>`, the instance's name.
        let is_vassal = rest.parse::<InstanceId>().is_ok();
        let claimed_by_other = others.iter().any(|other| {
            other.len() > app.as_str().len() && name.starts_with(&format!("{other}_"))
        });
        if is_vassal && !claimed_by_other {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_vassals_match_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        for name in [
            "blog_web.1.ini",
            "blog_worker_2.3.ini",
            "blog_x_web.1.ini",
            "blog-staging_web.1.ini",
            "blog.ini",
            "blog_web.ini",
            "blogger_web.1.ini",
        ] {
            fs::write(tmp.path().join(name), "").unwrap();
        }
        let app: AppName = "blog".parse().unwrap();
        let others = BTreeSet::from(["blog_x".to_string(), "blog-staging".to_string()]);
        let found: Vec<String> = legacy_vassals(tmp.path(), &app, &others)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(found, ["blog_web.1.ini", "blog_worker_2.3.ini"]);
        assert!(
            legacy_vassals(&tmp.path().join("missing"), &app, &others)
                .unwrap()
                .is_empty()
        );
    }
}
