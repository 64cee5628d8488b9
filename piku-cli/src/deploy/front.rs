//! The app's HTTP front at activation: what the supervisor's front listens on (a Unix socket
//! for nginx, or piku's public `$BIND_ADDRESS:$PORT`), how it tells a new instance is healthy,
//! and the nginx config in front of it.
//!
//! Order matters for "a bad push changes nothing": the nginx config is checked (`nginx -t`)
//! and installed *before* the supervisor's `Apply`, so a broken `NGINX_INCLUDE_FILE` fails the
//! push while the old config and the old release keep serving. A certificate from ACME is
//! asked for only after the `Apply` (the CA validates through the live config); its failure is
//! a warning and the self-signed certificate stays.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piku_model::{AppName, CronSchedule, EnvMap, PikuRoot, ProcessClass, Procfile};
use piku_nginx::{AcmeConfig, NginxCommand, NginxSettings, Reload};
use piku_proto::{AppStatus, FrontSpec, ProcessSpec, Role, TcpFront};

use super::appenv::number;
use super::buildlog::BuildLog;

/// The health check deadline when `PIKU_HEALTHCHECK_TIMEOUT` is unset, in seconds.
const DEFAULT_HEALTH_SECS: f64 = 30.0;
/// The drain bound when `PIKU_DRAIN_TIMEOUT` is unset, in seconds.
const DEFAULT_DRAIN_SECS: f64 = 10.0;

/// Everything the front of one activation needs.
#[derive(Debug, Clone)]
pub struct Front {
    /// What the supervisor's front does; `None` for apps without a web process.
    pub spec: Option<FrontSpec>,
    /// The app's nginx config; `None` without `NGINX_SERVER_NAME`.
    pub nginx: Option<NginxSettings>,
    /// `nginx/<app>.conf`: written when `nginx` is set, removed when it is not.
    pub conf: PathBuf,
}

/// Whether the Procfile runs a web server (`web:` or `wsgi:`).
pub fn has_web(procfile: &Procfile) -> bool {
    procfile
        .entries
        .iter()
        .any(|e| matches!(e.class, ProcessClass::Web | ProcessClass::Wsgi))
}

/// Works out the front of `app` from its merged `env` and the release's `checkout` (where
/// `NGINX_INCLUDE_FILE` is read). An invalid setting is an error naming it.
pub fn plan(
    root: &PikuRoot,
    app: &AppName,
    env: &EnvMap,
    procfile: &Procfile,
    checkout: &Path,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Front> {
    let web = has_web(procfile);
    let static_entry = procfile
        .entries
        .iter()
        .find(|e| e.class == ProcessClass::Static)
        .map(|e| e.command.as_str());
    let nginx = NginxSettings::from_env_for_checkout(app, root, env, web, static_entry, checkout)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let spec = if web {
        Some(front_spec(root, app, env, nginx.is_some(), warnings)?)
    } else {
        None
    };
    Ok(Front {
        spec,
        nginx,
        conf: piku_nginx::conf_path(root, app),
    })
}

/// The supervisor's front: behind nginx a Unix socket, else piku's public TCP port.
fn front_spec(
    root: &PikuRoot,
    app: &AppName,
    env: &EnvMap,
    behind_nginx: bool,
    warnings: &mut Vec<String>,
) -> anyhow::Result<FrontSpec> {
    let (unix_socket, tcp) = if behind_nginx {
        (Some(piku_nginx::socket_path(root, app)), None)
    } else {
        let bind = env
            .get("BIND_ADDRESS")
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        let port = match env.get("PORT").map(|p| p.trim()) {
            None | Some("") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .with_context(|| format!("PORT='{p}' is not a TCP port (1-65535)"))?,
            ),
        };
        (None, Some(TcpFront { bind, port }))
    };
    let health_path = match env.get("PIKU_HEALTHCHECK").map(|p| p.trim()) {
        None | Some("") => None,
        Some(path) => {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("PIKU_HEALTHCHECK='{path}' must be a URL path starting with '/', e.g. /up");
            }
            Some(path.to_owned())
        }
    };
    let seconds = |key: &str, default: f64, warnings: &mut Vec<String>| {
        let secs: f64 = number(env, key, default, warnings);
        if secs.is_finite() && secs >= 0.0 {
            (secs * 1000.0) as u64
        } else {
            warnings.push(format!(
                "Warning: {key} must be a number of seconds, using {default}"
            ));
            (default * 1000.0) as u64
        }
    };
    Ok(FrontSpec {
        unix_socket,
        tcp,
        health_path,
        health_deadline_ms: seconds("PIKU_HEALTHCHECK_TIMEOUT", DEFAULT_HEALTH_SECS, warnings),
        drain_ms: seconds("PIKU_DRAIN_TIMEOUT", DEFAULT_DRAIN_SECS, warnings),
    })
}

/// What [`configure_nginx`] replaced, so a refused `Apply` can put it back.
#[must_use = "call `restore` if the Apply fails"]
pub struct NginxUndo {
    /// `nginx/<app>.conf` and the text it had before (`None`: there was none). `None` when
    /// nothing was changed.
    previous: Option<(std::path::PathBuf, Option<String>)>,
}

impl NginxUndo {
    /// Puts the previous config back (or removes a first one) and reloads nginx, so a
    /// release the supervisor refused leaves nginx as it was. Problems are warnings: the
    /// push fails anyway.
    pub fn restore(self, log: &mut BuildLog) {
        let Some((conf, previous)) = self.previous else {
            return;
        };
        let result = match &previous {
            Some(text) => super::store::write_atomically(&conf, text.as_bytes()),
            None => std::fs::remove_file(&conf)
                .with_context(|| format!("cannot remove '{}'", conf.display())),
        };
        if let Err(e) = result {
            log.step(format!(
                "Warning: the previous nginx config was not restored: {e:#}"
            ));
            return;
        }
        match NginxCommand::from_env().map(|n| n.reload()) {
            Ok(Ok(reload)) => say_reload(&reload, log),
            Ok(Err(e)) | Err(e) => say_reload(&Reload::Failed(e.to_string()), log),
        }
        log.step("nginx: the previous config is back in place");
    }
}

/// Before the `Apply`: checks and installs the nginx config (self-signed certificate when
/// there is none), printing piku's lines. An `Err` means nothing was changed.
pub fn configure_nginx(front: &Front, log: &mut BuildLog) -> anyhow::Result<NginxUndo> {
    let Some(settings) = &front.nginx else {
        return unconfigure_nginx(&front.conf, log);
    };
    log.step(format!(
        "nginx will map app '{}' to hostname(s) '{}'",
        settings.app,
        settings.server_names.join(" ")
    ));
    for warning in &settings.warnings {
        log.step(format!("Warning: {warning}"));
    }
    let conf = settings.conf_path();
    let before = std::fs::read_to_string(&conf).ok();
    let nginx = NginxCommand::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let configured = piku_nginx::configure(settings, &nginx)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the nginx config was not changed")?;
    if configured.certificate == piku_nginx::CertStatus::Created {
        log.step(format!(
            "nginx: a self-signed certificate for '{}' was created",
            settings.server_names.join(" ")
        ));
    }
    say_reload(&configured.install.reload, log);
    Ok(NginxUndo {
        previous: configured.install.changed.then_some((conf, before)),
    })
}

/// An app without `NGINX_SERVER_NAME` (any more): its old config would proxy to a socket
/// the front no longer listens on, so it goes (certificates stay for a later comeback).
fn unconfigure_nginx(conf: &Path, log: &mut BuildLog) -> anyhow::Result<NginxUndo> {
    let Ok(before) = std::fs::read_to_string(conf) else {
        return Ok(NginxUndo { previous: None });
    };
    std::fs::remove_file(conf).with_context(|| format!("cannot remove '{}'", conf.display()))?;
    log.step("nginx: NGINX_SERVER_NAME is not set; the app's nginx config was removed");
    match NginxCommand::from_env().map(|n| n.reload()) {
        Ok(Ok(reload)) => say_reload(&reload, log),
        Ok(Err(e)) | Err(e) => say_reload(&Reload::Failed(e.to_string()), log),
    }
    Ok(NginxUndo {
        previous: Some((conf.to_path_buf(), Some(before))),
    })
}

fn say_reload(reload: &Reload, log: &mut BuildLog) {
    if let Reload::Failed(why) = reload {
        log.step(format!(
            "Warning: the nginx config is in place but nginx was not reloaded: {why}"
        ));
    }
}

/// Renew this many days before a CA certificate expires (the supervisor's renewals use the
/// same margin), so every deploy does not ask the CA again and hit its rate limits.
const RENEW_DAYS: u32 = 30;

/// The expiry (RFC 3339) of the app's certificate when it is CA-issued, covers every name
/// HTTP-01 can prove and is not due for renewal; `None` when a new one should be asked for.
fn current_ca_certificate(settings: &NginxSettings) -> Option<String> {
    let crt = settings.crt_path();
    let info = piku_nginx::certificate_info(&crt).ok()?;
    let (names, _) = piku_nginx::acme_names(&settings.server_names);
    let covered = names.iter().all(|n| info.names.contains(n));
    if info.self_signed || !covered || piku_nginx::needs_renewal(&crt, RENEW_DAYS) {
        return None;
    }
    let until: chrono::DateTime<chrono::Utc> = info.expires().into();
    Some(until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Whether the app (or the host) asked for ACME certificates.
fn acme_wanted(env: &EnvMap) -> bool {
    ["PIKU_ACME_DIRECTORY", "PIKU_ACME_EMAIL"].iter().any(|k| {
        env.get(*k).is_some_and(|v| !v.trim().is_empty())
            || std::env::var(k).is_ok_and(|v| !v.trim().is_empty())
    })
}

/// The Procfile-like kind of the daily entry that renews an app's ACME certificate.
pub const RENEWAL_KIND: &str = "acme-renew";
/// When the renewal entry runs unless `PIKU_ACME_RENEW_SCHEDULE` says otherwise: daily, at an
/// hour when few deploys happen. A certificate is re-issued only within RENEW_DAYS of expiry.
const RENEWAL_SCHEDULE: &str = "17 3 * * *";
/// Process-environment settings the renewal run needs that the app's env may not carry (the
/// supervisor starts it with the app's env only).
const RENEWAL_PASSED_ON: [&str; 10] = [
    "PIKU_ACME_DIRECTORY",
    "PIKU_ACME_EMAIL",
    "PIKU_ACME_CA",
    "PIKU_NGINX",
    "PIKU_NGINX_RELOAD",
    "PIKU_NGINX_CONF",
    "PIKU_NGINX_PREFIX",
    "PIKU_NGINX_STATUS",
    "PIKU_NGINX_RELOAD_TIMEOUT",
    "PIKU_NGINX_RELOADER",
];

/// For an app behind nginx that asked for ACME: a cron entry, run by the supervisor like any
/// other, that calls `piku acme:renew <app>` daily, so certificates are renewed before they
/// expire without a deploy. `None` when the app needs none.
pub fn renewal_process(
    root: &PikuRoot,
    app: &AppName,
    front: &Front,
    env: &EnvMap,
    procfile: &Procfile,
) -> anyhow::Result<Option<ProcessSpec>> {
    if front.nginx.is_none() || !acme_wanted(env) {
        return Ok(None);
    }
    anyhow::ensure!(
        procfile.get(RENEWAL_KIND).is_none(),
        "the Procfile kind '{RENEWAL_KIND}' is reserved for certificate renewals; rename it"
    );
    let schedule = env
        .get("PIKU_ACME_RENEW_SCHEDULE")
        .map(String::as_str)
        .unwrap_or(RENEWAL_SCHEDULE);
    CronSchedule::parse(schedule).map_err(|e| anyhow::anyhow!("PIKU_ACME_RENEW_SCHEDULE: {e}"))?;
    let exe = std::env::current_exe().context("cannot find the piku executable")?;
    let mut words = vec![
        "env".to_owned(),
        format!("PIKU_ROOT={}", root.path().display()),
    ];
    for key in RENEWAL_PASSED_ON {
        if let (false, Ok(value)) = (env.contains_key(key), std::env::var(key)) {
            words.push(format!("{key}={value}"));
        }
    }
    words.extend([
        exe.display().to_string(),
        "acme:renew".to_owned(),
        app.to_string(),
    ]);
    Ok(Some(ProcessSpec {
        kind: RENEWAL_KIND.to_owned(),
        command: shell_words::join(&words),
        role: Role::Cron {
            schedule: schedule.to_owned(),
        },
        count: 1,
    }))
}

/// `piku acme:renew <app>`: re-issues the live release's certificate when it is due (or was
/// never issued by the CA), from `LIVE_ENV` and the live checkout. Errors when the CA fails.
pub fn renew_certificate(root: &PikuRoot, app: &AppName) -> anyhow::Result<()> {
    let live_env = root.live_env_file(app);
    let text = std::fs::read_to_string(&live_env)
        .with_context(|| format!("app '{app}' has no live release ({})", live_env.display()))?;
    let env = crate::commands::envfile::parse_verbatim(&text, &live_env)?;
    let checkout = root.app_dir(app);
    let procfile_text = std::fs::read_to_string(checkout.join("Procfile"))
        .with_context(|| format!("cannot read the live Procfile of '{app}'"))?;
    let procfile = piku_model::parse_procfile(&procfile_text)?;
    let front = plan(root, app, &env, &procfile, &checkout, &mut Vec::new())?;
    anyhow::ensure!(
        front.nginx.is_some() && acme_wanted(&env),
        "app '{app}' has no NGINX_SERVER_NAME or did not ask for ACME (PIKU_ACME_DIRECTORY / PIKU_ACME_EMAIL)"
    );
    let mut log = BuildLog::terminal_only();
    anyhow::ensure!(
        issue_certificate(&front, &env, &mut log),
        "no certificate from ACME for '{app}'; the current one stays"
    );
    Ok(())
}

/// After a successful `Apply`: an ACME certificate when asked for. Only warns on failure,
/// and says whether the app now has a current certificate (`false` only when the CA failed).
pub fn issue_certificate(front: &Front, env: &EnvMap, log: &mut BuildLog) -> bool {
    let Some(settings) = &front.nginx else {
        return true;
    };
    if !acme_wanted(env) {
        return true;
    }
    if let Some(until) = current_ca_certificate(settings) {
        log.step(format!(
            "The certificate for '{}' is current (until {until}); not asking the CA again",
            settings.server_names.join(" ")
        ));
        return true;
    }
    let config = AcmeConfig::from_vars(|k| env.get(k).cloned().or_else(|| std::env::var(k).ok()));
    log.step(format!(
        "Requesting a certificate for '{}' from {}",
        settings.server_names.join(" "),
        config.directory_url
    ));
    match piku_nginx::issue_certificate_blocking(settings, &config) {
        Ok(issued) => {
            log.step(format!(
                "Certificate issued for '{}'",
                issued.names.join(" ")
            ));
            if !issued.skipped.is_empty() {
                log.step(format!(
                    "Warning: not in the certificate (HTTP-01 cannot prove them): {}",
                    issued.skipped.join(" ")
                ));
            }
            match NginxCommand::from_env().map(|n| n.reload()) {
                Ok(Ok(reload)) => say_reload(&reload, log),
                Ok(Err(e)) | Err(e) => say_reload(&Reload::Failed(e.to_string()), log),
            }
            true
        }
        Err(e) => {
            log.step(format!(
                "Warning: no certificate from ACME ({e}); the current one stays"
            ));
            false
        }
    }
}

/// Where the app answers, from the supervisor's status: one line, or `None` without a front.
pub fn describe(status: &AppStatus, nginx_names: Option<&[String]>) -> Option<String> {
    let front = status.front.as_ref()?;
    if let Some(names) = nginx_names {
        return Some(format!(
            "'{}' answers via nginx for {}",
            status.app,
            names.join(" ")
        ));
    }
    if let Some(tcp) = &front.tcp {
        return Some(format!("'{}' answers on http://{tcp}/", status.app));
    }
    front
        .unix_socket
        .as_ref()
        .map(|s| format!("'{}' answers on {}", status.app, s.display()))
}

/// The server names of the app's live nginx config (`LIVE_ENV`'s `NGINX_SERVER_NAME`), for
/// telling where the app answers outside a deploy.
pub fn nginx_names(root: &PikuRoot, app: &AppName) -> Option<Vec<String>> {
    if !piku_nginx::conf_path(root, app).is_file() {
        return None;
    }
    let text = std::fs::read_to_string(root.live_env_file(app)).ok()?;
    let mut env = EnvMap::new();
    piku_model::parse_env(&text, &mut env).ok()?;
    let names: Vec<String> = env
        .get("NGINX_SERVER_NAME")?
        .split([' ', ','])
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    (!names.is_empty()).then_some(names)
}

/// Removes the app's nginx config, socket and certificates and reloads nginx; returns what
/// was removed. A reload failure is returned as a warning line.
pub fn remove_nginx(root: &PikuRoot, app: &AppName) -> anyhow::Result<(usize, Option<String>)> {
    let removed = piku_nginx::remove(app, root).map_err(|e| anyhow::anyhow!("{e}"))?;
    let had_conf = removed
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "conf"));
    let mut warning = None;
    if had_conf {
        match NginxCommand::from_env().map(|n| n.reload()) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) | Err(e) => {
                warning = Some(format!("nginx was not reloaded: {e}"));
            }
        }
    }
    Ok((removed.len(), warning))
}

#[cfg(test)]
mod tests {
    use super::*;
    use piku_model::parse_procfile;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn plan_for(procfile: &str, pairs: &[(&str, &str)]) -> anyhow::Result<Front> {
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        let app: AppName = "blog".parse().unwrap();
        let procfile = parse_procfile(procfile).unwrap();
        plan(
            &root,
            &app,
            &env(pairs),
            &procfile,
            dir.path(),
            &mut Vec::new(),
        )
    }

    #[test]
    fn acme_apps_behind_nginx_get_a_daily_renewal_entry() {
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        let app: AppName = "blog".parse().unwrap();
        let procfile = parse_procfile("web: ./serve\n").unwrap();
        let named = [
            ("NGINX_SERVER_NAME", "blog.example.com"),
            ("PIKU_ACME_EMAIL", "ops@example.com"),
        ];
        let front = plan(
            &root,
            &app,
            &env(&named),
            &procfile,
            dir.path(),
            &mut Vec::new(),
        )
        .unwrap();
        let spec = renewal_process(&root, &app, &front, &env(&named), &procfile)
            .unwrap()
            .expect("a renewal entry");
        assert_eq!(spec.kind, RENEWAL_KIND);
        assert_eq!(
            spec.role,
            Role::Cron {
                schedule: RENEWAL_SCHEDULE.to_owned()
            }
        );
        let words = shell_words::split(&spec.command).unwrap();
        assert_eq!(words[0], "env");
        assert_eq!(words[1], format!("PIKU_ROOT={}", dir.path().display()));
        assert_eq!(words[words.len() - 2..], ["acme:renew", "blog"]);

        // No ACME asked for, or no nginx: no entry.
        let plain = [("NGINX_SERVER_NAME", "blog.example.com")];
        let front = plan(
            &root,
            &app,
            &env(&plain),
            &procfile,
            dir.path(),
            &mut Vec::new(),
        )
        .unwrap();
        assert!(
            renewal_process(&root, &app, &front, &env(&plain), &procfile)
                .unwrap()
                .is_none()
        );

        // A bad schedule is an error naming the setting.
        let mut bad = named.to_vec();
        bad.push(("PIKU_ACME_RENEW_SCHEDULE", "61 * * * *"));
        let front = plan(
            &root,
            &app,
            &env(&bad),
            &procfile,
            dir.path(),
            &mut Vec::new(),
        )
        .unwrap();
        let err = renewal_process(&root, &app, &front, &env(&bad), &procfile).unwrap_err();
        assert!(
            err.to_string().contains("PIKU_ACME_RENEW_SCHEDULE"),
            "{err}"
        );
    }

    #[test]
    fn without_a_server_name_the_front_is_the_public_tcp_port() {
        let front = plan_for("web: ./serve\n", &[("PORT", "8080")]).unwrap();
        let spec = front.spec.unwrap();
        assert!(front.nginx.is_none());
        assert_eq!(spec.unix_socket, None);
        assert_eq!(
            spec.tcp,
            Some(TcpFront {
                bind: "127.0.0.1".into(),
                port: Some(8080)
            })
        );
        assert_eq!(spec.health_deadline_ms, 30_000);
        assert_eq!(spec.drain_ms, 10_000);
        let unpinned = plan_for("wsgi: app:app\n", &[("BIND_ADDRESS", "0.0.0.0")]).unwrap();
        assert_eq!(
            unpinned.spec.unwrap().tcp,
            Some(TcpFront {
                bind: "0.0.0.0".into(),
                port: None
            })
        );
    }

    #[test]
    fn with_a_server_name_the_front_is_the_nginx_socket() {
        let front = plan_for(
            "web: ./serve\n",
            &[
                ("NGINX_SERVER_NAME", "a.example b.example"),
                ("PIKU_HEALTHCHECK", "/up"),
                ("PIKU_HEALTHCHECK_TIMEOUT", "5"),
                ("PIKU_DRAIN_TIMEOUT", "0.5"),
            ],
        )
        .unwrap();
        let spec = front.spec.unwrap();
        assert!(spec.unix_socket.unwrap().ends_with("nginx/blog.sock"));
        assert_eq!(spec.tcp, None);
        assert_eq!(spec.health_path.as_deref(), Some("/up"));
        assert_eq!(spec.health_deadline_ms, 5_000);
        assert_eq!(spec.drain_ms, 500);
        assert_eq!(
            front.nginx.unwrap().server_names,
            ["a.example", "b.example"]
        );
    }

    #[test]
    fn apps_without_web_have_no_front_and_bad_values_are_refused() {
        assert!(plan_for("worker: ./w\n", &[]).unwrap().spec.is_none());
        let err = plan_for("web: ./s\n", &[("PIKU_HEALTHCHECK", "up")]).unwrap_err();
        assert!(err.to_string().contains("PIKU_HEALTHCHECK"), "{err}");
        let err = plan_for("web: ./s\n", &[("PORT", "http")]).unwrap_err();
        assert!(err.to_string().contains("PORT"), "{err}");
    }
}
