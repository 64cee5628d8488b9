//! A fake child for tests: instances whose "processes" are channels, run by a [`Host`]
//! that records what the shell asked of it. With tokio's paused clock, tests of the
//! instance shell and of the app actor run in microseconds and exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::config::InstanceConfig;
use super::host::{Child, GroupSignal, Host};
use super::{Done, InstanceHandle, Launcher, Meter, With};
use crate::logs::LogSink;

/// What the fake children do, and what the shells did to them.
#[derive(Default)]
pub struct World {
    next_pid: u32,
    /// Live fake processes: pid → how to end it.
    alive: BTreeMap<u32, oneshot::Sender<String>>,
    /// Everything the shells asked, in order: `spawn 1`, `term 1`, `kill 1`, `probe`,
    /// `note <text>`, `ended`.
    pub log: Vec<String>,
    /// (pid, instance, release, when) of every spawn.
    pub spawned: Vec<Spawn>,
    pub spawn_fails: bool,
    pub ignores_term: bool,
    /// Whether readiness probes pass (for releases not in `unready`).
    pub probe_passes: bool,
    /// Each process exits on its own after this long (cron runs).
    pub runs_for: Option<Duration>,
    /// Releases whose processes never become ready.
    pub unready: BTreeSet<String>,
    /// Releases whose processes exit at once, with this.
    pub exit_at_start: BTreeMap<String, String>,
    /// What the meter says each process uses (none: unknown).
    pub memory: BTreeMap<u32, u64>,
}

#[derive(Debug, Clone)]
pub struct Spawn {
    pub pid: u32,
    pub release: String,
    pub port: Option<u16>,
    pub at: Instant,
}

/// A fake host; clones share the world.
#[derive(Clone, Default)]
pub struct Fake {
    world: Arc<Mutex<World>>,
    /// Who this host runs (`None`: an anonymous instance of release "").
    config: Option<InstanceConfig>,
    /// Notes also go here, so the app's log tail shows them.
    sink: Option<LogSink>,
}

impl Fake {
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The process `pid` exits on its own (`kill -9` from outside, a crash).
    pub fn exit(&self, pid: u32, how: &str) {
        if let Some(exit) = self.world().alive.remove(&pid) {
            let _ = exit.send(how.to_string());
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.world().log.clone()
    }

    pub fn spawns(&self) -> Vec<Spawn> {
        self.world().spawned.clone()
    }

    /// Pids of the fake processes alive now.
    pub fn alive(&self) -> Vec<u32> {
        self.world().alive.keys().copied().collect()
    }

    fn release(&self) -> String {
        self.config
            .as_ref()
            .map(|c| c.release.clone())
            .unwrap_or_default()
    }
}

impl Host for Fake {
    fn spawn(&mut self) -> Result<Child, String> {
        let release = self.release();
        let mut w = self.world();
        if w.spawn_fails {
            w.log.push("spawn failed".into());
            return Err("cannot start `app`: not found".into());
        }
        w.next_pid += 1;
        let pid = w.next_pid;
        w.log.push(format!("spawn {pid}"));
        w.spawned.push(Spawn {
            pid,
            release: release.clone(),
            port: self.config.as_ref().and_then(|c| c.launch.port),
            at: Instant::now(),
        });
        let (tx, rx) = oneshot::channel();
        match w.exit_at_start.get(&release) {
            Some(how) => {
                let _ = tx.send(how.clone());
            }
            None => {
                w.alive.insert(pid, tx);
            }
        }
        if let Some(run) = w.runs_for {
            let fake = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(run).await;
                fake.exit(pid, "exit 0");
            });
        }
        let exit: BoxFuture<'static, String> =
            Box::pin(async move { rx.await.unwrap_or_else(|_| "lost".into()) });
        Ok(Child { pid, exit })
    }

    fn signal(&mut self, pgid: u32, signal: GroupSignal) {
        let ignores_term = {
            let mut w = self.world();
            w.log.push(match signal {
                GroupSignal::Term => format!("term {pgid}"),
                GroupSignal::Kill => format!("kill {pgid}"),
            });
            w.ignores_term
        };
        match signal {
            GroupSignal::Term if !ignores_term => self.exit(pgid, "SIGTERM"),
            GroupSignal::Term => {}
            GroupSignal::Kill => self.exit(pgid, "SIGKILL"),
        }
    }

    fn group_gone(&mut self, _pgid: u32) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    fn clear_group(&mut self, pgid: u32, _grace: Duration) {
        self.world().log.push(format!("clear {pgid}"));
    }

    fn probe(&mut self) -> BoxFuture<'static, Result<String, String>> {
        let release = self.release();
        let passes = {
            let mut w = self.world();
            w.log.push("probe".into());
            w.probe_passes && !w.unready.contains(&release)
        };
        Box::pin(async move {
            if passes {
                Ok("ready".to_string())
            } else {
                Err("connection refused".to_string())
            }
        })
    }

    fn set_health_path(&mut self, _path: Option<String>) {}

    fn note(&mut self, msg: &str) {
        self.world().log.push(format!("note {msg}"));
        if let Some(sink) = &self.sink {
            sink.note(msg);
        }
    }

    fn ended(&mut self) {
        self.world().log.push("ended".into());
    }
}

/// Starts every instance on a [`Fake`] host sharing one world.
#[derive(Clone, Default)]
pub struct FakeLauncher {
    pub fake: Fake,
}

impl Launcher for FakeLauncher {
    fn launch(
        &self,
        config: InstanceConfig,
        grace: Duration,
        sink: LogSink,
        after: Option<Done>,
    ) -> InstanceHandle {
        let host = Fake {
            world: self.fake.world.clone(),
            config: Some(config.clone()),
            sink: Some(sink.clone()),
        };
        // Cron entries are not exercised through the launcher.
        let with = With {
            host,
            schedule: None,
            meter: Arc::new(self.fake.clone()),
        };
        InstanceHandle::with(config, grace, sink, with, after)
    }
}

/// The fake's memory figures, as the world says.
impl Meter for Fake {
    fn memory_bytes(&self, _config: &InstanceConfig, pid: u32) -> Option<u64> {
        self.world().memory.get(&pid).copied()
    }

    fn oom_kills(&self, _config: &InstanceConfig) -> Option<u64> {
        None
    }
}
