//! In-place upgrade: on SIGUSR2 the daemon re-executes the binary now at its path, and the
//! new image carries on with every app process still running (same pids), their log pipes,
//! the control socket and the fronts' listening sockets (connections wait in the backlog,
//! none is refused).
//!
//! The old image (`daemon.rs` on SIGUSR2, then [`Upgrade`] in `leave.rs`): first the new binary must answer
//! `--handover-version` with our [`VERSION`] ([`check`]), else the upgrade is refused and
//! nothing stops; then the control socket stops accepting, every app actor freezes (its
//! front stops accepting and lets requests in flight finish, its instance actors stop
//! acting and say what they run), the log capture hands over its pipes and the starts of
//! unfinished lines, and [`exec`] writes `handover.json` ([`file`]) and calls `execve`.
//!
//! The new image ([`install`], at start): the file's descriptors become its own again
//! (close-on-exec set back), each process is watched through a pidfd ([`pidfd`]), and what
//! the restored apps ask for is taken from here instead of being made anew: a front's
//! listener by its address ([`take_unix`], [`take_tcp`]), a process by its instance's key
//! ([`take_adoption`]). What nobody claims is stopped ([`unclaimed`]).

pub mod file;
mod leave;
pub mod pidfd;
pub mod recover;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{SigSet, Signal};

pub use self::file::{Adoptee, FrontFds, Handover, PipeFd, TcpFd, UnixFd, VERSION, Waiting};
pub use self::leave::Upgrade;
use crate::instance::machine::History;
use crate::{procinfo, reaper};

/// The argument that makes the binary print its handover version and exit.
pub const VERSION_FLAG: &str = "--handover-version";
/// How long the new binary gets to answer [`VERSION_FLAG`].
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot run {path} {VERSION_FLAG}")]
    Run {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} {VERSION_FLAG} did not answer within {CHECK_TIMEOUT:?}")]
    Timeout { path: PathBuf },
    #[error("{path} {VERSION_FLAG} failed ({status}): {stderr}")]
    Failed {
        path: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("{path} hands over with version {found:?}, this daemon with {VERSION}")]
    Incompatible { path: PathBuf, found: String },
}

/// The path this binary was started from (what `execve` runs on an upgrade).
pub fn own_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Linux names a replaced or removed image's file `<path> (deleted)`.
    let path = exe.to_string_lossy();
    Ok(match path.strip_suffix(" (deleted)") {
        Some(original) => PathBuf::from(original),
        None => exe,
    })
}

/// What [`VERSION_FLAG`] prints.
pub fn version_line() -> String {
    format!("piku-supervisor handover {VERSION}")
}

/// Runs the new binary with [`VERSION_FLAG`]: it must start and speak our handover version.
pub async fn check(exe: &Path) -> Result<(), UpgradeError> {
    let mut command = tokio::process::Command::new(exe);
    command
        .arg(VERSION_FLAG)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // Owned while it runs: the orphan reaper must not take its status from tokio.
    let spawning = reaper::spawning();
    let child = command.spawn().map_err(|source| UpgradeError::Run {
        path: exe.to_path_buf(),
        source,
    })?;
    let pid = child.id();
    if let Some(pid) = pid {
        spawning.own(pid);
    } else {
        drop(spawning);
    }
    let output = tokio::time::timeout(CHECK_TIMEOUT, child.wait_with_output()).await;
    if let Some(pid) = pid {
        reaper::disown(pid);
    }
    let output = match output {
        Err(_) => {
            return Err(UpgradeError::Timeout {
                path: exe.to_path_buf(),
            });
        }
        Ok(Err(source)) => {
            return Err(UpgradeError::Run {
                path: exe.to_path_buf(),
                source,
            });
        }
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        return Err(UpgradeError::Failed {
            path: exe.to_path_buf(),
            status: crate::exit::describe(&output.status),
            stderr: one_line(&output.stderr),
        });
    }
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if answer != version_line() {
        return Err(UpgradeError::Incompatible {
            path: exe.to_path_buf(),
            found: answer,
        });
    }
    Ok(())
}

fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().take(200).collect()
}

/// Writes `handover` to `path` and replaces this image with `exe` (same argv and
/// environment); `fds` are the descriptors `handover` names. A stop signal received during
/// the upgrade (`stop_asked`) is raised again for the next image. Only returns if no image
/// could be started: then with why.
pub fn exec(
    path: &Path,
    exe: &Path,
    handover: &Handover,
    fds: &[OwnedFd],
    stop_asked: &StopAsked,
) -> anyhow::Result<()> {
    let open: BTreeSet<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    if let Some(fd) = handover.fds().into_iter().find(|fd| !open.contains(fd)) {
        anyhow::bail!("the handover names fd {fd}, which is not handed over");
    }
    for fd in fds {
        // The descriptors must survive execve; everything else keeps close-on-exec.
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| {
            anyhow::anyhow!("cannot keep fd {} open across exec: {e}", fd.as_raw_fd())
        })?;
    }
    file::write(path, handover)?;
    let args: Vec<CString> = std::env::args_os().filter_map(c_string).collect();
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut pair = k;
            pair.push("=");
            pair.push(v);
            c_string(pair)
        })
        .collect();
    // Last thing before execve. Every other thread blocks these signals from its start
    // (`leave_signals_to_main_thread`), so once this one does no handler runs any more: a
    // stop signal arriving from here stays pending for the next image, and one that came
    // before was recorded by its handler and is raised again, pending alike. (tokio's own
    // receivers would not do: they learn of a signal only when the runtime next runs its
    // driver, and one sent in the last milliseconds before execve was lost, 5 in 300 tries
    // at load 12.)
    let _ = held_signals().thread_block();
    if stop_asked.asked() {
        let _ = nix::sys::signal::raise(Signal::SIGTERM);
    }
    let first = match c_string(exe.as_os_str().to_owned()) {
        Some(exe) => nix::unistd::execve(&exe, &args, &env).unwrap_err(),
        None => nix::errno::Errno::EINVAL,
    };
    tracing::error!(
        "cannot execute {} ({first}); starting this binary again instead",
        exe.display()
    );
    // The running image, even if its file was replaced or removed since.
    let own = c"/proc/self/exe";
    let second = nix::unistd::execve(own, &args, &env).unwrap_err();
    anyhow::bail!(
        "cannot execute {} ({first}) nor /proc/self/exe ({second})",
        exe.display()
    )
}

/// The signals held across execve: a SIGUSR2 would kill the next image before it has its
/// handler (the default action is to exit), a SIGTERM or SIGINT would be lost. Blocked on the
/// thread that calls execve, they stay pending until the next image calls [`accept_signals`].
fn held_signals() -> SigSet {
    let mut held = SigSet::empty();
    for signal in [Signal::SIGUSR2, Signal::SIGTERM, Signal::SIGINT] {
        held.add(signal);
    }
    held
}

/// Unblocks what an upgrade held, once this image handles those signals itself.
pub fn accept_signals() {
    let _ = held_signals().thread_unblock();
}

/// Called first on every thread of the daemon but the main one (tokio's, the log and chores
/// threads): the signals an upgrade holds are taken by the main thread only, the one that
/// calls execve, so that blocking them there (see [`exec`]) holds them for the whole process.
/// Children would inherit it (std's `Command` keeps the mask): the spawn clears it in the
/// child (`spawn::clear_signal_mask_before_exec`, and the clone path's own).
pub fn leave_signals_to_main_thread() {
    let _ = held_signals().thread_block();
}

/// Whether a SIGTERM or SIGINT has arrived, recorded by a handler of its own the moment it
/// does (beside tokio's, which the main loop waits on).
#[derive(Debug, Clone)]
pub struct StopAsked(Arc<AtomicBool>);

impl StopAsked {
    pub fn register() -> std::io::Result<StopAsked> {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [Signal::SIGTERM, Signal::SIGINT] {
            signal_hook::flag::register(signal as i32, Arc::clone(&flag))?;
        }
        Ok(StopAsked(flag))
    }

    fn asked(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

fn c_string(s: OsString) -> Option<CString> {
    CString::new(s.as_bytes()).ok()
}

/// A process handed over, until its instance claims it.
pub struct Adoption {
    pub pid: u32,
    pub pidfd: OwnedFd,
    pub history: History,
    pub up: Duration,
    pub stdout: Option<(OwnedFd, Vec<u8>)>,
    pub stderr: Option<(OwnedFd, Vec<u8>)>,
    /// Left by a daemon that crashed (`recover`), not handed over by an upgrade.
    pub after_crash: bool,
}

/// What the new image took over, until claimed.
#[derive(Default)]
struct Inherited {
    unix: BTreeMap<PathBuf, OwnedFd>,
    tcp: BTreeMap<(String, u16), OwnedFd>,
    adoptions: BTreeMap<String, Adoption>,
    /// Instances backing off: their history and how soon they were due.
    waiting: BTreeMap<String, (History, Duration)>,
}

static INHERITED: Mutex<Option<Inherited>> = Mutex::new(None);

fn inherited() -> MutexGuard<'static, Option<Inherited>> {
    INHERITED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the daemon's start needs of a handover.
pub struct Installed {
    pub control_socket: std::os::unix::net::UnixListener,
    /// Pids the leftover clean-up must spare.
    pub pids: BTreeSet<u32>,
    /// `(app, slot)` of the instances whose cgroups must be spared.
    pub slots: BTreeSet<(String, String)>,
    pub signalled_at_ns: u128,
}

/// Takes over what the previous image left (see the module doc). The processes become the
/// reaper's owned pids at once, so their statuses are ours to collect.
pub fn install(handover: Handover) -> anyhow::Result<Installed> {
    let mut fds = Fds::default();
    let control_socket = std::os::unix::net::UnixListener::from(fds.take(handover.control_socket)?);
    control_socket.set_nonblocking(true)?;
    let mut table = Inherited::default();
    for front in handover.fronts {
        if let Some(unix) = front.unix {
            table.unix.insert(unix.path, fds.take(unix.fd)?);
        }
        if let Some(tcp) = front.tcp {
            table.tcp.insert((tcp.bind, tcp.port), fds.take(tcp.fd)?);
        }
    }
    let mut pids = BTreeSet::new();
    let mut slots = BTreeSet::new();
    for adoptee in handover.instances {
        let stdout = match &adoptee.stdout {
            Some(pipe) => Some((fds.take(pipe.fd)?, pipe.partial.clone())),
            None => None,
        };
        let stderr = match &adoptee.stderr {
            Some(pipe) => Some((fds.take(pipe.fd)?, pipe.partial.clone())),
            None => None,
        };
        // The same process (a zombie included: its status is still ours to read).
        let same =
            procinfo::stat(adoptee.pid).is_some_and(|s| s.start_ticks == adoptee.start_ticks);
        let pidfd = match same.then(|| pidfd::open(adoptee.pid)) {
            Some(Ok(pidfd)) => pidfd,
            Some(Err(e)) => {
                tracing::warn!(key = %adoptee.key, pid = adoptee.pid, "cannot watch a handed-over process ({e}); its instance starts afresh");
                continue;
            }
            None => {
                tracing::info!(key = %adoptee.key, pid = adoptee.pid, "a handed-over process is gone; its instance starts afresh");
                continue;
            }
        };
        reaper::adopt(adoptee.pid);
        pids.insert(adoptee.pid);
        if let Some((app, slot)) = adoptee.key.split_once('/') {
            slots.insert((app.to_owned(), slot.to_owned()));
        }
        table.adoptions.insert(
            adoptee.key,
            Adoption {
                pid: adoptee.pid,
                pidfd,
                history: adoptee.history,
                up: Duration::from_millis(adoptee.up_ms),
                stdout,
                stderr,
                after_crash: false,
            },
        );
    }
    for waiting in handover.waiting {
        table.waiting.insert(
            waiting.key,
            (waiting.history, Duration::from_millis(waiting.due_in_ms)),
        );
    }
    *inherited() = Some(table);
    Ok(Installed {
        control_socket,
        pids,
        slots,
        signalled_at_ns: handover.signalled_at_ns,
    })
}

/// The descriptors of a handover file, each taken once.
#[derive(Default)]
struct Fds {
    taken: BTreeSet<RawFd>,
}

impl Fds {
    fn take(&mut self, fd: RawFd) -> anyhow::Result<OwnedFd> {
        // Standard streams are never handed over; a number twice would be closed twice.
        if fd < 3 || !self.taken.insert(fd) {
            anyhow::bail!("handover names fd {fd} wrongly");
        }
        // Open, or the file lies.
        // SAFETY: F_GETFD only reads the flags of the descriptor table entry `fd`; no memory
        // is passed, and a closed `fd` is an EBADF answer, not undefined behaviour.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            anyhow::bail!(
                "handed-over fd {fd} is not open: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: `fd` is open (just checked) and was left to this image by the previous
        // image of this same process (the file's pid is ours, checked by `file::take`),
        // which gave up its own handles to it at execve; this image opened nothing under
        // this number (it was in use), and `taken` makes sure it gets one owner.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Not to leak into the apps this image spawns.
        fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        Ok(owned)
    }
}

/// The listening socket a front of the previous image had on `path`.
pub fn take_unix(path: &Path) -> Option<std::os::unix::net::UnixListener> {
    let fd = inherited().as_mut()?.unix.remove(path)?;
    Some(std::os::unix::net::UnixListener::from(fd))
}

/// The listening socket a front of the previous image had on `bind:port`.
pub fn take_tcp(bind: &str, port: u16) -> Option<std::net::TcpListener> {
    let mut guard = inherited();
    let table = guard.as_mut()?;
    // A recovery names the address as the socket has it (`recover`).
    let fd = table.tcp.remove(&(bind.to_owned(), port)).or_else(|| {
        let ip: std::net::IpAddr = bind.parse().ok()?;
        table.tcp.remove(&(ip.to_string(), port))
    })?;
    Some(std::net::TcpListener::from(fd))
}

/// The running process of instance `key` (`app/web.1@4001`), if one was handed over.
pub fn take_adoption(key: &str) -> Option<Adoption> {
    inherited().as_mut()?.adoptions.remove(key)
}

/// The back-off instance `key` was in, if the previous image was waiting to restart it.
pub fn take_waiting(key: &str) -> Option<(History, Duration)> {
    inherited().as_mut()?.waiting.remove(key)
}

/// Ends the take-over: what no restored app claimed is returned (to be stopped), and the
/// listeners nobody asked for are closed.
pub fn unclaimed() -> Vec<Adoption> {
    match inherited().take() {
        Some(table) => table.adoptions.into_values().collect(),
        None => Vec::new(),
    }
}

/// The processes handed over that no restored instance claimed (their app was removed from
/// the state, or scaled down, meanwhile): stopped as a stop would (SIGTERM, grace, SIGKILL).
pub fn stop_unclaimed(grace: Duration) {
    for adoption in unclaimed() {
        let pid = adoption.pid;
        tracing::warn!(
            pid,
            "stopping a handed-over process that no instance claimed"
        );
        crate::stop::signal_group(pid, nix::sys::signal::Signal::SIGTERM);
        crate::stop::signal_group(pid, nix::sys::signal::Signal::SIGCONT);
        tokio::spawn(async move {
            let exited = pidfd::exited(pid, adoption.pidfd);
            tokio::pin!(exited);
            if tokio::time::timeout(grace, &mut exited).await.is_err() {
                crate::stop::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                exited.await;
            }
        });
    }
}

/// Now, in ns since the epoch (what `Handover::signalled_at_ns` holds).
pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
