//! Issue 13's memory goal: the whole-tree PSS of a small formation — a `wsgi` app (the plain
//! app) with a `worker` and a `cron` entry, plus an app with a `web` process — under piku +
//! uWSGI and under ours with the default server. Each is started fresh, warmed with a few
//! hundred requests through nginx, left 5 s, then measured; the two alternate.

use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use anyhow::Result;

use super::apps::App;
use super::load::{Spread, wrk};
use super::target::{CANDIDATES, Extra, PIKU, Stack, Target, tree_mem};
use crate::fixture::{Fixture, ProcDef};

/// PSS (MiB) of each run, piku's and ours.
pub struct Figures {
    pub piku: Vec<f64>,
    pub ours: Vec<f64>,
    pub notes: Vec<String>,
}

impl Figures {
    pub fn spreads(&self) -> (Option<Spread>, Option<Spread>) {
        (Spread::of(&self.piku), Spread::of(&self.ours))
    }
}

pub fn measure(
    base: &Path,
    supervisor_bin: &Path,
    venv: &Path,
    src: &Path,
    reps: usize,
) -> Result<Figures> {
    let fx = Fixture::write(&base.join("fixture"))?;
    let standard = fx.standard_app("unused");
    let with: Vec<ProcDef> = standard
        .processes
        .iter()
        .filter(|p| p.kind != "web")
        .cloned()
        .collect();
    let others = [fx.web_app("webapp")];
    let extra = Extra {
        with: &with,
        others: &others,
        ..Extra::default()
    };
    let mut f = Figures {
        piku: Vec::new(),
        ours: Vec::new(),
        notes: Vec::new(),
    };
    for rep in 0..reps {
        for target in [PIKU, Target::Ours(CANDIDATES[0])] {
            let dir = base.join(format!("formation-{rep}-{}", target.is_piku()));
            let stack = Stack::start(
                &dir,
                supervisor_bin,
                venv,
                src,
                App::Plain,
                &[target],
                &extra,
            )?;
            let e = &stack.entries[0];
            let warm = wrk(e.port, 1, &dir.join("wrk-warm.txt"));
            sleep(Duration::from_secs(5));
            let pss = stack.root(e).map(|r| tree_mem(r).pss_kib as f64 / 1024.0);
            let label = e.target.label();
            f.notes.extend(stack.shutdown());
            warm?;
            if let Some(pss) = pss {
                println!("  formation {label}: {pss:.1} MiB PSS");
                match target {
                    Target::Piku { .. } => f.piku.push(pss),
                    Target::Ours(_) => f.ours.push(pss),
                }
            }
        }
    }
    Ok(f)
}
