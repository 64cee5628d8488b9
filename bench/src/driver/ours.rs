//! Our `piku-supervisor`: a temp `PIKU_ROOT`, `Apply`/`Scale`/`Stop`/`Status` requests over its
//! socket, SIGTERM to stop it (its documented graceful shutdown).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use piku_proto::{
    AppSettings, AppSpec, AppStatus, Client, InstanceState, ProcessSpec, Request, Response, Role,
};

use super::{CrashView, Daemon, Driver, Kind, Shutdown, Tracker, signal};
use crate::fixture::{self, AppDef};
use crate::procfs::Pid;

/// Grace between SIGTERM and SIGKILL; the same figure is given to supervisord.
pub const STOP_GRACE_MS: u64 = 3000;

pub struct Ours {
    daemon: Daemon,
    root: PathBuf,
}

impl Ours {
    pub fn start(base: &Path, bin: &Path) -> Result<Ours> {
        let root = base.join("piku");
        std::fs::create_dir_all(&root)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--root").arg(&root).env("PIKU_ROOT", &root);
        // Its own log at info level would cost it CPU on every spawn; warnings still show.
        if std::env::var_os("PIKU_LOG").is_none() {
            cmd.env("PIKU_LOG", "warn");
        }
        let daemon = Daemon::spawn(cmd, &base.join("piku-supervisor.log"))?;
        let me = Ours { daemon, root };
        let sock = me.socket();
        let t0 = Instant::now();
        loop {
            if sock.exists() && Client::connect(&sock).is_ok() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(15) {
                bail!(
                    "piku-supervisor did not open {} within 15 s (see {})",
                    sock.display(),
                    base.join("piku-supervisor.log").display()
                );
            }
            sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    fn socket(&self) -> PathBuf {
        self.root.join("supervisor.sock")
    }

    /// One request on a fresh connection; the final response.
    pub fn call(&self, req: &Request) -> Result<Response> {
        let mut c = Client::connect(&self.socket()).context("connecting to piku-supervisor")?;
        c.call(req, |_| {})
            .with_context(|| format!("piku-supervisor refused {}", request_name(req)))
    }

    pub fn status(&self, app: Option<&str>) -> Result<Vec<AppStatus>> {
        match self.call(&Request::Status {
            app: app.map(str::to_string),
        })? {
            Response::Status { apps } => Ok(apps),
            other => bail!("unexpected answer to status: {other:?}"),
        }
    }

    /// Time of one Status round trip on an open connection, for the scale row.
    pub fn status_latency(&self, samples: usize) -> Result<Vec<Duration>> {
        let mut c = Client::connect(&self.socket())?;
        let mut out = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t0 = Instant::now();
            c.call(&Request::Status { app: None }, |_| {})?;
            out.push(t0.elapsed());
        }
        Ok(out)
    }

    /// Instances of every app in state Running, per the daemon.
    pub fn running_total(&self) -> Result<usize> {
        Ok(self
            .status(None)?
            .iter()
            .flat_map(|a| &a.instances)
            .filter(|i| i.state == InstanceState::Running)
            .count())
    }
}

fn request_name(req: &Request) -> &'static str {
    match req {
        Request::Hello { .. } => "hello",
        Request::Apply(_) => "apply",
        Request::Scale { .. } => "scale",
        Request::Restart { .. } => "restart",
        Request::Stop { .. } => "stop",
        Request::Start { .. } => "start",
        Request::Remove { .. } => "remove",
        Request::Status { .. } => "status",
        Request::Logs(_) => "logs",
    }
}

fn spec(app: &AppDef) -> AppSpec {
    AppSpec {
        app: app.name.clone(),
        release: "v1".into(),
        workdir: app.workdir.clone(),
        env: app.env.clone(),
        processes: app
            .processes
            .iter()
            .map(|p| ProcessSpec {
                kind: p.kind.clone(),
                command: p.command.clone(),
                role: match &p.role {
                    fixture::Role::Web => Role::Web,
                    fixture::Role::Worker => Role::Worker,
                    fixture::Role::Cron(s) => Role::Cron {
                        schedule: s.clone(),
                    },
                },
                count: p.count,
            })
            .collect(),
        settings: AppSettings {
            stop_grace_ms: STOP_GRACE_MS,
            ..AppSettings::default()
        },
    }
}

impl Driver for Ours {
    fn kind(&self) -> Kind {
        Kind::Ours
    }

    fn root(&self) -> Pid {
        self.daemon.pid()
    }

    fn own_pids(&self) -> Vec<Pid> {
        vec![self.daemon.pid()]
    }

    fn deploy(&mut self, apps: &[AppDef]) -> Result<()> {
        for app in apps {
            self.call(&Request::Apply(Box::new(spec(app))))?;
        }
        Ok(())
    }

    fn scale(&mut self, app: &AppDef, kind: &str, count: u32) -> Result<()> {
        self.call(&Request::Scale {
            app: app.name.clone(),
            formation: BTreeMap::from([(kind.to_string(), count)]),
        })?;
        Ok(())
    }

    fn stop_app(&mut self, app: &AppDef) -> Result<()> {
        self.call(&Request::Stop {
            app: app.name.clone(),
        })?;
        Ok(())
    }

    fn crash_view(&mut self, app: &str, kind: &str) -> Result<Option<CrashView>> {
        let apps = self.status(Some(app))?;
        let inst = apps
            .iter()
            .flat_map(|a| &a.instances)
            .find(|i| i.kind == kind);
        Ok(inst.map(|i| CrashView {
            state: format!(
                "{} (restarts {}, last exit {})",
                i.state,
                i.restarts,
                i.last_exit.as_deref().unwrap_or("-")
            ),
            gave_up: i.state == InstanceState::Stopped,
        }))
    }

    fn log_files(&self, app: &str, kind: &str, index: u32) -> Vec<PathBuf> {
        let dir = self.root.join("logs").join(app);
        let base = dir.join(format!("{kind}.{index}.log"));
        let mut out = vec![base.clone()];
        let old = PathBuf::from(format!("{}.old", base.display()));
        out.push(old.clone());
        // Further backups, if the daemon keeps more than one: `.old.2`, `.old.3`, …
        for n in 2..100 {
            let p = PathBuf::from(format!("{}.{n}", old.display()));
            if !p.exists() {
                break;
            }
            out.push(p);
        }
        out
    }

    fn unwritable_lines(&mut self, app: &str, kind: &str) -> Result<Option<u64>> {
        let apps = self.status(Some(app))?;
        Ok(Some(
            apps.iter()
                .flat_map(|a| &a.instances)
                .filter(|i| i.kind == kind)
                .map(|i| i.log_lines_dropped)
                .sum(),
        ))
    }

    fn tracker(&mut self) -> &mut Tracker {
        &mut self.daemon.tracker
    }

    fn shutdown(&mut self) -> Result<Shutdown> {
        let pid = self.daemon.pid();
        self.daemon.tracker.sweep(pid);
        signal(pid, Signal::SIGTERM);
        Ok(self.daemon.finish(Duration::from_secs(20)))
    }
}
