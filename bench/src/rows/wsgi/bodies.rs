//! `piku-bench robust`'s second table (issue 14): big bodies and slow clients through nginx. A
//! 200 MiB upload and a 1 GiB download, each checked whole (the upload by the app's SHA-256 of
//! what it read, the download by its length), timed, with the front's peak memory growth while
//! it streams them (ours: the daemon's `VmHWM`, reset just before); then 500 slowloris
//! connections on the same nginx port and other clients' p99 before and during them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use piku_e2e::{Memory, Slowloris, reset_peak};

use super::robust::get;
use super::target::Target;

/// The upload's size and the download's, in MiB.
const UPLOAD_MIB: u64 = 200;
const DOWNLOAD_MIB: u64 = 1024;
/// nginx's `client_max_body_size` for the robust stack (and ours' `NGINX_CLIENT_MAX_BODY_SIZE`):
/// room for the upload.
pub const MAX_BODY: &str = "256m";
/// Slow connections, and how long the others are measured before and during them.
const LORIS: usize = 500;
const WINDOW: Duration = Duration::from_secs(3);

/// The file the upload sends, and its SHA-256.
pub struct Upload {
    path: PathBuf,
    sha256: String,
}

impl Upload {
    /// Writes the upload's file in `dir`.
    pub fn write(dir: &Path) -> Result<Upload> {
        let path = dir.join("upload.bin");
        let content: Vec<u8> = (0..UPLOAD_MIB << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).with_context(|| format!("writing {}", path.display()))?;
        let sum = Command::new("sha256sum")
            .arg(&path)
            .output()
            .context("sha256sum")?;
        let sha256 = String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        if sha256.len() != 64 {
            bail!("sha256sum said {:?}", String::from_utf8_lossy(&sum.stderr));
        }
        Ok(Upload { path, sha256 })
    }
}

/// One transfer: how long, and how much the front grew at its peak (ours only).
pub struct Transfer {
    secs: f64,
    mib: u64,
    front_growth_kib: Option<u64>,
}

/// Other clients' latencies before and during the slowloris connections.
pub struct Loris {
    before_p99_ms: f64,
    during_p99_ms: f64,
    requests: usize,
    /// Requests not answered 200 (before or during), with the first one's answer.
    failed: Vec<String>,
    /// Slow connections still held open when the attack stopped.
    held: usize,
    /// Slow connections refused, or answered (a head never finished deserves no answer).
    refused: usize,
}

pub struct Figures {
    upload: Result<Transfer, String>,
    download: Result<Transfer, String>,
    loris: Loris,
}

/// Measures the three scenarios on nginx's `port`; `daemon`: our daemon's pid (the front is in
/// it), `None` for piku.
pub fn measure(port: u16, daemon: Option<u32>, upload: &Upload) -> Figures {
    let data = format!("@{}", upload.path.display());
    let expected = format!("{} {}", UPLOAD_MIB << 20, upload.sha256);
    let uploaded = transfer(daemon, UPLOAD_MIB, || {
        let answer = curl(port, &["--data-binary", &data], "/upload")?;
        if answer.trim() != expected {
            bail!("the app read {:?}, not {expected:?}", answer.trim());
        }
        Ok(())
    });
    let expected = format!("200 {}", DOWNLOAD_MIB << 20);
    let path = format!("/big?mb={DOWNLOAD_MIB}");
    let downloaded = transfer(daemon, DOWNLOAD_MIB, || {
        let got = curl(
            port,
            &["-o", "/dev/null", "-w", "%{http_code} %{size_download}"],
            &path,
        )?;
        if got.trim() != expected {
            bail!("got {:?}, not {expected:?}", got.trim());
        }
        Ok(())
    });
    Figures {
        upload: uploaded.map_err(cell),
        download: downloaded.map_err(cell),
        loris: loris(port),
    }
}

/// An error as a table cell: one line, at most 80 characters.
fn cell(e: anyhow::Error) -> String {
    let text = format!("{e:#}").replace(['\r', '\n', '|'], " ");
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

fn transfer(daemon: Option<u32>, mib: u64, run: impl FnOnce() -> Result<()>) -> Result<Transfer> {
    let before = daemon.filter(|pid| reset_peak(*pid)).and_then(Memory::of);
    let began = Instant::now();
    run()?;
    let secs = began.elapsed().as_secs_f64();
    let front_growth_kib = before.and_then(|before| {
        let after = Memory::of(daemon?)?;
        Some(after.hwm_kib.saturating_sub(before.rss_kib))
    });
    Ok(Transfer {
        secs,
        mib,
        front_growth_kib,
    })
}

/// curl through nginx; its stdout.
fn curl(port: u16, args: &[&str], path: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "120"])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!("curl: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn loris(port: u16) -> Loris {
    let mut failed = Vec::new();
    let before = latencies(port, WINDOW, "before", &mut failed);
    let attack = Slowloris::start(port, LORIS, Duration::from_secs(1), true);
    let during = latencies(port, WINDOW, "during", &mut failed);
    let report = attack.stop();
    Loris {
        before_p99_ms: p99_ms(&before),
        during_p99_ms: p99_ms(&during),
        requests: during.len(),
        failed,
        held: report.open_at_stop.len(),
        refused: report.failed.len() + report.answered.len(),
    }
}

/// `GET /` one after another for `window`: each one's latency (a request not answered 200
/// counts as its time until it gave up, and is noted in `failed`, as `when`).
fn latencies(port: u16, window: Duration, when: &str, failed: &mut Vec<String>) -> Vec<Duration> {
    let began = Instant::now();
    let mut took = Vec::new();
    while began.elapsed() < window {
        let sent = Instant::now();
        let answer = get(port, "/", Duration::from_secs(10));
        took.push(sent.elapsed());
        if answer != Ok(200) {
            failed.push(format!(
                "{when}: {answer:?} after {:.1} s",
                sent.elapsed().as_secs_f64()
            ));
        }
    }
    took
}

/// The 99th percentile (nearest rank), in ms.
fn p99_ms(samples: &[Duration]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = (sorted.len() * 99).div_ceil(100);
    sorted
        .get(rank.saturating_sub(1))
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The table and its reading, for the section `robust` writes.
pub fn render(rows: &[(Target, Figures)]) -> String {
    let mut s = format!(
        "\n### Big bodies and slow clients\n\n\
         The same stacks, nginx's `client_max_body_size {MAX_BODY}` for both (piku has no \
         setting for it; ours: `NGINX_CLIENT_MAX_BODY_SIZE={MAX_BODY}`, which the front \
         enforces too). A {UPLOAD_MIB} MiB upload (`curl --data-binary`; the app answers the \
         length and SHA-256 of what it read) and a {DOWNLOAD_MIB} MiB download (`curl -o \
         /dev/null`; its length), one at a time; the front's growth is the daemon's peak RSS \
         (`VmHWM`, reset just before) over its RSS before. Then `GET /` one after another for \
         {} s, and again for {} s while {LORIS} slowloris connections hang on the same nginx \
         port (each sends a request head a byte a second, never finishes it, and is reopened \
         if cut).\n\n\
         | target | {UPLOAD_MIB} MiB upload | {DOWNLOAD_MIB} MiB download | front's growth \
         (upload / download) | others' p99 before → during {LORIS} slowloris | slow \
         connections held at the end |\n|---|---:|---:|---:|---:|---:|\n",
        WINDOW.as_secs(),
        WINDOW.as_secs()
    );
    for (target, f) in rows {
        let growth = |t: &Result<Transfer, String>| match t {
            Ok(Transfer {
                front_growth_kib: Some(kib),
                ..
            }) => format!("{:.1} MiB", *kib as f64 / 1024.0),
            Ok(_) => "no front".to_owned(),
            Err(_) => "-".to_owned(),
        };
        let l = &f.loris;
        let loris = format!(
            "{:.1} ms → {:.1} ms ({} requests{})",
            l.before_p99_ms,
            l.during_p99_ms,
            l.requests,
            match l.failed.first() {
                Some(first) => format!(", {} not answered 200; first {first}", l.failed.len()),
                None => String::new(),
            }
        );
        let held = if l.refused > 0 {
            format!("{} ({} refused or answered)", l.held, l.refused)
        } else {
            l.held.to_string()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} / {} | {loris} | {held} |",
            target.label(),
            transfer_cell(&f.upload),
            transfer_cell(&f.download),
            growth(&f.upload),
            growth(&f.download),
        );
    }
    let _ = writeln!(
        s,
        "\n- Reading: the slow connections meet nginx, which holds them itself (its \
         `client_header_timeout`, 60 s) in both stacks; neither app sees them. On the front's \
         own public TCP port (an app without a server name) the front cuts each at \
         `PIKU_HEADER_TIMEOUT`: `tests/robustness.rs` measures that with {LORIS} of them. \
         nginx buffers an upload to a temp file before passing it on, in both stacks."
    );
    s
}

fn transfer_cell(t: &Result<Transfer, String>) -> String {
    match t {
        Ok(t) => format!(
            "intact, {:.1} s ({:.0} MiB/s)",
            t.secs,
            t.mib as f64 / t.secs.max(1e-6)
        ),
        Err(e) => e.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::wsgi::target::PIKU;

    #[test]
    fn a_row_says_whole_time_rate_growth_and_p99s() {
        let rows = vec![(
            PIKU,
            Figures {
                upload: Ok(Transfer {
                    secs: 2.0,
                    mib: 200,
                    front_growth_kib: None,
                }),
                download: Err("curl: (18) transfer closed".into()),
                loris: Loris {
                    before_p99_ms: 2.04,
                    during_p99_ms: 3.0,
                    requests: 900,
                    failed: Vec::new(),
                    held: 500,
                    refused: 0,
                },
            },
        )];
        let text = render(&rows);
        let row = text
            .lines()
            .find(|l| l.starts_with("| piku + uWSGI"))
            .unwrap_or_default();
        assert_eq!(
            row,
            "| piku + uWSGI emperor (piku's defaults) | intact, 2.0 s (100 MiB/s) | curl: (18) \
             transfer closed | no front / - | 2.0 ms → 3.0 ms (900 requests) | 500 |"
        );
        assert_eq!(p99_ms(&[]), 0.0);
        let long = cell(anyhow::anyhow!("got \"<html>\\r\n{}\"", "x".repeat(100)));
        assert_eq!(long.chars().count(), 81, "{long}");
        assert!(!long.contains('\n'));
        let samples: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(p99_ms(&samples), 198.0);
    }
}
