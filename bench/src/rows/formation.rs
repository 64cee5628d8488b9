//! Rows 1–3 on the standard formation (N apps × web + worker + cron):
//! 1 idle memory of the supervisor's own processes (and of the apps, for scale) at each size;
//! 2 idle CPU and context switches of the supervisor over a fixed window (largest size);
//! 3 respawn latency after `kill -9`: worker exit → new pid, web exit → serving HTTP again.
//!
//! Respawn is measured as *first-crash* latency: each kill hits an instance that has been up
//! longer than every tool's back-off reset (ours 30 s, uWSGI's 3 s rule, supervisord's
//! `startsecs`), so no tool is measured inside its back-off.

use std::collections::BTreeSet;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use super::{finish, median_p99};
use crate::Opts;
use crate::driver::{self, Driver, Instance, Kind, signal, wait_ready};
use crate::fixture::{AppDef, Fixture};
use crate::http;
use crate::procfs::{self, Activity, Mem, Pid, ProcId};
use crate::report::{Better, Cell, Results, Row};

/// Up-time after which every tool treats a crash as a first crash again.
const STABLE: Duration = Duration::from_secs(31);

fn mem_rows(n: usize) -> [Row; 3] {
    [
        Row::new(
            &format!("1.{n}a"),
            &format!("idle RSS of the supervisor, {n} app(s)"),
            "MiB",
            Better::Lower,
        ),
        Row::new(
            &format!("1.{n}b"),
            &format!("idle PSS of the supervisor, {n} app(s)"),
            "MiB",
            Better::Lower,
        ),
        Row::new(
            &format!("1.{n}c"),
            &format!("supervisor processes / app processes, {n} app(s)"),
            "count",
            Better::Neither,
        ),
    ]
}

pub fn idle_rows(n: usize) -> [Row; 2] {
    [
        Row::new(
            "2a",
            &format!("idle CPU of the supervisor, {n} apps"),
            "ms per minute",
            Better::Lower,
        ),
        Row::new(
            "2b",
            &format!("idle context switches (wake-ups) of the supervisor, {n} apps"),
            "per minute",
            Better::Lower,
        ),
    ]
}

pub fn respawn_rows() -> [Row; 3] {
    [
        Row::new(
            "3a",
            "worker kill -9 → new pid, median",
            "ms",
            Better::Lower,
        ),
        Row::new("3b", "worker kill -9 → new pid, p99", "ms", Better::Lower),
        Row::new(
            "3c",
            "web kill -9 → serving HTTP again, median (p99 in notes)",
            "ms",
            Better::Lower,
        ),
    ]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub struct Plan {
    pub sizes: Vec<usize>,
    pub idle: bool,
    pub respawn: bool,
}

pub fn run(
    kind: Kind,
    base: &Path,
    fx: &Fixture,
    opts: &Opts,
    plan: &Plan,
    res: &mut Results,
) -> Result<()> {
    let largest = plan.sizes.iter().copied().max().unwrap_or(1);
    for &n in &plan.sizes {
        let dir = base.join(format!("formation-{n}"));
        let mut d = driver::start(kind, &dir, opts)?;
        let apps: Vec<AppDef> = (1..=n)
            .map(|i| fx.standard_app(&format!("app{i:03}")))
            .collect();
        let outcome = run_size(d.as_mut(), &apps, n == largest, opts, plan, res);
        finish(d.as_mut(), res, &format!("{n} apps"));
        outcome.with_context(|| format!("{} with {n} app(s)", kind.label()))?;
    }
    Ok(())
}

fn run_size(
    d: &mut dyn Driver,
    apps: &[AppDef],
    largest: bool,
    opts: &Opts,
    plan: &Plan,
    res: &mut Results,
) -> Result<()> {
    let n = apps.len();
    let kind = d.kind();
    d.deploy(apps)?;
    let ready = wait_ready(d, apps, Duration::from_secs(60 + 2 * n as u64))?;
    let ready_at = Instant::now();
    println!(
        "  {}: {n} app(s) up in {:.2} s",
        kind.label(),
        ready.as_secs_f64()
    );
    // Let start-up work (imports, first cron scans, uWSGI's loyalty checks) finish.
    sleep(Duration::from_secs(5));
    d.sweep();

    let own = d.own_pids();
    let own_set: BTreeSet<Pid> = own.iter().copied().collect();
    let apps_pids: Vec<Pid> = procfs::tree(d.root())
        .into_iter()
        .filter(|p| !own_set.contains(p))
        .collect();
    let own_mem = procfs::mem_sum(&own);
    let app_mem: Mem = procfs::mem_sum(&apps_pids);
    let [rss, pss, count] = mem_rows(n);
    res.set(&rss, kind, Cell::Num(mib(own_mem.rss_kib)));
    res.set(&pss, kind, Cell::Num(mib(own_mem.pss_kib)));
    res.set(
        &count,
        kind,
        Cell::Text(format!("{} / {}", own.len(), apps_pids.len())),
    );
    res.note(format!(
        "{}, {n} app(s): apps' own processes RSS {:.1} MiB, PSS {:.1} MiB (not counted in row 1).",
        kind.label(),
        mib(app_mem.rss_kib),
        mib(app_mem.pss_kib)
    ));

    if largest && plan.idle {
        let [cpu, ctxt] = idle_rows(n);
        let mut window = Activity::start(&own);
        let t0 = Instant::now();
        window.wait(Duration::from_secs_f64(opts.idle_secs));
        let (cpu_s, switches) = window.finish();
        let per_min = 60.0 / t0.elapsed().as_secs_f64();
        res.set(&cpu, kind, Cell::Num(cpu_s * 1000.0 * per_min));
        res.set(&ctxt, kind, Cell::Num(switches as f64 * per_min));
    }

    if largest && plan.respawn {
        let wait = STABLE.saturating_sub(ready_at.elapsed());
        sleep(wait);
        respawn(d, apps, opts, res)?;
    }
    Ok(())
}

fn respawn(d: &mut dyn Driver, apps: &[AppDef], opts: &Opts, res: &mut Results) -> Result<()> {
    let kind = d.kind();
    let [med, p99, web] = respawn_rows();
    // Spread kills so that no instance is hit again before it has been up for STABLE.
    let gap = Duration::from_secs_f64((STABLE.as_secs_f64() / apps.len() as f64).max(0.3));
    let mut lat = Vec::new();
    let mut timeouts = 0;
    for i in 0..opts.kills {
        let app = &apps[i % apps.len()];
        // An instance not running at its turn (e.g. in its supervisor's back-off) is skipped
        // and reported, not fatal for the row.
        match kill_and_wait_pid(d.root(), &app.name, "worker") {
            Ok(Some(t)) => lat.push(t),
            Ok(None) => timeouts += 1,
            Err(e) => res.note(format!("{}: worker kill skipped: {e:#}", kind.label())),
        }
        sleep(gap);
    }
    if let Some((m, p)) = median_p99(&lat) {
        res.set(&med, kind, Cell::Num(m));
        res.set(&p99, kind, Cell::Num(p));
        let mut sorted: Vec<f64> = lat.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        sorted.sort_by(f64::total_cmp);
        let over_100ms = sorted.iter().filter(|v| **v > 100.0).count();
        res.note(format!(
            "{}: worker respawn over {} kills: min {:.1} ms, max {:.1} ms, {} above 100 ms, {} not respawned within 30 s.",
            kind.label(),
            lat.len() + timeouts,
            sorted[0],
            sorted[sorted.len() - 1],
            over_100ms,
            timeouts
        ));
    }
    let mut wlat = Vec::new();
    let mut wtimeouts = 0;
    for i in 0..opts.web_kills {
        let app = &apps[(i + apps.len() / 2) % apps.len()];
        match kill_and_wait_http(d.root(), &app.name) {
            Ok(Some(t)) => wlat.push(t),
            Ok(None) => wtimeouts += 1,
            Err(e) => res.note(format!("{}: web kill skipped: {e:#}", kind.label())),
        }
        sleep(gap);
    }
    if let Some((m, p)) = median_p99(&wlat) {
        res.set(&web, kind, Cell::Num(m));
        res.note(format!(
            "{}: web kill -9 → HTTP 200 over {} kills: median {m:.1} ms, p99 {p:.1} ms, {wtimeouts} not serving within 30 s.",
            kind.label(),
            wlat.len() + wtimeouts
        ));
    }
    d.sweep();
    Ok(())
}

/// The process under which the replacement of `victim` will appear: its parent, or the
/// parent's parent when the parent is a shell wrapper that dies with it (uWSGI).
fn watch_root(victim: Pid) -> Option<Pid> {
    let parent = procfs::Stat::read(victim)?.ppid;
    if matches!(procfs::comm(parent).as_deref(), Some("sh" | "dash")) {
        Some(procfs::Stat::read(parent)?.ppid)
    } else {
        Some(parent)
    }
}

fn find_one(root: Pid, app: &str, kind: &str) -> Result<Instance> {
    driver::instances(root, app, kind)
        .into_iter()
        .next()
        .with_context(|| format!("no running {app}/{kind} to kill"))
}

/// Kills the app's worker and waits for its replacement; `None` after 30 s.
fn kill_and_wait_pid(root: Pid, app: &str, kind: &str) -> Result<Option<Duration>> {
    let victim = find_one(root, app, kind)?;
    let watch = watch_root(victim.pid).context("victim vanished")?;
    let before: BTreeSet<Pid> = procfs::children(watch).into_iter().collect();
    let victim_id = ProcId::of(victim.pid).context("victim vanished")?;
    signal(victim.pid, Signal::SIGKILL);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        for c in procfs::children(watch) {
            if before.contains(&c) {
                continue;
            }
            for p in procfs::tree(c) {
                if p != victim_id.pid && driver::as_instance(p, app, kind).is_some() {
                    return Ok(Some(t0.elapsed()));
                }
            }
        }
        sleep(Duration::from_micros(500));
    }
    Ok(None)
}

/// Kills the app's web process and waits until its port serves again; `None` after 30 s.
fn kill_and_wait_http(root: Pid, app: &str) -> Result<Option<Duration>> {
    let victim = find_one(root, app, "web")?;
    let port = victim.port.context("web instance without PORT")?;
    signal(victim.pid, Signal::SIGKILL);
    let t0 = Instant::now();
    // Wait for the old listener to be gone, so the 200 below comes from the new process.
    while procfs::Stat::read(victim.pid).is_some_and(|s| s.state != 'Z')
        && t0.elapsed() < Duration::from_secs(5)
    {
        sleep(Duration::from_micros(200));
    }
    while t0.elapsed() < Duration::from_secs(30) {
        if http::serves(port, Duration::from_millis(200)) {
            return Ok(Some(t0.elapsed()));
        }
        sleep(Duration::from_millis(2));
    }
    Ok(None)
}
