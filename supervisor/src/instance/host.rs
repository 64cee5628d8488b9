//! What an instance's shell does to the world, behind a trait so that tests can put a fake
//! child in its place: spawn the process, signal its group, wait for the group to be gone,
//! probe readiness, write notes. [`ProcessHost`] is the real one.
//!
//! A process is known by its pid (= its process group id) and a future of its exit, not by a
//! tokio `Child`: the shell never needs more, and a process adopted from an earlier daemon
//! can be watched the same way.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hyper_proxy_glue::{HealthCheck, wait_healthy};
use nix::sys::signal::Signal;

use super::config::InstanceConfig;
use super::machine::History;
use crate::cgroup::{self, InstanceCgroup};
use crate::handover::{self, Adoption};
use crate::leftovers::Running;
use crate::logs::LogSink;
use crate::spawn::{self, Spawned};
use crate::{exit, fdstore, stop};

/// A port probe gets this long to connect (loopback: plenty)...
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// ...and a health path this long to answer: an app's health endpoint may query its
/// database, and a loaded machine answers slowly; a status seen late is still the status
/// (not a timeout) in a failed deploy's message. The glue probes again every 100 ms within it.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A started process.
pub struct Child {
    pub pid: u32,
    /// Resolves when the process has exited (and is reaped), with how: `exit 1`, `SIGKILL`,
    /// `oom-killed`.
    pub exit: BoxFuture<'static, String>,
}

/// The two signals a stop sends to a process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSignal {
    /// SIGTERM, and SIGCONT so that a stopped process can act on it.
    Term,
    Kill,
}

/// The world as an instance's shell sees it.
pub trait Host: Send + 'static {
    /// Starts the instance's process; the error says why it could not.
    fn spawn(&mut self) -> Result<Child, String>;
    fn signal(&mut self, pgid: u32, signal: GroupSignal);
    /// Resolves once nothing is left of the group nor of the instance's cgroup.
    fn group_gone(&mut self, pgid: u32) -> BoxFuture<'static, ()>;
    /// Clears what an exited leader left in its group, in the background.
    fn clear_group(&mut self, pgid: u32, grace: Duration);
    /// One readiness probe: `Ok` with what to note, `Err` with what it saw.
    fn probe(&mut self) -> BoxFuture<'static, Result<String, String>>;
    fn set_health_path(&mut self, path: Option<String>);
    /// A `[piku]` line in the instance's log.
    fn note(&mut self, msg: &str);
    /// The instance has ended: release what it held.
    fn ended(&mut self);
    /// Right after a spawn: the history of the process and how long it has been up, when it
    /// was not started but taken over from the previous image of the daemon (an upgrade).
    fn adopted(&mut self) -> Option<(History, Duration)> {
        None
    }
    /// Instead of a first start: the history of an instance the previous image was waiting
    /// to restart, and how soon it is due.
    fn backing_off(&mut self) -> Option<(History, Duration)> {
        None
    }
    /// Whether the next spawn takes over a process of the previous image (a cron entry,
    /// which starts waiting, then runs at once to take over its run in progress).
    fn has_adoption(&self) -> bool {
        false
    }
}

/// Real processes: process groups, cgroups, the running table and the log sink.
pub struct ProcessHost {
    config: InstanceConfig,
    sink: LogSink,
    running: Arc<Running>,
    /// The instance's cgroups; made (with its limits) at its first spawn, once the instance
    /// it replaces (which removes them when it ends) is gone.
    cgroup: Option<InstanceCgroup>,
    /// The process the previous image handed over for this instance: its first spawn takes
    /// it over instead of starting one.
    adoption: Option<Adoption>,
    /// The history of the process just taken over and its uptime, for the shell.
    kept: Option<(History, Duration)>,
    /// The back-off the previous image had this instance in, for the shell's start.
    waiting: Option<(History, Duration)>,
    /// The pid taken over, until its start is noted (as kept, not started).
    adopted_pid: Option<u32>,
    /// The process taken over was left by a daemon that crashed, not by an upgrade.
    adopted_after_crash: bool,
}

impl ProcessHost {
    pub fn new(config: InstanceConfig, sink: LogSink, running: Arc<Running>) -> ProcessHost {
        let adoption = handover::take_adoption(&config.running_key());
        let waiting = handover::take_waiting(&config.running_key());
        ProcessHost {
            config,
            sink,
            running,
            cgroup: None,
            adoption,
            kept: None,
            waiting,
            adopted_pid: None,
            adopted_after_crash: false,
        }
    }

    /// Takes over the process the previous image ran: its pipes, its running-table entry,
    /// its exit (through its pidfd: tokio did not spawn it).
    fn adopt(&mut self, adoption: Adoption) -> Child {
        self.cgroup();
        let Adoption {
            pid,
            pidfd,
            history,
            up,
            stdout,
            stderr,
            after_crash,
        } = adoption;
        self.adopted_after_crash = after_crash;
        self.sink.adopt(pid, stdout, stderr);
        let key = self.config.running_key();
        self.running.insert(key.clone(), pid);
        self.kept = Some((history, up));
        self.adopted_pid = Some(pid);
        let running = self.running.clone();
        let exit = Box::pin(async move {
            let what = handover::pidfd::exited(pid, pidfd).await;
            running.remove(&key, pid);
            fdstore::pipe_names(pid)
                .iter()
                .for_each(|name| fdstore::remove(name));
            what
        });
        Child { pid, exit }
    }

    fn cgroup(&mut self) -> InstanceCgroup {
        if let Some(cgroup) = &self.cgroup {
            return cgroup.clone();
        }
        let cgroup = cgroup::tree().instance(&self.config.app, &self.config.slot());
        for problem in cgroup.create(&self.config.limits) {
            self.note(&problem);
        }
        self.cgroup = Some(cgroup.clone());
        cgroup
    }
}

impl Host for ProcessHost {
    fn spawn(&mut self) -> Result<Child, String> {
        if let Some(adoption) = self.adoption.take() {
            return Ok(self.adopt(adoption));
        }
        let cgroup = self.cgroup();
        // An OOM kill of another of its processes before the leader's own SIGKILL would be
        // taken for the leader's: rare (an OOM-killed child, then a manual kill -9), and
        // only the name of that exit would be wrong.
        let oom_kills = cgroup.oom_kills();
        let Spawned {
            pid,
            stdout,
            stderr,
            exit: exited,
        } = spawn::spawn(
            &self.config.launch,
            &self.config.id,
            &cgroup.placement(&self.config.limits),
        )
        .map_err(|e| format!("cannot start `{}`: {e}", self.config.launch.command))?;
        // Kept by systemd too, so that a crash of the daemon loses no line (`fdstore`).
        let names = fdstore::pipe_names(pid);
        for (name, pipe) in names.iter().zip([&stdout, &stderr]) {
            if let Some(fd) = pipe {
                fdstore::store(name, std::os::fd::AsFd::as_fd(fd));
            }
        }
        self.sink.adopt(
            pid,
            stdout.map(|fd| (fd, Vec::new())),
            stderr.map(|fd| (fd, Vec::new())),
        );
        let key = self.config.running_key();
        self.running.insert(key.clone(), pid);
        let running = self.running.clone();
        let exit = Box::pin(async move {
            // Reaped: orphans of the group are the reaper's from now on.
            let what = exited.await;
            running.remove(&key, pid);
            names.iter().for_each(|name| fdstore::remove(name));
            // The kernel counts an OOM kill before it sends the SIGKILL (mm/oom_kill.c:
            // "Raise event before sending signal"), so the count is up by the time the
            // victim has died and been reaped: one read, no wait on the respawn path.
            if exit::is_sigkill(&what) && oom_kills.is_some() && cgroup.oom_kills() > oom_kills {
                return exit::OOM_KILLED.to_owned();
            }
            what
        });
        Ok(Child { pid, exit })
    }

    fn signal(&mut self, pgid: u32, signal: GroupSignal) {
        match signal {
            GroupSignal::Term => {
                stop::signal_group(pgid, Signal::SIGTERM);
                stop::signal_group(pgid, Signal::SIGCONT);
            }
            GroupSignal::Kill => stop::signal_group(pgid, Signal::SIGKILL),
        }
    }

    fn group_gone(&mut self, pgid: u32) -> BoxFuture<'static, ()> {
        let cgroup = self.cgroup.clone();
        Box::pin(async move {
            stop::group_gone(pgid).await;
            // What left the process group (setsid) is still in the cgroup.
            if let Some(cgroup) = cgroup {
                cgroup.kill().await;
            }
        })
    }

    fn clear_group(&mut self, pgid: u32, grace: Duration) {
        tokio::spawn(stop::clear_group(pgid, grace));
    }

    fn probe(&mut self) -> BoxFuture<'static, Result<String, String>> {
        let Some(port) = self.config.launch.port else {
            return Box::pin(async { Ok("running (no port to probe)".to_string()) });
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (check, timeout, ready) = match &self.config.health_path {
            Some(path) => (
                HealthCheck::Http { path: path.clone() },
                HEALTH_PROBE_TIMEOUT,
                format!("healthy on port {port} ({path} answers)"),
            ),
            None => (
                HealthCheck::Tcp,
                PROBE_TIMEOUT,
                format!("accepting connections on port {port}"),
            ),
        };
        Box::pin(async move {
            wait_healthy(addr, &check, timeout)
                .await
                .map(|()| ready)
                .map_err(|e| e.last.to_string())
        })
    }

    fn set_health_path(&mut self, path: Option<String>) {
        self.config.health_path = path;
    }

    fn note(&mut self, msg: &str) {
        // The machine notes a spawn as a start; a process taken over did not start.
        let kept;
        let msg = match self.adopted_pid.take() {
            Some(pid)
                if msg == format!("started pid {pid}")
                    || msg == format!("run started, pid {pid}") =>
            {
                let across = if self.adopted_after_crash {
                    "crash"
                } else {
                    "upgrade"
                };
                kept = format!("pid {pid} kept running across the supervisor's {across}");
                kept.as_str()
            }
            Some(pid) => {
                self.adopted_pid = Some(pid);
                msg
            }
            None => msg,
        };
        tracing::info!(app = %self.config.app, instance = %self.config.id, "{msg}");
        self.sink.note(msg);
    }

    fn adopted(&mut self) -> Option<(History, Duration)> {
        self.kept.take()
    }

    fn backing_off(&mut self) -> Option<(History, Duration)> {
        self.waiting.take()
    }

    fn has_adoption(&self) -> bool {
        self.adoption.is_some()
    }

    fn ended(&mut self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.remove();
        }
    }
}
