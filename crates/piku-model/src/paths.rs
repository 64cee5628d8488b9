//! The `$PIKU_ROOT` directory layout (default `~/.piku`): where every file of every app lives.
//!
//! piku's layout is kept so existing installs carry over; `releases/` and `supervisor/` are ours.
//!
//! ```text
//! apps/<app>        symlink to the live release's checkout (piku: the git working copy)
//! repos/<app>       bare git repository; hooks/pre-receive runs the deploy
//! envs/<app>        ENV (config:set overrides), LIVE_ENV, SCALING
//! envs/<app>/deps/  dependency environments (venv, node_modules…), keyed by manifest hash
//! envs/<app>/cache/ what one build keeps for the next (cargo's target/); no release needs it
//! logs/<app>        <kind>.<n>.log
//! nginx/            <app>.conf, <app>.sock, <app>.crt, <app>.key
//! data/<app>        persistent data, survives destroy ($DATA_ROOT)
//! cache/<app>       nginx cache, survives destroy
//! cache/.<tool>     download caches shared by every app (pip, npm, uv)
//! acme/             HTTP-01 webroot, the ACME account; acme/<app> piku's per-app directory
//! releases/<app>    immutable releases: v<N>/{src,bin,build.log,release.json}, .lock, .last-push
//! supervisor/       the daemon's state.json, running.json, daemon.lock
//! supervisor.sock   the daemon's control socket
//! uwsgi-available/, uwsgi-enabled/   piku's uWSGI vassals, only on installs migrated from piku
//! ```
//!
//! Every path of the layout is a method here; nothing else joins names onto the root.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use crate::app_name::AppName;

/// Errors about the model's environment (as opposed to parse errors of a file).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot locate PIKU_ROOT: neither PIKU_ROOT nor HOME is set")]
    NoRoot,
}

/// The root of a piku installation and every path derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PikuRoot {
    root: PathBuf,
}

/// The top-level directories, in the order `create_layout` makes them.
const TOP_DIRS: [&str; 10] = [
    "apps",
    "repos",
    "envs",
    "logs",
    "nginx",
    "data",
    "cache",
    "acme",
    "releases",
    "supervisor",
];

impl PikuRoot {
    pub fn new(path: impl Into<PathBuf>) -> PikuRoot {
        PikuRoot { root: path.into() }
    }

    /// `$PIKU_ROOT` if set (and not empty), else `$HOME/.piku`.
    pub fn from_env() -> Result<PikuRoot, ModelError> {
        PikuRoot::from_vars(std::env::var_os("PIKU_ROOT"), std::env::var_os("HOME"))
    }

    /// The rule behind [`PikuRoot::from_env`], with the two variables passed in so it can be
    /// tested without touching the process environment.
    pub fn from_vars(
        piku_root: Option<OsString>,
        home: Option<OsString>,
    ) -> Result<PikuRoot, ModelError> {
        let non_empty = |v: Option<OsString>| v.filter(|v| !v.is_empty());
        if let Some(root) = non_empty(piku_root) {
            return Ok(PikuRoot::new(root));
        }
        match non_empty(home) {
            Some(home) => Ok(PikuRoot::new(PathBuf::from(home).join(".piku"))),
            None => Err(ModelError::NoRoot),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn apps(&self) -> PathBuf {
        self.root.join("apps")
    }
    pub fn repos(&self) -> PathBuf {
        self.root.join("repos")
    }
    pub fn envs(&self) -> PathBuf {
        self.root.join("envs")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn nginx(&self) -> PathBuf {
        self.root.join("nginx")
    }
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
    pub fn acme(&self) -> PathBuf {
        self.root.join("acme")
    }
    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }
    /// `supervisor/`: the daemon's own files (`state.json`).
    pub fn supervisor_dir(&self) -> PathBuf {
        self.root.join("supervisor")
    }
    /// `supervisor/state.json`: the persisted desired state of every app.
    pub fn state_file(&self) -> PathBuf {
        self.supervisor_dir().join("state.json")
    }
    /// `supervisor/running.json`: pid and start time of every process the daemon runs, so
    /// that the next daemon can stop what a killed one left behind.
    pub fn running_file(&self) -> PathBuf {
        self.supervisor_dir().join("running.json")
    }
    /// `supervisor/daemon.lock`: held by the one daemon of this root.
    pub fn daemon_lock(&self) -> PathBuf {
        self.supervisor_dir().join("daemon.lock")
    }
    /// `supervisor.sock`: the daemon's control socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("supervisor.sock")
    }

    /// `apps/<app>`: a symlink to the live release's checkout.
    pub fn app_dir(&self, app: &AppName) -> PathBuf {
        self.apps().join(app.as_str())
    }
    pub fn repo_dir(&self, app: &AppName) -> PathBuf {
        self.repos().join(app.as_str())
    }
    pub fn env_dir(&self, app: &AppName) -> PathBuf {
        self.envs().join(app.as_str())
    }
    pub fn data_dir(&self, app: &AppName) -> PathBuf {
        self.data().join(app.as_str())
    }
    pub fn cache_dir(&self, app: &AppName) -> PathBuf {
        self.cache().join(app.as_str())
    }
    pub fn log_dir(&self, app: &AppName) -> PathBuf {
        self.logs().join(app.as_str())
    }
    pub fn release_dir(&self, app: &AppName) -> PathBuf {
        self.releases().join(app.as_str())
    }
    /// `envs/<app>/ENV`: the `config:set` overrides.
    pub fn env_file(&self, app: &AppName) -> PathBuf {
        self.env_dir(app).join("ENV")
    }
    /// `envs/<app>/LIVE_ENV`: the merged environment of the last spawn (output only).
    pub fn live_env_file(&self, app: &AppName) -> PathBuf {
        self.env_dir(app).join("LIVE_ENV")
    }
    /// `envs/<app>/SCALING`: `kind:count` lines.
    pub fn scaling_file(&self, app: &AppName) -> PathBuf {
        self.env_dir(app).join("SCALING")
    }
    /// `envs/<app>/deps`: the app's dependency environments, one directory per manifest hash.
    pub fn deps_dir(&self, app: &AppName) -> PathBuf {
        self.env_dir(app).join("deps")
    }
    /// `envs/<app>/cache/<tool>`: what a build keeps for the app's next build (cargo's target
    /// directory, so a redeploy compiles only what changed). No release refers to it: deleting
    /// it only makes the next build slower.
    pub fn build_cache(&self, app: &AppName, tool: &str) -> PathBuf {
        self.env_dir(app).join("cache").join(tool)
    }
    /// `repos/<app>/hooks`: where the deploy's `pre-receive` hook goes.
    pub fn repo_hooks(&self, app: &AppName) -> PathBuf {
        self.repo_dir(app).join("hooks")
    }

    /// `releases/<app>/<id>`: one release (`id` is `v<N>`).
    pub fn release(&self, app: &AppName, id: &str) -> PathBuf {
        self.release_dir(app).join(id)
    }
    /// `releases/<app>/<id>/src`: the release's checkout, its processes' working directory.
    pub fn release_src(&self, app: &AppName, id: &str) -> PathBuf {
        self.release(app, id).join("src")
    }
    /// `releases/<app>/<id>/bin`: executables built outside the checkout (Go).
    pub fn release_bin(&self, app: &AppName, id: &str) -> PathBuf {
        self.release(app, id).join("bin")
    }
    /// `releases/<app>/<id>/build.log`: everything the deploy of the release printed.
    pub fn build_log(&self, app: &AppName, id: &str) -> PathBuf {
        self.release(app, id).join("build.log")
    }
    /// `releases/<app>/<id>/release.json`: what was built and how to run it again.
    pub fn release_record(&self, app: &AppName, id: &str) -> PathBuf {
        self.release(app, id).join("release.json")
    }
    /// `releases/<app>/.lock`: held while the app is being changed.
    pub fn deploy_lock(&self, app: &AppName) -> PathBuf {
        self.release_dir(app).join(".lock")
    }
    /// `releases/<app>/.last-push`: the ref and commit of the last successful push.
    pub fn last_push(&self, app: &AppName) -> PathBuf {
        self.release_dir(app).join(".last-push")
    }

    /// `nginx/<app>.conf`: the app's nginx server config.
    pub fn nginx_conf(&self, app: &AppName) -> PathBuf {
        self.nginx().join(format!("{app}.conf"))
    }
    /// `nginx/<app>.sock`: the supervisor's HTTP front for the app, which nginx proxies to.
    pub fn nginx_socket(&self, app: &AppName) -> PathBuf {
        self.nginx().join(format!("{app}.sock"))
    }
    /// `nginx/<app>.crt`: the app's certificate chain.
    pub fn nginx_crt(&self, app: &AppName) -> PathBuf {
        self.nginx().join(format!("{app}.crt"))
    }
    /// `nginx/<app>.key`: the app's private key.
    pub fn nginx_key(&self, app: &AppName) -> PathBuf {
        self.nginx().join(format!("{app}.key"))
    }
    /// `acme/<app>`: piku's per-app ACME directory (removed with the app).
    pub fn acme_app_dir(&self, app: &AppName) -> PathBuf {
        self.acme().join(app.as_str())
    }
    /// `cache/.<tool>`: a download cache shared by every app (app names cannot start with `.`).
    pub fn shared_cache(&self, tool: &str) -> PathBuf {
        self.cache().join(format!(".{tool}"))
    }
    /// piku's uWSGI vassal directories, `uwsgi-available/` and `uwsgi-enabled/`.
    pub fn legacy_uwsgi_dirs(&self) -> [PathBuf; 2] {
        [
            self.root.join("uwsgi-available"),
            self.root.join("uwsgi-enabled"),
        ]
    }

    /// Every top-level directory, in layout order.
    pub fn top_dirs(&self) -> Vec<PathBuf> {
        TOP_DIRS.iter().map(|d| self.root.join(d)).collect()
    }

    /// Makes the root and every top-level directory that is missing (like `mkdir -p`) and
    /// returns the top-level directories it created, so `piku setup` can say what it did.
    pub fn create_layout(&self) -> io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(&self.root)?;
        let mut created = Vec::new();
        for dir in self.top_dirs() {
            // create_dir and AlreadyExists rather than exists()+create: no race with a second setup.
            match std::fs::create_dir(&dir) {
                Ok(()) => created.push(dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !dir.is_dir() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("'{}' exists and is not a directory", dir.display()),
                        ));
                    }
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create '{}': {e}", dir.display()),
                    ));
                }
            }
        }
        Ok(created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piku_root_wins_over_home() {
        let root = PikuRoot::from_vars(Some("/srv/piku".into()), Some("/home/u".into())).unwrap();
        assert_eq!(root.path(), Path::new("/srv/piku"));
    }

    #[test]
    fn home_gives_dot_piku() {
        let root = PikuRoot::from_vars(None, Some("/home/u".into())).unwrap();
        assert_eq!(root.path(), Path::new("/home/u/.piku"));
        let root = PikuRoot::from_vars(Some("".into()), Some("/home/u".into())).unwrap();
        assert_eq!(root.path(), Path::new("/home/u/.piku"));
    }

    #[test]
    fn neither_variable_is_an_error() {
        let err = PikuRoot::from_vars(None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot locate PIKU_ROOT: neither PIKU_ROOT nor HOME is set"
        );
        assert!(PikuRoot::from_vars(Some("".into()), Some("".into())).is_err());
    }

    #[test]
    fn per_app_paths() {
        let root = PikuRoot::new("/r");
        let app: AppName = "blog".parse().unwrap();
        assert_eq!(root.app_dir(&app), Path::new("/r/apps/blog"));
        assert_eq!(root.repo_dir(&app), Path::new("/r/repos/blog"));
        assert_eq!(root.env_dir(&app), Path::new("/r/envs/blog"));
        assert_eq!(root.data_dir(&app), Path::new("/r/data/blog"));
        assert_eq!(root.cache_dir(&app), Path::new("/r/cache/blog"));
        assert_eq!(root.log_dir(&app), Path::new("/r/logs/blog"));
        assert_eq!(root.release_dir(&app), Path::new("/r/releases/blog"));
        assert_eq!(root.env_file(&app), Path::new("/r/envs/blog/ENV"));
        assert_eq!(root.live_env_file(&app), Path::new("/r/envs/blog/LIVE_ENV"));
        assert_eq!(root.scaling_file(&app), Path::new("/r/envs/blog/SCALING"));
        assert_eq!(root.socket(), Path::new("/r/supervisor.sock"));
        assert_eq!(root.state_file(), Path::new("/r/supervisor/state.json"));
        assert_eq!(root.running_file(), Path::new("/r/supervisor/running.json"));
        assert_eq!(root.daemon_lock(), Path::new("/r/supervisor/daemon.lock"));
        assert_eq!(root.nginx(), Path::new("/r/nginx"));
        assert_eq!(root.acme(), Path::new("/r/acme"));
        assert_eq!(root.deps_dir(&app), Path::new("/r/envs/blog/deps"));
        assert_eq!(root.repo_hooks(&app), Path::new("/r/repos/blog/hooks"));
        assert_eq!(
            root.release_src(&app, "v2"),
            Path::new("/r/releases/blog/v2/src")
        );
        assert_eq!(
            root.release_bin(&app, "v2"),
            Path::new("/r/releases/blog/v2/bin")
        );
        assert_eq!(
            root.build_log(&app, "v2"),
            Path::new("/r/releases/blog/v2/build.log")
        );
        assert_eq!(
            root.release_record(&app, "v2"),
            Path::new("/r/releases/blog/v2/release.json")
        );
        assert_eq!(root.deploy_lock(&app), Path::new("/r/releases/blog/.lock"));
        assert_eq!(
            root.last_push(&app),
            Path::new("/r/releases/blog/.last-push")
        );
        assert_eq!(root.nginx_conf(&app), Path::new("/r/nginx/blog.conf"));
        assert_eq!(root.nginx_socket(&app), Path::new("/r/nginx/blog.sock"));
        assert_eq!(root.nginx_crt(&app), Path::new("/r/nginx/blog.crt"));
        assert_eq!(root.nginx_key(&app), Path::new("/r/nginx/blog.key"));
        assert_eq!(root.acme_app_dir(&app), Path::new("/r/acme/blog"));
        assert_eq!(root.shared_cache("pip"), Path::new("/r/cache/.pip"));
        assert_eq!(
            root.legacy_uwsgi_dirs(),
            [
                Path::new("/r/uwsgi-available"),
                Path::new("/r/uwsgi-enabled")
            ]
        );
    }

    #[test]
    fn create_layout_reports_only_new_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(tmp.path().join("piku"));
        std::fs::create_dir_all(root.logs()).unwrap();
        let created = root.create_layout().unwrap();
        let names: Vec<_> = created
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "apps",
                "repos",
                "envs",
                "nginx",
                "data",
                "cache",
                "acme",
                "releases",
                "supervisor"
            ]
        );
        for dir in root.top_dirs() {
            assert!(dir.is_dir(), "{}", dir.display());
        }
        assert!(root.create_layout().unwrap().is_empty());
    }

    #[test]
    fn create_layout_refuses_a_file_in_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(tmp.path());
        std::fs::write(root.apps(), b"not a dir").unwrap();
        let err = root.create_layout().unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }
}
