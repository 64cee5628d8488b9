//! Row 4: a worker that exits at once while a fault file exists, for a fixed time. Counted:
//! starts made (from the script's own start log), the supervisor's CPU, whether it gave up (its
//! own status where it has one; else whether it recovered by itself), and the time from removing
//! the fault to the first healthy start.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::finish;
use crate::Opts;
use crate::driver::{self, Kind};
use crate::fixture::Fixture;
use crate::procfs::Activity;
use crate::report::{Better, Cell, Results, Row};

pub fn rows(secs: f64) -> [Row; 5] {
    [
        Row::new(
            "4a",
            &format!("crash loop {secs:.0} s: starts made"),
            "count",
            Better::Neither,
        ),
        Row::new(
            "4b",
            &format!("crash loop {secs:.0} s: longest gap between starts"),
            "s",
            Better::Neither,
        ),
        Row::new(
            "4c",
            &format!("crash loop {secs:.0} s: supervisor CPU"),
            "ms",
            Better::Lower,
        ),
        Row::new(
            "4d",
            "crash loop: gives up? (its own status)",
            "",
            Better::Neither,
        ),
        Row::new(
            "4e",
            "crash loop: fault removed → healthy start",
            "s",
            Better::Lower,
        ),
    ]
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// (timestamp, healthy?) of every start recorded by `crash.sh`.
fn starts(state: &Path) -> Vec<(f64, bool)> {
    fs::read_to_string(state.join("starts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let tag = it.next()?;
            let t: f64 = it.next()?.parse().ok()?;
            Some((t, tag == "ok"))
        })
        .collect()
}

pub fn run(kind: Kind, base: &Path, fx: &Fixture, opts: &Opts, res: &mut Results) -> Result<()> {
    let [made, gap, cpu, gives_up, recovery] = rows(opts.crash_secs);
    let state = base.join("crash-state");
    fs::create_dir_all(&state)?;
    fs::write(state.join("fault"), "")?;
    let mut d = driver::start(kind, base, opts)?;
    let app = fx.crash_app("crashy", &state);
    let outcome = (|| -> Result<()> {
        let mut window = Activity::start(&d.own_pids());
        d.deploy(std::slice::from_ref(&app))?;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs_f64(opts.crash_secs) {
            sleep(Duration::from_millis(250));
            window.sample();
            d.sweep();
        }
        let (cpu_s, _) = window.finish();
        let s = starts(&state);
        res.set(&made, kind, Cell::Num(s.len() as f64));
        let longest = s.windows(2).map(|w| w[1].0 - w[0].0).fold(0.0, f64::max);
        res.set(&gap, kind, Cell::Num(longest));
        res.set(&cpu, kind, Cell::Num(cpu_s * 1000.0));
        let view = d.crash_view(&app.name, "worker")?;
        let last_start_ago = s.last().map_or(f64::NAN, |l| now_unix() - l.0);

        let fixed_at = now_unix();
        fs::remove_file(state.join("fault"))?;
        let t1 = Instant::now();
        let cap = Duration::from_secs_f64(opts.recover_cap_secs);
        let mut healed = None;
        while t1.elapsed() < cap {
            if let Some((t, _)) = starts(&state)
                .into_iter()
                .find(|(t, ok)| *ok && *t >= fixed_at)
            {
                healed = Some(t - fixed_at);
                break;
            }
            sleep(Duration::from_millis(20));
        }
        let verdict = match (&view, healed) {
            (Some(v), _) => format!("{}: {}", if v.gave_up { "yes" } else { "no" }, v.state),
            (None, Some(_)) => "no (no status; kept retrying)".to_string(),
            (None, None) => {
                format!("no status; last start {last_start_ago:.0} s before the fault was removed")
            }
        };
        res.set(&gives_up, kind, Cell::Text(verdict));
        res.set(
            &recovery,
            kind,
            match healed {
                Some(t) => Cell::Num(t),
                None => Cell::Missing(format!("not within {:.0} s", cap.as_secs_f64())),
            },
        );
        let curve: Vec<String> = s
            .windows(2)
            .map(|w| format!("{:.1}", w[1].0 - w[0].0))
            .collect();
        res.note(format!(
            "{}: gaps between crash-loop starts (s): {}",
            kind.label(),
            curve.join(", ")
        ));
        Ok(())
    })();
    finish(d.as_mut(), res, "crash loop");
    outcome
}
