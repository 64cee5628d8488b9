//! A real nginx for the end-to-end tests: `/usr/sbin/nginx` in the foreground with a main
//! config built from the shipped `nginx/piku.conf` (via `piku_nginx::standalone`, the same
//! code the crate's own tests use), moved to free 127.0.0.1 ports and including the test's
//! `$PIKU_ROOT/nginx/*.conf`. The forced `piku` reloads it by signal (`PIKU_NGINX_*` set in
//! sshd's `SetEnv`, see [`Nginx::forced_command_env`]). Stopped by PID when dropped.
//!
//! Lab shortcut: this nginx runs as the server account itself (an nginx of the piku user's
//! own, on free high loopback ports), so the forced command can signal it. Production's shape
//! — Debian's nginx as root on :80/:443 with www-data workers, reloaded by the root-owned
//! watcher — is covered by the systemd-nspawn test host (`scripts/systemd-e2e`).

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use piku_nginx::standalone::{Standalone, main_conf};

use crate::binaries::repo_root;
use crate::process::Guarded;
use crate::server::free_port;
use crate::server_user::ServerUser;
use crate::wait::wait_until;

pub const NGINX: &str = "/usr/sbin/nginx";

/// The running nginx and where it listens.
pub struct Nginx {
    /// nginx's prefix directory (`-p`): main config, pid file, error log.
    pub prefix: PathBuf,
    pub http_port: u16,
    pub https_port: u16,
    guard: Guarded,
}

impl Nginx {
    /// Starts nginx for the piku root `root`, in `prefix`; panics with its error log if it does
    /// not come up.
    pub fn start(prefix: &Path, root: &Path, owner: &ServerUser) -> Nginx {
        fs::create_dir_all(prefix).expect("mkdir nginx prefix");
        owner.own(prefix);
        let apps_dir = root.join("nginx");
        fs::create_dir_all(&apps_dir).expect("mkdir nginx dir");
        owner.own(&apps_dir);
        let snippet =
            fs::read_to_string(repo_root().join("nginx/piku.conf")).expect("nginx/piku.conf");
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name);
        let mime = Path::new("/etc/nginx/mime.types");
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let (http_port, https_port) = (free_port(), free_port());
            if http_port == https_port {
                continue;
            }
            let at = Standalone {
                prefix,
                apps_dir: &apps_dir,
                address: "127.0.0.1",
                http_port,
                https_port,
                // nginx only takes `user` from root; as anyone else it warns.
                user: (nix::unistd::geteuid().is_root() && !owner.switched)
                    .then_some(user.as_deref())
                    .flatten(),
                mime_types: mime.exists().then_some(mime),
            };
            let conf = prefix.join("nginx.conf");
            fs::write(&conf, main_conf(&snippet, &at)).expect("write nginx.conf");
            owner.own(&conf);
            let log = prefix.join("error.log");
            let mut cmd = Command::new(NGINX);
            owner.apply(&mut cmd);
            cmd.arg("-p")
                .arg(prefix)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(&log)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut guard =
                Guarded::spawn("nginx", cmd, Duration::from_secs(10)).expect("spawn nginx");
            let up = wait_until(Duration::from_secs(15), || {
                if guard.exited().is_some() {
                    return Some(false);
                }
                TcpStream::connect(("127.0.0.1", http_port))
                    .is_ok()
                    .then_some(true)
            });
            if up == Some(true) {
                return Nginx {
                    prefix: prefix.to_path_buf(),
                    http_port,
                    https_port,
                    guard,
                };
            }
            last_error = fs::read_to_string(&log).unwrap_or_default();
            guard.stop();
        }
        panic!("nginx did not start on 127.0.0.1; its error log:\n{last_error}");
    }

    /// What the forced `piku` needs to check and reload this nginx.
    pub fn forced_command_env(&self) -> Vec<(String, String)> {
        vec![
            ("PIKU_NGINX".into(), NGINX.into()),
            ("PIKU_NGINX_RELOAD".into(), "signal".into()),
            (
                "PIKU_NGINX_CONF".into(),
                self.prefix.join("nginx.conf").display().to_string(),
            ),
            (
                "PIKU_NGINX_PREFIX".into(),
                self.prefix.display().to_string(),
            ),
        ]
    }

    /// The `ENV` lines an app needs to be served by this nginx on loopback.
    pub fn app_env(&self, server_name: &str) -> String {
        format!(
            "NGINX_SERVER_NAME={server_name}\nNGINX_IPV4_ADDRESS=127.0.0.1\nDISABLE_IPV6=true\n\
             NGINX_HTTP_PORT={}\nNGINX_HTTPS_PORT={}\n",
            self.http_port, self.https_port
        )
    }

    /// nginx's master process id.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default()
    }

    /// The master's worker processes.
    pub fn workers(&self) -> Vec<u32> {
        let pid = self.pid();
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Stops nginx now (SIGTERM to the master by PID; idempotent).
    pub fn stop(&mut self) {
        self.guard.stop();
    }
}
