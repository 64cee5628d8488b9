//! The old image's side of an upgrade: freeze, collect, write, execute (see the module
//! above for the order and why).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Adoptee, FrontFds, Handover, PipeFd, TcpFd, UnixFd, VERSION, Waiting};
use crate::instance::Carried;
use crate::leftovers::Running;
use crate::logs::{HandedPipe, LogHub, Stream};
use crate::registry::Registry;
use crate::{procinfo, server};

/// How long an upgrade waits for each app to finish the command it is carrying out.
const FREEZE_BOUND: Duration = Duration::from_secs(30);
/// How long an upgrade waits for the requests in flight (fronts and control socket).
const DRAIN_BOUND: Duration = Duration::from_secs(10);
/// How long the last log lines may take to reach the disk.
const FLUSH_BOUND: Duration = Duration::from_secs(5);

/// What the old image hands to the next one.
pub struct Upgrade {
    /// Connections to the control socket still being answered.
    pub connections: Option<server::Open>,
    /// The binary to execute.
    pub exe: PathBuf,
    /// Where the handover file goes.
    pub path: PathBuf,
    /// The control socket's listening socket.
    pub control: std::os::unix::net::UnixListener,
    pub apps: Arc<Registry>,
    pub logs: LogHub,
    pub running: Arc<Running>,
    pub signalled_at_ns: u128,
    /// SIGTERM and SIGINT: one received during the upgrade is raised again for the next
    /// image.
    pub stop_asked: super::StopAsked,
}

impl Upgrade {
    /// Freezes everything, writes the handover file and executes the new binary. Returns
    /// only if no image could be started.
    pub async fn hand_over(self) -> anyhow::Result<()> {
        let frozen = self.apps.freeze(Instant::now() + FREEZE_BOUND).await;
        // Every command has been carried out by now; its answer must reach its client
        // (a deploy would otherwise fail for a change that was made).
        if let Some(open) = &self.connections
            && !open.closed(DRAIN_BOUND).await
        {
            tracing::warn!(
                "control connections still open after {DRAIN_BOUND:?} are cut by the upgrade"
            );
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut keep = |fd: OwnedFd| {
            let raw = fd.as_raw_fd();
            fds.push(fd);
            raw
        };
        let control_socket = keep(OwnedFd::from(self.control));
        let mut fronts = Vec::new();
        let mut serving = Vec::new();
        let mut instances = Vec::new();
        for app in frozen {
            if let Some(front) = app.front {
                serving.extend(front.serving);
                fronts.push(FrontFds {
                    app: app.app.clone(),
                    unix: front.unix.map(|(path, listener)| UnixFd {
                        path,
                        fd: keep(OwnedFd::from(listener)),
                    }),
                    tcp: front.tcp.map(|(bind, port, listener)| TcpFd {
                        bind,
                        port,
                        fd: keep(OwnedFd::from(listener)),
                    }),
                });
            }
            instances.extend(app.instances);
        }
        // Requests in flight are answered by this image (new ones wait in the backlog).
        if tokio::time::timeout(DRAIN_BOUND, futures_util::future::join_all(serving))
            .await
            .is_err()
        {
            tracing::warn!("requests still in flight after {DRAIN_BOUND:?} are cut by the upgrade");
        }
        let mut pipes: BTreeMap<(u32, bool), HandedPipe> = self
            .logs
            .hand_over()
            .await
            .into_iter()
            .map(|pipe| ((pipe.pid, pipe.stream == Stream::Stdout), pipe))
            .collect();
        if tokio::time::timeout(FLUSH_BOUND, self.logs.flush_all())
            .await
            .is_err()
        {
            tracing::error!("log files not flushed within {FLUSH_BOUND:?}; some lines may be lost");
        }
        let mut adoptees = Vec::new();
        let mut waiting = Vec::new();
        for frozen in instances {
            let (pid, up) = match frozen.kept.now {
                Carried::Process { pid, up } => (pid, up),
                Carried::BackingOff { due_in } => {
                    waiting.push(Waiting {
                        key: frozen.key,
                        history: frozen.kept.history,
                        due_in_ms: u64::try_from(due_in.as_millis()).unwrap_or(u64::MAX),
                    });
                    continue;
                }
            };
            let Some(stat) = procinfo::stat(pid) else {
                continue;
            };
            let mut pipe = |stdout: bool| {
                pipes.remove(&(pid, stdout)).map(|pipe| PipeFd {
                    partial: pipe.partial,
                    fd: keep(pipe.fd),
                })
            };
            let (stdout, stderr) = (pipe(true), pipe(false));
            adoptees.push(Adoptee {
                key: frozen.key,
                pid,
                start_ticks: stat.start_ticks,
                history: frozen.kept.history,
                up_ms: u64::try_from(up.as_millis()).unwrap_or(u64::MAX),
                stdout,
                stderr,
            });
        }
        self.running.write_now();
        let handover = Handover {
            version: VERSION,
            pid: std::process::id(),
            signalled_at_ns: self.signalled_at_ns,
            control_socket,
            fronts,
            instances: adoptees,
            waiting,
        };
        tracing::info!(
            processes = handover.instances.len(),
            fronts = handover.fronts.len(),
            "handing over to {}",
            self.exe.display()
        );
        super::exec(&self.path, &self.exe, &handover, &fds, &self.stop_asked)
    }
}
