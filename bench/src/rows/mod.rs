//! The measurements, one module per row group of issue 5. Each takes a started driver (or
//! starts its own) and writes its figures into [`Results`].

pub mod crashloop;
pub mod formation;
pub mod front;
pub mod logs;
pub mod many;
pub mod scale;
pub mod stop;
pub mod wsgi;

use std::time::Duration;

use crate::driver::Driver;
use crate::report::{Cell, Results};

/// Median and 99th percentile (nearest rank) of some durations, in milliseconds.
pub fn median_p99(samples: &[Duration]) -> Option<(f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let rank = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    Some((rank(0.5), rank(0.99)))
}

/// Shuts a driver down and records a note if its own stop left processes behind.
pub fn finish(d: &mut dyn Driver, res: &mut Results, what: &str) {
    match d.shutdown() {
        Ok(s) if s.leftovers > 0 => res.note(format!(
            "{}: after its own shutdown ({what}), {} process(es) were still alive and were killed by pid.",
            d.kind().label(),
            s.leftovers
        )),
        Ok(_) => {}
        Err(e) => res.note(format!("{}: shutdown failed ({what}): {e:#}", d.kind().label())),
    }
}

pub fn secs(d: Duration) -> Cell {
    Cell::Num(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let (m, p99) = median_p99(&s).unwrap();
        assert_eq!(m, 50.0);
        assert_eq!(p99, 99.0);
        assert_eq!(median_p99(&[Duration::from_millis(7)]), Some((7.0, 7.0)));
        assert_eq!(median_p99(&[]), None);
    }
}
