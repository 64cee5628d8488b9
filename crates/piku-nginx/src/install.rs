//! Putting a rendered config live: write `nginx/<app>.conf.new`, check it with `nginx -t`
//! in isolation, rename it over `nginx/<app>.conf`, reload nginx. Also `remove` for destroy.
//!
//! The check runs nginx on a throw-away main config that includes only the new file (plus the
//! `events`/`http` skeleton), so another app's broken config cannot fail this deploy and this
//! app's broken config is caught before it can break nginx for everyone. piku instead wrote
//! the file live, grepped `nginx -t` for its name and deleted it on error, which also removed
//! the previous, working config.
//!
//! Reloading (`PIKU_NGINX_RELOAD`):
//! - `signal` (default): `nginx [-p PIKU_NGINX_PREFIX] [-c PIKU_NGINX_CONF] -s reload`, which
//!   needs the right to signal nginx's master (same user, or root).
//! - `systemctl`: `systemctl reload nginx`.
//! - `none`: nothing; a watcher reloads, e.g. the shipped `piku-nginx.path` unit, or on hosts
//!   without systemd a loop such as
//!   `inotifywait -m -e close_write,moved_to,delete ~/.piku/nginx | while read -r _; do nginx -s reload; done`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use piku_model::{AppName, PikuRoot};

use crate::error::NginxError;
use crate::settings::{conf_path, crt_path, key_path, socket_path};
use crate::version::NginxFeatures;

/// How to run nginx and how to make it reload.
#[derive(Clone, Debug)]
pub struct NginxCommand {
    /// The nginx binary (default `/usr/sbin/nginx` if present, else `nginx` on `PATH`).
    pub binary: PathBuf,
    pub reload: ReloadMode,
    features: OnceLock<NginxFeatures>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadMode {
    /// `nginx [-p prefix] [-c conf] -s reload`
    Signal {
        conf: Option<PathBuf>,
        prefix: Option<PathBuf>,
    },
    /// `systemctl reload nginx`
    Systemctl,
    /// A path unit (or another watcher) reloads nginx when `nginx/` changes.
    None,
}

/// What [`install`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallOutcome {
    /// `nginx/<app>.conf`
    pub conf: PathBuf,
    /// False when the live config already had exactly this text (nothing written, no reload).
    pub changed: bool,
    pub reload: Reload,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reload {
    Done,
    /// Nothing to reload, or `PIKU_NGINX_RELOAD=none`.
    Skipped,
    /// The config is in place but the reload failed (e.g. no right to signal nginx); the
    /// message is one line. The caller should warn, not fail the deploy.
    Failed(String),
}

impl NginxCommand {
    pub fn new(binary: impl Into<PathBuf>, reload: ReloadMode) -> NginxCommand {
        NginxCommand {
            binary: binary.into(),
            reload,
            features: OnceLock::new(),
        }
    }

    /// From the process environment: `PIKU_NGINX` (binary), `PIKU_NGINX_RELOAD`
    /// (`signal` | `systemctl` | `none`), `PIKU_NGINX_CONF` and `PIKU_NGINX_PREFIX` (passed as
    /// `-c` / `-p` when signalling).
    pub fn from_env() -> Result<NginxCommand, NginxError> {
        NginxCommand::from_vars(|k| std::env::var(k).ok())
    }

    /// [`NginxCommand::from_env`] with the lookup passed in, for tests.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<NginxCommand, NginxError> {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let binary = var("PIKU_NGINX").map(PathBuf::from).unwrap_or_else(|| {
            let debian = Path::new("/usr/sbin/nginx");
            if debian.exists() {
                debian.to_path_buf()
            } else {
                PathBuf::from("nginx")
            }
        });
        let reload = match var("PIKU_NGINX_RELOAD").as_deref().map(str::trim) {
            None | Some("signal") => ReloadMode::Signal {
                conf: var("PIKU_NGINX_CONF").map(PathBuf::from),
                prefix: var("PIKU_NGINX_PREFIX").map(PathBuf::from),
            },
            Some("systemctl") => ReloadMode::Systemctl,
            Some("none") => ReloadMode::None,
            Some(other) => {
                return Err(NginxError::setting(
                    "PIKU_NGINX_RELOAD",
                    format!("'{other}' is not one of signal, systemctl, none"),
                ));
            }
        };
        Ok(NginxCommand::new(binary, reload))
    }

    /// `nginx -V`, parsed once per `NginxCommand`.
    pub fn features(&self) -> Result<NginxFeatures, NginxError> {
        if let Some(f) = self.features.get() {
            return Ok(*f);
        }
        let output = Command::new(&self.binary)
            .arg("-V")
            .output()
            .map_err(|e| self.command_error("-V", e.to_string()))?;
        // nginx prints -V on stderr; read both in case a build differs.
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        if !output.status.success() {
            return Err(self.command_error("-V", last_line(&text)));
        }
        let features = NginxFeatures::parse(&text);
        Ok(*self.features.get_or_init(|| features))
    }

    /// Checks `conf` alone with `nginx -t`. `Err` carries nginx's `[emerg]` line.
    pub fn check(&self, conf: &Path) -> Result<(), NginxError> {
        let features = self.features()?;
        let dir = CheckDir::create()?;
        let main = dir.path.join("nginx.conf");
        let d = dir.path.display();
        let text = format!(
            "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  \
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {};\n}}\n",
            conf.display()
        );
        std::fs::write(&main, text).map_err(NginxError::io(&main))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-t")
            .arg("-q")
            .arg("-p")
            .arg(&dir.path)
            .arg("-c")
            .arg(&main);
        if features.has_error_log_flag() {
            cmd.arg("-e").arg(dir.path.join("error.log"));
        }
        let output = cmd
            .output()
            .map_err(|e| self.command_error("-t", e.to_string()))?;
        if output.status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&output.stderr);
        Err(NginxError::Rejected {
            path: conf.to_path_buf(),
            message: nginx_problem(&text),
        })
    }

    /// Asks nginx to reload its configuration, as `reload` says.
    pub fn reload(&self) -> Result<Reload, NginxError> {
        let mut cmd = match &self.reload {
            ReloadMode::None => return Ok(Reload::Skipped),
            ReloadMode::Systemctl => {
                let mut c = Command::new("systemctl");
                c.args(["reload", "nginx"]);
                c
            }
            ReloadMode::Signal { conf, prefix } => {
                let mut c = Command::new(&self.binary);
                if let Some(p) = prefix {
                    c.arg("-p").arg(p);
                }
                if let Some(conf) = conf {
                    c.arg("-c").arg(conf);
                }
                c.args(["-s", "reload"]);
                c
            }
        };
        let shown = format!("{cmd:?}").replace('"', "");
        let output = cmd.output().map_err(|e| NginxError::Command {
            command: shown.clone(),
            message: e.to_string(),
        })?;
        if output.status.success() {
            Ok(Reload::Done)
        } else {
            let text = String::from_utf8_lossy(&output.stderr);
            Err(NginxError::Command {
                command: shown,
                message: nginx_problem(&text),
            })
        }
    }

    fn command_error(&self, arg: &str, message: String) -> NginxError {
        NginxError::Command {
            command: format!("{} {arg}", self.binary.display()),
            message,
        }
    }
}

/// Writes `conf_text` as `nginx/<app>.conf` if `nginx -t` accepts it, then reloads nginx.
/// On rejection the live `<app>.conf` is untouched and the error carries nginx's message.
pub fn install(
    app: &AppName,
    root: &PikuRoot,
    conf_text: &str,
    nginx: &NginxCommand,
) -> Result<InstallOutcome, NginxError> {
    let dir = root.nginx();
    std::fs::create_dir_all(&dir).map_err(NginxError::io(&dir))?;
    let live = conf_path(root, app);
    if std::fs::read_to_string(&live).is_ok_and(|old| old == conf_text) {
        return Ok(InstallOutcome {
            conf: live,
            changed: false,
            reload: Reload::Skipped,
        });
    }
    // `.conf.new` does not match the main config's `*.conf` include: never live by accident.
    let new = dir.join(format!("{app}.conf.new"));
    std::fs::write(&new, conf_text).map_err(NginxError::io(&new))?;
    if let Err(e) = nginx.check(&new) {
        let _ = std::fs::remove_file(&new);
        return Err(e);
    }
    std::fs::rename(&new, &live).map_err(NginxError::io(&live))?;
    let reload = match nginx.reload() {
        Ok(r) => r,
        Err(e) => Reload::Failed(e.to_string()),
    };
    Ok(InstallOutcome {
        conf: live,
        changed: true,
        reload,
    })
}

/// Removes the app's nginx files (conf, a leftover `.conf.new`, socket, key, certificate) and
/// returns those that existed. The caller reloads nginx ([`NginxCommand::reload`]).
pub fn remove(app: &AppName, root: &PikuRoot) -> Result<Vec<PathBuf>, NginxError> {
    let mut removed = Vec::new();
    for path in [
        conf_path(root, app),
        root.nginx().join(format!("{app}.conf.new")),
        socket_path(root, app),
        key_path(root, app),
        crt_path(root, app),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NginxError::io(&path)(e)),
        }
    }
    Ok(removed)
}

/// The line of nginx's output that says what is wrong: the first `[emerg]` (else `[alert]`,
/// `[crit]`, `[error]`), without the `nginx: ` prefix.
pub fn nginx_problem(stderr: &str) -> String {
    for level in ["[emerg]", "[alert]", "[crit]", "[error]"] {
        if let Some(line) = stderr.lines().find(|l| l.contains(level)) {
            return line
                .trim()
                .trim_start_matches("nginx: ")
                .trim_start_matches(|c: char| {
                    c.is_ascii_digit() || c == '/' || c == ':' || c == ' '
                })
                .to_owned();
        }
    }
    last_line(stderr)
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("failed with no message")
        .to_owned()
}

/// A private directory for one `nginx -t` run (prefix, main config, temp paths), removed on drop.
struct CheckDir {
    path: PathBuf,
}

impl CheckDir {
    fn create() -> Result<CheckDir, NginxError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("piku-nginx-check-{}-{n}", std::process::id()));
        // A leftover from a crashed run with a recycled pid is ours to replace.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(NginxError::io(&path))?;
        Ok(CheckDir { path })
    }
}

impl Drop for CheckDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emerg_line_is_the_message() {
        let out = "nginx: [emerg] unknown directive \"bogus\" in /r/nginx/a.conf.new:12\nnginx: configuration file /tmp/x/nginx.conf test failed\n";
        assert_eq!(
            nginx_problem(out),
            "[emerg] unknown directive \"bogus\" in /r/nginx/a.conf.new:12"
        );
        let out = "2026/11/22 02:00:00 [emerg] 123#123: bind() failed\n";
        assert_eq!(nginx_problem(out), "[emerg] 123#123: bind() failed");
        assert_eq!(nginx_problem("\nsomething odd\n\n"), "something odd");
        assert_eq!(nginx_problem(""), "failed with no message");
    }

    #[test]
    fn reload_mode_from_vars() {
        let cmd = NginxCommand::from_vars(|k| match k {
            "PIKU_NGINX" => Some("/opt/nginx".into()),
            "PIKU_NGINX_CONF" => Some("/etc/n.conf".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cmd.binary, Path::new("/opt/nginx"));
        assert_eq!(
            cmd.reload,
            ReloadMode::Signal {
                conf: Some("/etc/n.conf".into()),
                prefix: None
            }
        );
        let sys = |v: &'static str| {
            NginxCommand::from_vars(move |k| (k == "PIKU_NGINX_RELOAD").then(|| v.to_owned()))
        };
        assert_eq!(sys("systemctl").unwrap().reload, ReloadMode::Systemctl);
        assert_eq!(sys("none").unwrap().reload, ReloadMode::None);
        assert_eq!(
            sys("sometimes").unwrap_err().to_string(),
            "PIKU_NGINX_RELOAD: 'sometimes' is not one of signal, systemctl, none"
        );
        assert_eq!(sys("none").unwrap().reload().unwrap(), Reload::Skipped);
    }

    #[test]
    fn remove_reports_what_existed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(tmp.path());
        let app: AppName = "blog".parse().unwrap();
        std::fs::create_dir_all(root.nginx()).unwrap();
        std::fs::write(conf_path(&root, &app), "x").unwrap();
        std::fs::write(key_path(&root, &app), "k").unwrap();
        // Another app's files with a shared prefix are not touched (piku's glob bug).
        std::fs::write(root.nginx().join("blog2.conf"), "y").unwrap();
        let removed = remove(&app, &root).unwrap();
        assert_eq!(removed, [conf_path(&root, &app), key_path(&root, &app)]);
        assert!(root.nginx().join("blog2.conf").exists());
        assert!(remove(&app, &root).unwrap().is_empty());
    }
}
