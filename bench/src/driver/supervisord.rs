//! supervisord with a temp config: one `[program:…]` per process instance (in `conf.d/`, picked
//! up by `supervisorctl update`), `stopasgroup`/`killasgroup` on, logs rotated at 1 MiB with one
//! backup as piku's uWSGI setup does, `supervisorctl` over a temp unix socket.
//!
//! supervisord has no cron: a cron entry becomes the usual stand-in, a program that sleeps 60 s
//! and runs the command in a loop.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::uwsgi::Ports;
use super::{CrashView, Daemon, Driver, Kind, Shutdown, Tracker, run};
use crate::fixture::{AppDef, ProcDef, Role};
use crate::procfs::Pid;

/// Same grace as our daemon gets ([`super::ours::STOP_GRACE_MS`]).
const STOP_WAIT_SECS: u64 = super::ours::STOP_GRACE_MS / 1000;

pub struct Supervisord {
    daemon: Daemon,
    conf: PathBuf,
    confd: PathBuf,
    logs: PathBuf,
    ports: Ports,
}

impl Supervisord {
    pub fn start(base: &Path) -> Result<Supervisord> {
        let confd = base.join("conf.d");
        let logs = base.join("logs");
        fs::create_dir_all(&confd)?;
        fs::create_dir_all(&logs)?;
        let conf = base.join("supervisord.conf");
        let sock = base.join("supervisor.sock");
        let text = format!(
            "[unix_http_server]\nfile = {sock}\nchmod = 0700\n\n\
             [supervisord]\nnodaemon = true\nlogfile = {base}/supervisord.log\n\
             pidfile = {base}/supervisord.pid\nchildlogdir = {logs}\nloglevel = info\n\
             user = {user}\n\n\
             [rpcinterface:supervisor]\n\
             supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
             [supervisorctl]\nserverurl = unix://{sock}\n\n\
             [include]\nfiles = {confd}/*.conf\n",
            sock = sock.display(),
            base = base.display(),
            logs = logs.display(),
            confd = confd.display(),
            user = current_user(),
        );
        fs::write(&conf, text)?;
        let mut cmd = Command::new("supervisord");
        cmd.arg("-c").arg(&conf);
        let daemon = Daemon::spawn(cmd, &base.join("supervisord.stdout"))?;
        let me = Supervisord {
            daemon,
            conf,
            confd,
            logs,
            ports: Ports::default(),
        };
        let t0 = Instant::now();
        while me.ctl(&["pid"]).is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!(
                    "supervisord did not answer on {} within 20 s",
                    sock.display()
                );
            }
            sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    /// Runs `supervisorctl -c <conf> args…`.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        run(Command::new("supervisorctl")
            .arg("-c")
            .arg(&self.conf)
            .args(args))
    }

    fn program(app: &str, kind: &str, index: u32) -> String {
        format!("{app}_{kind}_{index}")
    }

    fn write_program(&mut self, app: &AppDef, p: &ProcDef, index: u32) -> Result<()> {
        let name = Self::program(&app.name, &p.kind, index);
        let log_dir = self.logs.join(&app.name);
        fs::create_dir_all(&log_dir)?;
        let mut env: Vec<String> = app
            .env
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        env.push(format!("PROC_TYPE=\"{}\"", p.kind));
        env.push(format!("PIKU_INSTANCE=\"{index}\""));
        if p.role == Role::Web {
            env.push(format!("PORT=\"{}\"", self.ports.get(&app.name, index)?));
        }
        let command = match &p.role {
            Role::Web | Role::Worker => p.command.clone(),
            Role::Cron(_) => format!("/bin/sh -c \"while sleep 60; do {}; done\"", p.command),
        };
        let mut t = String::new();
        let _ = write!(
            t,
            "[program:{name}]\ncommand = {command}\ndirectory = {dir}\nenvironment = {env}\n\
             autostart = true\nautorestart = true\nstopasgroup = true\nkillasgroup = true\n\
             stopwaitsecs = {STOP_WAIT_SECS}\nredirect_stderr = true\n\
             stdout_logfile = {log}\nstdout_logfile_maxbytes = 1MB\nstdout_logfile_backups = 1\n",
            dir = app.workdir.display(),
            env = env.join(","),
            log = log_dir.join(format!("{}.{index}.log", p.kind)).display(),
        );
        fs::write(self.confd.join(format!("{name}.conf")), t)?;
        Ok(())
    }
}

fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| "root".to_string(), |u| u.name)
}

impl Driver for Supervisord {
    fn kind(&self) -> Kind {
        Kind::Supervisord
    }

    fn root(&self) -> Pid {
        self.daemon.pid()
    }

    fn own_pids(&self) -> Vec<Pid> {
        vec![self.daemon.pid()]
    }

    fn deploy(&mut self, apps: &[AppDef]) -> Result<()> {
        for app in apps {
            for p in &app.processes {
                for i in 1..=p.count {
                    self.write_program(app, p, i)?;
                }
            }
        }
        self.ctl(&["update"])?;
        Ok(())
    }

    fn scale(&mut self, app: &AppDef, kind: &str, count: u32) -> Result<()> {
        let p = app
            .process(kind)
            .with_context(|| format!("{} has no kind {kind}", app.name))?
            .clone();
        for i in 1..=count {
            self.write_program(app, &p, i)?;
        }
        for i in count + 1..=64 {
            let f = self
                .confd
                .join(format!("{}.conf", Self::program(&app.name, kind, i)));
            if f.exists() {
                fs::remove_file(&f)?;
            }
        }
        self.ctl(&["update"])?;
        Ok(())
    }

    fn stop_app(&mut self, app: &AppDef) -> Result<()> {
        let names: Vec<String> = app
            .processes
            .iter()
            .flat_map(|p| (1..=p.count).map(|i| Self::program(&app.name, &p.kind, i)))
            .collect();
        let mut args = vec!["stop"];
        args.extend(names.iter().map(String::as_str));
        self.ctl(&args)?;
        Ok(())
    }

    fn crash_view(&mut self, app: &str, kind: &str) -> Result<Option<CrashView>> {
        // `status` exits non-zero when a program is not RUNNING; the text is what we want.
        let out = Command::new("supervisorctl")
            .arg("-c")
            .arg(&self.conf)
            .arg("status")
            .arg(Self::program(app, kind, 1))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let state = text.split_whitespace().nth(1).unwrap_or("?").to_string();
        Ok(Some(CrashView {
            gave_up: state == "FATAL",
            state,
        }))
    }

    fn log_files(&self, app: &str, kind: &str, index: u32) -> Vec<PathBuf> {
        let base = self.logs.join(app).join(format!("{kind}.{index}.log"));
        let b1 = PathBuf::from(format!("{}.1", base.display()));
        vec![base, b1]
    }

    fn tracker(&mut self) -> &mut Tracker {
        &mut self.daemon.tracker
    }

    fn shutdown(&mut self) -> Result<Shutdown> {
        let pid = self.daemon.pid();
        self.daemon.tracker.sweep(pid);
        if self.ctl(&["shutdown"]).is_err() {
            super::signal(pid, nix::sys::signal::Signal::SIGTERM);
        }
        Ok(self.daemon.finish(Duration::from_secs(30)))
    }
}
