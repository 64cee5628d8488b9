//! Row 6: stop an app whose worker is a three-level process tree (leader → child → grandchild),
//! the grandchild ignoring SIGTERM. Measured: time from the stop command to every process of
//! the tree gone, and how many were still alive after a cap. Stop paths: ours `Stop`, uWSGI
//! removing the vassal ini (piku's `stop`), supervisord `supervisorctl stop`. Ours and
//! supervisord get the same 3 s grace; uWSGI uses its own defaults, as piku does.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{finish, secs};
use crate::Opts;
use crate::driver::{self, Driver, Kind, Tracker, wait_ready};
use crate::fixture::{AppDef, Fixture};
use crate::procfs::{self, ProcId};
use crate::report::{Better, Cell, Results, Row};

const CAP: Duration = Duration::from_secs(20);

pub fn rows() -> [Row; 2] {
    [
        Row::new(
            "6a",
            "stop a tree whose grandchild ignores SIGTERM: all gone",
            "s",
            Better::Lower,
        ),
        Row::new(
            "6b",
            &format!("  … app processes left {} s after the stop", CAP.as_secs()),
            "count",
            Better::Lower,
        ),
    ]
}

pub fn run(kind: Kind, base: &Path, fx: &Fixture, opts: &Opts, res: &mut Results) -> Result<()> {
    let mut d = driver::start(kind, base, opts)?;
    let app = fx.tree_app("treeapp");
    let outcome = measure(d.as_mut(), &app, res);
    finish(d.as_mut(), res, "stop");
    outcome
}

fn measure(d: &mut dyn Driver, app: &AppDef, res: &mut Results) -> Result<()> {
    let kind = d.kind();
    let [time, left] = rows();
    d.deploy(std::slice::from_ref(app))?;
    wait_ready(d, std::slice::from_ref(app), Duration::from_secs(60))?;
    // The whole tree: every process carrying the app's tag, wrappers excluded.
    let t0 = Instant::now();
    let tree = loop {
        let procs: Vec<ProcId> = procfs::tree(d.root())
            .into_iter()
            .filter(|p| procfs::env_var(*p, "PIKU_APP").as_deref() == Some(app.name.as_str()))
            .filter(|p| procfs::comm(*p).as_deref() == Some("python3"))
            .filter_map(ProcId::of)
            .collect();
        if procs.len() >= 3 {
            break procs;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("{}: the 3-level tree did not come up", kind.label());
        }
        sleep(Duration::from_millis(20));
    };
    d.sweep();
    let t1 = Instant::now();
    d.stop_app(app)?;
    while tree.iter().any(ProcId::alive) && t1.elapsed() < CAP {
        sleep(Duration::from_millis(5));
    }
    let alive: Vec<ProcId> = tree.iter().copied().filter(ProcId::alive).collect();
    if alive.is_empty() {
        res.set(&time, kind, secs(t1.elapsed()));
    } else {
        res.set(
            &time,
            kind,
            Cell::Missing(format!("not all gone in {} s", CAP.as_secs())),
        );
        let who: Vec<String> = alive
            .iter()
            .map(|p| {
                let ppid = procfs::Stat::read(p.pid).map_or(0, |s| s.ppid);
                format!("pid {} (ppid {ppid})", p.pid)
            })
            .collect();
        res.note(format!(
            "{}: after stop, left running: {} — killed by pid.",
            kind.label(),
            who.join(", ")
        ));
        let mut t = Tracker::default();
        for p in &alive {
            t.add(p.pid);
        }
        t.kill_alive();
    }
    res.set(&left, kind, Cell::Num(alive.len() as f64));
    Ok(())
}
