//! PHP: a `php: <docroot>` entry (piku ran it in uWSGI's php plugin), served by php-fpm
//! behind an nginx of the instance's own, both from Debian's packages.
//!
//! Each web instance is one process group: a small script the build writes into the release's
//! `bin` (`piku-php-serve`, on the processes' `PATH`) writes a php-fpm pool and an nginx
//! server into `$TMPDIR/piku-php-<app>-<port>`, starts php-fpm on a Unix socket there, waits
//! for the socket, then becomes nginx listening on `$BIND_ADDRESS:$PORT`: static files from
//! the docroot, `*.php` and unknown paths to `index.php` through FastCGI, as uWSGI's php
//! plugin served them. So a PHP instance is an HTTP server on its port like every other web
//! process, and the supervisor's health checks, scaling and zero-downtime switches apply as
//! they are.
//!
//! php-fpm always starts a session of its own (`setsid`), so a stop of the instance's process
//! group would miss it, and it overwrites its environment with its process title, so nothing
//! can find it by its environment either. It is therefore started through `setpriv
//! --pdeathsig TERM` (util-linux): when nginx, its parent, exits for any reason — SIGTERM from
//! a stop, SIGKILL after the grace period, a crash — the kernel sends php-fpm SIGTERM, and it
//! stops its workers and exits. The run directory stays until an instance on the same port
//! starts again.
//!
//! php-fpm and nginx live in `sbin`, which is not on the piku user's `PATH`: the build finds
//! them there and writes their absolute paths into the script. Composer is not run (its
//! packages come from Packagist); commit `vendor/` or use Debian's `php-*` packages.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use piku_model::Procfile;

use crate::buildlog::BuildLog;
use crate::error::DeployError;
use crate::files;
use crate::runtime::build::{BuildCtx, Built, BuiltRelease, RuntimeEnv, find_program};

pub const NAME: &str = "php";
pub const LABEL: &str = "PHP";
/// The script the build writes into the release's `bin`.
pub const SERVE: &str = "piku-php-serve";
/// Where Debian puts daemons, searched after the build's `PATH`.
const SBIN: &str = "/usr/local/sbin:/usr/sbin:/sbin";

/// An app with a `php:` entry (checked after every language runtime, as piku did).
pub fn detect(procfile: &Procfile) -> bool {
    procfile.get("php").is_some()
}

/// The instance's command: the release's serve script with the docroot.
pub fn command(docroot: &str) -> String {
    format!("{SERVE} {}", shell_words::quote(docroot))
}

pub fn build(ctx: &BuildCtx, log: &mut BuildLog) -> Result<Built, DeployError> {
    let path = search_path(ctx.path());
    let fpm = find_fpm(&path).ok_or_else(|| {
        DeployError::refused(
            "PHP app needs php-fpm, which is not installed on the server \
             (Debian/Ubuntu: apt-get install php-fpm)",
        )
    })?;
    let setpriv = find_program("setpriv", &path).ok_or_else(|| {
        DeployError::refused(
            "PHP app needs setpriv to tie php-fpm to its instance, which is not installed on \
             the server (Debian/Ubuntu: apt-get install util-linux)",
        )
    })?;
    let nginx = find_program("nginx", &path).ok_or_else(|| {
        DeployError::refused(
            "PHP app needs nginx in front of php-fpm, which is not installed on the server \
             (Debian/Ubuntu: apt-get install nginx)",
        )
    })?;
    log.step(format!(
        "Serving with {} behind {}",
        fpm.display(),
        nginx.display()
    ));
    files::create_dir(ctx.release_bin)?;
    let script = ctx.release_bin.join(SERVE);
    // Executable by the piku user (and its group), like the binaries Go and cargo put here.
    files::write(
        &script,
        serve_script(&setpriv, &fpm, &nginx).as_bytes(),
        0o750,
    )?;
    Ok(Built::default())
}

/// The release's `bin` (the serve script) first on `PATH`.
pub fn env(release: &BuiltRelease) -> RuntimeEnv {
    release.bin_on_path()
}

/// The build's `PATH`, then the `sbin` directories.
fn search_path(path: &OsStr) -> OsString {
    let mut all = path.to_owned();
    if !all.is_empty() {
        all.push(":");
    }
    all.push(SBIN);
    all
}

/// `php-fpm`, else the newest versioned `php-fpmX.Y` (Debian installs only those).
fn find_fpm(path: &OsStr) -> Option<PathBuf> {
    if let Some(found) = find_program("php-fpm", path) {
        return Some(found);
    }
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = std::env::split_paths(path)
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.strip_prefix("php-fpm")?;
            let parts: Option<Vec<u32>> = version.split('.').map(|p| p.parse().ok()).collect();
            Some((parts?, entry.path()))
        })
        .collect();
    versioned.sort();
    versioned.pop().map(|(_, path)| path)
}

/// The instance's start script (see the module docs). Hand-written shell: it must configure
/// and start two daemons in one process group the supervisor can stop, which no crate does.
fn serve_script(setpriv: &Path, fpm: &Path, nginx: &Path) -> String {
    let setpriv = shell_words::quote(&setpriv.to_string_lossy()).into_owned();
    let fpm = shell_words::quote(&fpm.to_string_lossy()).into_owned();
    let nginx = shell_words::quote(&nginx.to_string_lossy()).into_owned();
    format!(
        r#"#!/bin/sh
# Written by piku's build: serves the docroot "$1" on $BIND_ADDRESS:$PORT with php-fpm
# behind nginx (see crates/piku-deploy/src/runtime/php.rs).
set -eu
docroot=$(cd "${{1:-.}}" && pwd)
run="${{TMPDIR:-/tmp}}/piku-php-$APP-$PORT"
rm -rf "$run"
mkdir -m 0700 -p "$run"
cat > "$run/fpm.conf" <<CONF
[global]
error_log = /proc/self/fd/2
daemonize = no
[app]
listen = $run/fpm.sock
pm = static
pm.max_children = ${{UWSGI_PROCESSES:-2}}
clear_env = no
catch_workers_output = yes
CONF
cat > "$run/nginx.conf" <<CONF
pid $run/nginx.pid;
error_log stderr;
daemon off;
events {{ worker_connections 512; }}
http {{
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  access_log /dev/stdout;
  client_body_temp_path $run/body;
  fastcgi_temp_path $run/fastcgi;
  proxy_temp_path $run/proxy;
  uwsgi_temp_path $run/uwsgi;
  scgi_temp_path $run/scgi;
  server {{
    listen $BIND_ADDRESS:$PORT;
    root $docroot;
    index index.php index.html;
    location / {{ try_files \$uri \$uri/ /index.php?\$query_string; }}
    location ~ \.php\$ {{
      try_files \$uri =404;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name;
      fastcgi_pass unix:$run/fpm.sock;
    }}
  }}
}}
CONF
# php-fpm leaves this process group; its parent's death (this shell, then nginx) stops it.
{setpriv} --pdeathsig TERM {fpm} --nodaemonize --fpm-config "$run/fpm.conf" &
# nginx answering before php-fpm listens would turn the first requests into 502s.
tries=0
until [ -S "$run/fpm.sock" ]; do
  tries=$((tries + 1))
  [ "$tries" -le 200 ] || {{ echo "php-fpm did not start" >&2; exit 1; }}
  sleep 0.05
done
exec {nginx} -e stderr -p "$run" -c "$run/nginx.conf"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use piku_model::parse_procfile;

    #[test]
    fn a_php_entry_is_a_php_app_served_by_the_release_script() {
        assert!(detect(&parse_procfile("php: public\n").unwrap()));
        assert!(!detect(&parse_procfile("web: x\n").unwrap()));
        assert_eq!(command("public"), "piku-php-serve public");
        assert_eq!(command("my root"), "piku-php-serve 'my root'");
    }

    #[test]
    fn the_newest_versioned_php_fpm_is_found() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for name in ["php-fpm7.4", "php-fpm8.2", "php-fpm8.10", "php-fpm-helper"] {
            let p = dir.path().join(name);
            std::fs::write(&p, "").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(
            find_fpm(dir.path().as_os_str()),
            Some(dir.path().join("php-fpm8.10"))
        );
        assert_eq!(find_fpm(OsStr::new("/nonexistent")), None);
    }

    #[test]
    fn the_script_names_both_daemons_by_absolute_path() {
        let script = serve_script(
            Path::new("/usr/bin/setpriv"),
            Path::new("/usr/sbin/php-fpm8.2"),
            Path::new("/usr/sbin/nginx"),
        );
        assert!(
            script
                .contains("\n/usr/bin/setpriv --pdeathsig TERM /usr/sbin/php-fpm8.2 --nodaemonize")
        );
        assert!(script.contains("\nexec /usr/sbin/nginx -e stderr"));
        assert!(script.contains("listen $BIND_ADDRESS:$PORT;"));
    }
}
