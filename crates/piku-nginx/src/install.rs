//! Putting a rendered config live: write `nginx/<app>.conf.new`, check it with `nginx -t`
//! in isolation ([`crate::check`]), rename it over `nginx/<app>.conf`, reload nginx
//! ([`crate::reload`], [`crate::watch`]). Also `remove` for destroy.
//!
//! The isolated check runs nginx on a throw-away main config that includes only the new file
//! (plus the `events`/`http` skeleton), so another app's broken config cannot fail this deploy
//! and this app's broken config is caught before it can break nginx for everyone. piku instead
//! wrote the file live, grepped `nginx -t` for its name and deleted it on error, which also
//! removed the previous, working config.
//!
//! The reload then tests the whole configuration as nginx's own user (`nginx -T`). When that
//! refuses the configuration at this app's file (a clash with the main config the isolated
//! check cannot see, or a file only root may read), the previous file is put back and the
//! deploy fails with nginx's line: root's nginx is the judge, so the two checks together never
//! accept what it refuses nor refuse what it accepts. A refusal at another file (someone
//! else's broken config) leaves this one in place and is reported as a failed reload.
//!
//! Reloading (`PIKU_NGINX_RELOAD`):
//! - unset: `path` on a host booted with systemd that has the `piku-nginx.path` unit, else
//!   `signal`.
//! - `path`: the root-owned `piku-nginx.path` unit reloads; the deploy writes a request and
//!   waits for the watcher's status ([`crate::watch`]).
//! - `sudo`: `sudo -n /usr/lib/piku/piku-nginx-reload` (hosts without systemd; one sudoers line
//!   allows exactly that command).
//! - `signal`: test, SIGHUP and confirm as this user (`PIKU_NGINX_CONF` / `PIKU_NGINX_PREFIX`
//!   say which nginx): for an nginx running as the piku user.
//! - `systemctl`: `systemctl reload nginx` (needs the right to; not tested, not confirmed).
//! - `none`: nothing; something else reloads.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use piku_model::{AppName, PikuRoot};

use crate::check::{Verdict, check_isolated};
use crate::error::NginxError;
use crate::reload::{DEFAULT_CONFIRM, Invocation, Outcome, test_and_reload};
use crate::settings::{conf_path, crt_path, key_path, socket_path};
use crate::version::NginxFeatures;
use crate::watch::{self, NoAnswer};

/// Where the package installs the root-side reloader `sudo` runs.
pub const DEFAULT_RELOADER: &str = "/usr/lib/piku/piku-nginx-reload";
/// How long a deploy waits for the watcher's answer unless `PIKU_NGINX_RELOAD_TIMEOUT` says.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// Test, SIGHUP and confirm as this user ([`crate::reload::test_and_reload`]) for the nginx
    /// started with these `-c` / `-p`.
    Signal {
        conf: Option<PathBuf>,
        prefix: Option<PathBuf>,
    },
    /// The root-owned `piku-nginx.path` watcher reloads; the deploy writes its request into
    /// `nginx_dir` and waits up to `timeout` for the answer in `status`.
    Watcher {
        nginx_dir: PathBuf,
        status: PathBuf,
        timeout: Duration,
    },
    /// `sudo -n <program>`: the same test and reload as root, once, answering on stdout.
    Sudo { program: PathBuf },
    /// `systemctl reload nginx`
    Systemctl,
    /// A path unit (or another watcher) reloads nginx when `nginx/` changes.
    None,
}

impl ReloadMode {
    /// Whether the full test before the reload runs as another user than this process (root),
    /// who may read files this one cannot.
    fn tests_as_root(&self) -> bool {
        matches!(self, ReloadMode::Watcher { .. } | ReloadMode::Sudo { .. })
    }
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
    /// (`path` | `sudo` | `signal` | `systemctl` | `none`; see the module docs for the
    /// default), `PIKU_NGINX_CONF` and `PIKU_NGINX_PREFIX` (the nginx `signal` reloads),
    /// `PIKU_NGINX_STATUS` and `PIKU_NGINX_RELOAD_TIMEOUT` (the watcher's status file and how
    /// long to wait for it), `PIKU_NGINX_RELOADER` (what `sudo` runs), `PIKU_ROOT` / `HOME`
    /// (whose `nginx/` the watcher watches).
    pub fn from_env() -> Result<NginxCommand, NginxError> {
        NginxCommand::from_vars(|k| std::env::var(k).ok())
    }

    /// [`NginxCommand::from_env`] with the lookup passed in, for tests.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<NginxCommand, NginxError> {
        NginxCommand::choose(var, watcher_installed())
    }

    fn choose(
        var: impl Fn(&str) -> Option<String>,
        watcher_installed: bool,
    ) -> Result<NginxCommand, NginxError> {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let binary = var("PIKU_NGINX").map(PathBuf::from).unwrap_or_else(|| {
            let debian = Path::new("/usr/sbin/nginx");
            if debian.exists() {
                debian.to_path_buf()
            } else {
                PathBuf::from("nginx")
            }
        });
        let status = var("PIKU_NGINX_STATUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(watch::DEFAULT_STATUS));
        let watcher = || -> Result<ReloadMode, NginxError> {
            let root = PikuRoot::from_vars(
                var("PIKU_ROOT").map(OsString::from),
                var("HOME").map(OsString::from),
            )
            .map_err(|e| NginxError::setting("PIKU_ROOT", e.to_string()))?;
            let timeout = match var("PIKU_NGINX_RELOAD_TIMEOUT") {
                None => DEFAULT_WATCH_TIMEOUT,
                Some(t) => t
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        NginxError::setting(
                            "PIKU_NGINX_RELOAD_TIMEOUT",
                            format!("'{t}' is not a number of seconds"),
                        )
                    })?,
            };
            Ok(ReloadMode::Watcher {
                nginx_dir: root.nginx(),
                status: status.clone(),
                timeout,
            })
        };
        let signal = || ReloadMode::Signal {
            conf: var("PIKU_NGINX_CONF").map(PathBuf::from),
            prefix: var("PIKU_NGINX_PREFIX").map(PathBuf::from),
        };
        let reload = match var("PIKU_NGINX_RELOAD").as_deref().map(str::trim) {
            None if watcher_installed => watcher()?,
            None | Some("signal") => signal(),
            Some("path") => watcher()?,
            Some("sudo") => ReloadMode::Sudo {
                program: var("PIKU_NGINX_RELOADER")
                    .map(PathBuf::from)
                    .unwrap_or_else(default_reloader),
            },
            Some("systemctl") => ReloadMode::Systemctl,
            Some("none") => ReloadMode::None,
            Some(other) => {
                return Err(NginxError::setting(
                    "PIKU_NGINX_RELOAD",
                    format!("'{other}' is not one of path, sudo, signal, systemctl, none"),
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

    /// Checks `conf` alone with `nginx -t`, in isolation ([`crate::check`]). `Err` carries
    /// nginx's `[emerg]` line; [`Verdict::Deferred`] says what is left to the full test that
    /// runs before the reload.
    pub fn check(&self, conf: &Path) -> Result<Verdict, NginxError> {
        let features = self.features()?;
        check_isolated(&self.binary, features, conf, self.reload.tests_as_root())
    }

    /// Asks nginx to reload its configuration, as `reload` says. A configuration nginx's full
    /// test refuses is [`NginxError::Refused`]; a reload that did not happen or cannot be
    /// confirmed is [`NginxError::NotReloaded`].
    pub fn reload(&self) -> Result<Reload, NginxError> {
        match &self.reload {
            ReloadMode::None => Ok(Reload::Skipped),
            ReloadMode::Systemctl => {
                let mut c = Command::new("systemctl");
                c.args(["reload", "nginx"]);
                run_reload_command(c)
            }
            ReloadMode::Signal { conf, prefix } => {
                let nginx = Invocation {
                    binary: self.binary.clone(),
                    conf: conf.clone(),
                    prefix: prefix.clone(),
                };
                outcome_to_reload(test_and_reload(&nginx, DEFAULT_CONFIRM)).map_err(|e| match e {
                    NginxError::NotReloaded { message } if message.contains("not permitted") => {
                        NginxError::NotReloaded {
                            message: format!(
                                "{message} (nginx runs as another user: use the piku-nginx.path unit or PIKU_NGINX_RELOAD=sudo)"
                            ),
                        }
                    }
                    other => other,
                })
            }
            ReloadMode::Watcher {
                nginx_dir,
                status,
                timeout,
            } => match watch::await_answer(nginx_dir, status, *timeout) {
                Ok(answer) => outcome_to_reload(answer.outcome),
                Err(NoAnswer::Request(e)) => {
                    Err(NginxError::io(nginx_dir.join(watch::REQUEST_FILE))(e))
                }
                Err(NoAnswer::Timeout) => Err(NginxError::NotReloaded {
                    message: format!(
                        "no answer from the piku-nginx.path watcher within {} s (systemctl status piku-nginx.path piku-nginx.service)",
                        timeout.as_secs_f32()
                    ),
                }),
            },
            ReloadMode::Sudo { program } => {
                let output = Command::new("sudo")
                    .arg("-n")
                    .arg(program)
                    .output()
                    .map_err(|e| NginxError::Command {
                        command: format!("sudo -n {}", program.display()),
                        message: e.to_string(),
                    })?;
                let stdout = String::from_utf8_lossy(&output.stdout);
                match serde_json::from_str::<watch::Status>(stdout.trim()) {
                    Ok(answer) => outcome_to_reload(answer.outcome),
                    Err(_) => Err(NginxError::NotReloaded {
                        message: format!(
                            "sudo -n {}: {} (the sudoers line in piku's README allows it)",
                            program.display(),
                            last_line(&String::from_utf8_lossy(&output.stderr))
                        ),
                    }),
                }
            }
        }
    }

    fn command_error(&self, arg: &str, message: String) -> NginxError {
        NginxError::Command {
            command: format!("{} {arg}", self.binary.display()),
            message,
        }
    }
}

/// Where the `piku-nginx.path` unit file can be (the package's, or an admin's copy).
const WATCHER_UNITS: [&str; 3] = [
    "/etc/systemd/system/piku-nginx.path",
    "/lib/systemd/system/piku-nginx.path",
    "/usr/lib/systemd/system/piku-nginx.path",
];

/// Whether this host booted with systemd (`sd_booted()`'s test) and has the watcher's unit.
/// An installed but stopped watcher shows up as a reload that times out, with the fix.
fn watcher_installed() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && WATCHER_UNITS.iter().any(|unit| Path::new(unit).exists())
}

/// The package's reloader, else a hand-installed one under `/usr/local`.
fn default_reloader() -> PathBuf {
    [DEFAULT_RELOADER, "/usr/local/lib/piku/piku-nginx-reload"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RELOADER))
}

fn outcome_to_reload(outcome: Outcome) -> Result<Reload, NginxError> {
    match outcome {
        Outcome::Reloaded { .. } => Ok(Reload::Done),
        Outcome::Rejected { message } => Err(NginxError::Refused { message }),
        Outcome::Failed { message } => Err(NginxError::NotReloaded { message }),
    }
}

fn run_reload_command(mut cmd: Command) -> Result<Reload, NginxError> {
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

/// Writes `conf_text` as `nginx/<app>.conf` if nginx accepts it, then reloads nginx.
/// On rejection — by the isolated check, or by the full test before the reload at this file —
/// the live `<app>.conf` is what it was and the error carries nginx's message.
pub fn install(
    app: &AppName,
    root: &PikuRoot,
    conf_text: &str,
    nginx: &NginxCommand,
) -> Result<InstallOutcome, NginxError> {
    let dir = root.nginx();
    std::fs::create_dir_all(&dir).map_err(NginxError::io(&dir))?;
    let live = conf_path(root, app);
    let previous = std::fs::read_to_string(&live).ok();
    if previous.as_deref() == Some(conf_text) {
        return Ok(InstallOutcome {
            conf: live,
            changed: false,
            reload: Reload::Skipped,
        });
    }
    // `.conf.new` does not match the main config's `*.conf` include: never live by accident.
    let new = dir.join(format!("{app}.conf.new"));
    // Replaced, never written through: a symlink planted at `.conf.new` must not make us
    // write outside PIKU_ROOT.
    piku_fs::write_atomic(&new, conf_text.as_bytes(), piku_fs::MODE_PUBLIC)
        .map_err(NginxError::io(&new))?;
    if let Err(e) = nginx.check(&new) {
        let _ = std::fs::remove_file(&new);
        return Err(e);
    }
    std::fs::rename(&new, &live).map_err(NginxError::io(&live))?;
    let reload = match nginx.reload() {
        Ok(r) => r,
        Err(NginxError::Refused { message }) if names_file(&message, &live) => {
            put_back(&live, previous.as_deref())?;
            return Err(NginxError::Rejected {
                path: live,
                message,
            });
        }
        Err(e) => Reload::Failed(e.to_string()),
    };
    Ok(InstallOutcome {
        conf: live,
        changed: true,
        reload,
    })
}

/// Whether nginx's line points into `file` (`… in /home/piku/.piku/nginx/blog.conf:12`). The
/// directory is compared by its last component, since nginx names the file as its include
/// pattern spells it, which may differ from `$PIKU_ROOT` by a symlink.
fn names_file(message: &str, file: &Path) -> bool {
    let tail = match (file.parent().and_then(Path::file_name), file.file_name()) {
        (Some(dir), Some(name)) => {
            format!("/{}/{}:", dir.to_string_lossy(), name.to_string_lossy())
        }
        _ => return false,
    };
    message.contains(&format!("{}:", file.display())) || message.contains(&tail)
}

/// Restores `live` to `previous` (removes it when there was none). nginx still runs the
/// previous configuration (it refused the new one), so nothing needs reloading.
fn put_back(live: &Path, previous: Option<&str>) -> Result<(), NginxError> {
    match previous {
        Some(text) => piku_fs::write_atomic(live, text.as_bytes(), piku_fs::MODE_PUBLIC)
            .map_err(NginxError::io(live)),
        None => std::fs::remove_file(live).map_err(NginxError::io(live)),
    }
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
            let line = line
                .trim()
                .trim_start_matches("nginx: ")
                .trim_start_matches(|c: char| {
                    c.is_ascii_digit() || c == '/' || c == ':' || c == ' '
                });
            // An error-log line carries `<pid>#<tid>: ` after the level; it says nothing.
            if let Some(rest) = line.strip_prefix(level).map(str::trim_start)
                && let Some((ids, message)) = rest.split_once(": ")
                && ids.split('#').count() == 2
                && ids
                    .split('#')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                return format!("{level} {message}");
            }
            return line.to_owned();
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
        assert_eq!(nginx_problem(out), "[emerg] bind() failed");
        assert_eq!(nginx_problem("\nsomething odd\n\n"), "something odd");
        assert_eq!(nginx_problem(""), "failed with no message");
    }

    #[test]
    fn reload_mode_from_vars() {
        let cmd = NginxCommand::choose(
            |k| match k {
                "PIKU_NGINX" => Some("/opt/nginx".into()),
                "PIKU_NGINX_CONF" => Some("/etc/n.conf".into()),
                _ => None,
            },
            false,
        )
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
            NginxCommand::choose(
                move |k| match k {
                    "PIKU_NGINX_RELOAD" => Some(v.to_owned()),
                    "PIKU_NGINX_RELOADER" => Some("/opt/reload".to_owned()),
                    "HOME" => Some("/home/piku".to_owned()),
                    _ => None,
                },
                true,
            )
        };
        assert_eq!(sys("systemctl").unwrap().reload, ReloadMode::Systemctl);
        assert_eq!(sys("none").unwrap().reload, ReloadMode::None);
        assert_eq!(
            sys("sudo").unwrap().reload,
            ReloadMode::Sudo {
                program: "/opt/reload".into()
            }
        );
        assert_eq!(
            sys("path").unwrap().reload,
            ReloadMode::Watcher {
                nginx_dir: "/home/piku/.piku/nginx".into(),
                status: watch::DEFAULT_STATUS.into(),
                timeout: DEFAULT_WATCH_TIMEOUT
            }
        );
        assert_eq!(
            sys("sometimes").unwrap_err().to_string(),
            "PIKU_NGINX_RELOAD: 'sometimes' is not one of path, sudo, signal, systemctl, none"
        );
        assert_eq!(sys("none").unwrap().reload().unwrap(), Reload::Skipped);
    }

    #[test]
    fn the_watcher_is_the_default_where_it_is_installed() {
        let tmp = tempfile::tempdir().unwrap();
        let status = tmp.path().join("status.json");
        let vars = |timeout: &'static str| {
            let status = status.display().to_string();
            move |k: &str| match k {
                "PIKU_NGINX_STATUS" => Some(status.clone()),
                "PIKU_ROOT" => Some("/srv/piku".into()),
                "PIKU_NGINX_RELOAD_TIMEOUT" => Some(timeout.into()),
                _ => None,
            }
        };
        assert_eq!(
            NginxCommand::choose(vars("2.5"), true).unwrap().reload,
            ReloadMode::Watcher {
                nginx_dir: "/srv/piku/nginx".into(),
                status: status.clone(),
                timeout: Duration::from_millis(2500)
            }
        );
        assert!(matches!(
            NginxCommand::choose(vars("2.5"), false).unwrap().reload,
            ReloadMode::Signal { .. }
        ));
        assert_eq!(
            NginxCommand::choose(vars("soon"), true)
                .unwrap_err()
                .to_string(),
            "PIKU_NGINX_RELOAD_TIMEOUT: 'soon' is not a number of seconds"
        );
    }

    #[test]
    fn a_refusal_is_this_apps_when_nginx_names_its_file() {
        let live = Path::new("/home/piku/.piku/nginx/blog.conf");
        assert!(names_file(
            "[emerg] a duplicate default server for 0.0.0.0:80 in /home/piku/.piku/nginx/blog.conf:3",
            live
        ));
        // Through a symlinked home, nginx spells the include's path.
        assert!(names_file(
            "[emerg] unknown directive \"x\" in /srv/home/piku/.piku/nginx/blog.conf:9",
            live
        ));
        assert!(!names_file(
            "[emerg] unknown directive \"x\" in /home/piku/.piku/nginx/blog2.conf:9",
            live
        ));
        assert!(!names_file(
            "[emerg] unknown directive \"x\" in /etc/nginx/sites-enabled/default:9",
            live
        ));
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

    /// Issue 10 item 10: a symlink planted at `<app>.conf.new` is replaced, never written
    /// through (it pointed at `authorized_keys`).
    #[test]
    fn a_symlink_at_conf_new_is_never_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(tmp.path().join("piku"));
        let app: AppName = "blog".parse().unwrap();
        std::fs::create_dir_all(root.nginx()).unwrap();
        let victim = tmp.path().join("authorized_keys");
        std::fs::write(&victim, "ssh-ed25519 AAAA keep\n").unwrap();
        std::os::unix::fs::symlink(&victim, root.nginx().join("blog.conf.new")).unwrap();
        let nginx = NginxCommand::new("/usr/sbin/nginx", ReloadMode::None);
        let conf = "server {\n  listen 127.0.0.1:8999;\n  return 204;\n}\n";
        install(&app, &root, conf, &nginx).unwrap();
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "ssh-ed25519 AAAA keep\n"
        );
        assert_eq!(
            std::fs::read_to_string(conf_path(&root, &app)).unwrap(),
            conf
        );
        // The previous config goes back the same way.
        std::os::unix::fs::symlink(&victim, root.nginx().join("blog.conf.old")).unwrap();
        put_back(&conf_path(&root, &app), Some("server {}\n")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "ssh-ed25519 AAAA keep\n"
        );
    }
}
