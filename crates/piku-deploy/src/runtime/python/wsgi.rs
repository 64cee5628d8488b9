//! `wsgi: module:app` without uWSGI: the WSGI server that runs it, chosen with
//! `PIKU_WSGI_SERVER` (`gunicorn`, the default; `waitress`; `uwsgi`), installed into the app's
//! venv by the build and run by the supervisor as a web process on the instance's `$PORT`.
//!
//! piku's uWSGI knobs map onto it: `UWSGI_PROCESSES` → workers (default 2), `UWSGI_THREADS`
//! → threads (default 4), `UWSGI_MAX_REQUESTS` → max requests per worker (default 1024, with
//! jitter so the workers do not all restart at once; 0 turns it off).

use std::path::Path;

use piku_model::EnvMap;

use crate::error::DeployError;
use crate::settings::number;

/// The server a `wsgi:` entry gets when `PIKU_WSGI_SERVER` is unset.
pub const DEFAULT: Server = Server::Gunicorn;

/// A WSGI server we know how to install and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Gunicorn,
    Waitress,
    Uwsgi,
}

impl Server {
    /// The server `PIKU_WSGI_SERVER` asks for ([`DEFAULT`] when unset).
    pub fn from_env(env: &EnvMap) -> Result<Server, DeployError> {
        match env.get("PIKU_WSGI_SERVER").map(|s| s.trim()) {
            None | Some("") => Ok(DEFAULT),
            Some(name) => Server::from_name(name).ok_or_else(|| {
                DeployError::refused(format!(
                    "PIKU_WSGI_SERVER='{name}' is not one of gunicorn, waitress, uwsgi"
                ))
            }),
        }
    }

    pub fn from_name(name: &str) -> Option<Server> {
        match name {
            "gunicorn" => Some(Server::Gunicorn),
            "waitress" => Some(Server::Waitress),
            "uwsgi" => Some(Server::Uwsgi),
            _ => None,
        }
    }

    /// Its name, which is also its PyPI package.
    pub fn name(self) -> &'static str {
        match self {
            Server::Gunicorn => "gunicorn",
            Server::Waitress => "waitress",
            Server::Uwsgi => "uwsgi",
        }
    }

    /// The executable the package puts in the venv's `bin`.
    pub fn executable(self) -> &'static str {
        match self {
            Server::Gunicorn => "gunicorn",
            Server::Waitress => "waitress-serve",
            Server::Uwsgi => "uwsgi",
        }
    }

    /// The command line serving `module` (`pkg.module:app`) on `$BIND_ADDRESS:$PORT`, which
    /// the supervisor runs through `sh` because of the `$`.
    pub fn command(
        self,
        venv: &Path,
        module: &str,
        env: &EnvMap,
        warnings: &mut Vec<String>,
    ) -> String {
        let exe = quote(&venv.join("bin").join(self.executable()).to_string_lossy());
        let module = quote(module);
        let workers: u32 = number(env, "UWSGI_PROCESSES", 2, warnings).max(1);
        let threads: u32 = number(env, "UWSGI_THREADS", 4, warnings).max(1);
        let max_requests: u32 = number(env, "UWSGI_MAX_REQUESTS", 1024, warnings);
        match self {
            Server::Gunicorn => {
                let mut cmd = format!(
                    "{exe} --bind \"$BIND_ADDRESS:$PORT\" --workers {workers} --threads {threads}"
                );
                if max_requests > 0 {
                    let jitter = (max_requests / 16).max(1);
                    cmd.push_str(&format!(
                        " --max-requests {max_requests} --max-requests-jitter {jitter}"
                    ));
                }
                cmd.push_str(&format!(" --access-logfile - {module}"));
                cmd
            }
            // waitress is one process with a thread pool.
            Server::Waitress => {
                format!("{exe} --listen=\"$BIND_ADDRESS:$PORT\" --threads={threads} {module}")
            }
            Server::Uwsgi => format!(
                "{exe} --master --http-socket \"$BIND_ADDRESS:$PORT\" --processes {workers} \
                 --threads {threads} --max-requests {max_requests} --enable-threads --module {module}"
            ),
        }
    }
}

/// Single-quotes `text` for `sh` unless it is plain.
fn quote(text: &str) -> String {
    shell_words::quote(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gunicorn_gets_piku_uwsgi_settings() {
        let env = EnvMap::from([
            ("UWSGI_PROCESSES".into(), "3".into()),
            ("UWSGI_MAX_REQUESTS".into(), "0".into()),
        ]);
        let mut warnings = Vec::new();
        let cmd = Server::Gunicorn.command(Path::new("/p/deps/x"), "app:app", &env, &mut warnings);
        assert_eq!(
            cmd,
            "/p/deps/x/bin/gunicorn --bind \"$BIND_ADDRESS:$PORT\" --workers 3 --threads 4 \
             --access-logfile - app:app"
        );
        let cmd = Server::Gunicorn.command(
            Path::new("/my piku/x"),
            "app:app",
            &EnvMap::new(),
            &mut warnings,
        );
        assert!(cmd.starts_with("'/my piku/x/bin/gunicorn' "), "{cmd}");
        assert!(cmd.contains("--max-requests 1024 --max-requests-jitter 64"));
        assert!(warnings.is_empty());
    }

    #[test]
    fn the_server_is_chosen_by_piku_wsgi_server() {
        let pick =
            |v: &str| Server::from_env(&EnvMap::from([("PIKU_WSGI_SERVER".into(), v.into())]));
        assert_eq!(Server::from_env(&EnvMap::new()).unwrap(), Server::Gunicorn);
        assert_eq!(pick("waitress").unwrap(), Server::Waitress);
        assert!(pick("mod_wsgi").is_err());
        let cmd =
            Server::Waitress.command(Path::new("/v"), "m:app", &EnvMap::new(), &mut Vec::new());
        assert_eq!(
            cmd,
            "/v/bin/waitress-serve --listen=\"$BIND_ADDRESS:$PORT\" --threads=4 m:app"
        );
    }
}
