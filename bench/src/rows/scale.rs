//! Row 5: scale one web kind 1 → 4 (time until all four answer HTTP 200) and back 4 → 1 (time
//! until the three extra processes are gone). Each supervisor is driven through its own path:
//! ours a `Scale` request, uWSGI vassal inis written/removed, supervisord programs written/removed
//! plus `supervisorctl update`. The time includes that control step.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{finish, secs};
use crate::Opts;
use crate::driver::{self, Driver, Kind, wait_ready};
use crate::fixture::{AppDef, Fixture};
use crate::http;
use crate::procfs::ProcId;
use crate::report::{Better, Results, Row};

pub fn rows() -> [Row; 2] {
    [
        Row::new("5a", "scale web 1→4: all 4 serve HTTP", "s", Better::Lower),
        Row::new(
            "5b",
            "scale web 4→1: 3 extra processes gone",
            "s",
            Better::Lower,
        ),
    ]
}

pub fn run(kind: Kind, base: &Path, fx: &Fixture, opts: &Opts, res: &mut Results) -> Result<()> {
    let mut d = driver::start(kind, base, opts)?;
    let app = fx.web_app("scaly");
    let outcome = measure(d.as_mut(), &app, res);
    finish(d.as_mut(), res, "scale");
    outcome
}

fn measure(d: &mut dyn Driver, app: &AppDef, res: &mut Results) -> Result<()> {
    let kind = d.kind();
    let [up, down] = rows();
    d.deploy(std::slice::from_ref(app))?;
    wait_ready(d, std::slice::from_ref(app), Duration::from_secs(60))?;
    sleep(Duration::from_secs(1));

    let t0 = Instant::now();
    d.scale(app, "web", 4)?;
    loop {
        let inst = driver::instances(d.root(), &app.name, "web");
        if inst.len() >= 4
            && inst.iter().all(|i| {
                i.port
                    .is_some_and(|p| http::serves(p, Duration::from_millis(300)))
            })
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("{}: 4 web instances not serving within 60 s", kind.label());
        }
        sleep(Duration::from_millis(5));
    }
    res.set(&up, kind, secs(t0.elapsed()));
    d.sweep();
    sleep(Duration::from_secs(1));

    let inst = driver::instances(d.root(), &app.name, "web");
    // The survivor is the lowest instance number (whatever the numbering base).
    let keep = inst.iter().map(|i| i.index).min().unwrap_or(1);
    let extra: Vec<ProcId> = inst
        .iter()
        .filter(|i| i.index != keep)
        .filter_map(|i| ProcId::of(i.pid))
        .collect();
    let t1 = Instant::now();
    d.scale(app, "web", 1)?;
    while extra.iter().any(ProcId::alive) {
        if t1.elapsed() > Duration::from_secs(60) {
            bail!(
                "{}: extra web instances still alive after 60 s",
                kind.label()
            );
        }
        sleep(Duration::from_millis(5));
    }
    res.set(&down, kind, secs(t1.elapsed()));
    Ok(())
}
