//! `rwsgi: config.ru` without uWSGI: a Rack app served by puma, run by the supervisor as a web
//! process on the instance's `$BIND_ADDRESS:$PORT` (piku ran the rackup file in uWSGI's rack
//! plugin).
//!
//! puma is the app's own when its `Gemfile.lock` bundles it (`bundle exec puma`, the usual
//! Rails and Sinatra setup), else the server's (Debian's `puma` package). piku's uWSGI knobs
//! map onto it as for `wsgi:`: `UWSGI_PROCESSES` → puma workers (default 2),
//! `UWSGI_THREADS` → threads per worker (default 4). `RACK_ENV` defaults to `production`.

use std::ffi::OsStr;
use std::path::Path;

use piku_model::EnvMap;

use crate::checkout::read_file;
use crate::error::DeployError;
use crate::runtime::build::find_program;
use crate::settings::number;

/// The Rack server, its program and its Debian package.
pub const SERVER: &str = "puma";
const PACKAGE: &str = "puma";

/// Where puma comes from for a checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Puma {
    /// The app bundles it: `bundle exec puma`.
    Bundled,
    /// The server's `puma` on `PATH`.
    System,
}

impl Puma {
    /// `Bundled` when the checkout's `Gemfile.lock` lists puma.
    pub fn for_checkout(src: &Path) -> Result<Puma, DeployError> {
        let lock = read_file(src, "Gemfile.lock")?.unwrap_or_default();
        let bundled = lock
            .lines()
            .any(|l| l.trim_start().starts_with("puma ") || l.trim() == "puma");
        Ok(if bundled { Puma::Bundled } else { Puma::System })
    }

    /// Refuses a build whose puma cannot be found, naming what to install.
    pub fn check(self, path: &OsStr) -> Result<(), DeployError> {
        let (program, package) = match self {
            Puma::Bundled => ("bundle", "ruby-bundler"),
            Puma::System => (SERVER, PACKAGE),
        };
        if find_program(program, path).is_some() {
            return Ok(());
        }
        Err(DeployError::refused(format!(
            "'rwsgi:' entries are served by {SERVER}, and '{program}' is not installed on the \
             server (Debian/Ubuntu: apt-get install {package}, or add puma to the Gemfile)"
        )))
    }

    /// The command line serving `rackup` on `$BIND_ADDRESS:$PORT`, run by the supervisor
    /// through `sh` because of the `$`.
    pub fn command(self, rackup: &str, env: &EnvMap, warnings: &mut Vec<String>) -> String {
        let workers: u32 = number(env, "UWSGI_PROCESSES", 2, warnings).max(1);
        let threads: u32 = number(env, "UWSGI_THREADS", 4, warnings).max(1);
        let program = match self {
            Puma::Bundled => "bundle exec puma",
            Puma::System => SERVER,
        };
        let rackup = shell_words::quote(rackup);
        format!(
            "{program} --bind \"tcp://$BIND_ADDRESS:$PORT\" --environment \"${{RACK_ENV:-production}}\" \
             --workers {workers} --threads {threads}:{threads} {rackup}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puma_is_the_bundles_when_the_lock_lists_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Puma::for_checkout(dir.path()).unwrap(), Puma::System);
        std::fs::write(
            dir.path().join("Gemfile.lock"),
            "GEM\n  specs:\n    nio4r (2.7.0)\n    puma (6.4.2)\n      nio4r (~> 2.0)\n",
        )
        .unwrap();
        assert_eq!(Puma::for_checkout(dir.path()).unwrap(), Puma::Bundled);
    }

    #[test]
    fn uwsgi_settings_become_workers_and_threads() {
        let env = EnvMap::from([("UWSGI_PROCESSES".into(), "3".into())]);
        let cmd = Puma::System.command("config.ru", &env, &mut Vec::new());
        assert_eq!(
            cmd,
            "puma --bind \"tcp://$BIND_ADDRESS:$PORT\" --environment \"${RACK_ENV:-production}\" \
             --workers 3 --threads 4:4 config.ru"
        );
        let cmd = Puma::Bundled.command("my app.ru", &EnvMap::new(), &mut Vec::new());
        assert!(cmd.starts_with("bundle exec puma "), "{cmd}");
        assert!(
            cmd.ends_with(" --workers 2 --threads 4:4 'my app.ru'"),
            "{cmd}"
        );
    }

    #[test]
    fn a_missing_puma_names_the_package() {
        let err = Puma::System
            .check(OsStr::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install puma"), "{err}");
    }
}
