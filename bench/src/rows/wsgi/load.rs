//! Load for `piku-bench wsgi`: one `wrk` run through nginx, and the median and spread of
//! several.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::rows::front::{WrkRun, parse_wrk};

/// wrk's threads and connections: the load the issue and the front row use.
pub const WRK_ARGS: [&str; 2] = ["-t2", "-c16"];

/// Runs `wrk` against `127.0.0.1:port` for `secs`, its output kept in `out`; killed by pid if
/// it overruns by 30 s.
pub fn wrk(port: u16, secs: u32, out: &Path) -> Result<WrkRun> {
    let file = File::create(out)?;
    let url = format!("http://127.0.0.1:{port}/");
    let mut child = Command::new("wrk")
        .args(WRK_ARGS)
        .args([
            &format!("-d{secs}s"),
            "--latency",
            "--timeout",
            "5s",
            url.as_str(),
        ])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("starting wrk (Debian package `wrk`)")?;
    let deadline = Duration::from_secs(u64::from(secs) + 30);
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let text = fs::read_to_string(out)?;
            if !status.success() {
                bail!("wrk {url} failed ({status}): {text}");
            }
            return parse_wrk(&text);
        }
        if t0.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("wrk {url} did not finish within {} s", deadline.as_secs());
        }
        sleep(Duration::from_millis(50));
    }
}

/// Median, lowest and highest of some figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[4.0, 2.0]).unwrap().median, 3.0);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN]), None);
    }
}
