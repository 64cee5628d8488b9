//! What an app's HTTP front is, worked out from its merged env and Procfile: the supervisor's
//! front ([`FrontSpec`]: a Unix socket for nginx, or piku's public `$BIND_ADDRESS:$PORT`, and
//! the health check and drain bounds of a switch), and the app's nginx settings. Also where the
//! app answers, from the supervisor's status.

use std::path::{Path, PathBuf};

use piku_model::{AppName, EnvMap, FrontSettings, PikuRoot, ProcessClass, Procfile};
use piku_nginx::NginxSettings;
use piku_proto::{AppStatus, FrontSpec, TcpFront};

use crate::app_config;
use crate::error::DeployError;
use crate::settings::number;

/// The health check deadline when `PIKU_HEALTHCHECK_TIMEOUT` is unset, in seconds.
pub const DEFAULT_HEALTH_SECS: f64 = 30.0;
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
    procfile.entries.iter().any(|e| e.class.is_web())
}

/// Works out the front of `app` from its merged `env` and the release's `checkout` (where
/// `NGINX_INCLUDE_FILE` is read). Invalid settings are an error naming each of them.
pub fn plan(
    root: &PikuRoot,
    app: &AppName,
    env: &EnvMap,
    procfile: &Procfile,
    checkout: &Path,
    warnings: &mut Vec<String>,
) -> Result<Front, DeployError> {
    let web = has_web(procfile);
    let static_entry = procfile
        .entries
        .iter()
        .find(|e| e.class == ProcessClass::Static)
        .map(|e| e.command.as_str());
    let nginx = NginxSettings::from_env_for_checkout(app, root, env, web, static_entry, checkout)?;
    if let Some(nginx) = &nginx {
        super::conflicts::check(root, nginx)?;
    }
    let spec = if web {
        Some(front_spec(root, app, env, nginx.is_some(), warnings)?)
    } else {
        None
    };
    Ok(Front {
        spec,
        nginx,
        conf: root.nginx_conf(app),
    })
}

/// The supervisor's front: behind nginx a Unix socket, else piku's public TCP port.
fn front_spec(
    root: &PikuRoot,
    app: &AppName,
    env: &EnvMap,
    behind_nginx: bool,
    warnings: &mut Vec<String>,
) -> Result<FrontSpec, DeployError> {
    let (unix_socket, tcp) = if behind_nginx {
        (Some(root.nginx_socket(app)), None)
    } else {
        let bind = env
            .get("BIND_ADDRESS")
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        let port = match env.get("PORT").map(|p| p.trim()) {
            None | Some("") => None,
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                DeployError::refused(format!("PORT='{p}' is not a TCP port (1-65535)"))
            })?),
        };
        (None, Some(TcpFront { bind, port }))
    };
    let health_path = match env.get("PIKU_HEALTHCHECK").map(|p| p.trim()) {
        None | Some("") => None,
        Some(path) => {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(DeployError::refused(format!(
                    "PIKU_HEALTHCHECK='{path}' must be a URL path starting with '/', e.g. /up"
                )));
            }
            Some(path.to_owned())
        }
    };
    let seconds = |key: &str, default: f64, warnings: &mut Vec<String>| {
        let secs: f64 = number(env, key, default, warnings);
        let max = piku_proto::MAX_FRONT_WAIT_MS as f64 / 1000.0;
        if secs > max {
            warnings.push(format!("Warning: {key} is more than {max} s, using {max}"));
            piku_proto::MAX_FRONT_WAIT_MS
        } else if secs.is_finite() && secs >= 0.0 {
            (secs * 1000.0) as u64
        } else {
            warnings.push(format!(
                "Warning: {key} must be a number of seconds, using {default}"
            ));
            (default * 1000.0) as u64
        }
    };
    // Refused when malformed, as `config:set` refuses them: a timeout silently replaced by
    // its default is one the user believes in.
    let timeouts = FrontSettings::from_env(env).map_err(DeployError::refused)?;
    Ok(FrontSpec {
        unix_socket,
        tcp,
        health_path,
        health_deadline_ms: seconds("PIKU_HEALTHCHECK_TIMEOUT", DEFAULT_HEALTH_SECS, warnings),
        drain_ms: seconds("PIKU_DRAIN_TIMEOUT", DEFAULT_DRAIN_SECS, warnings),
        response_timeout_ms: timeouts.response_timeout_secs * 1000,
        header_timeout_ms: timeouts.header_timeout_secs * 1000,
        keepalive_timeout_ms: timeouts.keepalive_timeout_secs * 1000,
        max_request_body: timeouts.max_request_body(),
        stall_after_ms: timeouts.stall_after_ms(),
        // Set by the activation when the app's WSGI server needs it.
        max_in_flight_per_instance: None,
    })
}

/// Where the app answers, from the supervisor's status: one line, or `None` without a front.
/// `nginx_names`: the host names nginx routes to it, if it is behind nginx.
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

/// Where an app answers outside a deploy (for `piku ps`): [`describe`] with the host names of
/// its live nginx config, read from `LIVE_ENV`. `None` without a front.
pub fn answers(root: &PikuRoot, status: &AppStatus) -> Option<String> {
    let app: AppName = status.app.parse().ok()?;
    let names = live_nginx_names(root, &app);
    describe(status, names.as_deref())
}

/// The server names of the app's live nginx config (`LIVE_ENV`'s `NGINX_SERVER_NAME`).
fn live_nginx_names(root: &PikuRoot, app: &AppName) -> Option<Vec<String>> {
    if !root.nginx_conf(app).is_file() {
        return None;
    }
    let env = app_config::read_live_env(root, app).ok()??;
    let names: Vec<String> = env
        .get("NGINX_SERVER_NAME")?
        .split([' ', ','])
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    (!names.is_empty()).then_some(names)
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

    fn plan_for(procfile: &str, pairs: &[(&str, &str)]) -> Result<Front, DeployError> {
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
        assert_eq!(spec.response_timeout_ms, 30_000);
        assert_eq!(spec.max_request_body, None);
        assert_eq!(
            front.nginx.unwrap().server_names,
            ["a.example", "b.example"]
        );
    }

    #[test]
    fn ps_names_the_host_names_the_live_release_got() {
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        let app: AppName = "blog".parse().unwrap();
        let status = AppStatus {
            app: "blog".into(),
            release: "v1".into(),
            stopped: false,
            formation: Default::default(),
            instances: Vec::new(),
            front: Some(piku_proto::FrontStatus {
                unix_socket: Some(root.nginx_socket(&app)),
                tcp: None,
                backends: Vec::new(),
            }),
            limits: Default::default(),
        };
        // No nginx config: the socket is where it answers.
        let line = answers(&root, &status).unwrap();
        assert!(line.ends_with("blog.sock"), "{line}");
        std::fs::create_dir_all(root.nginx()).unwrap();
        std::fs::write(root.nginx_conf(&app), "server {}\n").unwrap();
        crate::app_config::write_live_env(
            &root,
            &app,
            &env(&[("NGINX_SERVER_NAME", "a.example b.example")]),
        )
        .unwrap();
        assert_eq!(
            answers(&root, &status).unwrap(),
            "'blog' answers via nginx for a.example b.example"
        );
    }

    #[test]
    fn apps_without_web_have_no_front_and_bad_values_are_refused() {
        assert!(plan_for("worker: ./w\n", &[]).unwrap().spec.is_none());
        let err = plan_for("web: ./s\n", &[("PIKU_HEALTHCHECK", "up")]).unwrap_err();
        assert!(err.to_string().contains("PIKU_HEALTHCHECK"), "{err}");
        let err = plan_for("web: ./s\n", &[("PORT", "http")]).unwrap_err();
        assert!(err.to_string().contains("PORT"), "{err}");
        let err = plan_for("web: ./s\n", &[("PIKU_RESPONSE_TIMEOUT", "0")]).unwrap_err();
        assert!(
            err.to_string().starts_with("PIKU_RESPONSE_TIMEOUT='0'"),
            "{err}"
        );
    }

    #[test]
    fn the_front_takes_the_apps_timeouts_and_body_limit() {
        let front = plan_for(
            "web: ./serve\n",
            &[
                ("PIKU_RESPONSE_TIMEOUT", "90"),
                ("PIKU_HEADER_TIMEOUT", "5"),
                ("PIKU_KEEPALIVE_TIMEOUT", "20"),
                ("NGINX_CLIENT_MAX_BODY_SIZE", "100m"),
                ("PIKU_STALL_TIMEOUT", "2"),
            ],
        )
        .unwrap();
        let spec = front.spec.unwrap();
        assert_eq!(spec.stall_after_ms, Some(2_000));
        assert_eq!(spec.response_timeout_ms, 90_000);
        assert_eq!(spec.header_timeout_ms, 5_000);
        assert_eq!(spec.keepalive_timeout_ms, 20_000);
        assert_eq!(spec.max_request_body, Some(100 << 20));
        let unlimited = plan_for("web: ./s\n", &[("NGINX_CLIENT_MAX_BODY_SIZE", "0")]).unwrap();
        assert_eq!(unlimited.spec.unwrap().max_request_body, None);
        let no_stall_rule = plan_for("web: ./s\n", &[("PIKU_STALL_TIMEOUT", "0")]).unwrap();
        assert_eq!(no_stall_rule.spec.unwrap().stall_after_ms, None);
        let default = plan_for("web: ./s\n", &[]).unwrap();
        assert_eq!(default.spec.unwrap().stall_after_ms, Some(500));
    }

    /// Issue 10: a drain or health wait of "forever" is capped at an hour, with a warning.
    #[test]
    fn endless_front_waits_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        let mut warnings = Vec::new();
        let spec = front_spec(
            &root,
            &"blog".parse().unwrap(),
            &env(&[
                ("PIKU_DRAIN_TIMEOUT", "1e30"),
                ("PIKU_HEALTHCHECK_TIMEOUT", "inf"),
            ]),
            false,
            &mut warnings,
        )
        .unwrap();
        assert_eq!(spec.drain_ms, 3_600_000);
        assert_eq!(spec.health_deadline_ms, 3_600_000);
        assert_eq!(
            warnings,
            [
                "Warning: PIKU_HEALTHCHECK_TIMEOUT is more than 3600 s, using 3600",
                "Warning: PIKU_DRAIN_TIMEOUT is more than 3600 s, using 3600",
            ]
        );
    }
}
