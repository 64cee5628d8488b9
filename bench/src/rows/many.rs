//! Row 8 (ours only): 500 `sleep` instances, in apps of at most 100 (the daemon caps one kind
//! at 256 instances). Time from the first `Apply` to every instance Running, the daemon's RSS
//! with them, and the latency of a full `Status`.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::median_p99;
use crate::Opts;
use crate::driver::Driver;
use crate::driver::Kind;
use crate::driver::ours::Ours;
use crate::fixture::Fixture;
use crate::procfs;
use crate::report::{Better, Cell, Results, Row};

/// Instances per app (below the daemon's per-kind cap).
const PER_APP: u32 = 100;

pub fn rows(n: u32) -> [Row; 4] {
    [
        Row::new(
            "8a",
            &format!("{n} instances: apply → all running"),
            "s",
            Better::Lower,
        ),
        Row::new(
            "8b",
            &format!("  … supervisor RSS with {n} instances"),
            "MiB",
            Better::Lower,
        ),
        Row::new(
            "8c",
            &format!("  … status of {n} instances, median"),
            "ms",
            Better::Lower,
        ),
        Row::new(
            "8d",
            &format!("  … status of {n} instances, p99"),
            "ms",
            Better::Lower,
        ),
    ]
}

pub fn run(base: &Path, fx: &Fixture, opts: &Opts, res: &mut Results) -> Result<()> {
    let mut d = Ours::start(base, &opts.supervisor_bin)?;
    let outcome = measure(&mut d, fx, opts, res);
    super::finish(&mut d, res, "500 instances");
    for r in rows(opts.many) {
        res.set(&r, Kind::Uwsgi, Cell::Missing("ours only".into()));
        res.set(&r, Kind::Supervisord, Cell::Missing("ours only".into()));
    }
    outcome
}

fn measure(d: &mut Ours, fx: &Fixture, opts: &Opts, res: &mut Results) -> Result<()> {
    let [up, rss, med, p99] = rows(opts.many);
    let apps: Vec<_> = (0..opts.many.div_ceil(PER_APP))
        .map(|i| {
            let count = (opts.many - i * PER_APP).min(PER_APP);
            fx.sleepers(&format!("many{}", i + 1), count)
        })
        .collect();
    let t0 = Instant::now();
    d.deploy(&apps)?;
    loop {
        let n = d.running_total()?;
        if n >= opts.many as usize {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("only {n} of {} instances running after 120 s", opts.many);
        }
        sleep(Duration::from_millis(20));
    }
    res.set(&up, Kind::Ours, Cell::Num(t0.elapsed().as_secs_f64()));
    d.sweep();
    sleep(Duration::from_secs(2));
    let m = procfs::mem_sum(&d.own_pids());
    res.set(&rss, Kind::Ours, Cell::Num(m.rss_kib as f64 / 1024.0));
    if let Some((m, p)) = median_p99(&d.status_latency(100)?) {
        res.set(&med, Kind::Ours, Cell::Num(m));
        res.set(&p99, Kind::Ours, Cell::Num(p));
    }
    Ok(())
}
