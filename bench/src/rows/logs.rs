//! Row 7: a worker writes numbered lines as fast as it can for a fixed time, with each tool's
//! log rotated at 1 MiB keeping one backup (piku's `log-maxsize`). A supervisor that reads a
//! pipe slows the writer down when it falls behind, so lines written ÷ time is the rate it
//! captured. Lost lines are counted from the files, by their numbers: every number between
//! the first and the last one kept must be there exactly once (rotation loses or repeats
//! nothing), and the last number written must be there (nothing stuck or dropped at the end).
//! Lines rotated out of the kept window cannot be checked here; the supervisor's own
//! integration test (`supervisor/tests/logs.rs`) keeps every file and checks every line.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::finish;
use crate::Opts;
use crate::driver::{self, Driver, Kind, wait_ready};
use crate::fixture::{AppDef, Fixture};
use crate::procfs::Activity;
use crate::report::{Better, Cell, Results, Row};

pub fn rows(secs: f64) -> [Row; 5] {
    [
        Row::new(
            "7a",
            &format!("log flood {secs:.0} s: lines/s captured"),
            "lines/s",
            Better::Higher,
        ),
        Row::new(
            "7b",
            "  … lines lost (gaps between the numbers in the kept files + numbers missing at the end)",
            "lines",
            Better::Lower,
        ),
        Row::new(
            "7c",
            "  … lines duplicated in the kept files",
            "lines",
            Better::Lower,
        ),
        Row::new(
            "7d",
            "  … supervisor CPU during the flood",
            "s",
            Better::Lower,
        ),
        Row::new(
            "7e",
            "  … lines captured per CPU-second of the supervisor",
            "lines/CPU-s",
            Better::Higher,
        ),
    ]
}

/// What the kept log files hold, from the numbered lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Check {
    pub distinct: u64,
    pub duplicated: u64,
    /// Numbers missing between the first and last number kept.
    pub gaps: u64,
    pub max: Option<u64>,
}

pub fn check(texts: &[String]) -> Check {
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    for t in texts {
        for line in t.lines() {
            let Some(rest) = line.strip_prefix("line ") else {
                continue;
            };
            if let Some(n) = rest.split(' ').next().and_then(|s| s.parse::<u64>().ok()) {
                *seen.entry(n).or_default() += 1;
            }
        }
    }
    let (Some((&lo, _)), Some((&hi, _))) = (seen.first_key_value(), seen.last_key_value()) else {
        return Check::default();
    };
    Check {
        distinct: seen.len() as u64,
        duplicated: seen.values().map(|c| u64::from(c - 1)).sum(),
        gaps: (hi - lo + 1) - seen.len() as u64,
        max: Some(hi),
    }
}

pub fn run(kind: Kind, base: &Path, fx: &Fixture, opts: &Opts, res: &mut Results) -> Result<()> {
    let mut d = driver::start(kind, base, opts)?;
    let count_file = base.join("spew.count");
    let app = fx.spew_app("spewy", opts.spew_secs, &count_file);
    let outcome = measure(d.as_mut(), &app, &count_file, opts, res);
    finish(d.as_mut(), res, "log flood");
    outcome
}

fn measure(
    d: &mut dyn Driver,
    app: &AppDef,
    count_file: &Path,
    opts: &Opts,
    res: &mut Results,
) -> Result<()> {
    let kind = d.kind();
    let [rate, lost, dup, cpu, per_cpu] = rows(opts.spew_secs);
    let mut window = Activity::start(&d.own_pids());
    d.deploy(std::slice::from_ref(app))?;
    wait_ready(d, std::slice::from_ref(app), Duration::from_secs(60))?;
    let t0 = Instant::now();
    let written: u64 = loop {
        if let Ok(t) = fs::read_to_string(count_file) {
            break t
                .trim()
                .parse()
                .context("reading the writer's line count")?;
        }
        if t0.elapsed() > Duration::from_secs_f64(opts.spew_secs + 60.0) {
            bail!("{}: the log writer never finished", kind.label());
        }
        window.wait(Duration::from_millis(50));
    };
    let (cpu_s, _) = window.finish();
    // Give the supervisor time to drain what is still in the pipe.
    sleep(Duration::from_secs(2));
    // Ours counts lines it could not write (I/O errors); they show as gaps too, so they are
    // only reported.
    let unwritable = d.unwritable_lines(&app.name, "worker")?;
    let files = d.log_files(&app.name, "worker", instance_index(d, app));
    let texts: Vec<String> = files
        .iter()
        .rev()
        .filter_map(|f| fs::read(f).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect();
    let c = check(&texts);
    let tail_missing = match c.max {
        Some(m) => written.saturating_sub(m + 1),
        None => written,
    };
    res.set(&rate, kind, Cell::Num(written as f64 / opts.spew_secs));
    res.set(&lost, kind, Cell::Num((c.gaps + tail_missing) as f64));
    res.set(&dup, kind, Cell::Num(c.duplicated as f64));
    res.set(&cpu, kind, Cell::Num(cpu_s));
    if cpu_s > 0.0 {
        res.set(&per_cpu, kind, Cell::Num(written as f64 / cpu_s));
    }
    res.note(format!(
        "{}: log flood wrote {written} lines; kept files hold {} distinct, {} gaps, {} missing at the end{}.",
        kind.label(),
        c.distinct,
        c.gaps,
        tail_missing,
        unwritable
            .filter(|n| *n > 0)
            .map_or_else(String::new, |n| format!(", {n} reported unwritable by the supervisor"))
    ));
    Ok(())
}

/// The instance number the supervisor gave the single worker (ours may number from 0 or 1).
fn instance_index(d: &dyn Driver, app: &AppDef) -> u32 {
    driver::instances(d.root(), &app.name, "worker")
        .first()
        .map_or(1, |i| i.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_gaps_and_duplicates() {
        let old = "line 0 x\nline 1 x\nline 2 x\n".to_string();
        let new = "line 2 x\nline 4 x\nnoise\n".to_string();
        let c = check(&[old, new]);
        assert_eq!(
            c,
            Check {
                distinct: 4,
                duplicated: 1,
                gaps: 1,
                max: Some(4)
            }
        );
        assert_eq!(check(&[]), Check::default());
    }
}
