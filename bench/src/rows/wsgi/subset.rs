//! Running part of `piku-bench wsgi` while tuning (the full run takes about 15 minutes):
//! `PIKU_BENCH_WSGI_TARGETS` keeps the targets whose label contains one of its comma-separated
//! words (e.g. `piku's defaults,uWSGI per instance (our,connection per request`; the last one,
//! uWSGI as it ran before the front kept connections to it alive, runs only when asked for), `PIKU_BENCH_WSGI_APPS` the apps named (`plain`, `flask`),
//! `PIKU_BENCH_WSGI_THROUGHPUT_ONLY=1` skips memory, start-up and the formation, and
//! `PIKU_BENCH_WSGI_ROUNDS` sets the rounds of `wrk` per target. A partial run's report has
//! only what was measured: do not write it to BENCHMARKS.md.

use super::apps::App;
use super::target::{Target, UWSGI_CONNECTION_PER_REQUEST};

fn words(var: &str) -> Option<Vec<String>> {
    let value = std::env::var(var).ok()?;
    let words: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    (!words.is_empty()).then_some(words)
}

pub fn targets() -> Vec<Target> {
    let mut all = Target::all();
    // Not in the full run: the default before keep-alive, for comparison while tuning.
    all.push(Target::Ours(UWSGI_CONNECTION_PER_REQUEST));
    match words("PIKU_BENCH_WSGI_TARGETS") {
        None => Target::all(),
        Some(words) => all
            .into_iter()
            .filter(|t| words.iter().any(|w| t.label().contains(w.as_str())))
            .collect(),
    }
}

pub fn apps() -> Vec<App> {
    match words("PIKU_BENCH_WSGI_APPS") {
        None => App::ALL.to_vec(),
        Some(words) => App::ALL
            .into_iter()
            .filter(|a| words.iter().any(|w| w == a.name()))
            .collect(),
    }
}

pub fn throughput_only() -> bool {
    std::env::var_os("PIKU_BENCH_WSGI_THROUGHPUT_ONLY").is_some_and(|v| v == "1")
}

/// `PIKU_BENCH_WSGI_ROUNDS`, when it is a number of rounds.
pub fn rounds() -> Option<usize> {
    std::env::var("PIKU_BENCH_WSGI_ROUNDS")
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
}
