//! Crash recovery: the daemon died (SIGKILL, a panic) and systemd started it again with the
//! descriptors the dead one had put in its store (`fdstore`). The apps it ran are still
//! running (`KillMode=process`); the running table (`leftovers::Running`, rewritten after
//! every spawn and exit) says which process each instance had, by pid and start time.
//!
//! An instance's process is adopted as an upgrade's would be ([`super::take_adoption`]) when
//! it is still the same process and both its pipes came back: its output is still captured
//! (what it wrote meanwhile waited in the pipe). Its exit is noticed through a pidfd, but it
//! is no longer our child (it was re-parented when the daemon died): how it ended is unknown
//! (`pidfd`). Anything else the table lists is a leftover, stopped as before. A front gets
//! its listening sockets back ([`super::take_unix`], [`super::take_tcp`]): clients waited in
//! the backlog. What is not adopted here is what an upgrade carries besides: restart
//! counters, back-off and the start of an unfinished line (lost with the daemon's memory).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::Path;

use super::{Adoption, Inherited, inherited, pidfd};
use crate::instance::machine::History;
use crate::leftovers::Record;
use crate::{fdstore, procinfo, reaper};

/// What the daemon's start needs of a recovery.
pub struct Recovered {
    /// The control socket, still listening (clients waited in its backlog).
    pub control_socket: Option<std::os::unix::net::UnixListener>,
    /// Pids the leftover clean-up must spare.
    pub pids: BTreeSet<u32>,
    /// `(app, slot)` of the instances whose cgroups must be spared.
    pub slots: BTreeSet<(String, String)>,
    /// The names systemd passed.
    pub names: Vec<String>,
}

/// Takes over what systemd kept (`stored`) for the processes of `table` (the dead daemon's
/// running table). Descriptors nobody can use are closed.
pub fn install(
    mut stored: BTreeMap<String, OwnedFd>,
    table: BTreeMap<String, Record>,
) -> Recovered {
    let names: Vec<String> = stored.keys().cloned().collect();
    // Still in systemd's store: a clean stop of this daemon takes them out.
    names.iter().for_each(|name| fdstore::note(name));
    let control_socket = stored
        .remove(fdstore::CONTROL)
        .map(std::os::unix::net::UnixListener::from)
        .filter(|l| l.set_nonblocking(true).is_ok());
    let mut inherited_table = Inherited::default();
    let mut pids = BTreeSet::new();
    let mut slots = BTreeSet::new();
    for (key, record) in table {
        let [out, err] = fdstore::pipe_names(record.pid);
        let pipes = (stored.remove(&out), stored.remove(&err));
        let pidfd = match pipes {
            _ if !procinfo::same_process(record.pid, record.start_ticks) => None,
            (Some(_), Some(_)) => pidfd::open(record.pid)
                .inspect_err(|e| {
                    tracing::warn!(%key, pid = record.pid, "cannot watch a process left by the crashed daemon ({e}); it is stopped as a leftover");
                })
                .ok(),
            _ => {
                tracing::info!(%key, pid = record.pid, "no pipes kept for this process; it is stopped as a leftover");
                None
            }
        };
        let (Some(pidfd), (Some(stdout), Some(stderr))) = (pidfd, pipes) else {
            fdstore::remove(&out);
            fdstore::remove(&err);
            continue;
        };
        reaper::adopt(record.pid);
        pids.insert(record.pid);
        if let Some((app, slot)) = key.split_once('/') {
            slots.insert((app.to_owned(), slot.to_owned()));
        }
        inherited_table.adoptions.insert(
            key,
            Adoption {
                pid: record.pid,
                pidfd,
                history: History::default(),
                up: procinfo::running_for(record.start_ticks),
                stdout: Some((stdout, Vec::new())),
                stderr: Some((stderr, Vec::new())),
                after_crash: true,
            },
        );
    }
    for (name, fd) in stored {
        let (kind, _) = name.split_once('.').unwrap_or((name.as_str(), ""));
        match kind {
            "unix" => {
                let listener = std::os::unix::net::UnixListener::from(fd);
                match listener
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                    // Its file removed: nothing reaches it any more.
                    .filter(|path| path.exists())
                {
                    Some(path) => {
                        inherited_table.unix.insert(path, listener.into());
                    }
                    None => {
                        tracing::info!("{name}: a kept front socket whose file is gone; closed");
                        fdstore::remove(&name);
                    }
                }
            }
            "tcp" => {
                let listener = std::net::TcpListener::from(fd);
                match listener.local_addr() {
                    Ok(addr) => {
                        inherited_table
                            .tcp
                            .insert((addr.ip().to_string(), addr.port()), listener.into());
                    }
                    Err(e) => tracing::warn!(
                        "{name}: a kept front socket without an address ({e}); closed"
                    ),
                }
            }
            // The pipes of a process that is gone or was not recorded: their lines are lost
            // with it.
            _ => {
                tracing::info!("{name}: kept by systemd, not needed any more; closed");
                fdstore::remove(&name);
            }
        }
    }
    *inherited() = Some(inherited_table);
    Recovered {
        control_socket,
        pids,
        slots,
        names,
    }
}
