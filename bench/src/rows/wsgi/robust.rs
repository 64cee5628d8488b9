//! `piku-bench robust` (issue 14): a WSGI app that misbehaves, through nginx, under piku +
//! uWSGI (as piku configures it) and under ours (the default server, the app's front). Two
//! scenarios per target: a request that ends its worker (`/crash`: its answer, how often the
//! app received it, how soon the app serves again), and a paced load in which 1 % of the
//! requests wedge their thread for good (`/wedge`: how many of the others are answered 200
//! within 2 s, what the wedged ones get, how soon after the load the app answers). With
//! `--markdown` it writes only its own section of that file.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use piku_deploy::runtime::python::wsgi::Server;

use super::apps::{self, App};
use super::bodies;
use super::target::{Candidate, Extra, PIKU, Stack, Target};
use super::{loadavg, utc_now};

/// The heading of the section this command owns in `BENCHMARKS.md`.
pub const SECTION: &str = "## Robustness: a faulty WSGI app, piku + uWSGI vs ours";

/// Ours as shipped, with the response timeout an app with short requests would set, and
/// with that and piku's 2 processes (the same 8 threads as piku's vassal).
const OURS: [Candidate; 3] = [
    Candidate {
        label: "uWSGI per instance (our defaults, PIKU_RESPONSE_TIMEOUT=30)",
        server: Server::Uwsgi,
        env: &[BODY_LIMIT],
    },
    Candidate {
        label: "uWSGI per instance, PIKU_RESPONSE_TIMEOUT=3",
        server: Server::Uwsgi,
        env: &[("PIKU_RESPONSE_TIMEOUT", "3"), BODY_LIMIT],
    },
    Candidate {
        label: "uWSGI per instance, 2 processes, PIKU_RESPONSE_TIMEOUT=3",
        server: Server::Uwsgi,
        env: &[
            ("PIKU_RESPONSE_TIMEOUT", "3"),
            ("UWSGI_PROCESSES", "2"),
            BODY_LIMIT,
        ],
    },
];

/// Room for the big upload in the front as in nginx (it changes nothing else).
const BODY_LIMIT: (&str, &str) = ("NGINX_CLIENT_MAX_BODY_SIZE", bodies::MAX_BODY);

/// Requests a second in the wedge scenario, and one in how many wedges.
const RATE: u32 = 40;
const WEDGE_EVERY: u32 = 100;
/// How long a client waits for any answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// What one target showed.
#[derive(Default)]
struct Figures {
    crash_status: String,
    crash_deliveries: usize,
    crash_back_ms: Option<f64>,
    others: usize,
    others_ok: usize,
    wedged: Vec<String>,
    back_after_load_ms: Option<f64>,
}

pub fn run(
    supervisor_bin: &Path,
    venv: &Path,
    markdown: Option<&Path>,
    quick: bool,
    keep: bool,
) -> Result<()> {
    apps::check_venv(venv)?;
    // The servers run from the apps' directory: a relative venv would not be found there.
    let venv = &venv
        .canonicalize()
        .with_context(|| format!("the venv {}", venv.display()))?;
    let secs: u32 = if quick { 5 } else { 20 };
    let tmp = tempfile::Builder::new()
        .prefix("piku-bench-robust-")
        .tempdir()?;
    let base = tmp.path().to_path_buf();
    let load_start = loadavg();
    let date = utc_now();
    let src = apps::write_sources(&base.join("src"))?;
    let faulty: Vec<Target> = std::iter::once(PIKU)
        .chain(OURS.iter().copied().map(Target::Ours))
        .collect();
    // Bodies and slow clients meet neither timeouts nor processes: piku and ours as shipped
    // are enough. Each gets an app of its own, so that neither table's requests change what
    // the other measures (thousands of them bring piku's workers to `max-requests`).
    let streaming = [PIKU, Target::Ours(OURS[0])];
    let targets: Vec<Target> = faulty.iter().chain(&streaming).copied().collect();
    let mut stack = Stack::start(
        &base.join("stack"),
        supervisor_bin,
        venv,
        &src,
        App::Faulty,
        &targets,
        &Extra {
            client_max_body_size: Some(bodies::MAX_BODY),
            ..Extra::default()
        },
    )?;
    let upload = bodies::Upload::write(&base)?;
    let mut measured = Vec::new();
    let mut streamed = Vec::new();
    let runs: Vec<(Target, u16, String, Option<u32>)> = stack
        .entries
        .iter()
        .map(|e| {
            // The front is in our daemon; piku has none.
            let daemon = matches!(e.target, Target::Ours(_))
                .then(|| stack.root(e))
                .flatten()
                .and_then(|pid| u32::try_from(pid).ok());
            (e.target, e.port, e.app.clone(), daemon)
        })
        .collect();
    for (i, (target, port, app, daemon)) in runs.into_iter().enumerate() {
        if i >= faulty.len() {
            println!("== robust, bodies and slow clients: {}", target.label());
            streamed.push((target, bodies::measure(port, daemon, &upload)));
            continue;
        }
        println!("== robust: {}", target.label());
        let crash_log = src.join(format!("crashes-{app}.log"));
        let figures = measure(port, secs, &crash_log)
            .with_context(|| format!("measuring {}", target.label()));
        measured.push((target, figures));
        // Workers the scenarios respawned, for the cleanup by pid.
        stack.sweep();
    }
    let mut notes = stack.shutdown();
    if supervisor_bin
        .components()
        .any(|c| c.as_os_str() == "debug")
    {
        // Nothing here is a matter of speed, but say so.
        notes.push("Ours ran a debug build of piku-supervisor.".into());
    }
    if keep {
        println!("kept {}", tmp.keep().display());
    }
    let mut rows = Vec::new();
    for (target, figures) in measured {
        match figures {
            Ok(f) => rows.push((target, f)),
            Err(e) => notes.push(format!("{}: {e:#}", target.label())),
        }
    }
    let mut text = render(&date, secs, &load_start, &loadavg(), &rows, &notes, quick);
    text.push_str(&bodies::render(&streamed));
    println!("\n{text}");
    if let Some(md) = markdown {
        let old = fs::read_to_string(md).unwrap_or_default();
        fs::write(md, crate::report::put_section(&old, SECTION, &text))
            .with_context(|| format!("writing {}", md.display()))?;
        println!("wrote the robustness section of {}", md.display());
    }
    Ok(())
}

fn measure(port: u16, secs: u32, crash_log: &Path) -> Result<Figures> {
    let mut f = Figures {
        crash_status: answer_label(&get(port, "/crash", CLIENT_TIMEOUT)),
        ..Figures::default()
    };
    let crashed = Instant::now();
    f.crash_back_ms = back_within(port, Duration::from_secs(60)).map(|_| ms(crashed.elapsed()));
    // A replay, if any, is sent at once; give it a moment to land before counting.
    sleep(Duration::from_millis(500));
    f.crash_deliveries = fs::read_to_string(crash_log)
        .map(|t| t.lines().count())
        .unwrap_or(0);

    // Open loop: every request on its own thread at its time, so a hung one delays no other.
    let pace = Duration::from_secs(1) / RATE;
    let began = Instant::now();
    let mut wedges = Vec::new();
    let mut others = Vec::new();
    for i in 0..secs * RATE {
        if let Some(wait) = (began + pace * i).checked_duration_since(Instant::now()) {
            sleep(wait);
        }
        if i % WEDGE_EVERY == WEDGE_EVERY / 2 {
            wedges.push(std::thread::spawn(move || {
                let sent = Instant::now();
                (get(port, "/wedge", CLIENT_TIMEOUT), sent.elapsed())
            }));
        } else {
            others.push(std::thread::spawn(move || {
                let sent = Instant::now();
                // Past 2 s it counts as not answered anyway.
                let answer = get(port, "/", Duration::from_secs(3));
                answer.is_ok_and(|s| s == 200) && sent.elapsed() < Duration::from_secs(2)
            }));
        }
    }
    for other in others {
        f.others += 1;
        if other.join().unwrap_or(false) {
            f.others_ok += 1;
        }
    }
    let load_over = Instant::now();
    f.back_after_load_ms =
        back_within(port, Duration::from_secs(60)).map(|_| ms(load_over.elapsed()));
    for wedge in wedges {
        let (answer, took) = wedge
            .join()
            .map_err(|_| anyhow::anyhow!("a wedge thread panicked"))?;
        f.wedged.push(format!(
            "{} after {:.1} s",
            answer_label(&answer),
            took.as_secs_f64()
        ));
    }
    Ok(f)
}

/// Polls `GET /` every 10 ms until it answers 200: how long that took, `None` past `limit`.
fn back_within(port: u16, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if get(port, "/", Duration::from_secs(2)).is_ok_and(|s| s == 200) {
            return Some(t0.elapsed());
        }
        sleep(Duration::from_millis(10));
    }
    None
}

/// One `GET path` through nginx with `Connection: close`: the status, or what went wrong.
pub(super) fn get(port: u16, path: &str, timeout: Duration) -> Result<u16, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "no answer".to_string(),
        _ => e.to_string(),
    })?;
    String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "connection closed without an answer".to_string())
}

fn answer_label(answer: &Result<u16, String>) -> String {
    match answer {
        Ok(status) => status.to_string(),
        Err(e) => e.clone(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn render(
    date: &str,
    secs: u32,
    load_start: &str,
    load_end: &str,
    rows: &[(Target, Figures)],
    notes: &[String],
    quick: bool,
) -> String {
    let mut s = format!("{SECTION}\n\n");
    let _ = writeln!(
        s,
        "Measured {date} with `piku-bench robust`{}. The app (`faulty.py` of the bench, as \
         `examples/python-faulty`): `/wedge` never answers, `/crash` ends its worker after \
         noting the delivery. Each target serves it behind the same nginx as in the WSGI section \
         (piku + uWSGI: the emperor and piku's `wsgi` vassal, 2 processes × 4 threads, nginx \
         `uwsgi_pass`, nginx's 60 s timeouts; ours: the daemon, the app's front, the default \
         server as `piku-deploy` starts it on this machine). First one `GET /crash`; then \
         {RATE} requests a second for {secs} s, one in {WEDGE_EVERY} a `GET /wedge` sent \
         beside the others, each request on its own connection and thread (a wedged one \
         waits up to {} s; the others count as answered only with a 200 within 2 s). \
         \"Answering after the load\": from the load's last answer to the next 200.\n",
        if quick {
            " (--quick: not comparable)"
        } else {
            ""
        },
        CLIENT_TIMEOUT.as_secs()
    );
    s.push_str(
        "| target | others answered 200 within 2 s | wedged requests got | answering after the load | `/crash` got | `/crash` delivered | serving after `/crash` |\n\
         |---|---:|---|---:|---|---:|---:|\n",
    );
    let ms_cell =
        |v: Option<f64>| v.map_or_else(|| "not within 60 s".into(), |v| format!("{v:.0} ms"));
    for (target, f) in rows {
        let _ = writeln!(
            s,
            "| {} | {:.1} % ({} of {}) | {} | {} | {} | {}× | {} |",
            target.label(),
            100.0 * f.others_ok as f64 / f.others.max(1) as f64,
            f.others_ok,
            f.others,
            summarize(&f.wedged),
            ms_cell(f.back_after_load_ms),
            f.crash_status,
            f.crash_deliveries,
            ms_cell(f.crash_back_ms),
        );
    }
    s.push_str("\n### Notes\n\n");
    s.push_str(
        "- Reading: a wedged request holds its thread for good (neither setup kills it: piku \
         sets no uWSGI harakiri). Once every thread of the app is held, each request that \
         arrives fails under piku + uWSGI, for good. Under ours the front finds the instance \
         stalled (8 requests on it, none finished for 500 ms: the glue's `stall_after`), \
         sends it nothing more and the supervisor replaces it at once: what arrives meanwhile \
         waits in the front and is served by the replacement, what was sent to the stuck \
         instance before is lost with it. With 8 threads that is after the 8th wedge (the \
         load's last 49 requests); our default, 1 process of 4 threads on this 2-core \
         machine, gets there after the 4th, 10 s into the load, and its replacement after \
         the 8th.\n",
    );
    let _ = writeln!(
        s,
        "- Machine load (`/proc/loadavg`): {load_start} at start, {load_end} at end."
    );
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

/// `504 after 3.0 s ×8`: identical answers grouped, in order of first appearance.
fn summarize(answers: &[String]) -> String {
    let mut groups: Vec<(String, usize)> = Vec::new();
    for a in answers {
        // Group by answer and whole second.
        let key = match a.rsplit_once(" after ") {
            Some((what, secs)) => {
                let secs: f64 = secs.trim_end_matches(" s").parse().unwrap_or(0.0);
                format!("{what} after ~{secs:.0} s")
            }
            None => a.clone(),
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => groups.push((key, 1)),
        }
    }
    if groups.is_empty() {
        return "-".into();
    }
    groups
        .into_iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_reads_as_a_table_with_one_line_notes() {
        let rows = vec![(
            PIKU,
            Figures {
                crash_status: "502".into(),
                crash_deliveries: 1,
                crash_back_ms: Some(2.0),
                others: 792,
                others_ok: 743,
                wedged: vec!["504 after 60.1 s".into(), "504 after 59.9 s".into()],
                back_after_load_ms: None,
            },
        )];
        let text = render("now", 20, "1", "2", &rows, &[], false);
        assert!(text.starts_with(SECTION), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("| piku + uWSGI"))
            .unwrap_or_default();
        assert_eq!(
            row,
            "| piku + uWSGI emperor (piku's defaults) | 93.8 % (743 of 792) | 504 after ~60 s ×2 \
             | not within 60 s | 502 | 1× | 2 ms |"
        );
        let reading = text
            .lines()
            .find(|l| l.starts_with("- Reading: "))
            .unwrap_or_default();
        assert!(reading.ends_with("after the 8th."), "{reading}");
        println!("{reading}");
    }
}
