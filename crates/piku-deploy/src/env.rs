//! The environment of an app's processes, merged in piku's order:
//!
//! 1. bootstrap values: `APP`, `LOG_ROOT`, `DATA_ROOT`, `HOME`, `USER`, `PATH` (the directories
//!    the release's runtime installed first), `PWD`, `VIRTUAL_ENV`, and the runtime's own
//!    variables (`NODE_PATH`, `BUNDLE_PATH`; see [`RuntimeEnv`]);
//! 2. the repo's `ENV` file (which may reference the values above);
//! 3. `envs/<app>/ENV`, the `config:set` overrides;
//! 4. computed defaults, only where unset: `BIND_ADDRESS`, and the `NGINX_*` addresses when
//!    `NGINX_SERVER_NAME` is set. `PIKU_INTERNAL_*` keys are removed.
//!
//! Steps 2 and 3 expand `$VAR` against what came before ([`piku_model::parse_env`]); the
//! result is final and is what `LIVE_ENV` records ([`crate::app_config`]).
//!
//! `PORT` is not invented here: the supervisor gives every web instance its own port. A
//! `PORT` set in `ENV` or by `config:set` is passed through as the user wrote it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use piku_model::{AppName, EnvMap, PikuRoot, parse_env};

use crate::error::DeployError;
use crate::runtime::build::RuntimeEnv;
use crate::settings::is_true;

/// piku's `PATH` additions after the user's own `bin` directories.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the bootstrap part of the environment depends on.
pub struct Bootstrap<'a> {
    pub root: &'a PikuRoot,
    pub app: &'a AppName,
    /// The release's checkout (`PWD`).
    pub src: &'a Path,
    /// The dependency environment, if the runtime has one (`VIRTUAL_ENV`).
    pub deps: Option<&'a Path>,
    /// What the release's runtime adds (nothing while it is being built).
    pub runtime: RuntimeEnv,
}

impl Bootstrap<'_> {
    /// The bootstrap values (step 1).
    pub fn values(&self) -> EnvMap {
        let mut env = EnvMap::new();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let set = |env: &mut EnvMap, k: &str, v: &Path| {
            env.insert(k.to_owned(), v.to_string_lossy().into_owned());
        };
        env.insert("APP".into(), self.app.to_string());
        set(&mut env, "LOG_ROOT", &self.root.logs());
        set(&mut env, "DATA_ROOT", &self.root.data_dir(self.app));
        set(&mut env, "PWD", self.src);
        if let Some(home) = &home {
            set(&mut env, "HOME", home);
        }
        if let Some(user) = current_user() {
            env.insert("USER".into(), user);
        }
        // piku points VIRTUAL_ENV at the app's environment whatever its runtime.
        let virtual_env = self
            .deps
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.env_dir(self.app));
        set(&mut env, "VIRTUAL_ENV", &virtual_env);

        let mut path: Vec<PathBuf> = self.runtime.path.clone();
        if let Some(home) = &home {
            path.push(home.join("bin"));
            path.push(home.join(".local/bin"));
        }
        let inherited = std::env::var_os("PATH").unwrap_or_else(|| OsString::from(SYSTEM_PATH));
        // git puts its exec-path first in a hook's PATH; the app has no use for it.
        let git_exec = std::env::var_os("GIT_EXEC_PATH").map(PathBuf::from);
        for dir in std::env::split_paths(&inherited).chain(std::env::split_paths(SYSTEM_PATH)) {
            if !dir.as_os_str().is_empty()
                && !path.contains(&dir)
                && Some(&dir) != git_exec.as_ref()
            {
                path.push(dir);
            }
        }
        let joined = std::env::join_paths(&path).unwrap_or(inherited);
        env.insert("PATH".into(), joined.to_string_lossy().into_owned());
        env.extend(self.runtime.vars.clone());
        env
    }
}

/// The user running piku, from `$USER` or the password database.
fn current_user() -> Option<String> {
    if let Ok(user) = std::env::var("USER")
        && !user.is_empty()
    {
        return Some(user);
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Steps 1–3: the bootstrap values, then the repo `ENV`, then the overrides. A malformed file
/// is an error naming it and every bad line.
pub fn merge(
    bootstrap: EnvMap,
    repo_env: Option<&str>,
    overrides: Option<&str>,
) -> Result<EnvMap, DeployError> {
    let mut env = bootstrap;
    if let Some(text) = repo_env {
        parse_env(text, &mut env).map_err(|errors| DeployError::Env {
            what: "the app's ENV file is invalid".to_owned(),
            errors,
        })?;
    }
    if let Some(text) = overrides {
        parse_env(text, &mut env).map_err(|errors| DeployError::Env {
            what: "the config:set overrides (envs/<app>/ENV) are invalid".to_owned(),
            errors,
        })?;
    }
    Ok(env)
}

/// Step 4: defaults for what is still unset, and the internal keys removed. Returns what it
/// set, as piku's `-----> ` messages.
pub fn finish(env: &mut EnvMap) -> Vec<String> {
    let mut said = Vec::new();
    let mut default = |env: &mut EnvMap, key: &str, value: &str, nginx: bool| {
        if !env.contains_key(key) {
            env.insert(key.to_owned(), value.to_owned());
            if nginx {
                said.push(format!("nginx {key} will be set to {value}"));
            }
        }
    };
    let nginx = env.contains_key("NGINX_SERVER_NAME");
    default(env, "BIND_ADDRESS", "127.0.0.1", nginx);
    if nginx {
        default(env, "NGINX_IPV4_ADDRESS", "0.0.0.0", true);
        if !is_true(env.get("DISABLE_IPV6")) {
            default(env, "NGINX_IPV6_ADDRESS", "[::]", true);
        }
        if let Some(names) = env.get_mut("NGINX_SERVER_NAME") {
            *names = names.replace(',', " ");
        }
    }
    env.retain(|key, _| !key.starts_with("PIKU_INTERNAL_"));
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(root: &PikuRoot, app: &AppName, deps: Option<&Path>) -> EnvMap {
        Bootstrap {
            root,
            app,
            src: Path::new("/srv/releases/blog/v1/src"),
            deps,
            runtime: RuntimeEnv {
                path: deps.map(|d| d.join("bin")).into_iter().collect(),
                vars: EnvMap::new(),
            },
        }
        .values()
    }

    #[test]
    fn repo_env_sees_bootstrap_values_and_overrides_win() {
        let root = PikuRoot::new("/srv/piku");
        let app: AppName = "blog".parse().unwrap();
        let env = merge(
            boot(
                &root,
                &app,
                Some(Path::new("/srv/piku/envs/blog/deps/py-1")),
            ),
            Some("UPLOADS=$DATA_ROOT/uploads\nGREETING=hello\nWHO=repo\n"),
            Some("WHO=override\nPIKU_INTERNAL_X=1\n"),
        )
        .unwrap();
        assert_eq!(env["APP"], "blog");
        assert_eq!(env["UPLOADS"], "/srv/piku/data/blog/uploads");
        assert_eq!(env["WHO"], "override");
        assert_eq!(env["GREETING"], "hello");
        assert_eq!(env["VIRTUAL_ENV"], "/srv/piku/envs/blog/deps/py-1");
        assert!(env["PATH"].starts_with("/srv/piku/envs/blog/deps/py-1/bin:"));
        assert_eq!(env["LOG_ROOT"], "/srv/piku/logs");
        let mut env = env;
        let said = finish(&mut env);
        assert!(said.is_empty());
        assert_eq!(env["BIND_ADDRESS"], "127.0.0.1");
        assert!(!env.contains_key("PIKU_INTERNAL_X"));
        assert!(!env.contains_key("PORT"));
        assert!(!env.contains_key("NGINX_IPV4_ADDRESS"));
    }

    #[test]
    fn without_deps_virtual_env_is_the_app_env_dir() {
        let root = PikuRoot::new("/srv/piku");
        let app: AppName = "blog".parse().unwrap();
        let env = boot(&root, &app, None);
        assert_eq!(env["VIRTUAL_ENV"], "/srv/piku/envs/blog");
        assert!(!env.contains_key("NODE_PATH"));
    }

    #[test]
    fn nginx_defaults_only_with_a_server_name() {
        let mut env = EnvMap::from([("NGINX_SERVER_NAME".into(), "a.com,b.com".into())]);
        let said = finish(&mut env);
        assert_eq!(env["NGINX_SERVER_NAME"], "a.com b.com");
        assert_eq!(env["NGINX_IPV6_ADDRESS"], "[::]");
        assert_eq!(
            said,
            [
                "nginx BIND_ADDRESS will be set to 127.0.0.1",
                "nginx NGINX_IPV4_ADDRESS will be set to 0.0.0.0",
                "nginx NGINX_IPV6_ADDRESS will be set to [::]",
            ]
        );
    }

    #[test]
    fn a_malformed_env_file_is_an_error_naming_the_line() {
        let err = merge(EnvMap::new(), Some("OK=1\nnot a setting\n"), None).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
