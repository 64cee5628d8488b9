//! `piku apps`: every app under `apps/`, sorted, `*name` when it runs, ` name` otherwise.

use std::fs;
use std::io;

use anyhow::Context;
use piku_model::{AppName, PikuRoot};
use piku_proto::{AppStatus, InstanceState};
use serde::Serialize;

use super::Ctx;
use super::args::Args;
use crate::{daemon, output};

/// One line of `apps --json`.
#[derive(Debug, Serialize)]
struct AppEntry {
    name: String,
    /// `null` when the supervisor could not be asked.
    running: Option<bool>,
    /// The live release as the supervisor knows it.
    release: Option<String>,
}

pub fn apps(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("apps", words);
    let json = args.flag("--json");
    args.finish()?;

    let names = list_apps(&ctx.root)?;
    // Listing must work with the daemon down (it is how an operator looks around); only the
    // running marker needs it.
    let statuses = if names.is_empty() {
        Some(Vec::new())
    } else {
        match daemon::status_all(&ctx.root) {
            Ok(statuses) => Some(statuses),
            Err(err) => {
                output::warn(format_args!("{err:#}; cannot tell which apps are running"));
                None
            }
        }
    };
    let entries: Vec<AppEntry> = names
        .iter()
        .map(|name| {
            let status = statuses
                .as_ref()
                .map(|all| all.iter().find(|s| s.app == name.as_str()));
            AppEntry {
                name: name.to_string(),
                running: status.map(|s| s.is_some_and(is_running)),
                release: status.flatten().map(|s| s.release.clone()),
            }
        })
        .collect();

    if json {
        output::json(&entries)?;
    } else if entries.is_empty() {
        output::say("There are no applications deployed.");
    } else {
        for entry in &entries {
            let mark = if entry.running == Some(true) {
                '*'
            } else {
                ' '
            };
            output::say(format_args!("{mark}{}", entry.name));
        }
    }
    Ok(0)
}

/// piku's `*`: the app is enabled (not stopped) and has a process that is not stopped.
fn is_running(status: &AppStatus) -> bool {
    !status.stopped
        && status
            .instances
            .iter()
            .any(|i| !matches!(i.state, InstanceState::Stopped | InstanceState::Stopping))
}

/// The valid app names under `apps/`, sorted; anything else there is not an app of ours.
fn list_apps(root: &PikuRoot) -> anyhow::Result<Vec<AppName>> {
    let dir = root.apps();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list '{}'", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list '{}'", dir.display()))?;
        if let Some(name) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
