//! systemd's file descriptor store: what must outlive a crash of the daemon.
//!
//! Why: when the daemon dies (SIGKILL, a panic, the OOM killer) its apps keep running
//! (`KillMode=process`), but the read ends of their log pipes and the fronts' listening
//! sockets die with it: the apps would get EPIPE on their next line and clients would be
//! refused. So each of those descriptors is also given to systemd as it is made
//! (`FDSTORE=1` with `FDNAME=<name>`, SCM_RIGHTS on `$NOTIFY_SOCKET`), and taken back out
//! (`FDSTOREREMOVE=1`) when it is closed. systemd keeps its copies while the service is
//! restarted after a crash (`Restart=always`) and hands them to the next daemon
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`; [`receive`]), which adopts the apps still
//! running (`handover::recover`). A clean stop empties the store ([`clear`]): systemd 252
//! keeps it across `systemctl restart`, and the next daemon must then start afresh. Without systemd, or with `FileDescriptorStoreMax=0`,
//! nothing comes back and a crash restarts the apps, as before.
//!
//! Names (`FDNAME` may not hold `:`, the separator of `LISTEN_FDNAMES`): `control` (the
//! control socket), `out.<pid>` and `err.<pid>` (an instance's pipes), `unix.<app>` and
//! `tcp.<app>` (a front's listeners; their addresses are read from the sockets).

use std::collections::{BTreeMap, BTreeSet};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

/// The first descriptor of the socket activation protocol.
const LISTEN_FDS_START: RawFd = 3;
/// The most descriptors believed from `LISTEN_FDS` (the unit's `FileDescriptorStoreMax`
/// is below).
const LISTEN_FDS_MAX: RawFd = 1 << 20;

/// Takes the descriptors systemd passed (named), and removes the protocol's variables
/// so that neither the apps nor the next image of an in-place upgrade see them.
///
/// Must be called before any other thread exists (it changes the environment) and before
/// anything opens a descriptor (those numbers are the passed ones).
pub fn receive() -> BTreeMap<String, OwnedFd> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called first thing in `main`, before the runtime or any other thread
        // exists, so nothing reads the environment concurrently.
        unsafe { std::env::remove_var(var) };
    }
    let mut received = BTreeMap::new();
    if pid.and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return received;
    }
    let Some(count) = count
        .and_then(|c| c.parse::<RawFd>().ok())
        .filter(|c| (1..=LISTEN_FDS_MAX).contains(c))
    else {
        return received;
    };
    let mut names = names.split(':');
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count {
        let name = names.next().unwrap_or("unknown").to_owned();
        // SAFETY: F_GETFD only reads the flags of descriptor table entry `fd`; a closed
        // `fd` is an EBADF answer, not undefined behaviour.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            continue;
        }
        // SAFETY: `fd` is open (just checked); systemd passed it to this process (LISTEN_PID
        // is ours) and nothing in this process has opened or owns it yet (we run first in
        // `main`); each number is taken once, here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Not to leak into the apps.
        let _ = nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        // A name twice: the first copy is kept, the others closed.
        received.entry(name).or_insert(owned);
    }
    received
}

/// The socket to systemd, if the daemon runs under it.
fn socket() -> Option<&'static UnixDatagram> {
    static SOCKET: OnceLock<Option<UnixDatagram>> = OnceLock::new();
    SOCKET
        .get_or_init(|| {
            let path = std::env::var_os("NOTIFY_SOCKET")?;
            let socket = UnixDatagram::unbound().ok()?;
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
            let connected = match bytes.strip_prefix(b"@") {
                Some(abstract_name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
                        .and_then(|addr| socket.connect_addr(&addr))
                }
                None => socket.connect(&path),
            };
            match connected {
                Ok(()) => Some(socket),
                Err(e) => {
                    tracing::warn!("cannot reach systemd's notify socket: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// The names this daemon (or the one it took over from) has in the store.
static STORED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn stored() -> MutexGuard<'static, BTreeSet<String>> {
    STORED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Notes that `name` is in the store already (passed back after a crash).
pub fn note(name: &str) {
    stored().insert(name.to_owned());
}

/// Gives systemd a copy of `fd` under `name` (replacing what `name` held). Nothing without
/// systemd.
pub fn store(name: &str, fd: BorrowedFd<'_>) {
    let Some(socket) = socket() else {
        return;
    };
    // systemd keeps every copy stored under a name: one held already is taken out first (a
    // front's new listener). A new instance's pipes (a fresh pid) skip that send.
    if !stored().insert(name.to_owned()) {
        let message = format!("FDSTOREREMOVE=1\nFDNAME={name}\n");
        let _ = socket.send(message.as_bytes());
    }
    let message = format!("FDSTORE=1\nFDNAME={name}\n");
    let fds = [fd.as_raw_fd()];
    if let Err(e) = sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(message.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    ) {
        tracing::warn!("cannot keep {name} in systemd's file descriptor store: {e}");
    }
}

/// Takes `name` out of systemd's store (its descriptor was closed, or is about to be).
pub fn remove(name: &str) {
    if let Some(socket) = socket() {
        stored().remove(name);
        let message = format!("FDSTOREREMOVE=1\nFDNAME={name}\n");
        let _ = socket.send(message.as_bytes());
    }
}

/// Empties the store, at the end of a clean stop: systemd 252 keeps it across
/// `systemctl restart` too, and only a crash must leave anything to the next daemon.
pub fn clear() {
    let names = std::mem::take(&mut *stored());
    for name in names {
        remove(&name);
    }
}

/// The names of an instance's pipes.
pub fn pipe_names(pid: u32) -> [String; 2] {
    [format!("out.{pid}"), format!("err.{pid}")]
}

/// The names of an app's front listeners (unix, tcp).
pub fn front_names(app: &str) -> [String; 2] {
    [format!("unix.{app}"), format!("tcp.{app}")]
}

/// The control socket's name.
pub const CONTROL: &str = "control";
