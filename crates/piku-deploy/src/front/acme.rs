//! Certificates from an ACME CA for an app behind nginx that asked for them
//! (`PIKU_ACME_DIRECTORY` / `PIKU_ACME_EMAIL`, in the app's env or the process's): issued after
//! a successful `Apply` ([`issue_certificate`]), and renewed daily by a cron entry the
//! supervisor runs like any other ([`renewal_process`] → `piku acme:renew` →
//! [`renew_certificate`]). A certificate that is CA-issued, covers the names and is not due is
//! kept, so deploys do not hit the CA's rate limits.

use piku_model::{AppName, CronSchedule, EnvMap, PikuRoot, Procfile, parse_procfile};
use piku_nginx::{AcmeConfig, NginxSettings};
use piku_proto::{ProcessSpec, Role};

use crate::app_config;
use crate::buildlog::BuildLog;
use crate::checkout::read_file;
use crate::error::{DeployError, IoContext};
use crate::front::nginx::{reload, say_reload};
use crate::front::spec::{Front, plan};
use crate::lock;

/// Renew this many days before a CA certificate expires (the supervisor's renewals use the
/// same margin), so every deploy does not ask the CA again and hit its rate limits.
const RENEW_DAYS: u32 = 30;

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

/// For an app behind nginx that asked for ACME: a cron entry, run by the supervisor like any
/// other, that calls `piku acme:renew <app>` daily, so certificates are renewed before they
/// expire without a deploy. `None` when the app needs none.
pub fn renewal_process(
    root: &PikuRoot,
    app: &AppName,
    front: &Front,
    env: &EnvMap,
    procfile: &Procfile,
) -> Result<Option<ProcessSpec>, DeployError> {
    if front.nginx.is_none() || !acme_wanted(env) {
        return Ok(None);
    }
    if procfile.get(RENEWAL_KIND).is_some() {
        return Err(DeployError::refused(format!(
            "the Procfile kind '{RENEWAL_KIND}' is reserved for certificate renewals; rename it"
        )));
    }
    let schedule = env
        .get("PIKU_ACME_RENEW_SCHEDULE")
        .map(String::as_str)
        .unwrap_or(RENEWAL_SCHEDULE);
    CronSchedule::parse(schedule)
        .map_err(|e| DeployError::refused(format!("PIKU_ACME_RENEW_SCHEDULE: {e}")))?;
    let exe = std::env::current_exe().doing(|| "cannot find the piku executable".to_owned())?;
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
/// never issued by the CA), from `LIVE_ENV` and the live checkout. Waits for a deploy in
/// progress; errors when the CA fails.
pub fn renew_certificate(root: &PikuRoot, app: &AppName) -> Result<(), DeployError> {
    let mut log = BuildLog::terminal_only();
    let _lock = lock::acquire(root, app, &mut log)?;
    let env = app_config::read_live_env(root, app)?.ok_or_else(|| {
        DeployError::refused(format!(
            "app '{app}' has no live release ({})",
            root.live_env_file(app).display()
        ))
    })?;
    let checkout = root.app_dir(app);
    let procfile = read_file(&checkout, "Procfile")?.ok_or_else(|| {
        DeployError::refused(format!("the live release of '{app}' has no Procfile"))
    })?;
    let procfile = parse_procfile(&procfile)?;
    let front = plan(root, app, &env, &procfile, &checkout, &mut Vec::new())?;
    if front.nginx.is_none() || !acme_wanted(&env) {
        return Err(DeployError::refused(format!(
            "app '{app}' has no NGINX_SERVER_NAME or did not ask for ACME \
             (PIKU_ACME_DIRECTORY / PIKU_ACME_EMAIL)"
        )));
    }
    if !issue_certificate(&front, &env, &mut log) {
        return Err(DeployError::refused(format!(
            "no certificate from ACME for '{app}'; the current one stays"
        )));
    }
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
            say_reload(&reload(), log);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
}
