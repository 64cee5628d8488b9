//! `piku-bench`: drives the same fixture formation under our `piku-supervisor`, the uWSGI
//! emperor (configured as piku configures it) and supervisord, measures each the same way, and
//! prints one table of figures and ratios (issue 5). `scripts/bench` is the documented way to
//! run it; it also regenerates `BENCHMARKS.md`.

mod driver;
mod fixture;
mod http;
mod procfs;
mod report;
mod rows;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use driver::Kind;
use fixture::Fixture;
use report::{Results, Row};

/// What the markdown says about method and how to run, above the figures.
const METHOD: &str = include_str!("method.md");
/// What the markdown says below the figures: why a row comes out as it does.
const READING: &str = include_str!("reading.md");

#[derive(Parser)]
#[command(
    version,
    about = "Benchmarks piku-supervisor against the uWSGI emperor and supervisord"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Common {
    /// The daemon to measure (default: `piku-supervisor` beside this binary).
    #[arg(long, global = true, env = "PIKU_SUPERVISOR_BIN")]
    supervisor_bin: Option<PathBuf>,
    /// Only these supervisors (repeatable); default all three.
    #[arg(long, global = true, value_enum)]
    only: Vec<Kind>,
    /// Results file: figures are merged into it, so single rows can be re-run.
    #[arg(long, global = true, default_value = "bench-results.json")]
    results: PathBuf,
    /// Also write the Markdown report here (e.g. BENCHMARKS.md).
    #[arg(long, global = true)]
    markdown: Option<PathBuf>,
    /// Short windows and small counts, to try the suite out (figures are not comparable).
    #[arg(long, global = true)]
    quick: bool,
    /// Keep the temp dirs (configs, logs) instead of deleting them.
    #[arg(long, global = true)]
    keep: bool,
    /// Apps for `idle` and `respawn` (default: the middle size, 10; `all` runs rows 2 and 3
    /// at the largest, 50).
    #[arg(long, global = true)]
    apps: Option<usize>,
    /// `wsgi`: a venv with granian, gunicorn, uwsgi, waitress and flask (default:
    /// target/bench-venv, which scripts/bench creates).
    #[arg(long, global = true, env = "PIKU_BENCH_VENV")]
    venv: Option<PathBuf>,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    /// Row 1: idle memory at 1, 10, 50 apps.
    Memory,
    /// Row 2: idle CPU and wake-ups (10 apps, or --apps).
    Idle,
    /// Row 3: respawn latency after kill -9 (10 apps, or --apps).
    Respawn,
    /// Row 4: a crash-looping worker.
    Crashloop,
    /// Row 5: scale web 1 → 4 → 1.
    Scale,
    /// Row 6: stop a tree whose grandchild ignores SIGTERM.
    Stop,
    /// Row 7: log throughput and rotation correctness.
    Logs,
    /// Row 8: 500 instances under our daemon.
    Many,
    /// Every row, then the table (and the Markdown report with --markdown).
    All,
    /// Print the table (and write the Markdown) from the results file, measuring nothing.
    Report,
    /// Issues 4 and 13: nginx → app vs nginx → glue → app vs nginx → nginx → app (req/s,
    /// p50/p99, CPU per request of the hop, the glue's RSS); with --markdown, writes only its
    /// own section of that file. `scripts/bench` runs it after `all`.
    Front,
    /// Issue 13: Python apps through nginx under piku + uWSGI and under ours with each WSGI
    /// server; with --markdown, writes only its own section of that file.
    Wsgi,
    /// Issue 14: a faulty WSGI app (a request that ends its worker, 1 % of requests wedging)
    /// under piku + uWSGI and under ours; with --markdown, writes only its own section.
    Robust,
    /// The app `front` measures (a keep-alive HTTP server on $PORT); started by the supervisor.
    #[command(hide = true)]
    FrontApp,
}

/// Sizes and windows of one run.
pub struct Opts {
    pub supervisor_bin: PathBuf,
    pub sizes: Vec<usize>,
    pub idle_secs: f64,
    pub kills: usize,
    pub web_kills: usize,
    pub crash_secs: f64,
    pub recover_cap_secs: f64,
    pub spew_secs: f64,
    pub many: u32,
    /// `--apps`: the size `idle` and `respawn` run at.
    pub apps: Option<usize>,
}

impl Opts {
    fn new(c: &Common) -> Result<Opts> {
        let supervisor_bin = match &c.supervisor_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("locating piku-bench")?
                .with_file_name("piku-supervisor"),
        };
        Ok(if c.quick {
            Opts {
                supervisor_bin,
                sizes: vec![1, 3],
                idle_secs: 5.0,
                kills: 6,
                web_kills: 3,
                crash_secs: 10.0,
                recover_cap_secs: 20.0,
                spew_secs: 2.0,
                many: 50,
                apps: c.apps,
            }
        } else {
            Opts {
                supervisor_bin,
                sizes: vec![1, 10, 50],
                idle_secs: 60.0,
                kills: 50,
                web_kills: 10,
                crash_secs: 40.0,
                recover_cap_secs: 45.0,
                spew_secs: 10.0,
                many: 500,
                apps: c.apps,
            }
        })
    }
}

/// The heading of BENCHMARKS.md's in-place upgrade section (issue 15).
const UPGRADE_SECTION: &str = "## In-place upgrade of the supervisor";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let opts = Opts::new(&cli.common)?;
    match cli.cmd {
        Cmd::FrontApp => return rows::front::serve_app(),
        Cmd::Front => {
            return rows::front::run(
                &opts.supervisor_bin,
                cli.common.markdown.as_deref(),
                cli.common.quick,
                cli.common.keep,
            );
        }
        Cmd::Robust => {
            let venv = wsgi_venv(cli.common.venv.as_deref())?;
            return rows::wsgi::robust::run(
                &opts.supervisor_bin,
                &venv,
                cli.common.markdown.as_deref(),
                cli.common.quick,
                cli.common.keep,
            );
        }
        Cmd::Wsgi => {
            let venv = wsgi_venv(cli.common.venv.as_deref())?;
            return rows::wsgi::run(
                &opts.supervisor_bin,
                &venv,
                cli.common.markdown.as_deref(),
                cli.common.quick,
                cli.common.keep,
            );
        }
        _ => {}
    }
    let kinds: Vec<Kind> = if cli.common.only.is_empty() {
        Kind::ALL.to_vec()
    } else {
        cli.common.only.clone()
    };
    let mut res = Results::load(&cli.common.results)?;
    if cli.cmd != Cmd::Report {
        let tmp = tempfile::Builder::new().prefix("piku-bench-").tempdir()?;
        let base = tmp.path().to_path_buf();
        let fx = Fixture::write(&base.join("fixture"))?;
        if cli.cmd == Cmd::All {
            res = Results::default();
        }
        if cli.cmd == Cmd::All || res.machine.is_empty() {
            res.machine = report::describe_machine();
        } else {
            // A single row re-run keeps the run's machine description and says when it ran.
            let now = report::describe_machine();
            res.note(format!(
                "Re-run of `{}` at {} (load {}).",
                cmd_name(cli.cmd),
                now["date"],
                now["loadavg at start"]
            ));
        }
        if cli.cmd == Cmd::All && !cli.common.quick {
            res.note("Full run: 1/10/50 apps, 60 s idle window, 50 worker kills + 10 web kills, 40 s crash loop, 10 s log flood, 500 instances.".into());
        } else if cli.common.quick {
            res.note(
                "QUICK run (--quick): small sizes and short windows; figures are indicative only."
                    .into(),
            );
        }
        run(
            cli.cmd,
            &kinds,
            &base,
            &fx,
            &opts,
            &mut res,
            &cli.common.results,
        )?;
        if cli.cmd == Cmd::All {
            let end = report::describe_machine();
            res.machine
                .insert("loadavg at end".into(), end["loadavg at start"].clone());
        }
        busy_note(&mut res);
        res.save(&cli.common.results)?;
        if cli.common.keep {
            println!("kept {}", tmp.keep().display());
        }
    }
    println!("\n{}", res.table());
    if let Some(md) = &cli.common.markdown {
        let mut text = report::markdown(&res, METHOD, READING);
        // The front section comes from `piku-bench front`, not from the results file: keep it.
        let old = std::fs::read_to_string(md).unwrap_or_default();
        if let Some(front) = rows::front::section_of(&old) {
            text = rows::front::replace_section(&text, front);
        }
        if let Some(wsgi) = report::get_section(&old, rows::wsgi::SECTION) {
            text = report::put_section(&text, rows::wsgi::SECTION, wsgi);
        }
        if let Some(robust) = report::get_section(&old, rows::wsgi::robust::SECTION) {
            text = report::put_section(&text, rows::wsgi::robust::SECTION, robust);
        }
        // Written by hand from supervisor/tests/upgrade.rs (no piku-bench row yet): keep it.
        if let Some(upgrade) = report::get_section(&old, UPGRADE_SECTION) {
            text = report::put_section(&text, UPGRADE_SECTION, upgrade);
        }
        std::fs::write(md, text).with_context(|| format!("writing {}", md.display()))?;
        println!("wrote {}", md.display());
    }
    Ok(())
}

fn run(
    cmd: Cmd,
    kinds: &[Kind],
    base: &Path,
    fx: &Fixture,
    opts: &Opts,
    res: &mut Results,
    save: &Path,
) -> Result<()> {
    use rows::formation::Plan;
    let all = cmd == Cmd::All;
    let largest = opts.sizes.iter().copied().max().unwrap_or(1);
    let mid = opts.sizes.get(1).copied().unwrap_or(largest);
    let apps = opts.apps;
    let plan = match cmd {
        Cmd::Memory => Some(Plan {
            sizes: opts.sizes.clone(),
            idle: false,
            respawn: false,
        }),
        Cmd::Idle => Some(Plan {
            sizes: vec![apps.unwrap_or(mid)],
            idle: true,
            respawn: false,
        }),
        Cmd::Respawn => Some(Plan {
            sizes: vec![apps.unwrap_or(mid)],
            idle: false,
            respawn: true,
        }),
        Cmd::All => Some(Plan {
            sizes: opts.sizes.clone(),
            idle: true,
            respawn: true,
        }),
        _ => None,
    };
    if let Some(plan) = plan {
        let top = plan.sizes.iter().copied().max().unwrap_or(1);
        let mut group: Vec<Row> = Vec::new();
        if plan.idle {
            group.extend(rows::formation::idle_rows(top));
        }
        if plan.respawn {
            group.extend(rows::formation::respawn_rows());
        }
        for &k in kinds {
            println!("== rows 1–3: {}", k.label());
            if let Err(e) =
                rows::formation::run(k, &base.join(format!("{k:?}")), fx, opts, &plan, res)
            {
                report_failure(res, &group, k, "rows 1–3", &e);
            }
            res.save(save)?;
        }
    }
    if all || cmd == Cmd::Crashloop {
        println!("== row 4 (the three supervisors side by side: the loop is mostly waiting)");
        let results: Vec<(Kind, Results, Option<anyhow::Error>)> = std::thread::scope(|s| {
            let handles: Vec<_> = kinds
                .iter()
                .map(|&k| {
                    s.spawn(move || {
                        let mut r = Results::default();
                        let e = rows::crashloop::run(
                            k,
                            &base.join(format!("crash-{k:?}")),
                            fx,
                            opts,
                            &mut r,
                        )
                        .err();
                        (k, r, e)
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (k, r, e) in results {
            res.merge(r);
            if let Some(e) = e {
                report_failure(res, &rows::crashloop::rows(opts.crash_secs), k, "row 4", &e);
            }
        }
        res.save(save)?;
    }
    type Single = fn(Kind, &Path, &Fixture, &Opts, &mut Results) -> Result<()>;
    let singles: [(Cmd, &str, Single, Vec<Row>); 3] = [
        (
            Cmd::Scale,
            "row 5",
            rows::scale::run,
            rows::scale::rows().to_vec(),
        ),
        (
            Cmd::Stop,
            "row 6",
            rows::stop::run,
            rows::stop::rows().to_vec(),
        ),
        (
            Cmd::Logs,
            "row 7",
            rows::logs::run,
            rows::logs::rows(opts.spew_secs).to_vec(),
        ),
    ];
    for (c, name, f, group) in singles {
        if !(all || cmd == c) {
            continue;
        }
        for &k in kinds {
            println!("== {name}: {}", k.label());
            if let Err(e) = f(
                k,
                &base.join(format!("{name}-{k:?}").replace(' ', "")),
                fx,
                opts,
                res,
            ) {
                report_failure(res, &group, k, name, &e);
            }
            res.save(save)?;
        }
    }
    if (all || cmd == Cmd::Many) && kinds.contains(&Kind::Ours) {
        println!("== row 8: piku-supervisor with {} instances", opts.many);
        if let Err(e) = rows::many::run(&base.join("many"), fx, opts, res) {
            report_failure(res, &rows::many::rows(opts.many), Kind::Ours, "row 8", &e);
        }
        res.save(save)?;
    }
    Ok(())
}

fn cmd_name(cmd: Cmd) -> &'static str {
    match cmd {
        Cmd::Memory => "memory",
        Cmd::Idle => "idle",
        Cmd::Respawn => "respawn",
        Cmd::Crashloop => "crashloop",
        Cmd::Scale => "scale",
        Cmd::Stop => "stop",
        Cmd::Logs => "logs",
        Cmd::Many => "many",
        Cmd::All => "all",
        Cmd::Report => "report",
        Cmd::Front => "front",
        Cmd::Wsgi => "wsgi",
        Cmd::Robust => "robust",
        Cmd::FrontApp => "front-app",
    }
}

/// Says so when other work shared the CPUs (1-minute load above the core count at either end).
fn busy_note(res: &mut Results) {
    let load = |k: &str| -> f64 {
        res.machine
            .get(k)
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let cores: f64 = res
        .machine
        .get("nproc")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let worst = load("loadavg at start").max(load("loadavg at end"));
    if worst > cores {
        res.note(format!(
            "The machine was busy with other work during this run (1-minute load up to {worst:.1} on {cores:.0} cores): \
             latencies and CPU figures are noisier and higher than on an idle machine, for all three alike."
        ));
    }
}

/// A row group that failed for one supervisor: its unset cells say so, and a note says why.
fn report_failure(res: &mut Results, group: &[Row], kind: Kind, what: &str, e: &anyhow::Error) {
    eprintln!("  {} {what} failed: {e:#}", kind.label());
    for r in group {
        let set = res
            .rows
            .iter()
            .any(|x| x.id == r.id && x.cells.contains_key(&kind));
        if !set {
            res.set(r, kind, report::Cell::Missing("failed, see notes".into()));
        }
    }
    res.note(format!("{}: {what} failed: {e:#}", kind.label()));
}

/// The venv the WSGI rows run their servers from, absolute: the apps run in directories of
/// their own, where a relative path (scripts/bench passes `target/bench-venv`) finds nothing
/// (every server exited 127).
fn wsgi_venv(given: Option<&Path>) -> Result<PathBuf> {
    let venv = match given {
        Some(v) => v.to_path_buf(),
        None => rows::wsgi::default_venv()?,
    };
    std::path::absolute(&venv).with_context(|| format!("bad --venv {}", venv.display()))
}
