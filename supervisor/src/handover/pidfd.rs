//! The exit of a process this image did not spawn: after `execve` the apps are still the
//! daemon's children, but tokio (which waits on what it spawned) knows nothing of them. A
//! pidfd becomes readable when its process exits, and `waitid(P_PIDFD)` reaps that very
//! process and no other, so tokio's own exit statuses are never taken. After a crash of the
//! daemon (`recover`) the adopted processes are not our children any more: the pidfd still
//! says when they exit, not how.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::{exit, reaper};

/// A pidfd for `pid`; fails if no such process exists (a zombie still has one).
pub fn open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open(2) takes a pid and flags by value and returns a new file descriptor
    // or -1; no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor (close-on-exec, as pidfds always are);
    // nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resolves when the process of `pidfd` (`pid`) has exited, reaped, with how it ended
/// ([`exit::describe`]'s words). `pid` must be in the reaper's owned set until then.
pub async fn exited(pid: u32, pidfd: OwnedFd) -> String {
    // SAFETY: an `OwnedFd` is an open descriptor that stays open and the same until the
    // `AsyncFd` (which owns it) is dropped, as `register_with_interest` requires.
    let registered = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
    let what = match registered.map_err(io::Error::from) {
        Ok(fd) => loop {
            match fd.readable().await {
                Ok(mut ready) => match reap(fd.get_ref()) {
                    Some(what) => break what,
                    // Readable but not yet reapable cannot last: try again.
                    None => ready.clear_ready(),
                },
                Err(e) => break format!("cannot wait for it: {e}"),
            }
        },
        Err(e) => format!("cannot wait for it: {e}"),
    };
    reaper::disown(pid);
    what
}

/// Reaps the exited process of `pidfd`; `None` while it runs.
fn reap(pidfd: &OwnedFd) -> Option<String> {
    match waitid(
        Id::PIDFd(pidfd.as_fd()),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
    ) {
        Ok(WaitStatus::Exited(_, code)) => {
            Some(exit::describe(&ExitStatus::from_raw((code & 0xff) << 8)))
        }
        Ok(WaitStatus::Signaled(_, signal, core)) => Some(exit::describe(&ExitStatus::from_raw(
            signal as i32 | if core { 0x80 } else { 0 },
        ))),
        Ok(WaitStatus::StillAlive) => None,
        Ok(other) => Some(format!("ended ({other:?})")),
        // Not our child: only a process adopted after a crash of the daemon (`recover`;
        // it was re-parented then, and its new parent reaps it). It has exited, how is not
        // ours to know.
        Err(nix::errno::Errno::ECHILD) => {
            Some("exited (status unknown: adopted after a crash)".to_owned())
        }
        Err(e) => Some(format!("exited (waitid: {e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process started outside tokio is seen to exit, with its status, and reaped.
    // The pidfd waiter is what reaps these children (`wait()` would take their status).
    #[allow(clippy::zombie_processes)]
    #[tokio::test]
    async fn the_exit_of_a_child_tokio_does_not_know_is_seen_and_reaped() {
        let spawning = reaper::spawning();
        let child = std::process::Command::new("sh")
            .args(["-c", "sleep 0.1; exit 3"])
            .spawn()
            .unwrap();
        spawning.own(child.id());
        let fd = open(child.id()).unwrap();
        assert_eq!(exited(child.id(), fd).await, "exit 3");
        assert!(crate::procinfo::stat(child.id()).is_none(), "reaped");
    }

    #[allow(clippy::zombie_processes)]
    #[tokio::test]
    async fn a_killed_child_names_its_signal() {
        let spawning = reaper::spawning();
        let child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        spawning.own(child.id());
        let fd = open(child.id()).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(exited(child.id(), fd).await, "SIGKILL");
    }
}
