//! What `piku-bench wsgi` compares: piku + uWSGI (the emperor, a `wsgi` vassal on a Unix
//! socket, nginx `uwsgi_pass`, exactly as piku configures them) and ours with each candidate
//! server (our daemon, the app's front on a Unix socket, nginx `proxy_pass`, the server
//! started with the command line `piku-deploy` generates). A [`Stack`] runs a set of targets
//! for one app behind one nginx, so their rounds can alternate.
//!
//! Over 500 lines on purpose: each target's setup (config, start, stop, PSS) is written out next
//! to the others, so a reader can check that every target is treated alike.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use piku_deploy::runtime::python::wsgi::Server;
use piku_model::EnvMap;
use piku_proto::{AppSettings, AppSpec, FrontSpec, InstanceState, ProcessSpec, Request, Role};

use super::apps::App;
use crate::driver::ours::Ours;
use crate::driver::uwsgi::{Uwsgi, WsgiVassal};
use crate::driver::{Driver, signal, wait_ready};
use crate::fixture::{AppDef, ProcDef, Role as FixtureRole};
use crate::procfs::{self, Pid};

/// A server of ours and the settings it runs with (on top of the defaults `piku-deploy` picks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub label: &'static str,
    pub server: Server,
    pub env: &'static [(&'static str, &'static str)],
}

/// Every candidate, the default first.
pub const CANDIDATES: [Candidate; 7] = [
    Candidate {
        label: "uWSGI per instance (our defaults)",
        server: Server::Uwsgi,
        env: &[],
    },
    Candidate {
        label: "uWSGI per instance, 2 processes",
        server: Server::Uwsgi,
        env: &[("UWSGI_PROCESSES", "2")],
    },
    Candidate {
        label: "granian (our defaults)",
        server: Server::Granian,
        env: &[],
    },
    Candidate {
        label: "granian, 2 workers",
        server: Server::Granian,
        env: &[("UWSGI_PROCESSES", "2")],
    },
    Candidate {
        label: "gunicorn gthread (our defaults)",
        server: Server::Gunicorn,
        env: &[],
    },
    Candidate {
        label: "gunicorn sync, 2 workers",
        server: Server::Gunicorn,
        env: &[("UWSGI_PROCESSES", "2"), ("UWSGI_THREADS", "1")],
    },
    Candidate {
        label: "waitress (our defaults)",
        server: Server::Waitress,
        env: &[],
    },
];

/// Set in a candidate's env: uWSGI as it ran before the front kept connections to it alive
/// (`--http-socket`, `Connection: close`, no bound in the front); run only when asked for
/// (`PIKU_BENCH_WSGI_TARGETS`, see `subset.rs`).
pub const CONNECTION_PER_REQUEST: &str = "PIKU_BENCH_CONNECTION_PER_REQUEST";

/// uWSGI as our default ran it before keep-alive.
pub const UWSGI_CONNECTION_PER_REQUEST: Candidate = Candidate {
    label: "uWSGI per instance, a connection per request (before keep-alive)",
    server: Server::Uwsgi,
    env: &[(CONNECTION_PER_REQUEST, "1")],
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// piku + uWSGI, as piku configures it, with this `max-requests` (piku's default 1024, or
    /// `UWSGI_MAX_REQUESTS` raised so far that no worker is recycled during the run).
    Piku {
        max_requests: u32,
    },
    Ours(Candidate),
}

/// piku's `UWSGI_MAX_REQUESTS` default.
pub const PIKU_MAX_REQUESTS: u32 = 1024;
/// `UWSGI_MAX_REQUESTS` high enough that no uWSGI worker restarts during a run (as in
/// piku-baseline §3.5).
pub const NO_RECYCLING: u32 = 10_000_000;

/// piku as it comes.
pub const PIKU: Target = Target::Piku {
    max_requests: PIKU_MAX_REQUESTS,
};
/// piku with recycling out of the way: the fairer reference for a server's own speed.
pub const PIKU_NO_RECYCLING: Target = Target::Piku {
    max_requests: NO_RECYCLING,
};

impl Target {
    pub fn all() -> Vec<Target> {
        [PIKU, PIKU_NO_RECYCLING]
            .into_iter()
            .chain(CANDIDATES.iter().copied().map(Target::Ours))
            .collect()
    }

    pub fn is_piku(&self) -> bool {
        matches!(self, Target::Piku { .. })
    }

    pub fn label(&self) -> String {
        match self {
            Target::Piku { max_requests } if *max_requests == PIKU_MAX_REQUESTS => {
                "piku + uWSGI emperor (piku's defaults)".into()
            }
            Target::Piku { max_requests } => {
                format!("piku + uWSGI emperor, UWSGI_MAX_REQUESTS={max_requests}")
            }
            Target::Ours(c) => format!("ours: {}", c.label),
        }
    }
}

/// One target of a running stack.
pub struct Entry {
    pub target: Target,
    /// The app's name under its supervisor.
    pub app: String,
    /// nginx's port for this target.
    pub port: u16,
    /// piku only: nginx's port for a second vassal (see [`Stack::scale`]).
    pub port2: Option<u16>,
    socket: PathBuf,
}

/// Supervisors running `app` for some targets, behind one nginx.
pub struct Stack {
    pub entries: Vec<Entry>,
    ours: Option<Ours>,
    uwsgi: Option<Uwsgi>,
    nginx: Option<Nginx>,
    venv: PathBuf,
    src: PathBuf,
    app: App,
}

impl Stack {
    /// Starts the supervisors and nginx, deploys `app` for every target and waits until each
    /// answers through nginx.
    pub fn start(
        base: &Path,
        supervisor_bin: &Path,
        venv: &Path,
        src: &Path,
        app: App,
        targets: &[Target],
        extra: &Extra,
    ) -> Result<Stack> {
        fs::create_dir_all(base)?;
        let mut stack = Stack {
            entries: Vec::new(),
            ours: None,
            uwsgi: None,
            nginx: None,
            venv: venv.to_path_buf(),
            src: src.to_path_buf(),
            app,
        };
        if targets.iter().any(|t| matches!(t, Target::Ours(_))) {
            stack.ours = Some(Ours::start(&base.join("ours"), supervisor_bin)?);
        }
        if targets.iter().any(Target::is_piku) {
            stack.uwsgi = Some(Uwsgi::start(&base.join("uwsgi"))?);
        }
        for (i, t) in targets.iter().enumerate() {
            let name = format!("{}{i}", app.name());
            let socket = match t {
                Target::Piku { .. } => base.join("uwsgi").join(format!("{name}.sock")),
                Target::Ours(_) => base.join("ours/piku/nginx").join(format!("{name}.sock")),
            };
            if let Some(dir) = socket.parent() {
                fs::create_dir_all(dir)?;
            }
            stack.entries.push(Entry {
                target: *t,
                app: name,
                port: free_port()?,
                port2: t.is_piku().then(free_port).transpose()?,
                socket,
            });
        }
        for i in 0..stack.entries.len() {
            stack.deploy(i, extra)?;
        }
        if let Some(o) = stack.ours.as_mut() {
            o.deploy(extra.others)?;
        }
        if let Some(u) = stack.uwsgi.as_mut() {
            u.deploy(extra.others)?;
        }
        stack.nginx = Some(Nginx::start(
            &base.join("nginx"),
            &stack.entries,
            extra.client_max_body_size,
        )?);
        for e in &stack.entries {
            wait_serving(e.port, Duration::from_secs(60))
                .with_context(|| format!("{} did not answer through nginx", e.target.label()))?;
        }
        stack.wait_extra(extra)?;
        stack.sweep();
        Ok(stack)
    }

    /// Waits until the extra processes run under every supervisor.
    fn wait_extra(&mut self, extra: &Extra) -> Result<()> {
        let mut apps: Vec<AppDef> = extra.others.to_vec();
        if !extra.with.is_empty() {
            for e in &self.entries {
                let mut a = AppDef::new(&e.app, &self.src);
                a.processes = extra.with.to_vec();
                apps.push(a);
            }
        }
        for d in [
            self.ours.as_mut().map(|o| o as &mut dyn Driver),
            self.uwsgi.as_mut().map(|u| u as &mut dyn Driver),
        ]
        .into_iter()
        .flatten()
        {
            wait_ready(d, &apps, Duration::from_secs(60))?;
        }
        Ok(())
    }

    fn env(&self, e: &Entry) -> EnvMap {
        let mut env: EnvMap = [
            ("PIKU_APP", e.app.as_str()),
            ("BIND_ADDRESS", "127.0.0.1"),
            ("PYTHONUNBUFFERED", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.insert(
            "PATH".into(),
            format!("{}:/usr/bin:/bin", self.venv.join("bin").display()),
        );
        env.insert("VIRTUAL_ENV".into(), self.venv.display().to_string());
        if let Target::Ours(c) = e.target {
            for (k, v) in c.env {
                env.insert(k.to_string(), v.to_string());
            }
        }
        env
    }

    fn deploy(&mut self, i: usize, extra: &Extra) -> Result<()> {
        let e = &self.entries[i];
        let env = self.env(e);
        match e.target {
            Target::Piku { .. } => {
                if !extra.with.is_empty() {
                    let mut side = AppDef::new(&e.app, &self.src);
                    side.processes = extra.with.to_vec();
                    let uwsgi = self.uwsgi.as_mut().context("no emperor")?;
                    uwsgi.deploy(&[side])?;
                }
                let socket = self.entries[i].socket.clone();
                self.write_vassal(i, 1, &socket)
            }
            Target::Ours(c) => {
                let mut warnings = Vec::new();
                let mut command =
                    c.server
                        .command(&self.venv, self.app.module(), &env, &mut warnings);
                // uWSGI as it ran before keep-alive, for comparison: a connection per request,
                // no bound in the front.
                let before_keep_alive = env.contains_key(CONNECTION_PER_REQUEST);
                if before_keep_alive {
                    command = command.replace("--http11-socket", "--http-socket")
                        + " --add-header 'Connection: close'";
                }
                let mut processes = vec![ProcessSpec {
                    kind: "wsgi".into(),
                    command,
                    role: Role::Web,
                    count: 1,
                }];
                processes.extend(extra.with.iter().map(process_spec));
                // The front's timeouts and body limit from the env, as piku-deploy reads them.
                let settings = piku_model::FrontSettings::from_env(&env).unwrap_or_default();
                // As piku-deploy sets it for the server (activate.rs).
                let max_in_flight_per_instance =
                    c.server.max_in_flight(&env).filter(|_| !before_keep_alive);
                let spec = AppSpec {
                    app: e.app.clone(),
                    release: "v1".into(),
                    workdir: self.src.clone(),
                    env,
                    processes,
                    settings: AppSettings {
                        stop_grace_ms: 3000,
                        front: Some(FrontSpec {
                            unix_socket: Some(e.socket.clone()),
                            response_timeout_ms: settings.response_timeout_secs * 1000,
                            header_timeout_ms: settings.header_timeout_secs * 1000,
                            keepalive_timeout_ms: settings.keepalive_timeout_secs * 1000,
                            max_request_body: settings.max_request_body(),
                            stall_after_ms: settings.stall_after_ms(),
                            max_in_flight_per_instance,
                            ..FrontSpec::default()
                        }),
                        ..AppSettings::default()
                    },
                };
                let ours = self.ours.as_mut().context("no daemon")?;
                if let piku_proto::Response::Error { message } =
                    ours.call(&Request::Apply(Box::new(spec)))?
                {
                    bail!("apply of {} refused: {message}", e.app);
                }
                Ok(())
            }
        }
    }

    /// Writes instance `index` of piku's `wsgi` vassal for entry `i`, on `socket`.
    fn write_vassal(&self, i: usize, index: u32, socket: &Path) -> Result<()> {
        let e = &self.entries[i];
        let Target::Piku { max_requests } = e.target else {
            bail!("{} is not a piku target", e.app);
        };
        let env = self.env(e);
        let vassal = WsgiVassal {
            max_requests,
            app: &e.app,
            module: self.app.module(),
            workdir: &self.src,
            venv: &self.venv,
            socket,
            env: &env,
        };
        self.uwsgi
            .as_ref()
            .context("no emperor")?
            .write_wsgi_vassal(&vassal, index)
    }

    /// The supervisor tree that `e` runs in (ours: the daemon; piku: the emperor).
    pub fn root(&self, e: &Entry) -> Option<Pid> {
        match e.target {
            Target::Piku { .. } => self.uwsgi.as_ref().map(|u| u.root()),
            Target::Ours(_) => self.ours.as_ref().map(|o| o.root()),
        }
    }

    /// Records every process of every supervisor (for cleanup).
    pub fn sweep(&mut self) {
        if let Some(o) = self.ours.as_mut() {
            o.sweep();
        }
        if let Some(u) = self.uwsgi.as_mut() {
            u.sweep();
        }
    }

    /// Asks for `count` (1 or 2) instances of `e`'s wsgi entry; returns when the request is
    /// made. piku scales by writing vassal `<app>_wsgi.2.ini`; as piku writes it, it would bind
    /// the same socket as the first (piku-baseline §3.4), so here it gets its own (`port2`).
    pub fn scale(&mut self, i: usize, count: u32) -> Result<()> {
        let e = &self.entries[i];
        match e.target {
            Target::Piku { .. } => {
                if count >= 2 {
                    self.write_vassal(i, 2, &second_socket(&e.socket))
                } else {
                    let uwsgi = self.uwsgi.as_ref().context("no emperor")?;
                    uwsgi.remove_wsgi_vassal(&e.app, 2)
                }
            }
            Target::Ours(_) => {
                let ours = self.ours.as_ref().context("no daemon")?;
                ours.call(&Request::Scale {
                    app: e.app.clone(),
                    formation: BTreeMap::from([("wsgi".to_string(), count)]),
                })?;
                Ok(())
            }
        }
    }

    /// Waits until instance 2 of `e` answers HTTP (piku: through nginx's second server; ours:
    /// on the instance's own port).
    pub fn wait_second(&self, i: usize, deadline: Duration) -> Result<()> {
        let e = &self.entries[i];
        let t0 = Instant::now();
        let poll = Duration::from_millis(5);
        match e.target {
            Target::Piku { .. } => {
                let port = e.port2.context("no second port")?;
                while !crate::http::serves(port, Duration::from_millis(500)) {
                    if t0.elapsed() > deadline {
                        bail!("the second vassal of {} never answered", e.app);
                    }
                    sleep(poll);
                }
                Ok(())
            }
            Target::Ours(_) => {
                let ours = self.ours.as_ref().context("no daemon")?;
                let mut port = None;
                loop {
                    if port.is_none() {
                        port = ours.status(Some(&e.app))?.first().and_then(|a| {
                            a.instances
                                .iter()
                                .find(|x| x.index == 2 && x.state != InstanceState::Stopped)
                                .and_then(|x| x.port)
                        });
                    }
                    if let Some(p) = port
                        && crate::http::serves(p, Duration::from_millis(500))
                    {
                        return Ok(());
                    }
                    if t0.elapsed() > deadline {
                        bail!("instance 2 of {} never answered", e.app);
                    }
                    sleep(poll);
                }
            }
        }
    }

    /// Waits until instance 2 of `e` is gone (piku: its socket no longer answers; ours: the
    /// daemon lists no second instance), so the next start is a fresh one.
    pub fn wait_second_gone(&self, i: usize, deadline: Duration) -> Result<()> {
        let e = &self.entries[i];
        let t0 = Instant::now();
        loop {
            let gone = match e.target {
                Target::Piku { .. } => {
                    let port = e.port2.context("no second port")?;
                    !crate::http::serves(port, Duration::from_millis(500))
                }
                Target::Ours(_) => {
                    let ours = self.ours.as_ref().context("no daemon")?;
                    ours.status(Some(&e.app))?
                        .first()
                        .is_none_or(|a| a.instances.iter().all(|x| x.index != 2))
                }
            };
            if gone {
                return Ok(());
            }
            if t0.elapsed() > deadline {
                bail!("instance 2 of {} did not go within {deadline:?}", e.app);
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Stops nginx and every supervisor (by their own stop), then whatever they left, by pid.
    pub fn shutdown(mut self) -> Vec<String> {
        let mut notes = Vec::new();
        self.sweep();
        self.nginx = None;
        for d in [
            self.ours.as_mut().map(|o| o as &mut dyn Driver),
            self.uwsgi.as_mut().map(|u| u as &mut dyn Driver),
        ]
        .into_iter()
        .flatten()
        {
            match d.shutdown() {
                Ok(s) if s.leftovers > 0 => notes.push(format!(
                    "{}: {} process(es) outlived its stop and were killed by pid",
                    d.kind().label(),
                    s.leftovers
                )),
                Ok(_) => {}
                Err(e) => notes.push(format!("{}: stop failed: {e:#}", d.kind().label())),
            }
        }
        notes
    }
}

/// Processes run beside the measured app: `with` in the same app (a worker, a cron entry),
/// `others` as apps of their own. Empty for the throughput rows. And nginx's
/// `client_max_body_size` for every server (nginx's 1 MiB default when `None`).
#[derive(Default)]
pub struct Extra<'a> {
    pub with: &'a [ProcDef],
    pub others: &'a [AppDef],
    pub client_max_body_size: Option<&'a str>,
}

/// A fixture process as our daemon's spec.
fn process_spec(p: &ProcDef) -> ProcessSpec {
    ProcessSpec {
        kind: p.kind.clone(),
        command: p.command.clone(),
        role: match &p.role {
            FixtureRole::Web => Role::Web,
            FixtureRole::Worker => Role::Worker,
            FixtureRole::Cron(s) => Role::Cron {
                schedule: s.clone(),
            },
        },
        count: p.count,
    }
}

fn second_socket(first: &Path) -> PathBuf {
    PathBuf::from(format!("{}.2", first.display()))
}

/// Whole-tree memory of the supervisor running `root` (supervisor + every descendant).
pub fn tree_mem(root: Pid) -> procfs::Mem {
    procfs::mem_sum(&procfs::tree(root))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn wait_serving(port: u16, deadline: Duration) -> Result<()> {
    let t0 = Instant::now();
    while !crate::http::serves(port, Duration::from_secs(1)) {
        if t0.elapsed() > deadline {
            bail!("port {port} did not answer 200 within {deadline:?}");
        }
        sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One nginx (Debian's binary, `worker_processes auto` as Debian's config) with a server per
/// target; stopped (SIGQUIT, then by pid) when dropped.
struct Nginx {
    child: Child,
}

/// The lines piku's template passes to uWSGI (`PIKU_INTERNAL_NGINX_UWSGI_SETTINGS`).
const PIKU_UWSGI_PARAMS: &[(&str, &str)] = &[
    ("QUERY_STRING", "$query_string"),
    ("REQUEST_METHOD", "$request_method"),
    ("CONTENT_TYPE", "$content_type"),
    ("CONTENT_LENGTH", "$content_length"),
    ("REQUEST_URI", "$request_uri"),
    ("PATH_INFO", "$document_uri"),
    ("DOCUMENT_ROOT", "$document_root"),
    ("SERVER_PROTOCOL", "$server_protocol"),
    ("X_FORWARDED_FOR", "$proxy_add_x_forwarded_for"),
    ("REMOTE_ADDR", "$remote_addr"),
    ("REMOTE_PORT", "$remote_port"),
    ("SERVER_ADDR", "$server_addr"),
    ("SERVER_PORT", "$server_port"),
    ("SERVER_NAME", "$server_name"),
];

impl Nginx {
    fn start(dir: &Path, entries: &[Entry], client_max_body_size: Option<&str>) -> Result<Nginx> {
        fs::create_dir_all(dir)?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, nginx_conf(dir, entries, client_max_body_size))?;
        let log = File::create(dir.join("nginx.log"))?;
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting /usr/sbin/nginx")?;
        Ok(Nginx { child })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        signal(self.child.id() as Pid, Signal::SIGQUIT);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_conf(dir: &Path, entries: &[Entry], client_max_body_size: Option<&str>) -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into());
    let d = dir.display();
    let mut s = format!(
        "user {user};\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n\
         \x20 client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n"
    );
    if let Some(size) = client_max_body_size {
        let _ = writeln!(s, "  client_max_body_size {size};");
    }
    for (i, e) in entries.iter().enumerate() {
        match e.target {
            Target::Piku { .. } => {
                let mut params = String::new();
                for (k, v) in PIKU_UWSGI_PARAMS {
                    let _ = write!(params, " uwsgi_param {k} {v};");
                }
                for (port, socket) in [
                    (Some(e.port), e.socket.clone()),
                    (e.port2, second_socket(&e.socket)),
                ] {
                    let Some(port) = port else { continue };
                    let _ = writeln!(
                        s,
                        "  server {{ listen 127.0.0.1:{port}; location / {{ uwsgi_pass unix:{};{params} }} }}",
                        socket.display()
                    );
                }
            }
            // What piku-nginx writes for an app behind its front (crates/piku-nginx/src/render.rs).
            Target::Ours(_) => {
                let _ = writeln!(
                    s,
                    "  upstream t{i} {{ server unix:{}; keepalive 16; }}\n\
                     \x20 server {{ listen 127.0.0.1:{}; location / {{ proxy_pass http://t{i}; \
                     proxy_http_version 1.1; proxy_set_header Connection \"\"; \
                     proxy_set_header Host $host; proxy_set_header X-Forwarded-Proto $scheme; \
                     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; \
                     proxy_set_header X-Remote-Address $remote_addr; \
                     proxy_set_header X-Forwarded-Port $server_port; \
                     proxy_set_header X-Request-Start $msec; }} }}",
                    e.socket.display(),
                    e.port
                );
            }
        }
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_candidate_is_the_default_as_shipped() {
        assert_eq!(
            CANDIDATES[0].server,
            piku_deploy::runtime::python::wsgi::DEFAULT
        );
        assert!(CANDIDATES[0].env.is_empty());
        let servers: Vec<Server> = CANDIDATES.iter().map(|c| c.server).collect();
        for s in piku_deploy::runtime::python::wsgi::ALL {
            assert!(servers.contains(&s), "{s:?} is not measured");
        }
    }
}
