//! Activation: turning a built release into the supervisor's desired state.
//!
//! [`prepare`] works out everything from the release and the app's current config: the
//! environment (bootstrap, the release's runtime, the repo's `ENV`, the `config:set`
//! overrides), the front ([`crate::front`]), the formation from `SCALING` (Procfile kinds
//! default to 1; kinds no longer in the Procfile are dropped), and the processes (`wsgi`
//! becomes the WSGI server command, `rwsgi` puma's and `php` the release's php-fpm + nginx
//! script, `web`/`wsgi`/`rwsgi`/`php` are web processes, `cron*` cron entries, the rest workers; `static`, `release` and `preflight` are
//! not processes).
//! [`Activation::apply`] installs the nginx config, sends the spec to the supervisor as one
//! `Request::Apply`, and only when it accepts rewrites `LIVE_ENV` and `SCALING`.
//! [`activate_existing`] does both for a release built earlier (rollback, config change).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use piku_model::{AppName, EnvMap, InstanceId, PikuRoot, ProcessClass, Procfile};
use piku_proto::{AppSpec, AppStatus, Client, ProcessSpec, Request, Response, Role};

use crate::app_config;
use crate::buildlog::BuildLog;
use crate::checkout::{read_file, read_procfile};
use crate::env::{self, Bootstrap};
use crate::error::{Context, DeployError};
use crate::files;
use crate::front::spec::{DEFAULT_HEALTH_SECS, Front, describe, plan};
use crate::front::{acme, nginx, ready};
use crate::runtime;
use crate::runtime::build::BuiltRelease;
use crate::runtime::php;
use crate::runtime::python::wsgi::Server;
use crate::runtime::rack::Puma;
use crate::settings;
use crate::store::{ReleaseRecord, Store};
use crate::supervisor;

/// The formation for `procfile`, keeping the counts in `existing` for kinds that remain.
pub fn formation(procfile: &Procfile, existing: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
    procfile
        .workers()
        .map(|e| (e.kind.clone(), existing.get(&e.kind).copied().unwrap_or(1)))
        .collect()
}

/// The current `SCALING`; an unreadable or broken one counts as empty (every kind at 1).
fn current_scaling(root: &PikuRoot, app: &AppName, log: &mut BuildLog) -> BTreeMap<String, u32> {
    match app_config::read_scaling(root, app) {
        Ok(scaling) => scaling.unwrap_or_default(),
        Err(e) => {
            log.step(format!("Warning: ignoring SCALING: {e}"));
            BTreeMap::new()
        }
    }
}

/// How `wsgi:` entries are run: the server and the venv it was installed into.
pub struct WsgiRunner<'a> {
    pub server: Server,
    pub venv: &'a Path,
}

/// The supervisor's view of the Procfile's processes.
pub fn processes(
    procfile: &Procfile,
    formation: &BTreeMap<String, u32>,
    wsgi: Option<&WsgiRunner>,
    rack: Puma,
    env: &EnvMap,
    warnings: &mut Vec<String>,
) -> Result<Vec<ProcessSpec>, DeployError> {
    let mut specs = Vec::new();
    for entry in procfile.workers() {
        let (command, role) = match &entry.class {
            ProcessClass::Wsgi => {
                let runner = wsgi.ok_or_else(|| {
                    DeployError::refused(
                        "the 'wsgi:' entry has no WSGI server installed (this release was built \
                         without one); run `piku deploy` to rebuild it",
                    )
                })?;
                let cmd = runner
                    .server
                    .command(runner.venv, &entry.command, env, warnings);
                (cmd, Role::Web)
            }
            ProcessClass::Rack => (rack.command(&entry.command, env, warnings), Role::Web),
            ProcessClass::Php => (php::command(&entry.command), Role::Web),
            ProcessClass::Web => (entry.command.clone(), Role::Web),
            ProcessClass::Cron(schedule) => (
                entry.command.clone(),
                Role::Cron {
                    schedule: schedule.as_str().to_owned(),
                },
            ),
            ProcessClass::Worker => (entry.command.clone(), Role::Worker),
            ProcessClass::Static | ProcessClass::Release | ProcessClass::Preflight => continue,
        };
        specs.push(ProcessSpec {
            kind: entry.kind.clone(),
            command,
            role,
            count: formation.get(&entry.kind).copied().unwrap_or(1),
        });
    }
    Ok(specs)
}

/// The front's bound on requests per instance when the app's web instances are all its
/// `wsgi:` entry and its server needs one ([`Server::max_in_flight`]).
fn wsgi_bound(procfile: &Procfile, server: Server, env: &EnvMap) -> Option<u32> {
    let mut web = procfile.entries.iter().filter(|e| e.class.is_web());
    let only_wsgi = web.all(|e| e.class == ProcessClass::Wsgi);
    (only_wsgi && procfile.get("wsgi").is_some())
        .then(|| server.max_in_flight(env))
        .flatten()
}

/// Everything an activation sends and writes.
pub struct Activation {
    pub spec: AppSpec,
    pub formation: BTreeMap<String, u32>,
    /// The HTTP front; its `spec` is already in `spec.settings.front`.
    pub front: Front,
}

/// The environment and supervisor spec of built release `record`, with the current
/// `config:set` overrides and formation.
pub fn prepare(
    root: &PikuRoot,
    app: &AppName,
    store: &Store,
    record: &ReleaseRecord,
    procfile: &Procfile,
    log: &mut BuildLog,
) -> Result<Activation, DeployError> {
    let src = store.src(&record.id);
    let deps = record.deps.as_ref().map(|d| store.deps(d));
    if let Some(dir) = &deps
        && !dir.is_dir()
    {
        return Err(DeployError::refused(format!(
            "the dependencies of {} are gone ('{}'); deploy again to rebuild them",
            record.id,
            dir.display()
        )));
    }
    let bin = store.bin(&record.id);
    let built = BuiltRelease {
        deps: deps.as_deref(),
        bin: &bin,
    };
    let bootstrap = Bootstrap {
        root,
        app,
        src: &src,
        deps: deps.as_deref(),
        runtime: runtime::env(record.runtime.as_deref(), &built),
    };
    let repo_env = read_file(&src, "ENV")?;
    let overrides = files::read_optional(&root.env_file(app))?;
    let mut env = env::merge(
        bootstrap.values(),
        repo_env.as_deref(),
        overrides.as_deref(),
    )?;
    for said in env::finish(&mut env) {
        log.step(said);
    }

    let mut warnings = Vec::new();
    let built_server = record.wsgi_server.as_deref().and_then(Server::from_name);
    if let (Some(built), Ok(wanted)) = (built_server, Server::from_env(&env))
        && procfile.get("wsgi").is_some()
        && built != wanted
    {
        warnings.push(format!(
            "Warning: {} was built with {}; PIKU_WSGI_SERVER={} takes effect at the next deploy",
            record.id,
            built.name(),
            wanted.name()
        ));
    }
    let runner = match (built_server, deps.as_deref()) {
        (Some(server), Some(venv)) => Some(WsgiRunner { server, venv }),
        _ => None,
    };
    let mut app_settings = settings::app_settings(&env, &mut warnings);
    app_settings.limits = settings::limits(&env)?;
    let mut front = plan(root, app, &env, procfile, &src, &mut warnings)?;
    if let (Some(spec), Some(runner)) = (front.spec.as_mut(), runner.as_ref()) {
        spec.max_in_flight_per_instance = wsgi_bound(procfile, runner.server, &env);
    }
    app_settings.front = front.spec.clone();
    let existing = current_scaling(root, app, log);
    let formation = formation(procfile, &existing);
    let rack = Puma::for_checkout(&src)?;
    let mut processes = processes(
        procfile,
        &formation,
        runner.as_ref(),
        rack,
        &env,
        &mut warnings,
    )?;
    processes.extend(acme::renewal_process(root, app, &front, &env, procfile)?);
    for warning in warnings {
        log.step(warning);
    }
    Ok(Activation {
        spec: AppSpec {
            app: app.to_string(),
            release: record.id.clone(),
            workdir: src,
            env,
            processes,
            settings: app_settings,
        },
        formation,
        front,
    })
}

/// Activates an existing, already built release (rollback, config re-apply).
pub fn activate_existing(
    root: &PikuRoot,
    app: &AppName,
    store: &Store,
    record: &ReleaseRecord,
    log: &mut BuildLog,
) -> Result<(), DeployError> {
    let src = store.src(&record.id);
    if !src.is_dir() {
        return Err(DeployError::refused(format!(
            "release {} has no checkout left; it cannot be activated",
            record.id
        )));
    }
    let procfile = read_procfile(&src, log)?;
    let activation = prepare(root, app, store, record, &procfile, log)?;
    activation.apply(root, app, log)?;
    store.make_live(&record.id)
}

impl Activation {
    /// Installs the nginx config (checked first), then sends the spec to the supervisor,
    /// relaying its progress; on success writes `LIVE_ENV` and `SCALING`. A refusal leaves
    /// both files (and the running processes) as they were.
    pub fn apply(
        self,
        root: &PikuRoot,
        app: &AppName,
        log: &mut BuildLog,
    ) -> Result<(), DeployError> {
        let mut client = supervisor::connect(root)?;
        let undo = nginx::configure(&self.front, log)?;
        let request = Request::Apply(Box::new(self.spec.clone()));
        let result = client.call(&request, |interim| {
            if let Response::Progress { message } = interim {
                log.step(message);
            }
        });
        let report = match result.context("the supervisor refused the new release") {
            Ok(Response::Applied(report)) => report,
            Ok(other) => {
                undo.restore(log);
                return Err(DeployError::refused(format!(
                    "unexpected answer from the supervisor: {other:?}"
                )));
            }
            Err(e) => {
                undo.restore(log);
                return Err(e);
            }
        };
        let name = |n: &String| format!("'{app}:{n}'");
        for n in &report.started {
            log.step(format!("spawning {}", name(n)));
        }
        for n in &report.restarted {
            log.step(format!("restarting {}", name(n)));
        }
        for n in &report.stopped {
            log.step(format!("terminating {}", name(n)));
        }
        for warning in &report.warnings {
            log.step(format!("Warning: {warning}"));
        }

        app_config::write_live_env(root, app, &self.spec.env)?;
        app_config::write_scaling(root, app, &self.formation)?;
        // A CA failure is a warning here: the self-signed certificate keeps the app reachable.
        let _ = acme::issue_certificate(&self.front, &self.spec.env, log);
        announce(&mut client, app, &self.spec.env, &self.front, log);
        Ok(())
    }
}

/// Prints where the app answers: its front, once it answers there ([`ready`]), or without
/// one each web instance's port. Only informative: a failure here does not fail the deploy.
fn announce(client: &mut Client, app: &AppName, env: &EnvMap, front: &Front, log: &mut BuildLog) {
    let request = Request::Status {
        app: Some(app.to_string()),
    };
    let Ok(Response::Status { apps }) = client.call(&request, |_| {}) else {
        return;
    };
    let address = env
        .get("BIND_ADDRESS")
        .map(String::as_str)
        .unwrap_or("127.0.0.1");
    for status in apps.iter().filter(|s| s.app == app.as_str()) {
        let names = front.nginx.as_ref().map(|n| n.server_names.as_slice());
        if let Some(line) = describe(status, names) {
            let Some(probe) = probe_for(status, front, env) else {
                log.step(line);
                continue;
            };
            let deadline = front
                .spec
                .as_ref()
                .map_or(Duration::from_secs_f64(DEFAULT_HEALTH_SECS), |s| {
                    Duration::from_millis(s.health_deadline_ms)
                });
            match probe.wait(deadline) {
                Ok(()) => log.step(line),
                Err(seen) => log.step(format!(
                    "Warning: '{app}' is live but did not answer on {} (Host: {}) within {:.0} s: \
                     {seen}{}",
                    probe.addr,
                    probe.host,
                    deadline.as_secs_f64(),
                    if probe.via_nginx {
                        "; has nginx reloaded? (piku-nginx.path, or PIKU_NGINX_RELOAD)"
                    } else {
                        ""
                    }
                )),
            }
            continue;
        }
        for instance in &status.instances {
            if let Some(port) = instance.port {
                let id = InstanceId::new(instance.kind.as_str(), instance.index);
                log.step(format!("'{app}:{id}' listening on {address}:{port}"));
            }
        }
    }
}

/// Where users reach the app, to ask before saying it answers there: nginx's HTTP port with
/// the app's host name, or piku's public TCP port. `None` when there is nothing to ask (a
/// front on a Unix socket only, regex-only host names).
fn probe_for(status: &AppStatus, front: &Front, env: &EnvMap) -> Option<ready::Probe> {
    let path = env
        .get("PIKU_HEALTHCHECK")
        .map(|p| p.trim())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/")
        .to_owned();
    if let Some(nginx) = &front.nginx {
        return Some(ready::Probe {
            addr: ready::reachable(&nginx.listen.ipv4, nginx.listen.http_port),
            host: ready::host_for(&nginx.server_names)?,
            path,
            via_nginx: true,
        });
    }
    let tcp = status.front.as_ref()?.tcp.as_deref()?;
    let (bind, port) = tcp.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let addr = ready::reachable(bind, port);
    Some(ready::Probe {
        host: addr.clone(),
        addr,
        path,
        via_nginx: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use piku_model::parse_procfile;

    #[test]
    fn formation_defaults_new_kinds_to_one_keeps_counts_and_drops_removed_kinds() {
        let procfile = parse_procfile(
            "web: ./serve\nworker: ./work\ncron1: */5 * * * * ./tick\nrelease: ./migrate\nstatic: public\n",
        )
        .unwrap();
        let existing = BTreeMap::from([("web".into(), 3), ("gone".into(), 2)]);
        let f = formation(&procfile, &existing);
        assert_eq!(
            f,
            BTreeMap::from([
                ("web".to_string(), 3),
                ("worker".to_string(), 1),
                ("cron1".to_string(), 1)
            ])
        );
    }

    #[test]
    fn procfile_kinds_map_to_supervisor_roles() {
        let procfile = parse_procfile(
            "wsgi: app:app\nworker: python3 w.py\ncron1: */5 * * * * ./tick\nrelease: ./migrate\n",
        )
        .unwrap();
        let f = formation(&procfile, &BTreeMap::new());
        let runner = WsgiRunner {
            server: Server::Gunicorn,
            venv: Path::new("/venv"),
        };
        let specs = processes(
            &procfile,
            &f,
            Some(&runner),
            Puma::System,
            &EnvMap::new(),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0].kind, "wsgi");
        assert_eq!(specs[0].role, Role::Web);
        assert!(specs[0].command.starts_with("/venv/bin/gunicorn --bind"));
        assert!(specs[0].command.ends_with(" app:app"));
        assert_eq!(specs[1].role, Role::Worker);
        assert_eq!(
            specs[2].role,
            Role::Cron {
                schedule: "*/5 * * * *".into()
            }
        );
        assert_eq!(specs[2].command, "./tick");
        assert!(
            processes(
                &procfile,
                &f,
                None,
                Puma::System,
                &EnvMap::new(),
                &mut Vec::new()
            )
            .is_err()
        );
    }
}
