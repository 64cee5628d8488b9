//! The app's nginx config around an activation: checked and installed before the supervisor's
//! `Apply` ([`configure`]), put back when the supervisor refuses ([`NginxUndo::restore`]),
//! removed when the app no longer asks for nginx or is destroyed ([`remove`]); and [`reload`],
//! the one place nginx is reloaded from the build side.

use std::path::{Path, PathBuf};

use piku_model::{AppName, PikuRoot};
use piku_nginx::{CertStatus, NginxCommand, Reload};

use crate::buildlog::BuildLog;
use crate::error::{Context, DeployError, IoContext};
use crate::files;
use crate::front::spec::Front;

/// Reloads nginx as `PIKU_NGINX_RELOAD` says; a failure is [`Reload::Failed`] with its reason
/// (the config is in place either way, so callers warn rather than fail).
pub fn reload() -> Reload {
    match NginxCommand::from_env().and_then(|nginx| nginx.reload()) {
        Ok(reload) => reload,
        Err(e) => Reload::Failed(e.to_string()),
    }
}

/// Says on the log when nginx could not be reloaded.
pub fn say_reload(reload: &Reload, log: &mut BuildLog) {
    if let Reload::Failed(why) = reload {
        log.step(format!(
            "Warning: the nginx config is in place but nginx was not reloaded: {why}"
        ));
    }
}

/// What [`configure`] replaced, so a refused `Apply` can put it back.
#[must_use = "call `restore` if the Apply fails"]
pub struct NginxUndo {
    /// `nginx/<app>.conf` and the text it had before (`None`: there was none). `None` when
    /// nothing was changed.
    previous: Option<(PathBuf, Option<String>)>,
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
            Some(text) => files::write(&conf, text.as_bytes(), piku_fs::MODE_GROUP_READ),
            None => std::fs::remove_file(&conf).cannot("remove", &conf),
        };
        if let Err(e) = result {
            log.step(format!(
                "Warning: the previous nginx config was not restored: {e}"
            ));
            return;
        }
        say_reload(&reload(), log);
        log.step("nginx: the previous config is back in place");
    }
}

/// Before the `Apply`: checks and installs the nginx config (self-signed certificate when
/// there is none), printing piku's lines. An `Err` means nothing was changed.
pub fn configure(front: &Front, log: &mut BuildLog) -> Result<NginxUndo, DeployError> {
    let Some(settings) = &front.nginx else {
        return unconfigure(&front.conf, log);
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
    let nginx = NginxCommand::from_env()?;
    let configured =
        piku_nginx::configure(settings, &nginx).context("the nginx config was not changed")?;
    if configured.certificate == CertStatus::Created {
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
fn unconfigure(conf: &Path, log: &mut BuildLog) -> Result<NginxUndo, DeployError> {
    let Ok(before) = std::fs::read_to_string(conf) else {
        return Ok(NginxUndo { previous: None });
    };
    std::fs::remove_file(conf).cannot("remove", conf)?;
    log.step("nginx: NGINX_SERVER_NAME is not set; the app's nginx config was removed");
    say_reload(&reload(), log);
    Ok(NginxUndo {
        previous: Some((conf.to_path_buf(), Some(before))),
    })
}

/// Removes the app's nginx config, socket and certificates (for `destroy`) and reloads nginx
/// if a config was among them. `Ok(Some(..))` is a warning: nginx could not be reloaded.
pub fn remove(root: &PikuRoot, app: &AppName) -> Result<Option<String>, DeployError> {
    let removed = piku_nginx::remove(app, root)?;
    let had_conf = removed
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "conf"));
    if !had_conf {
        return Ok(None);
    }
    Ok(match reload() {
        Reload::Failed(why) => Some(format!("nginx was not reloaded: {why}")),
        Reload::Done | Reload::Skipped => None,
    })
}
