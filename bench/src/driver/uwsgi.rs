//! The uWSGI emperor configured the way piku configures it (piku-inventory §3.2, §3.5): an
//! emperor ini watching `uwsgi-enabled/`, and one vassal ini per process instance with
//! `attach-daemon` for web and worker kinds and uWSGI's legacy `cron` for cron entries. Scaling
//! and stopping write or remove vassal inis, as piku does. Runs as the current user in a temp
//! dir, in the foreground (piku's systemd unit does the same).
//!
//! Two deliberate differences from piku: every instance gets its own `PORT` (piku gives all
//! instances one port, so scaled web instances could not serve at all), and `PIKU_INSTANCE` is
//! added to the vassal's `env` so the suite can find the instance in `/proc`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use super::{CrashView, Daemon, Driver, Kind, Shutdown, Tracker, signal};
use crate::fixture::{AppDef, ProcDef, Role};
use crate::procfs::{self, Pid};

/// What a `wsgi` vassal needs (see [`Uwsgi::write_wsgi_vassal`]).
pub struct WsgiVassal<'a> {
    /// `UWSGI_MAX_REQUESTS` (piku's default: 1024).
    pub max_requests: u32,
    pub app: &'a str,
    /// `module:callable`, the `wsgi:` line.
    pub module: &'a str,
    pub workdir: &'a Path,
    pub venv: &'a Path,
    pub socket: &'a Path,
    pub env: &'a std::collections::BTreeMap<String, String>,
}

pub struct Uwsgi {
    daemon: Daemon,
    enabled: PathBuf,
    available: PathBuf,
    logs: PathBuf,
    ports: Ports,
}

/// Ports handed to web instances, stable per (app, index) as our daemon keeps them.
#[derive(Default)]
pub struct Ports(BTreeMap<(String, u32), u16>);

impl Ports {
    pub fn get(&mut self, app: &str, index: u32) -> Result<u16> {
        if let Some(p) = self.0.get(&(app.to_string(), index)) {
            return Ok(*p);
        }
        // Not bind(0), as piku's get_free_port() does: the kernel may hand the same free port
        // out twice, and the ephemeral range is also where our HTTP probes' client sockets live.
        // A counter below that range, checked free, never gives one port to two instances.
        loop {
            let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
            if port >= PORT_LIMIT {
                bail!("no free port left in {PORT_BASE}..{PORT_LIMIT}");
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                self.0.insert((app.to_string(), index), port);
                return Ok(port);
            }
        }
    }
}

/// Web ports for uWSGI and supervisord instances: below Linux's default ephemeral range.
const PORT_BASE: u16 = 21000;
const PORT_LIMIT: u16 = 32000;
static NEXT_PORT: AtomicU16 = AtomicU16::new(PORT_BASE);

/// piku's translation of a five-field schedule into uWSGI's legacy cron (`*/N` → `-N`, `*` → `-1`).
pub fn uwsgi_cron(schedule: &str) -> String {
    schedule.replace("*/", "-").replace('*', "-1")
}

impl Uwsgi {
    pub fn start(base: &Path) -> Result<Uwsgi> {
        let home = base.join("uwsgi");
        let enabled = base.join("uwsgi-enabled");
        let available = base.join("uwsgi-available");
        let logs = base.join("logs");
        for d in [&home, &enabled, &available, &logs] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let ini = home.join("uwsgi.ini");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let text = format!(
            "[uwsgi]\n\
             chdir = {home}\n\
             emperor = {enabled}\n\
             log-maxsize = 1048576\n\
             logto = {home}/uwsgi.log\n\
             log-backupname = {home}/uwsgi.old.log\n\
             socket = {home}/uwsgi.sock\n\
             enable-threads = true\n\
             threads = {threads}\n",
            home = home.display(),
            enabled = enabled.display(),
            threads = cpus * 2,
        );
        fs::write(&ini, text)?;
        let mut cmd = Command::new("uwsgi");
        cmd.arg("--ini").arg(&ini);
        let daemon = Daemon::spawn(cmd, &base.join("uwsgi.stdout"))?;
        Ok(Uwsgi {
            daemon,
            enabled,
            available,
            logs,
            ports: Ports::default(),
        })
    }

    fn ini_name(app: &str, kind: &str, index: u32) -> String {
        format!("{app}_{kind}.{index}.ini")
    }

    fn write_vassal(&mut self, app: &AppDef, p: &ProcDef, index: u32) -> Result<()> {
        let log_dir = self.logs.join(&app.name);
        fs::create_dir_all(&log_dir)?;
        let log = log_dir.join(format!("{}.{index}.log", p.kind));
        let mut t = String::new();
        // The settings piku writes for every non-static vassal, in its order.
        let _ = write!(
            t,
            "[uwsgi]\nchdir = {}\nmaster = true\nproject = {}\nmax-requests = 1024\nlisten = 48\n\
             processes = 2\nprocname-prefix = {}:{}:\nenable-threads = true\n\
             log-x-forwarded-for = false\nlog-maxsize = 1048576\nlogto2 = {}\nlog-backupname = {}.old\n",
            app.workdir.display(),
            app.name,
            app.name,
            p.kind,
            log.display(),
            log.display(),
        );
        match &p.role {
            Role::Web | Role::Worker => {
                let _ = writeln!(t, "attach-daemon = {}", p.command);
            }
            Role::Cron(s) => {
                let _ = writeln!(t, "cron = {} {}", uwsgi_cron(s), p.command);
            }
        }
        for (k, v) in &app.env {
            let _ = writeln!(t, "env = {k}={v}");
        }
        let _ = writeln!(t, "env = PROC_TYPE={}", p.kind);
        let _ = writeln!(t, "env = PIKU_INSTANCE={index}");
        if p.role == Role::Web {
            let _ = writeln!(t, "env = PORT={}", self.ports.get(&app.name, index)?);
            let _ = writeln!(t, "env = BIND_ADDRESS=127.0.0.1");
        }
        let name = Self::ini_name(&app.name, &p.kind, index);
        let avail = self.available.join(&name);
        fs::write(&avail, &t)?;
        // piku copies the ini into uwsgi-enabled; a hidden temp + rename keeps the emperor from
        // reading half a file.
        let tmp = self.enabled.join(format!(".{name}.tmp"));
        fs::write(&tmp, &t)?;
        fs::rename(&tmp, self.enabled.join(&name))?;
        Ok(())
    }

    /// A `wsgi` vassal as piku writes one for an app with `NGINX_SERVER_NAME` (piku.py
    /// `spawn_worker`: the common settings, `virtualenv`, `module`, `threads`, `plugin`,
    /// `socket` + `chmod-socket`, and its per-request `log-format`), instance `index`.
    pub fn write_wsgi_vassal(&self, v: &WsgiVassal, index: u32) -> Result<()> {
        let log_dir = self.logs.join(v.app);
        fs::create_dir_all(&log_dir)?;
        let log = log_dir.join(format!("wsgi.{index}.log"));
        let mut t = format!(
            "[uwsgi]\nchdir = {}\nmaster = true\nproject = {}\nmax-requests = {}\nlisten = 48\n\
             processes = 2\nprocname-prefix = {}:wsgi:\nenable-threads = true\n\
             log-x-forwarded-for = false\nlog-maxsize = 1048576\nlogto2 = {}\nlog-backupname = {}.old\n\
             virtualenv = {}\nmodule = {}\nthreads = 4\nplugin = python3\nsocket = {}\nchmod-socket = 664\n\
             log-format = %%(addr) - %%(user) [%%(ltime)] \"%%(method) %%(uri) %%(proto)\" %%(status) \
             %%(size) \"%%(referer)\" \"%%(uagent)\" %%(msecs)ms\n",
            v.workdir.display(),
            v.app,
            v.max_requests,
            v.app,
            log.display(),
            log.display(),
            v.venv.display(),
            v.module,
            v.socket.display(),
        );
        for (k, val) in v.env {
            let _ = writeln!(t, "env = {k}={val}");
        }
        let _ = writeln!(t, "env = PROC_TYPE=wsgi");
        let _ = writeln!(t, "env = PIKU_INSTANCE={index}");
        let name = Self::ini_name(v.app, "wsgi", index);
        fs::write(self.available.join(&name), &t)?;
        let tmp = self.enabled.join(format!(".{name}.tmp"));
        fs::write(&tmp, &t)?;
        fs::rename(&tmp, self.enabled.join(&name))?;
        Ok(())
    }

    /// Takes instance `index` of an app's `wsgi` vassal away, as `ps:scale` does.
    pub fn remove_wsgi_vassal(&self, app: &str, index: u32) -> Result<()> {
        self.remove_vassal(app, "wsgi", index)
    }

    fn remove_vassal(&self, app: &str, kind: &str, index: u32) -> Result<()> {
        let p = self.enabled.join(Self::ini_name(app, kind, index));
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", p.display()))
            }
            _ => Ok(()),
        }
    }
}

impl Driver for Uwsgi {
    fn kind(&self) -> Kind {
        Kind::Uwsgi
    }

    fn root(&self) -> Pid {
        self.daemon.pid()
    }

    /// The emperor, every vassal master, and the `/bin/sh -c` that `attach-daemon` puts
    /// between a master and the app process.
    fn own_pids(&self) -> Vec<Pid> {
        procfs::tree(self.daemon.pid())
            .into_iter()
            .filter(|p| {
                procfs::exe(*p).is_some_and(|e| {
                    let e = e.to_string_lossy();
                    e.contains("uwsgi") || e.ends_with("/dash") || e.ends_with("/sh")
                })
            })
            .collect()
    }

    fn deploy(&mut self, apps: &[AppDef]) -> Result<()> {
        for app in apps {
            for p in &app.processes {
                for i in 1..=p.count {
                    self.write_vassal(app, p, i)?;
                }
            }
        }
        Ok(())
    }

    fn scale(&mut self, app: &AppDef, kind: &str, count: u32) -> Result<()> {
        let p = app
            .process(kind)
            .with_context(|| format!("{} has no kind {kind}", app.name))?
            .clone();
        let existing: Vec<u32> = (1..=64)
            .filter(|i| {
                self.enabled
                    .join(Self::ini_name(&app.name, kind, *i))
                    .exists()
            })
            .collect();
        for i in 1..=count {
            if !existing.contains(&i) {
                self.write_vassal(app, &p, i)?;
            }
        }
        for i in existing.into_iter().filter(|i| *i > count) {
            self.remove_vassal(&app.name, kind, i)?;
        }
        Ok(())
    }

    fn stop_app(&mut self, app: &AppDef) -> Result<()> {
        for p in &app.processes {
            for i in 1..=64 {
                self.remove_vassal(&app.name, &p.kind, i)?;
            }
        }
        Ok(())
    }

    /// uWSGI has no per-daemon status to ask.
    fn crash_view(&mut self, _app: &str, _kind: &str) -> Result<Option<CrashView>> {
        Ok(None)
    }

    fn log_files(&self, app: &str, kind: &str, index: u32) -> Vec<PathBuf> {
        let base = self.logs.join(app).join(format!("{kind}.{index}.log"));
        let old = PathBuf::from(format!("{}.old", base.display()));
        vec![base, old]
    }

    fn tracker(&mut self) -> &mut Tracker {
        &mut self.daemon.tracker
    }

    fn shutdown(&mut self) -> Result<Shutdown> {
        let pid = self.daemon.pid();
        self.daemon.tracker.sweep(pid);
        // piku's unit stops the emperor with KillSignal=SIGQUIT.
        signal(pid, Signal::SIGQUIT);
        Ok(self.daemon.finish(Duration::from_secs(20)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_translation_matches_piku() {
        assert_eq!(uwsgi_cron("* * * * *"), "-1 -1 -1 -1 -1");
        assert_eq!(uwsgi_cron("*/5 3 * * *"), "-5 3 -1 -1 -1");
    }
}
