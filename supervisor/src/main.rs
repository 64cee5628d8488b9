//! `piku-supervisor`: the one long-running process of piku. It starts, watches, restarts,
//! scales and logs every app process, and answers the `piku` CLI on a Unix socket.
//! Runs in the foreground (under systemd, or by hand).

mod after_stop;
mod app;
mod backoff;
mod cgroup;
mod chores;
mod cron;
mod daemon;
mod exit;
mod fds;
mod fdstore;
mod front;
mod handover;
mod instance;
mod leftovers;
mod logs;
mod ports;
mod procinfo;
mod reaper;
mod registry;
mod report;
mod server;
mod snapshot;
mod spawn;
mod state;
mod stop;
mod validate;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use piku_model::PikuRoot;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The piku root (default: $PIKU_ROOT, else ~/.piku).
    #[arg(long, value_name = "PATH")]
    root: Option<PathBuf>,
    /// Print the version of the upgrade hand-over this binary speaks, and exit (a running
    /// daemon asks its successor before handing over on SIGUSR2).
    #[arg(long)]
    handover_version: bool,
    /// The unit's ExecStopPost: after a crash, leave the apps for the next daemon; after a
    /// stop, kill what is left of them (reads systemd's $SERVICE_RESULT).
    #[arg(long)]
    after_stop: bool,
}

fn main() -> anyhow::Result<()> {
    // First: these are numbered descriptors and environment variables (see `fdstore`).
    let stored = fdstore::receive();
    let args = Args::parse();
    if args.handover_version {
        println!("{}", handover::version_line());
        return Ok(());
    }
    if args.after_stop {
        // What systemd passed is the daemon's, not this command's.
        drop(stored);
        return after_stop::run();
    }
    // Where the binary is now, for an upgrade: the package replaces the file under this
    // path, and the running image's own file may by then be gone.
    let exe = handover::own_binary().context("cannot find this binary's path")?;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PIKU_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: journald and log files store them raw.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let root = match args.root {
        // Absolute, so that the paths in logs and state files mean the same from anywhere.
        Some(path) => PikuRoot::new(
            std::path::absolute(&path).with_context(|| format!("bad --root {}", path.display()))?,
        ),
        None => PikuRoot::from_env().context("cannot find the piku root")?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(handover::leave_signals_to_main_thread)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(daemon::run(root, exe, stored));
    // Every app is stopped by now; don't wait on a connection task (a `logs --follow`
    // client) or a blocking log writer that has not noticed yet.
    runtime.shutdown_timeout(SHUTDOWN_LEFTOVER_TASKS);
    result
}

/// How long tasks still running after the daemon's own shutdown get before exit.
const SHUTDOWN_LEFTOVER_TASKS: std::time::Duration = std::time::Duration::from_secs(2);
