//! What every runtime's build gets ([`BuildCtx`]) and gives back ([`Built`], [`RuntimeEnv`]),
//! and the helpers they share: build commands with a clean environment, manifests read from
//! the checkout, tool versions, programs on `PATH`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use piku_model::{AppName, EnvMap, PikuRoot};

use crate::checkout::{clean_git_env, read_bytes};
use crate::error::{DeployError, IoContext};
use crate::runtime::python::wsgi::Server;
use crate::runtime::rack::Puma;

/// What a build needs to know.
pub struct BuildCtx<'a> {
    pub root: &'a PikuRoot,
    pub app: &'a AppName,
    /// The release's checkout.
    pub src: &'a Path,
    /// `releases/<app>/<id>/bin`: where executables built outside the checkout go.
    pub release_bin: &'a Path,
    pub commit: &'a str,
    /// The app's environment without the runtime's paths (bootstrap + repo ENV + overrides).
    pub env: &'a EnvMap,
    /// The WSGI server to install, if the Procfile has a `wsgi:` entry.
    pub wsgi: Option<Server>,
    /// Where the Rack server comes from, if the Procfile has an `rwsgi:` entry.
    pub rack: Option<Puma>,
}

/// What the build produced, recorded in `release.json`.
#[derive(Debug, Default)]
pub struct Built {
    /// Name of the dependency directory under `envs/<app>/deps/`.
    pub deps: Option<String>,
    pub wsgi_server: Option<Server>,
}

/// Where a built release keeps what its build installed: the input of a runtime's `env`.
pub struct BuiltRelease<'a> {
    /// `envs/<app>/deps/<name>`, if the runtime has a dependency environment.
    pub deps: Option<&'a Path>,
    /// `releases/<app>/<id>/bin`.
    pub bin: &'a Path,
}

impl BuiltRelease<'_> {
    /// The release's `bin` first on `PATH`, for runtimes that build executables there (Go,
    /// Rust); nothing if the build made none.
    pub fn bin_on_path(&self) -> RuntimeEnv {
        RuntimeEnv {
            path: self
                .bin
                .is_dir()
                .then(|| self.bin.to_path_buf())
                .into_iter()
                .collect(),
            vars: EnvMap::new(),
        }
    }
}

/// What a runtime adds to its processes' environment so they find what the build installed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuntimeEnv {
    /// Directories put first on `PATH`, in this order.
    pub path: Vec<PathBuf>,
    /// Variables set before the app's `ENV` (which may override them).
    pub vars: EnvMap,
}

impl BuildCtx<'_> {
    /// A build command: our environment without git's hook variables, with the app's
    /// environment on top, run in `cwd`.
    pub fn command(&self, program: impl AsRef<OsStr>, cwd: &Path) -> Command {
        let mut cmd = Command::new(program);
        clean_git_env(&mut cmd).envs(self.env).current_dir(cwd);
        cmd
    }

    /// `cache/.<tool>`: download caches shared by every app.
    pub fn shared_cache(&self, tool: &str) -> PathBuf {
        self.root.shared_cache(tool)
    }

    /// A manifest's bytes from the checkout; empty when the commit has none.
    pub fn read_manifest(&self, name: &str) -> Result<Vec<u8>, DeployError> {
        Ok(read_bytes(self.src, name)?.unwrap_or_default())
    }

    /// The first line `program --version` prints, part of a dependency key.
    pub fn version_of(&self, program: &str) -> Result<String, DeployError> {
        let out = self
            .command(program, self.src)
            .arg("--version")
            .output()
            .doing(|| format!("cannot run '{program} --version'"))?;
        let text = if out.stdout.is_empty() {
            out.stderr
        } else {
            out.stdout
        };
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned())
    }

    /// The `PATH` the build runs with.
    pub fn path(&self) -> &OsStr {
        OsStr::new(self.env.get("PATH").map(String::as_str).unwrap_or(""))
    }

    /// The build's `PATH` with `dir` in front.
    pub fn path_with(&self, dir: &Path) -> String {
        match self.env.get("PATH") {
            Some(path) if !path.is_empty() => format!("{}:{path}", dir.display()),
            _ => dir.display().to_string(),
        }
    }
}

/// The first executable `name` on `path` (a `:`-separated list), like `which`.
pub fn find_program(name: &str, path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_path() {
        assert!(find_program("sh", OsStr::new("/usr/bin:/bin")).is_some());
        assert!(find_program("sh", OsStr::new("/nonexistent")).is_none());
    }
}
