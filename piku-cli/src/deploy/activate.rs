//! Activation: turning a built release into the supervisor's desired state.
//!
//! The formation comes from `SCALING` (Procfile kinds default to 1; kinds no longer in the
//! Procfile are dropped), processes from the Procfile (`wsgi` becomes the WSGI server command,
//! `web`/`wsgi` are web processes, `cron*` cron entries, the rest workers; `static`, `release`
//! and `preflight` are not processes). The spec goes to the supervisor as one `Apply`; only
//! when it accepts are `LIVE_ENV` and `SCALING` rewritten. The app's HTTP front (see
//! [`super::front`]) rides in the spec's settings; its nginx config is installed just before.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use piku_model::{
    AppName, EnvMap, PikuRoot, ProcessClass, Procfile, parse_scaling, render_env, render_scaling,
};
use piku_proto::{AppSpec, ProcessSpec, Request, Response, Role};

use super::appenv::read_optional;
use super::buildlog::BuildLog;
use super::front::{self, Front};
use super::store::write_atomically;
use super::wsgi::Server;

/// The formation for `procfile`, keeping the counts in `existing` for kinds that remain.
pub fn formation(procfile: &Procfile, existing: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
    procfile
        .workers()
        .map(|e| (e.kind.clone(), existing.get(&e.kind).copied().unwrap_or(1)))
        .collect()
}

/// The current `SCALING` file; an unreadable one counts as empty (every kind at 1).
pub fn current_scaling(
    root: &PikuRoot,
    app: &AppName,
    log: &mut BuildLog,
) -> BTreeMap<String, u32> {
    let path = root.scaling_file(app);
    match read_optional(&path).map(|t| t.map(|t| parse_scaling(&t))) {
        Ok(Some(Ok(scaling))) => scaling,
        Ok(None) => BTreeMap::new(),
        Ok(Some(Err(e))) => {
            log.step(format!("Warning: ignoring {}: {e}", path.display()));
            BTreeMap::new()
        }
        Err(e) => {
            log.step(format!("Warning: {e:#}"));
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
    env: &EnvMap,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<ProcessSpec>> {
    let mut specs = Vec::new();
    for entry in procfile.workers() {
        let (command, role) = match &entry.class {
            ProcessClass::Wsgi => {
                let runner = wsgi.context(
                    "the 'wsgi:' entry has no WSGI server installed (this release was built \
                     without one); run `piku deploy` to rebuild it",
                )?;
                let cmd = runner
                    .server
                    .command(runner.venv, &entry.command, env, warnings);
                (cmd, Role::Web)
            }
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

/// Everything an activation sends and writes.
pub struct Activation {
    pub spec: AppSpec,
    pub formation: BTreeMap<String, u32>,
    /// The HTTP front; its `spec` is already in `spec.settings.front`.
    pub front: Front,
}

impl Activation {
    /// Installs the nginx config (checked first), then sends the spec to the supervisor,
    /// relaying its progress; on success writes `LIVE_ENV` and `SCALING`. A refusal leaves
    /// both files (and the running processes) as they were.
    pub fn apply(self, root: &PikuRoot, app: &AppName, log: &mut BuildLog) -> anyhow::Result<()> {
        let mut client = crate::daemon::connect(root)?;
        let undo = front::configure_nginx(&self.front, log)?;
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
                anyhow::bail!("unexpected answer from the supervisor: {other:?}")
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

        std::fs::create_dir_all(root.env_dir(app))
            .with_context(|| format!("cannot create '{}'", root.env_dir(app).display()))?;
        write_atomically(
            &root.live_env_file(app),
            render_env(&self.spec.env).as_bytes(),
            piku_fs::MODE_PRIVATE,
        )?;
        write_atomically(
            &root.scaling_file(app),
            render_scaling(&self.formation).as_bytes(),
            piku_fs::MODE_PRIVATE,
        )?;
        // A CA failure is a warning here: the self-signed certificate keeps the app reachable.
        let _ = front::issue_certificate(&self.front, &self.spec.env, log);
        announce(&mut client, app, &self.spec.env, &self.front, log);
        Ok(())
    }
}

/// Prints where the app answers: its front, or without one each web instance's port.
/// Only informative: a failure here does not fail the deploy.
fn announce(
    client: &mut piku_proto::Client,
    app: &AppName,
    env: &EnvMap,
    front: &Front,
    log: &mut BuildLog,
) {
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
        if let Some(line) = front::describe(status, names) {
            log.step(line);
            continue;
        }
        for instance in &status.instances {
            if let Some(port) = instance.port {
                log.step(format!(
                    "'{app}:{}' listening on {address}:{port}",
                    instance.name()
                ));
            }
        }
    }
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
        assert!(processes(&procfile, &f, None, &EnvMap::new(), &mut Vec::new()).is_err());
    }
}
