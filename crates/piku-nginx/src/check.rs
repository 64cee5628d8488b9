//! The isolated `nginx -t` of one app's new config, run by the deploy as the piku user before
//! the config replaces the live one.
//!
//! nginx's test mode does everything a start does short of serving: it parses the config,
//! opens every file it names, and binds every `listen` socket. Run as the piku user next to a
//! root nginx on ports 80/443, the bind fails (`bind() to 0.0.0.0:80 failed (13: Permission
//! denied)`: only root may bind ports below 1024), and a listen address the host has but the
//! test cannot see would fail too. Neither says anything about the config.
//!
//! So the test runs inside a private user and network namespace
//! (`unshare --user --map-root-user --net`): there the piku user is root of an empty network
//! namespace, may bind any port, and with `ip_nonlocal_bind` set may bind any address, while
//! nothing it binds is visible outside or outlives the test. Files are still opened with the
//! piku user's rights (the namespace maps only that uid), so it reads exactly what piku may
//! read.
//!
//! What this check cannot judge is left to the check that follows it: before a reload in the
//! `path`, `sudo` and `signal` modes, nginx's own user runs `nginx -T` on the whole
//! configuration ([`crate::reload`]), and a config it refuses at this app's file is put back
//! (`systemctl` and `none` reload without that test). Two kinds of failure are therefore not
//! verdicts here ([`Verdict::Deferred`]):
//! - a failed `bind()`: it depends on who binds and on the host's addresses. Inside the
//!   namespace it does not happen; where unprivileged user namespaces are disabled
//!   (`kernel.unprivileged_userns_clone=0`, `user.max_user_namespaces=0`, AppArmor's
//!   `restrict_unprivileged_userns`) the test runs without one, nginx stops at the first
//!   `listen` it cannot bind, and everything before it — the whole parse, every file — has
//!   been checked; the one stage after binding (module init) is then checked by the root test
//!   only.
//! - a file the piku user may not read (`(13: Permission denied)`), e.g. a root-only key in an
//!   `NGINX_INCLUDE_FILE`: root's nginx can read it, so only root's test can say. This is
//!   deferred only when the reload mode runs that test as another user; otherwise nginx runs
//!   as piku too, and the refusal stands.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::NginxError;
use crate::install::nginx_problem;
use crate::version::NginxFeatures;

/// What the isolated check concluded about a config that nginx did not refuse on its merits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// nginx stopped on something this run cannot judge (see the module docs); its line. The
    /// config goes in and the full test before the reload decides.
    Deferred(String),
}

/// Why an isolated `nginx -t` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// `bind() to … failed`: the rest of the config was read and accepted first.
    Bind,
    /// A file the piku user may not open.
    Access,
    /// The config itself.
    Config,
}

fn classify(line: &str) -> Failure {
    if line.contains("bind() to ") {
        Failure::Bind
    } else if line.contains("Permission denied") {
        Failure::Access
    } else {
        Failure::Config
    }
}

/// Runs `nginx -t` on `conf` alone (inside an `events`/`http` skeleton) in isolation.
/// `root_tests_later`: the reload runs the full test as a user other than this one, so a file
/// only that user may read is deferred to it. `Err` carries nginx's line.
pub(crate) fn check_isolated(
    binary: &Path,
    features: NginxFeatures,
    conf: &Path,
    root_tests_later: bool,
) -> Result<Verdict, NginxError> {
    check_with(isolation(), binary, features, conf, root_tests_later)
}

fn check_with(
    isolation: Isolation,
    binary: &Path,
    features: NginxFeatures,
    conf: &Path,
    root_tests_later: bool,
) -> Result<Verdict, NginxError> {
    let dir = CheckDir::create()?;
    let main = dir.path.join("nginx.conf");
    let d = dir.path.display();
    // As (namespace) root, nginx would hand its temp directories to `nobody`, a uid the
    // namespace does not map (chown fails with EINVAL); keep them with the one uid it maps.
    let user = match isolation {
        Isolation::Namespace => "user root root;\n",
        Isolation::Unavailable => "",
    };
    let text = format!(
        "{user}pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  \
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {};\n}}\n",
        conf.display()
    );
    std::fs::write(&main, text).map_err(NginxError::io(&main))?;
    let mut cmd = match isolation {
        Isolation::Namespace => {
            let mut c = Command::new(UNSHARE);
            c.args(NAMESPACE_ARGS)
                .args(["/bin/sh", "-c", ALLOW_ANY_ADDRESS, "piku-nginx-check"])
                .arg(binary);
            c
        }
        Isolation::Unavailable => Command::new(binary),
    };
    cmd.arg("-t")
        .arg("-q")
        .arg("-p")
        .arg(&dir.path)
        .arg("-c")
        .arg(&main);
    if features.has_error_log_flag() {
        cmd.arg("-e").arg(dir.path.join("error.log"));
    }
    let output = cmd.output().map_err(|e| NginxError::Command {
        command: format!("{} -t", binary.display()),
        message: e.to_string(),
    })?;
    if output.status.success() {
        return Ok(Verdict::Passed);
    }
    let message = nginx_problem(&String::from_utf8_lossy(&output.stderr));
    match classify(&message) {
        Failure::Bind => Ok(Verdict::Deferred(message)),
        Failure::Access if root_tests_later => Ok(Verdict::Deferred(message)),
        Failure::Access | Failure::Config => Err(NginxError::Rejected {
            path: conf.to_path_buf(),
            message,
        }),
    }
}

/// util-linux's `unshare`, part of every Debian system (util-linux is Essential).
const UNSHARE: &str = "unshare";
/// A user namespace mapping only our uid (to root inside) and an empty network namespace.
const NAMESPACE_ARGS: [&str; 4] = ["--user", "--map-root-user", "--net", "--"];
/// Inside the namespace, before nginx: let `listen` bind addresses the new namespace lacks
/// (its loopback is down; the host's own addresses are not there). A sysctl that cannot be set
/// (a read-only /proc/sys) only means such a bind fails, which the check defers.
const ALLOW_ANY_ADDRESS: &str = "for f in /proc/sys/net/ipv4/ip_nonlocal_bind /proc/sys/net/ipv6/ip_nonlocal_bind; do \
     { echo 1 >\"$f\"; } 2>/dev/null; done; exec \"$@\"";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isolation {
    Namespace,
    Unavailable,
}

/// Whether this process may create a user + network namespace; probed once per process.
fn isolation() -> Isolation {
    static PROBED: OnceLock<Isolation> = OnceLock::new();
    *PROBED.get_or_init(|| {
        let ok = Command::new(UNSHARE)
            .args(NAMESPACE_ARGS)
            .arg("true")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Isolation::Namespace
        } else {
            Isolation::Unavailable
        }
    })
}

/// A private directory for one `nginx -t` run (prefix, main config, temp paths), removed on
/// drop. Its name is random and it is created with `O_EXCL` semantics, mode 0700: another
/// local user can neither predict it (and block the check by creating it first) nor read or
/// swap what is in it.
struct CheckDir {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl CheckDir {
    fn create() -> Result<CheckDir, NginxError> {
        let temp = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("piku-nginx-check-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&temp)
            .map_err(NginxError::io(&temp))?;
        Ok(CheckDir {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &str = "/usr/sbin/nginx";

    /// A server on an address this machine does not have (TEST-NET-1), port 80.
    fn elsewhere_on_port_80(dir: &Path) -> PathBuf {
        let conf = dir.join("app.conf");
        std::fs::write(
            &conf,
            "server {\n  listen 192.0.2.7:80;\n  server_name x.test;\n  return 204;\n}\n",
        )
        .unwrap();
        conf
    }

    fn features() -> NginxFeatures {
        crate::NginxCommand::new(NGINX, crate::ReloadMode::None)
            .features()
            .unwrap()
    }

    /// Issue 10 item 5: the directory is private and not predictable, so a local user who
    /// pre-creates `/tmp/piku-nginx-check-<pid>-0`… blocks nothing.
    #[test]
    fn the_check_directory_is_private_and_unpredictable() {
        let planted =
            std::env::temp_dir().join(format!("piku-nginx-check-{}-0", std::process::id()));
        let _ = std::fs::create_dir(&planted);
        let one = CheckDir::create().unwrap();
        let two = CheckDir::create().unwrap();
        assert_ne!(one.path, two.path);
        assert_ne!(one.path, planted);
        let mode = std::fs::metadata(&one.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700);
        let path = one.path.clone();
        drop(one);
        assert!(!path.exists());
        let _ = std::fs::remove_dir(&planted);
    }

    #[test]
    fn in_the_namespace_any_address_and_port_can_be_checked() {
        assert_eq!(
            isolation(),
            Isolation::Namespace,
            "`unshare --user --map-root-user --net true` fails on this machine: the check's main path cannot be tested here"
        );
        let dir = tempfile::tempdir().unwrap();
        let conf = elsewhere_on_port_80(dir.path());
        assert_eq!(
            check_with(
                Isolation::Namespace,
                Path::new(NGINX),
                features(),
                &conf,
                false
            )
            .unwrap(),
            Verdict::Passed
        );
    }

    #[test]
    fn without_a_namespace_a_bind_failure_is_left_to_the_full_test() {
        // As root the bind fails for the address (99), as anyone else for the port (13):
        // either way nginx read the whole config first, and the full test decides.
        let dir = tempfile::tempdir().unwrap();
        let conf = elsewhere_on_port_80(dir.path());
        let verdict = check_with(
            Isolation::Unavailable,
            Path::new(NGINX),
            features(),
            &conf,
            false,
        )
        .unwrap();
        let Verdict::Deferred(line) = &verdict else {
            panic!("expected a deferral, got {verdict:?}");
        };
        assert!(line.contains("bind() to 192.0.2.7:80 failed"), "{line}");
        // What is wrong with the config itself is still refused before any bind.
        std::fs::write(&conf, "server {\n  listen 192.0.2.7:80;\n  bogus on;\n}\n").unwrap();
        let err = check_with(
            Isolation::Unavailable,
            Path::new(NGINX),
            features(),
            &conf,
            true,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("[emerg] unknown directive \"bogus\""),
            "{err}"
        );
    }

    #[test]
    fn failures_are_told_apart_by_nginx_line() {
        assert_eq!(
            classify("[emerg] bind() to 0.0.0.0:80 failed (13: Permission denied)"),
            Failure::Bind
        );
        assert_eq!(
            classify("[emerg] bind() to 192.0.2.7:80 failed (99: Cannot assign requested address)"),
            Failure::Bind
        );
        assert_eq!(
            classify(
                "[emerg] open() \"/etc/nginx/secret.conf\" failed (13: Permission denied) in /r/nginx/a.conf.new:30"
            ),
            Failure::Access
        );
        assert_eq!(
            classify(
                "[emerg] cannot load certificate key \"/etc/ssl/private/k.pem\": BIO_new_file() failed (SSL: error:8000000D:system library::Permission denied:calling fopen(/etc/ssl/private/k.pem, r))"
            ),
            Failure::Access
        );
        assert_eq!(
            classify("[emerg] unknown directive \"bogus\" in /r/nginx/a.conf.new:12"),
            Failure::Config
        );
        assert_eq!(
            classify("[emerg] invalid port in \"127.0.0.1:99999\" of the \"listen\" directive"),
            Failure::Config
        );
    }
}
