//! The process commands, all answered by the supervisor and none of them rebuilding:
//! `ps` (a table of instances), `ps:scale`, `restart [process]`, `stop`, `start`.

use std::collections::BTreeMap;

use anyhow::bail;
use piku_deploy::app_config::{read_scaling, write_scaling};
use piku_deploy::front::spec::answers;
use piku_model::{is_valid_kind, parse_scale_args};
use piku_proto::{AppStatus, InstanceState, InstanceStatus, Request, ResourceLimits};
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
    /// The memory of every process of the app (the sum of `processes[].memory_bytes`).
    memory_bytes: Option<u64>,
    /// What each instance may use (`null`: no limit).
    limits: ResourceLimits,
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
    /// All of the instance's processes (its cgroup's working set, or their PSS).
    memory_bytes: Option<u64>,
    /// Its main process alone.
    rss_bytes: Option<u64>,
    cpu_secs: Option<f64>,
    last_exit: Option<String>,
    next_run: Option<String>,
    /// Web instances behind the front: requests on it now (`null` otherwise).
    in_flight: Option<u64>,
    /// Web instances behind the front: requests the front answered 504 for it.
    timed_out: Option<u64>,
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
            memory_bytes: memory(i),
            rss_bytes: i.rss_bytes,
            cpu_secs: i.cpu_secs,
            last_exit: i.last_exit.clone(),
            next_run: i.next_run.clone(),
            in_flight: i.in_flight,
            timed_out: i.timed_out,
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
            memory_bytes: total_memory(&status),
            limits: status.limits,
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

/// The memory of an instance: all of its processes, or its main one from an older daemon.
fn memory(i: &InstanceStatus) -> Option<u64> {
    i.memory_bytes.or(i.rss_bytes)
}

/// The memory of every instance that runs.
fn total_memory(status: &AppStatus) -> Option<u64> {
    status
        .instances
        .iter()
        .filter_map(memory)
        .reduce(|a, b| a + b)
}

/// `memory 256M, cpu 50%, tasks 64`, or `None` without limits.
fn render_limits(limits: &ResourceLimits) -> Option<String> {
    let parts: Vec<String> = [
        limits
            .memory_max_bytes
            .map(|b| format!("memory {}", piku_model::limits::Size(b))),
        limits.cpu_quota_percent.map(|p| format!("cpu {p}%")),
        limits.tasks_max.map(|n| format!("tasks {n}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The `ps` text: a summary line, then one row per instance, then the app's total memory
/// and its limits.
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
    let fronted = status.instances.iter().any(|i| i.in_flight.is_some());
    let mut header = vec![
        "process", "state", "pid", "port", "uptime", "restarts", "memory", "cpu",
    ];
    if fronted {
        header.extend(["in flight", "timed out"]);
    }
    header.push("last exit");
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
            memory(i).map_or_else(dash, human_bytes),
            i.cpu_secs.map_or_else(dash, human_cpu),
        ];
        if fronted {
            let count = |n: Option<u64>| n.map_or_else(dash, |n| n.to_string());
            row.extend([count(i.in_flight), count(i.timed_out)]);
        }
        row.push(i.last_exit.clone().unwrap_or_else(dash));
        if has_cron {
            row.push(i.next_run.clone().unwrap_or_else(dash));
        }
        table.row(row);
    }
    text.push_str(&table.render());
    let mut total = format!(
        "memory: {} in all",
        total_memory(status).map_or_else(dash, human_bytes)
    );
    if let Some(limits) = render_limits(&status.limits) {
        total.push_str(&format!("; limits per instance: {limits}"));
    }
    text.push_str(&total);
    text.push('\n');
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
            memory_bytes: (kind == "web").then_some(40 * 1024 * 1024),
            cpu_secs: Some(0.5),
            next_run: None,
            log_lines_dropped: 0,
            in_flight: None,
            timed_out: None,
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
            limits: ResourceLimits {
                memory_max_bytes: Some(256 << 20),
                cpu_quota_percent: Some(50),
                tasks_max: None,
            },
        };
        let text = render_ps(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "=== blog (release v3)  formation: web:1 worker:1");
        assert!(lines[1].starts_with("process   state"), "{text}");
        assert!(
            lines[2].starts_with("web.1     running        4242  5001  1m15s"),
            "{text}"
        );
        // All of web.1's processes; worker.1 from an older daemon: its main process.
        assert!(lines[2].contains("40.0M"), "{text}");
        assert!(lines[3].contains("3.0M"), "{text}");
        assert!(
            lines[3].starts_with("worker.1  crash-looping  4242  -"),
            "{text}"
        );
        assert_eq!(
            lines[4],
            "memory: 43.0M in all; limits per instance: memory 256M, cpu 50%"
        );
        assert!(lines[5].contains("crash-looping: worker.1"), "{text}");
        assert!(!text.contains("in flight"), "{text}");
    }

    #[test]
    fn ps_shows_the_fronts_counters_and_why_an_instance_was_recycled() {
        let mut web = instance("web", 1, InstanceState::Running);
        web.in_flight = Some(2);
        web.timed_out = Some(3);
        web.restarts = 1;
        web.last_exit = Some("wedged restart".into());
        let status = AppStatus {
            app: "blog".into(),
            release: "v3".into(),
            stopped: false,
            formation: BTreeMap::from([("web".into(), 1), ("worker".into(), 1)]),
            instances: vec![web, instance("worker", 1, InstanceState::Running)],
            front: None,
            limits: ResourceLimits::default(),
        };
        let text = render_ps(&status);
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[1]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            header,
            [
                "process",
                "state",
                "pid",
                "port",
                "uptime",
                "restarts",
                "memory",
                "cpu",
                "in flight",
                "timed out",
                "last exit"
            ],
            "{text}"
        );
        let web: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            web[web.len() - 4..],
            ["2", "3", "wedged", "restart"],
            "{text}"
        );
        let worker: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(worker[worker.len() - 3..], ["-", "-", "-"], "{text}");
        let json = serde_json::to_value(ProcessJson::from(&status.instances[0])).unwrap();
        assert_eq!(json["in_flight"], 2);
        assert_eq!(json["timed_out"], 3);
        assert_eq!(json["last_exit"], "wedged restart");
    }
}
