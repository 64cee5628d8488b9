//! The log path under a flood, end to end (issue 11): one app floods its log flat out for
//! 10 s while another logs a line every 100 ms and a client asks for `Status` in a loop.
//! The flood's child is held back instead of losing lines: its files hold every line, in
//! order, across rotations, the last one included. Meanwhile the quiet app's lines reach
//! its file promptly and the control socket answers promptly; the figures are printed
//! (the assertions on them are generous, for a loaded 2-core machine; the targets are
//! benchmark row 7's business).

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use piku_proto::{AppSpec, InstanceState, Request, Response, Role};

const FLOOD_SECS: u64 = 10;
/// Every file of the flood is kept (800 MiB of room; 10 s of flood on this machine kind take
/// ≈ 150 MB), so every line can be checked.
const MAX_BYTES: u64 = 4 * 1024 * 1024;
const BACKUPS: u32 = 200;

fn keeping_every_file(mut spec: AppSpec) -> AppSpec {
    spec.settings.log_max_bytes = MAX_BYTES;
    spec.settings.log_backups = BACKUPS;
    spec
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

/// Follows `path` (polling every millisecond) until `stop`; for every `tick <n> <t>` line
/// that arrives meanwhile, how long after `t` (when the app wrote it) it was in the file, in
/// seconds. Lines already there at the start are not counted: when they arrived is unknown.
fn watch_ticks(path: PathBuf, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut delays = Vec::new();
    let mut offset = fs::metadata(&path).map_or(0, |meta| meta.len());
    let mut partial = String::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut file) = fs::File::open(&path) {
            let mut fresh = String::new();
            if file.seek(SeekFrom::Start(offset)).is_ok() && file.read_to_string(&mut fresh).is_ok()
            {
                let arrived = now_secs();
                offset += fresh.len() as u64;
                partial.push_str(&fresh);
                while let Some(end) = partial.find('\n') {
                    let line: String = partial.drain(..=end).collect();
                    let mut words = line.split_whitespace();
                    if words.next() == Some("tick")
                        && let Some(written) = words.nth(1).and_then(|t| t.parse::<f64>().ok())
                    {
                        delays.push(arrived - written);
                    }
                }
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
    delays
}

/// Calls `Status` (every app) on one connection until `stop`; each call's latency.
fn status_loop(socket: PathBuf, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut client = piku_proto::Client::connect(&socket).expect("connect");
    let mut latencies = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let answer = client.call(&Request::Status { app: None }, |_| {});
        latencies.push(asked.elapsed());
        assert!(matches!(answer, Ok(Response::Status { .. })), "{answer:?}");
        thread::sleep(Duration::from_millis(10));
    }
    latencies
}

/// (median, p99, max) of `values`, sorted in place.
fn spread(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(1.0))
}

/// Checks that the flood's files, oldest first, hold `line 0` .. `line <written - 1>` once
/// each, in order; returns how many files there were.
fn assert_every_line(current: &Path, written: u64) -> usize {
    let mut files: Vec<PathBuf> = (1..=BACKUPS)
        .rev()
        .map(|n| PathBuf::from(format!("{}.{n}", current.display())))
        .filter(|p| p.exists())
        .collect();
    files.push(current.to_path_buf());
    let mut next = 0u64;
    for file in &files {
        let text = fs::read_to_string(file).expect("read a log file of the flood");
        for line in text.lines() {
            let number = line
                .strip_prefix("line ")
                .and_then(|n| n.parse::<u64>().ok());
            let Some(number) = number else {
                // The supervisor's own notes ("[piku] started pid …") are not the app's.
                assert!(line.starts_with("[piku] "), "odd line {line:?} in {file:?}");
                continue;
            };
            assert_eq!(
                number,
                next,
                "in {file:?}: line {number} where line {next} was due ({} lost or out of order)",
                number.abs_diff(next)
            );
            next += 1;
        }
    }
    assert_eq!(
        next,
        written,
        "the last {} lines are missing",
        written - next
    );
    files.len()
}

#[test]
fn a_flood_loses_no_line_and_holds_up_neither_other_apps_nor_the_socket() {
    let root = TestRoot::new();
    let daemon = root.start();
    let scratch = root.scratch();

    let ticker = format!("{} -u {}", python(), fixture("ticker.py"));
    let quiet = spec(
        "quiet",
        &scratch,
        vec![process("worker", ticker, Role::Worker, 1)],
    );
    daemon.apply(&keeping_every_file(quiet));
    daemon.wait_state("quiet", "worker.1", InstanceState::Running);
    root.wait_log("quiet", "worker.1", "tick 1 ");

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = thread::spawn({
        let (path, stop) = (root.log_file("quiet", "worker.1"), stop.clone());
        move || watch_ticks(path, stop)
    });
    let asker = thread::spawn({
        let (socket, stop) = (root.socket(), stop.clone());
        move || status_loop(socket, stop)
    });

    let count_file = scratch.join("flood.count");
    let flood = format!(
        "{} -u {} {FLOOD_SECS} {}",
        python(),
        fixture("flood.py"),
        count_file.display()
    );
    let started = Instant::now();
    daemon.apply(&keeping_every_file(spec(
        "flood",
        &scratch,
        vec![process("worker", flood, Role::Worker, 1)],
    )));
    let written: u64 = wait_for(
        "the flood to end",
        Duration::from_secs(FLOOD_SECS + 60),
        || fs::read_to_string(&count_file).ok()?.trim().parse().ok(),
    );
    let flood_took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut delays = watcher.join().expect("the watcher");
    let mut status: Vec<f64> = asker
        .join()
        .expect("the status loop")
        .iter()
        .map(|d| d.as_secs_f64())
        .collect();

    // The flood's child waited for the supervisor instead of losing lines.
    let current = root.log_file("flood", "worker.1");
    let last = format!("line {}\n", written - 1);
    wait_for(
        "the flood's last line in its log",
        Duration::from_secs(30),
        || {
            fs::read_to_string(&current)
                .ok()
                .filter(|text| text.contains(&last))
        },
    );
    let files = assert_every_line(&current, written);
    let flood_status = daemon.instance("flood", "worker.1");
    assert_eq!(flood_status.log_lines_dropped, 0);

    let ticks = delays.len();
    let (tick_median, tick_p99, tick_max) = spread(&mut delays);
    let calls = status.len();
    let (status_median, status_p99, status_max) = spread(&mut status);
    eprintln!(
        "flood: {written} lines in {:.1} s ({:.0} lines/s while the supervisor kept up), \
         all of them in {files} files, in order",
        flood_took.as_secs_f64(),
        written as f64 / FLOOD_SECS as f64
    );
    eprintln!(
        "quiet app: {ticks} lines, written → in the file: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        tick_median * 1e3,
        tick_p99 * 1e3,
        tick_max * 1e3
    );
    eprintln!(
        "status: {calls} calls, median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        status_median * 1e3,
        status_p99 * 1e3,
        status_max * 1e3
    );
    assert!(ticks >= 50, "the quiet app logged only {ticks} lines");
    // Generous bounds (the targets are 100 ms and a 50 ms p99): on a loaded 2-core machine
    // the flood, this test's own pollers and whatever else runs share the CPUs.
    assert!(
        tick_p99 < 0.5,
        "the quiet app's lines waited for the flood: p99 {tick_p99:.3} s"
    );
    assert!(
        status_p99 < 0.5,
        "the control socket waited for the flood: status p99 {status_p99:.3} s"
    );
}
