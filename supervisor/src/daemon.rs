//! The daemon's life: take the lock, adopt the apps a crashed predecessor left running
//! (`handover::recover`, with what systemd kept for it) or clean up after it, bring every app
//! back, listen, tell systemd we are ready, and stop everything cleanly on SIGTERM; or, on
//! SIGUSR2, hand everything over to the binary now at our path without stopping any app
//! (`handover`), and, as that binary, take it over at start.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{Mode, umask};
use piku_model::PikuRoot;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::app::Ctx;
use crate::handover;
use crate::instance::Processes;
use crate::leftovers::{self, Running};
use crate::logs::LogHub;
use crate::ports::Ports;
use crate::registry::Registry;
use crate::state::Store;
use crate::{cgroup, fdstore, reaper, server, state};

/// Added to the longest grace period to bound a shutdown (SIGKILLed processes still need
/// a moment to be reaped).
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);
/// The longest a predecessor's leftovers get between SIGTERM and SIGKILL.
const LEFTOVER_GRACE_CAP: Duration = Duration::from_secs(10);
/// How long the last log lines may take to reach the disk at shutdown.
const FLUSH_BOUND: Duration = Duration::from_secs(5);
/// In the supervisor directory: what an upgrade leaves the next image.
const HANDOVER_FILE: &str = "handover.json";

/// `stored`: the descriptors systemd kept for us (`fdstore`), after a crash of the previous
/// daemon.
pub async fn run(
    root: PikuRoot,
    exe: PathBuf,
    stored: BTreeMap<String, OwnedFd>,
) -> anyhow::Result<()> {
    // First of all: a SIGTERM during start-up must not kill us with apps half started (it
    // is acted upon once the apps are restored); nor a SIGUSR2 (its default is to exit).
    let stop_asked = handover::StopAsked::register()?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // Every app's pipes and logs are ours: take all the descriptors the system lets us.
    match crate::fds::raise() {
        Ok(limit) => tracing::info!("file descriptor limit {limit}"),
        Err(e) => tracing::warn!("cannot raise the file descriptor limit: {e}"),
    }
    let mut sigusr2 = signal(SignalKind::user_defined2())?;
    // Handled from here on (an upgrade blocked it across execve).
    handover::accept_signals();
    let sup_dir = root.supervisor_dir();
    for dir in [root.path().to_path_buf(), root.logs()] {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // state.json and running.json hold every app's environment: owner only, whatever an
    // older daemon made, and never a symlink planted there.
    piku_fs::create_dir_mode(&sup_dir, piku_fs::MODE_PRIVATE_DIR)
        .with_context(|| format!("cannot create {}", sup_dir.display()))?;
    // Left by our previous image if this one was started by an upgrade.
    let handover_path = sup_dir.join(HANDOVER_FILE);
    let handover = match handover::file::take(&handover_path, std::process::id()) {
        Ok(handover) => handover,
        Err(e) => {
            tracing::error!("{}; starting afresh", crate::report::chain(&e));
            None
        }
    };
    // One daemon per PIKU_ROOT: the lock is held for the whole life of the process. Opened
    // without truncating (a second daemon must leave the first one's file alone) and never
    // through a symlink.
    let lock_path = root.daemon_lock();
    let lock_file =
        piku_fs::open_nofollow(&lock_path, piku_fs::OpenFor::Lock, piku_fs::MODE_PRIVATE)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another piku-supervisor is running for {} ({e})",
            root.path().display()
        )
    })?;
    let socket = root.socket();
    let installed = handover.map(handover::install).transpose()?;
    let running_path = root.running_file();
    // After a crash: what systemd kept for us, and the processes the dead daemon ran. An
    // upgrade's handover (same process) has everything already.
    let recovered = (installed.is_none() && !stored.is_empty())
        .then(|| handover::recover::install(stored, leftovers::read_table(&running_path)));
    // Kept, but its file is gone (a daemon that died in its clean stop): useless.
    let recovered_control = recovered
        .as_ref()
        .and_then(|r| r.control_socket.as_ref())
        .filter(|_| socket.exists());
    let control = match (&installed, recovered_control) {
        // Still listening: clients of the previous image wait in its backlog.
        (Some(installed), _) => installed.control_socket.try_clone()?,
        (None, Some(kept)) => kept.try_clone()?,
        (None, None) => {
            remove_stale_socket(&socket)?;
            // Bound now, while nothing else creates files (the umask trick is
            // process-wide); connections wait in the backlog until the apps are restored
            // and we accept.
            let control = bind(&socket)?;
            fdstore::store(fdstore::CONTROL, control.as_fd());
            control
        }
    };
    // Ours, for the next upgrade; the server accepts on a duplicate.
    let listener = UnixListener::from_std(control.try_clone()?)?;
    let (spare_pids, spare_slots) = match (&installed, &recovered) {
        (Some(i), _) => (i.pids.clone(), i.slots.clone()),
        (None, Some(r)) => (r.pids.clone(), r.slots.clone()),
        (None, None) => Default::default(),
    };

    reaper::become_subreaper();
    let state_path = root.state_file();
    let saved = match state::load(&state_path) {
        Ok(saved) => saved,
        // Refusing to start would leave every app down (and, under systemd, the daemon in a
        // restart loop): keep the bad file for inspection and start with no apps.
        Err(e @ state::StateError::Parse { .. }) => {
            let aside = state_path.with_extension("json.corrupt");
            tracing::error!(
                "{}; moved to {} and starting with no apps",
                crate::report::chain(&e),
                aside.display()
            );
            fs::rename(&state_path, &aside)
                .with_context(|| format!("cannot move {} aside", state_path.display()))?;
            state::SavedState::default()
        }
        Err(e) => return Err(e.into()),
    };
    let leftover_grace = saved
        .apps
        .values()
        .map(|a| Duration::from_millis(a.spec.settings.stop_grace_ms))
        .max()
        .unwrap_or(Duration::ZERO)
        .min(LEFTOVER_GRACE_CAP);
    let killed = leftovers::kill_leftovers(&running_path, leftover_grace, &spare_pids).await;
    if !killed.is_empty() {
        tracing::warn!(instances = ?killed, "stopped processes left by a previous daemon");
    }
    // Then whatever they left outside their process groups.
    cgroup::init(root.path());
    let escaped = cgroup::tree().kill_leftovers(&spare_slots).await;
    if escaped > 0 {
        tracing::warn!(
            instances = escaped,
            "killed leftovers found in the cgroup tree"
        );
    }

    let running = Running::new(running_path);
    // After an upgrade the file still lists the processes handed over, until their instances
    // have taken them (a crash meanwhile must leave them findable as leftovers).
    if installed.is_none() && recovered.is_none() {
        running.write_now();
    }
    tokio::spawn(reaper::run());
    let logs = LogHub::new(root.logs()).context("cannot start the log capture thread")?;
    let store = Arc::new(Store::new(state_path, BTreeMap::new()));
    let apps = Registry::new(Ctx {
        logs: logs.clone(),
        launcher: Arc::new(Processes {
            running: running.clone(),
        }),
        ports: Ports::default(),
        store: store.clone(),
    });
    apps.restore(saved);
    store.save().await?;
    if let Some(installed) = &installed {
        // Every actor answers once it has restored its app, so every instance has claimed
        // its process by then.
        let _ = apps.status(None).await;
        handover::stop_unclaimed(leftover_grace);
        let ms = (handover::now_ns().saturating_sub(installed.signalled_at_ns)) / 1_000_000;
        tracing::info!(
            kept = installed.pids.len(),
            "upgraded in place: new image serving {ms} ms after the signal"
        );
    }

    if let Some(recovered) = &recovered {
        let _ = apps.status(None).await;
        handover::stop_unclaimed(leftover_grace);
        tracing::info!(
            kept = ?recovered.names,
            "systemd kept {} descriptors of the previous daemon",
            recovered.names.len()
        );
        tracing::warn!(
            adopted = recovered.pids.len(),
            "recovered after a crash: adopted {} processes still running",
            recovered.pids.len()
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(server::serve(listener, apps.clone(), stop_rx));
    tracing::info!(socket = %socket.display(), "piku-supervisor ready");
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!("cannot notify systemd: {e}");
    }

    let signalled_at_ns = loop {
        tokio::select! {
            _ = sigterm.recv() => break None,
            _ = sigint.recv() => break None,
            _ = sighup.recv() => apps.reload().await,
            _ = sigusr2.recv() => {
                let at = handover::now_ns();
                tracing::info!("SIGUSR2: upgrading in place to {}", exe.display());
                match handover::check(&exe).await {
                    Ok(()) => break Some(at),
                    Err(e) => tracing::error!(
                        "upgrade refused, this daemon keeps running: {}",
                        crate::report::chain(&e)
                    ),
                }
            }
        }
    };
    if let Some(signalled_at_ns) = signalled_at_ns {
        // systemd ≥ 253 ends a service whose RELOADING=1 comes without MONOTONIC_USEC (so
        // none without it); the new image's READY=1 ends the reload.
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading, now]);
        }
        let _ = stop_tx.send(true);
        let connections = server.await.ok();
        let upgrade = handover::Upgrade {
            connections,
            exe,
            path: handover_path,
            control,
            apps,
            logs,
            running,
            signalled_at_ns,
            stop_asked,
        };
        // Returns only if no image could be started.
        return upgrade.hand_over().await;
    }

    tracing::info!("stopping every app");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    let _ = server.await;
    let bound = apps.max_grace() + SHUTDOWN_MARGIN;
    if tokio::time::timeout(bound, apps.shutdown()).await.is_err() {
        tracing::error!("some processes did not stop within {bound:?}");
    }
    // A hung disk must not hold the shutdown (systemd would SIGKILL us anyway).
    if tokio::time::timeout(FLUSH_BOUND, logs.flush_all())
        .await
        .is_err()
    {
        tracing::error!("log files not flushed within {FLUSH_BOUND:?}; some lines may be lost");
    }
    running.write_now();
    // Only a crash leaves anything to the next daemon.
    fdstore::clear();
    cgroup::tree().remove_tree();
    let _ = fs::remove_file(&socket);
    tracing::info!("stopped");
    Ok(())
}

/// A socket file nobody answers on is left over from a daemon that died; one that answers
/// belongs to a live daemon (possibly of another PIKU_ROOT lock holder) and is never taken.
fn remove_stale_socket(socket: &Path) -> anyhow::Result<()> {
    if !socket.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!("{} is served by another process", socket.display());
    }
    fs::remove_file(socket).with_context(|| format!("cannot remove stale {}", socket.display()))
}

/// Binds the control socket, mode 0600 from the first instant (umask), not after a chmod.
fn bind(socket: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    let old = umask(Mode::from_bits_truncate(0o077));
    let bound = std::os::unix::net::UnixListener::bind(socket);
    umask(old);
    let listener = bound.with_context(|| format!("cannot listen on {}", socket.display()))?;
    listener.set_nonblocking(true)?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", socket.display()))?;
    Ok(listener)
}
