//! The process commands, all answered by the supervisor and none of them rebuilding:
//! `ps` (a table of instances), `ps:scale`, `restart [process]`, `stop`, `start`.

use std::collections::BTreeMap;

use anyhow::bail;
use piku_deploy::app_config::{read_scaling, write_scaling};
use piku_deploy::front::spec::answers;
use piku_model::{is_valid_kind, parse_scale_args};
use piku_proto::{AppStatus, InstanceState, InstanceStatus, Request};
use serde::Serialize;

use super::Ctx;
use super::args::Args;
use crate::daemon::{self, instance_id};
use crate::output::{self, Table, human_bytes, human_cpu, human_duration};

/// `ps --json`: our own stable shape, independent of the wire protocol's.
#[derive(Debug, Serialize)]
struct PsJson {
    app: String,
    release: String,
    stopped: bool,
    formation: BTreeMap<String, u32>,
    processes: Vec<ProcessJson>,
    /// The HTTP front, when the app has one (listener and the instances behind it).
    #[serde(skip_serializing_if = "Option::is_none")]
    front: Option<piku_proto::FrontStatus>,
}

#[derive(Debug, Serialize)]
struct ProcessJson {
    name: String,
    kind: String,
    index: u32,
    state: String,
    pid: Option<u32>,
    port: Option<u16>,
    uptime_secs: Option<u64>,
    restarts: u32,
    rss_bytes: Option<u64>,
    cpu_secs: Option<f64>,
    last_exit: Option<String>,
    next_run: Option<String>,
}

impl From<&InstanceStatus> for ProcessJson {
    fn from(i: &InstanceStatus) -> Self {
        ProcessJson {
            name: instance_id(i).to_string(),
            kind: i.kind.clone(),
            index: i.index,
            state: i.state.to_string(),
            pid: i.pid,
            port: i.port,
            uptime_secs: i.uptime_secs,
            restarts: i.restarts,
            rss_bytes: i.rss_bytes,
            cpu_secs: i.cpu_secs,
            last_exit: i.last_exit.clone(),
            next_run: i.next_run.clone(),
        }
    }
}

pub fn ps(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("ps", words);
    let json = args.flag("--json");
    let app = args.existing_app(ctx)?;
    args.finish()?;
    let Some(status) = daemon::status_of(&ctx.root, &app)? else {
        bail!("no workers found for app '{app}'.");
    };
    if json {
        output::json(&PsJson {
            app: status.app.clone(),
            release: status.release.clone(),
            stopped: status.stopped,
            formation: status.formation.clone(),
            processes: status.instances.iter().map(ProcessJson::from).collect(),
            front: status.front.clone(),
        })?;
    } else {
        let mut text = render_ps(&status);
        if let (Some(line), Some(front)) = (answers(&ctx.root, &status), status.front.as_ref()) {
            let backends = if front.backends.is_empty() {
                "none".to_owned()
            } else {
                front.backends.join(" ")
            };
            text.push_str(&format!("front: {line}; serving from {backends}\n"));
        }
        output::print_text(&text);
    }
    Ok(0)
}

/// The `ps` text: a summary line, then one row per instance.
fn render_ps(status: &AppStatus) -> String {
    let formation = status
        .formation
        .iter()
        .map(|(kind, n)| format!("{kind}:{n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut text = format!(
        "=== {} (release {}){}  formation: {}\n",
        status.app,
        status.release,
        if status.stopped { ", stopped" } else { "" },
        if formation.is_empty() {
            "-"
        } else {
            &formation
        }
    );
    if status.instances.is_empty() {
        text.push_str("no processes\n");
        return text;
    }
    let has_cron = status.instances.iter().any(|i| i.next_run.is_some());
    let mut header = vec![
        "process",
        "state",
        "pid",
        "port",
        "uptime",
        "restarts",
        "memory",
        "cpu",
        "last exit",
    ];
    if has_cron {
        header.push("next run");
    }
    let mut table = Table::new(&header);
    let dash = || "-".to_owned();
    for i in &status.instances {
        let mut row = vec![
            instance_id(i).to_string(),
            i.state.to_string(),
            i.pid.map_or_else(dash, |p| p.to_string()),
            i.port.map_or_else(dash, |p| p.to_string()),
            i.uptime_secs.map_or_else(dash, human_duration),
            i.restarts.to_string(),
            i.rss_bytes.map_or_else(dash, human_bytes),
            i.cpu_secs.map_or_else(dash, human_cpu),
            i.last_exit.clone().unwrap_or_else(dash),
        ];
        if has_cron {
            row.push(i.next_run.clone().unwrap_or_else(dash));
        }
        table.row(row);
    }
    text.push_str(&table.render());
    let crashing: Vec<String> = status
        .instances
        .iter()
        .filter(|i| i.state == InstanceState::CrashLooping)
        .map(|i| instance_id(i).to_string())
        .collect();
    if !crashing.is_empty() {
        text.push_str(&format!(
            "warning: crash-looping: {} (see `piku logs {}`)\n",
            crashing.join(", "),
            status.app
        ));
    }
    text
}

/// `ps:scale <app> kind=n…`: checked against `SCALING` in piku's words, sent to the
/// supervisor (which starts or stops only the difference), then recorded in `SCALING` so the
/// next deploy keeps it.
pub fn scale(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("ps:scale", words);
    let app = args.existing_app(ctx)?;
    let settings = args.at_least_one("<proc>=<count>")?;
    let Some(mut formation) = read_scaling(&ctx.root, &app)? else {
        bail!("no workers found for app '{app}'.");
    };
    let wanted = parse_scale_args(&settings)?;
    if let Some(kind) = wanted.keys().find(|k| !formation.contains_key(*k)) {
        bail!("worker type '{kind}' not present in '{app}'");
    }
    let changes = wanted
        .iter()
        .map(|(kind, n)| format!("{kind}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    output::step(format_args!("Scaling '{app}': {changes}"));
    daemon::call_done(
        &ctx.root,
        &Request::Scale {
            app: app.to_string(),
            formation: wanted.clone(),
        },
    )?;
    formation.extend(wanted);
    write_scaling(&ctx.root, &app, &formation)?;
    Ok(0)
}

pub fn restart(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("restart", words);
    let app = args.existing_app(ctx)?;
    let kind = args.next();
    args.finish()?;
    if let Some(kind) = &kind {
        if !is_valid_kind(kind) {
            bail!("invalid process type '{}'", kind.escape_debug());
        }
        output::say(format_args!("restarting '{kind}' of app '{app}'..."));
    } else {
        output::say(format_args!("restarting app '{app}'..."));
    }
    daemon::call_done(
        &ctx.root,
        &Request::Restart {
            app: app.to_string(),
            kind,
        },
    )?;
    Ok(0)
}

pub fn stop(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("stop", words);
    let app = args.existing_app(ctx)?;
    args.finish()?;
    output::say(format_args!("Stopping app '{app}'..."));
    daemon::call_done(
        &ctx.root,
        &Request::Stop {
            app: app.to_string(),
        },
    )?;
    Ok(0)
}

pub fn start(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("start", words);
    let app = args.existing_app(ctx)?;
    args.finish()?;
    output::say(format_args!("Starting app '{app}'..."));
    daemon::call_done(
        &ctx.root,
        &Request::Start {
            app: app.to_string(),
        },
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(kind: &str, index: u32, state: InstanceState) -> InstanceStatus {
        InstanceStatus {
            kind: kind.into(),
            index,
            state,
            pid: Some(4242),
            port: (kind == "web").then_some(5001),
            uptime_secs: Some(75),
            restarts: 0,
            last_exit: None,
            rss_bytes: Some(3 * 1024 * 1024),
            memory_bytes: None,
            cpu_secs: Some(0.5),
            next_run: None,
            log_lines_dropped: 0,
        }
    }

    #[test]
    fn ps_table_shows_every_instance() {
        let status = AppStatus {
            app: "blog".into(),
            release: "v3".into(),
            stopped: false,
            formation: BTreeMap::from([("web".into(), 1), ("worker".into(), 1)]),
            instances: vec![
                instance("web", 1, InstanceState::Running),
                instance("worker", 1, InstanceState::CrashLooping),
            ],
            front: None,
            limits: Default::default(),
        };
        let text = render_ps(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "=== blog (release v3)  formation: web:1 worker:1");
        assert!(lines[1].starts_with("process   state"), "{text}");
        assert!(
            lines[2].starts_with("web.1     running        4242  5001  1m15s"),
            "{text}"
        );
        assert!(lines[2].contains("3.0M"), "{text}");
        assert!(
            lines[3].starts_with("worker.1  crash-looping  4242  -"),
            "{text}"
        );
        assert!(lines[4].contains("crash-looping: worker.1"), "{text}");
    }
}
