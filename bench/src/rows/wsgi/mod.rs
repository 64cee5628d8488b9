//! `piku-bench wsgi` (issue 13): Python web apps through the whole path, nginx → front →
//! server, under piku + uWSGI and under ours with each candidate WSGI server. For a plain
//! WSGI app and a small Flask app: req/s and p50/p99 (`wrk`, every target's rounds
//! alternating), the whole supervisor tree's PSS, an extra instance's start-up time to its
//! first answer and what it adds to that PSS; then the formation of issue 13's memory goal
//! ([`formation`]). With `--markdown` it writes only its own section of that file.
//!
//! Over 500 lines on purpose: the row's driver and its report (tables and goals) are one sequence
//! from measurement to the markdown it writes.

mod apps;
mod bodies;
mod cpu;
mod formation;
mod load;
pub mod robust;
mod subset;
mod target;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::rows::front::WrkRun;
use apps::App;
use load::{Spread, wrk};
use target::{Extra, Stack, Target, tree_mem};

/// The heading of the section this command owns in `BENCHMARKS.md`.
pub const SECTION: &str = "## Python web apps: piku + uWSGI vs ours with each WSGI server";

/// How long and how often.
struct Plan {
    secs: u32,
    rounds: usize,
    startups: usize,
    formation_reps: usize,
}

/// What one target measured for one app.
#[derive(Default)]
struct Measured {
    runs: Vec<WrkRun>,
    /// CPU of every part of the path, summed over the rounds.
    cost: cpu::Cost,
    pss_mib: Option<f64>,
    extra_pss_mib: Vec<f64>,
    startup_ms: Vec<f64>,
    failure: Option<String>,
}

struct Report {
    date: String,
    load_start: String,
    load_end: String,
    versions: Vec<String>,
    plan: Plan,
    quick: bool,
    apps: Vec<(App, Vec<(Target, Measured)>)>,
    formation: Option<formation::Figures>,
    notes: Vec<String>,
}

pub fn run(
    supervisor_bin: &Path,
    venv: &Path,
    markdown: Option<&Path>,
    quick: bool,
    keep: bool,
) -> Result<()> {
    apps::check_venv(venv)?;
    let plan = if quick {
        Plan {
            secs: 3,
            rounds: 1,
            startups: 1,
            formation_reps: 1,
        }
    } else {
        Plan {
            secs: 10,
            rounds: 3,
            startups: 3,
            formation_reps: 2,
        }
    };
    let plan = Plan {
        rounds: subset::rounds().unwrap_or(plan.rounds),
        ..plan
    };
    let tmp = tempfile::Builder::new()
        .prefix("piku-bench-wsgi-")
        .tempdir()?;
    let base = tmp.path().to_path_buf();
    let result = measure(&base, supervisor_bin, venv, plan, quick);
    if keep {
        println!("kept {}", tmp.keep().display());
    }
    let report = result?;
    let text = render(&report);
    println!("\n{text}");
    if let Some(md) = markdown {
        let old = fs::read_to_string(md).unwrap_or_default();
        fs::write(md, crate::report::put_section(&old, SECTION, &text))
            .with_context(|| format!("writing {}", md.display()))?;
        println!("wrote the WSGI section of {}", md.display());
    }
    Ok(())
}

fn measure(
    base: &Path,
    supervisor_bin: &Path,
    venv: &Path,
    plan: Plan,
    quick: bool,
) -> Result<Report> {
    let load_start = loadavg();
    let date = utc_now();
    let src = apps::write_sources(&base.join("src"))?;
    let targets = subset::targets();
    let mut report = Report {
        date,
        load_start,
        load_end: String::new(),
        versions: apps::versions(venv),
        plan,
        quick,
        apps: Vec::new(),
        formation: None,
        notes: Vec::new(),
    };
    for app in subset::apps() {
        println!(
            "== wsgi: {} — throughput, every target alternating",
            app.label()
        );
        let mut measured: BTreeMap<usize, Measured> = BTreeMap::new();
        let dir = base.join(format!("load-{}", app.name()));
        match throughput(
            &dir,
            supervisor_bin,
            venv,
            &src,
            app,
            &targets,
            &report.plan,
        ) {
            Ok((runs, notes)) => {
                report.notes.extend(notes);
                for (i, r, cost) in runs {
                    let m = measured.entry(i).or_default();
                    m.runs = r;
                    m.cost = cost;
                }
            }
            Err(e) => report
                .notes
                .push(format!("{}: throughput failed: {e:#}", app.label())),
        }
        if !subset::throughput_only() {
            println!(
                "== wsgi: {} — memory and start-up, one target at a time",
                app.label()
            );
        }
        for (i, t) in targets.iter().enumerate() {
            if subset::throughput_only() {
                break;
            }
            let m = measured.entry(i).or_default();
            let dir = base.join(format!("mem-{}-{i}", app.name()));
            if let Err(e) = memory(&dir, supervisor_bin, venv, &src, app, *t, &report.plan, m) {
                m.failure = Some(format!("{e:#}"));
                report.notes.push(format!(
                    "{}, {}: memory/start-up failed: {e:#}",
                    app.label(),
                    t.label()
                ));
            }
        }
        let list = targets
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, measured.remove(&i).unwrap_or_default()))
            .collect();
        report.apps.push((app, list));
    }
    if subset::throughput_only() {
        report.load_end = loadavg();
        return Ok(report);
    }
    println!("== wsgi: the formation's whole-tree PSS");
    match formation::measure(
        &base.join("formation"),
        supervisor_bin,
        venv,
        &src,
        report.plan.formation_reps,
    ) {
        Ok(f) => report.formation = Some(f),
        Err(e) => report.notes.push(format!("formation failed: {e:#}")),
    }
    report.load_end = loadavg();
    Ok(report)
}

type Runs = Vec<(usize, Vec<WrkRun>, cpu::Cost)>;

/// Every target up at once behind one nginx; `rounds` rounds of one `wrk` per target, the
/// order rotating each round so that no target always runs first or last.
fn throughput(
    dir: &Path,
    supervisor_bin: &Path,
    venv: &Path,
    src: &Path,
    app: App,
    targets: &[Target],
    plan: &Plan,
) -> Result<(Runs, Vec<String>)> {
    let stack = Stack::start(
        dir,
        supervisor_bin,
        venv,
        src,
        app,
        targets,
        &Extra::default(),
    )?;
    let result = (|| -> Result<Runs> {
        for (i, e) in stack.entries.iter().enumerate() {
            wrk(e.port, 2, &dir.join(format!("warm-{i}.txt")))?;
        }
        let mut runs: Runs = (0..targets.len())
            .map(|i| (i, Vec::new(), cpu::Cost::default()))
            .collect();
        for round in 0..plan.rounds {
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
                let e = &stack.entries[i];
                let out = dir.join(format!("wrk-{round}-{i}.txt"));
                let window = stack
                    .nginx_pid()
                    .zip(stack.root(e))
                    .map(|(nginx, supervisor)| {
                        cpu::Window::start(cpu::Probe { nginx, supervisor })
                    });
                match wrk(e.port, plan.secs, &out) {
                    Ok(r) => {
                        let cost = window.map(|w| w.finish(r.requests)).unwrap_or_default();
                        let us = |part: f64| cost.per_request_us(part).unwrap_or(0.0);
                        println!(
                            "  round {round} {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {}; \
                             CPU µs/request {:.1} (wrk {:.1}, nginx {:.1}, supervisor {:.1} of which logs {:.1}, app {:.1}); \
                             supervisor switches/request {:.2}",
                            e.target.label(),
                            r.rps,
                            r.p50_ms,
                            r.p99_ms,
                            r.errors(),
                            us(cost.total()),
                            us(cost.wrk),
                            us(cost.nginx),
                            us(cost.supervisor),
                            us(cost.logs),
                            us(cost.app),
                            cost.supervisor_switches as f64 / r.requests.max(1) as f64,
                        );
                        runs[i].1.push(r);
                        runs[i].2 += cost;
                    }
                    Err(err) => println!("  round {round} {}: {err:#}", e.target.label()),
                }
            }
        }
        Ok(runs)
    })();
    let notes = stack.shutdown();
    Ok((result?, notes))
}

/// One target alone: whole-tree PSS after some load; then, `plan.startups` times, a second
/// instance: how long until it answers, and (the first time) how much PSS it adds.
#[allow(clippy::too_many_arguments)]
fn memory(
    dir: &Path,
    supervisor_bin: &Path,
    venv: &Path,
    src: &Path,
    app: App,
    target: Target,
    plan: &Plan,
    m: &mut Measured,
) -> Result<()> {
    let mut stack = Stack::start(
        dir,
        supervisor_bin,
        venv,
        src,
        app,
        &[target],
        &Extra::default(),
    )?;
    let result = (|| -> Result<()> {
        let port = stack.entries[0].port;
        let root = stack.root(&stack.entries[0]).context("no supervisor")?;
        wrk(port, 2, &dir.join("warm.txt"))?;
        sleep(Duration::from_secs(2));
        let one = tree_mem(root).pss_kib as f64 / 1024.0;
        m.pss_mib = Some(one);
        for rep in 0..plan.startups {
            let t0 = Instant::now();
            stack.scale(0, 2)?;
            stack.wait_second(0, Duration::from_secs(60))?;
            m.startup_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            stack.sweep();
            if rep == 0 {
                // Load both instances (the front balances; piku's second vassal has its own port).
                wrk(port, 2, &dir.join("warm-2a.txt"))?;
                if let Some(p2) = stack.entries[0].port2 {
                    wrk(p2, 2, &dir.join("warm-2b.txt"))?;
                }
                sleep(Duration::from_secs(2));
                let two = tree_mem(root).pss_kib as f64 / 1024.0;
                m.extra_pss_mib.push(two - one);
            }
            stack.scale(0, 1)?;
            stack.wait_second_gone(0, Duration::from_secs(30))?;
            sleep(Duration::from_millis(500));
        }
        Ok(())
    })();
    let notes = stack.shutdown();
    if !notes.is_empty() {
        m.failure = Some(notes.join("; "));
    }
    result
}

pub(super) fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

pub(super) fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn spread_text(s: Option<Spread>, digits: usize) -> String {
    match s {
        Some(s) if (s.max - s.min).abs() < f64::EPSILON => format!("{:.digits$}", s.median),
        Some(s) => format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            s.median, s.min, s.max
        ),
        None => "–".into(),
    }
}

fn of_runs(runs: &[WrkRun], f: fn(&WrkRun) -> f64) -> Option<Spread> {
    Spread::of(&runs.iter().map(f).collect::<Vec<_>>())
}

fn render(r: &Report) -> String {
    let mut s = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(s, "{SECTION}\n");
    let _ = writeln!(
        s,
        "Measured {} with `piku-bench wsgi{}` (`scripts/bench` runs it). Each app is served by \
         every target at once, each behind the same nginx (Debian's, `worker_processes auto`): \
         **piku + uWSGI** is the emperor with the `wsgi` vassal piku writes (2 processes × 4 \
         threads, `max-requests 1024`, its `log-format`, a Unix socket, nginx `uwsgi_pass` with \
         piku's `uwsgi_param` lines); **ours** is `piku-supervisor` with the app's front on a Unix \
         socket (nginx `proxy_pass` with keep-alive, as piku-nginx writes it) and the server started \
         with the command line `piku-deploy` generates on this machine ({cores} cores), request \
         logging on everywhere. Load: `wrk {} -d{}s --latency` through nginx, {} round(s) per \
         target, the targets alternating; median (lowest–highest). PSS is the whole supervisor \
         tree (daemon or emperor, masters, workers) after 2 s of load; start-up is from the \
         scale request (ours `ps:scale`, piku a second vassal ini) to the new instance's first \
         200, {} time(s); per extra instance is the PSS that second instance adds.\n",
        r.date,
        if r.quick { " --quick" } else { "" },
        load::WRK_ARGS.join(" "),
        r.plan.secs,
        r.plan.rounds,
        r.plan.startups,
    );
    for (app, list) in &r.apps {
        let _ = writeln!(s, "### {}\n", app.label());
        let _ = writeln!(
            s,
            "| target | req/s | p50 (ms) | p99 (ms) | errors | whole-tree PSS (MiB) | + per extra instance (MiB) | start-up to first answer (ms) | req/s vs piku, no recycling |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let piku_rps = list
            .iter()
            .find(|(t, _)| *t == target::PIKU_NO_RECYCLING)
            .and_then(|(_, m)| of_runs(&m.runs, |w| w.rps));
        for (t, m) in list {
            let rps = of_runs(&m.runs, |w| w.rps);
            let ratio = match (rps, piku_rps) {
                (Some(a), Some(b)) if b.median > 0.0 => format!("{:.2}×", a.median / b.median),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                t.label(),
                spread_text(rps, 0),
                spread_text(of_runs(&m.runs, |w| w.p50_ms), 2),
                spread_text(of_runs(&m.runs, |w| w.p99_ms), 2),
                m.runs.iter().map(WrkRun::errors).sum::<u64>(),
                m.pss_mib.map_or("–".into(), |v| format!("{v:.1}")),
                spread_text(Spread::of(&m.extra_pss_mib), 1),
                spread_text(Spread::of(&m.startup_ms), 0),
                ratio,
            );
        }
        let _ = writeln!(s);
        cpu_table(&mut s, list, cores);
    }
    if let Some(f) = &r.formation {
        let (piku, ours) = f.spreads();
        let _ = writeln!(
            s,
            "### Formation: a `wsgi` app with a `worker` and a `cron`, plus a `web` app\n\n\
             Whole-tree PSS (supervisor + every process), the plain app on ours' default server, \
             fixture worker, cron and web processes as in rows 1–3; {} fresh start(s) each, \
             alternating.\n",
            f.piku.len().max(f.ours.len())
        );
        let _ = writeln!(
            s,
            "| | piku + uWSGI emperor | ours (default server) | ours ÷ piku |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|");
        let ratio = match (piku, ours) {
            (Some(p), Some(o)) if p.median > 0.0 => format!("{:.2}", o.median / p.median),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| whole-tree PSS (MiB) | {} | {} | {ratio} |\n",
            spread_text(piku, 1),
            spread_text(ours, 1)
        );
    }
    let _ = writeln!(s, "### Goals (issue 13)\n");
    for line in goals(r) {
        let _ = writeln!(s, "- {line}");
    }
    let _ = writeln!(s, "\n### Notes\n");
    let _ = writeln!(s, "- Versions: {}.", r.versions.join(", "));
    let _ = writeln!(
        s,
        "- Machine load (`/proc/loadavg`): {} at start, {} at end. Absolute figures move with \
         other work on the machine; the targets alternate, so their ratios are the steadier figures.",
        r.load_start, r.load_end
    );
    let _ = writeln!(
        s,
        "- piku's second vassal gets its own socket here: as piku writes it, it would bind the \
         first one's path and take all its traffic (piku-baseline §3.4). Its start-up includes the \
         emperor noticing the new ini."
    );
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    if let Some(f) = &r.formation {
        for n in &f.notes {
            let _ = writeln!(s, "- formation: {n}");
        }
    }
    s
}

/// Where each target's CPU goes, per request (cpu.rs).
fn cpu_table(s: &mut String, list: &[(Target, Measured)], cores: usize) {
    if list.iter().all(|(_, m)| m.cost.requests == 0) {
        return;
    }
    let _ = writeln!(
        s,
        "CPU per request (µs), every round's CPU ÷ its requests (`/proc/<pid>/stat` around each \
         round). Supervisor: ours' daemon (the front and log capture), piku's emperor; app \
         server: ours' processes below the daemon, piku's vassals (masters, workers, recycled \
         ones). Every part shares the {cores} cores, so req/s ≈ {cores} s ÷ total.\n"
    );
    let _ = writeln!(
        s,
        "| target | total | wrk | nginx | supervisor | of which log capture | app server | {cores} cores ÷ total (req/s) | supervisor context switches / request |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (t, m) in list {
        let c = &m.cost;
        let us = |part: f64| {
            c.per_request_us(part)
                .map_or("–".into(), |v| format!("{v:.1}"))
        };
        let ceiling = c
            .per_request_us(c.total())
            .filter(|v| *v > 0.0)
            .map_or("–".into(), |v| format!("{:.0}", cores as f64 * 1e6 / v));
        let logs = if t.is_piku() {
            "–".into()
        } else {
            us(c.logs)
        };
        let switches = match c.requests {
            0 => "–".into(),
            n => format!("{:.2}", c.supervisor_switches as f64 / n as f64),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {logs} | {} | {ceiling} | {switches} |",
            t.label(),
            us(c.total()),
            us(c.wrk),
            us(c.nginx),
            us(c.supervisor),
            us(c.app),
        );
    }
    let _ = writeln!(s);
}

/// What ours would have to shed to serve `goal` × the reference's req/s on the same cores,
/// if req/s is cores ÷ the CPU of a request: the total must fall to the reference's ÷ `goal`.
fn cpu_model(reference: &cpu::Cost, ours: &cpu::Cost, goal: f64) -> Option<String> {
    let p = reference.per_request_us(reference.total())?;
    let o = ours.per_request_us(ours.total())?;
    let us = |part: f64| ours.per_request_us(part).unwrap_or(0.0);
    let budget = p / goal;
    let fixed = us(ours.wrk) + us(ours.nginx);
    let server = us(ours.supervisor) + us(ours.app);
    Some(format!(
        "CPU model: a request costs ours {o:.1} µs, the reference {p:.1} µs ({:.2}× by CPU); \
         {goal}× its req/s needs ≤ {budget:.1} µs, a cut of {:.1} µs ({:.0} %). wrk and nginx \
         take {fixed:.1} µs of ours, so the supervisor (now {:.1}, log capture {:.1}) and the \
         app server (now {:.1}) together would have to fit in {:.1} µs (now {server:.1}).",
        p / o,
        o - budget,
        (o - budget) / o * 100.0,
        us(ours.supervisor),
        us(ours.logs),
        us(ours.app),
        budget - fixed,
    ))
}

/// The goals, each with its figure and whether this run met it.
fn goals(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let plain = r.apps.iter().find(|(a, _)| *a == App::Plain);
    let pick = |t: &Target| plain.and_then(|(_, l)| l.iter().find(|(x, _)| x == t).map(|(_, m)| m));
    let ours = pick(&Target::Ours(target::CANDIDATES[0]));
    for reference in [target::PIKU, target::PIKU_NO_RECYCLING] {
        let (Some(p), Some(o)) = (pick(&reference), ours) else {
            continue;
        };
        let med = |m: &Measured, f: fn(&WrkRun) -> f64| of_runs(&m.runs, f).map(|s| s.median);
        if let (Some(pr), Some(or), Some(pp), Some(op)) = (
            med(p, |w| w.rps),
            med(o, |w| w.rps),
            med(p, |w| w.p99_ms),
            med(o, |w| w.p99_ms),
        ) {
            let x = or / pr;
            out.push(format!(
                "Plain WSGI app through nginx, ours (default server) ≥ 1.5× {}'s req/s: \
                 **{x:.2}×** ({or:.0} vs {pr:.0}) — {}.",
                reference.label(),
                if x >= 1.5 { "met" } else { "not met" }
            ));
            out.push(format!(
                "… with p99 no worse: {op:.2} ms vs {pp:.2} ms — {}.",
                if op <= pp { "met" } else { "not met" }
            ));
            if let Some(model) = cpu_model(&p.cost, &o.cost, 1.5) {
                out.push(format!("… {model}"));
            }
        }
    }
    if let Some(f) = &r.formation
        && let (Some(p), Some(o)) = f.spreads()
    {
        let x = o.median / p.median;
        out.push(format!(
            "Formation whole-tree PSS ≤ 0.8× piku + uWSGI's: **{x:.2}×** ({:.1} vs {:.1} MiB) — {}.",
            o.median,
            p.median,
            if x <= 0.8 { "met" } else { "not met" }
        ));
    }
    out.push(
        "Redeploys under load lose no request: the e2e test `tests/http_front.rs` (wrk through \
         nginx across redeploys and scaling, with the default server)."
            .into(),
    );
    out
}

/// The venv `piku-bench wsgi` uses by default: `target/bench-venv` beside the binary's
/// target directory (what `scripts/bench` creates).
pub fn default_venv() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating piku-bench")?;
    // target/release/piku-bench → target/bench-venv
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("piku-bench is not inside a target directory")?;
    Ok(target.join("bench-venv"))
}
