//! Runtimes, as piku's `deploy_*` functions: one file each, holding the runtime's detection, its
//! build and the environment its processes need. This module is the registry: piku's detection
//! order, and the dispatch from a detected (or recorded) runtime to its file.
//!
//! | file | detects | builds |
//! |---|---|---|
//! | [`python`] | `requirements.txt`, `pyproject.toml` | venv via pip, poetry or uv; WSGI server |
//! | [`ruby`] | `Gemfile` | `bundle install` |
//! | [`node`] | `package.json` | `npm ci` / `npm install` |
//! | [`java`] | `pom.xml`, `build.gradle[.kts]` | `mvn package`, `gradle build` |
//! | [`go`] | `go.mod`, `Godeps`, `*.go` | `go build` into the release's `bin` |
//! | [`clojure`] | `deps.edn`, `project.clj` | `clojure -T:build release`, `lein uberjar` |
//! | [`rust`] | `Cargo.toml` | `cargo install` into the release's `bin` |
//! | [`php`] | a `php:` entry | the instance's php-fpm + nginx start script |
//! | [`generic`] | any process in the Procfile | nothing |
//! | [`static_site`] | a `static:` entry only | nothing |
//!
//! Shared parts: [`build`] (what a build gets and gives back), [`deps`] (dependency
//! environments keyed by manifest hash), [`rack`] (the server of `rwsgi:` entries).

pub mod build;
pub mod clojure;
pub mod deps;
pub mod generic;
pub mod go;
pub mod java;
pub mod node;
pub mod php;
pub mod python;
pub mod rack;
pub mod ruby;
pub mod rust;
pub mod static_site;

use std::ffi::OsStr;
use std::path::Path;

use piku_model::Procfile;

use crate::buildlog::BuildLog;
use crate::error::DeployError;
use build::{BuildCtx, Built, BuiltRelease, RuntimeEnv, find_program};

/// A runtime piku knows, with the tool that builds it where there are several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Python(python::Tool),
    Ruby,
    Node,
    Java(java::Tool),
    Go,
    Clojure(clojure::Tool),
    Rust,
    /// A `php:` entry and no language runtime: php-fpm behind the instance's nginx.
    Php,
    /// Only a `static:` entry: nothing to build or run.
    Static,
    /// Processes in the Procfile and no recognised runtime: nothing to build.
    Generic,
}

/// Why no runtime could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    #[error("{}", python::NO_PYPROJECT_TOOL)]
    NoPyprojectTool,
    #[error(
        "could not detect a runtime and the Procfile has no process to run \
         (add e.g. 'web: <command that listens on $PORT>')"
    )]
    Nothing,
    #[error("a 'php:' entry needs an app with no other runtime; found a {0} app")]
    PhpBeside(&'static str),
}

impl From<DetectError> for DeployError {
    fn from(error: DetectError) -> DeployError {
        DeployError::Refused(error.to_string())
    }
}

/// Picks the runtime for the checkout in `src`, first match wins (piku's order; Rust no
/// longer needs `rust-toolchain.toml`, and a plain `web:` app needs no `release:` line).
/// `path` is the PATH the build will use, to choose between poetry and uv.
pub fn detect(src: &Path, procfile: &Procfile, path: &OsStr) -> Result<Runtime, DetectError> {
    let runtime = detect_in_order(src, procfile, path)?;
    // Only the PHP runtime puts the serve script on the processes' PATH.
    if php::detect(procfile) && runtime != Runtime::Php {
        return Err(DetectError::PhpBeside(runtime.label()));
    }
    Ok(runtime)
}

fn detect_in_order(src: &Path, procfile: &Procfile, path: &OsStr) -> Result<Runtime, DetectError> {
    if let Some(tool) = python::detect(src, path) {
        return tool
            .map(Runtime::Python)
            .map_err(|_| DetectError::NoPyprojectTool);
    }
    if ruby::detect(src) {
        return Ok(Runtime::Ruby);
    }
    if node::detect(src) {
        return Ok(Runtime::Node);
    }
    if let Some(tool) = java::detect(src) {
        return Ok(Runtime::Java(tool));
    }
    if go::detect(src) {
        return Ok(Runtime::Go);
    }
    if let Some(tool) = clojure::detect(src) {
        return Ok(Runtime::Clojure(tool));
    }
    if php::detect(procfile) {
        return Ok(Runtime::Php);
    }
    if rust::detect(src) {
        return Ok(Runtime::Rust);
    }
    if generic::detect(procfile) {
        return Ok(Runtime::Generic);
    }
    if static_site::detect(procfile) {
        return Ok(Runtime::Static);
    }
    Err(DetectError::Nothing)
}

impl Runtime {
    /// The name recorded in `release.json`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Python(_) => python::NAME,
            Runtime::Ruby => ruby::NAME,
            Runtime::Node => node::NAME,
            Runtime::Java(tool) => tool.name(),
            Runtime::Go => go::NAME,
            Runtime::Clojure(tool) => tool.name(),
            Runtime::Rust => rust::NAME,
            Runtime::Php => php::NAME,
            Runtime::Static => static_site::NAME,
            Runtime::Generic => generic::NAME,
        }
    }

    /// piku's `-----> <X> app detected.` wording.
    pub fn label(self) -> &'static str {
        match self {
            Runtime::Python(tool) => tool.label(),
            Runtime::Ruby => ruby::LABEL,
            Runtime::Node => node::LABEL,
            Runtime::Java(tool) => tool.label(),
            Runtime::Go => go::LABEL,
            Runtime::Clojure(tool) => tool.label(),
            Runtime::Rust => rust::LABEL,
            Runtime::Php => php::LABEL,
            Runtime::Static => static_site::LABEL,
            Runtime::Generic => generic::LABEL,
        }
    }

    /// Programs the build runs, each with the Debian package(s) that provide it, or, for a
    /// tool Debian does not package, where to get it (a text with a URL).
    pub fn toolchain(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Runtime::Python(tool) => tool.toolchain(),
            Runtime::Ruby => ruby::TOOLCHAIN,
            Runtime::Node => node::TOOLCHAIN,
            Runtime::Java(tool) => tool.toolchain(),
            Runtime::Go => go::TOOLCHAIN,
            Runtime::Clojure(tool) => tool.toolchain(),
            Runtime::Rust => rust::TOOLCHAIN,
            // php-fpm and nginx live in sbin, off the piku user's PATH: php::build finds them.
            Runtime::Php | Runtime::Static | Runtime::Generic => &[],
        }
    }

    /// The first required program missing from `path`, as a one-line error naming the
    /// Debian package.
    pub fn missing_toolchain(self, path: &OsStr) -> Option<String> {
        self.toolchain()
            .iter()
            .find(|(program, _)| find_program(program, path).is_none())
            .map(|(program, package)| {
                let how = if package.contains("://") {
                    format!("install {package}")
                } else {
                    format!("Debian/Ubuntu: apt-get install {package}")
                };
                format!(
                    "{} app needs '{program}', which is not installed on the server ({how})",
                    self.label()
                )
            })
    }

    /// Builds the release in `ctx.src`.
    pub fn build(self, ctx: &BuildCtx, log: &mut BuildLog) -> Result<Built, DeployError> {
        if ctx.wsgi.is_some() && !matches!(self, Runtime::Python(_)) {
            return Err(DeployError::refused(format!(
                "'wsgi:' entries need a Python app (requirements.txt or pyproject.toml); \
                 found a {} app",
                self.label()
            )));
        }
        if let Some(puma) = ctx.rack {
            if !matches!(self, Runtime::Ruby | Runtime::Generic) {
                return Err(DeployError::refused(format!(
                    "'rwsgi:' entries need a Ruby app (a Gemfile) or no runtime at all; \
                     found a {} app",
                    self.label()
                )));
            }
            puma.check(ctx.path())?;
        }
        match self {
            Runtime::Python(tool) => python::build(tool, ctx, log),
            Runtime::Ruby => ruby::build(ctx, log),
            Runtime::Node => node::build(ctx, log),
            Runtime::Java(tool) => java::build(tool, ctx, log),
            Runtime::Go => go::build(ctx, log),
            Runtime::Clojure(tool) => clojure::build(tool, ctx, log),
            Runtime::Rust => rust::build(ctx, log),
            Runtime::Php => php::build(ctx, log),
            Runtime::Static | Runtime::Generic => Ok(Built::default()),
        }
    }
}

/// What the processes of a release built for the runtime recorded as `name` need to find what
/// the build installed (nothing for runtimes that install nothing outside the checkout).
pub fn env(name: Option<&str>, release: &BuiltRelease) -> RuntimeEnv {
    match name {
        Some(python::NAME) => python::env(release),
        Some(ruby::NAME) => ruby::env(release),
        Some(node::NAME) => node::env(release),
        Some(go::NAME) => go::env(release),
        Some(rust::NAME) => rust::env(release),
        Some(php::NAME) => php::env(release),
        _ => RuntimeEnv::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use piku_model::parse_procfile;

    fn detect_in(files: &[&str], procfile: &str) -> Result<Runtime, DetectError> {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let procfile = parse_procfile(procfile).unwrap();
        detect(dir.path(), &procfile, OsStr::new("/nonexistent"))
    }

    #[test]
    fn detection_follows_piku_order() {
        let web = "web: ./run";
        assert_eq!(
            detect_in(&["requirements.txt", "package.json"], web),
            Ok(Runtime::Python(python::Tool::Pip))
        );
        assert_eq!(
            detect_in(&["Gemfile", "package.json"], web),
            Ok(Runtime::Ruby)
        );
        assert_eq!(
            detect_in(&["package.json", "go.mod"], web),
            Ok(Runtime::Node)
        );
        assert_eq!(
            detect_in(&["pom.xml"], web),
            Ok(Runtime::Java(java::Tool::Maven))
        );
        assert_eq!(
            detect_in(&["build.gradle"], web),
            Ok(Runtime::Java(java::Tool::Gradle))
        );
        assert_eq!(detect_in(&["main.go"], web), Ok(Runtime::Go));
        assert_eq!(
            detect_in(&["deps.edn"], web),
            Ok(Runtime::Clojure(clojure::Tool::Cli))
        );
        assert_eq!(
            detect_in(&["project.clj"], web),
            Ok(Runtime::Clojure(clojure::Tool::Leiningen))
        );
        assert_eq!(detect_in(&["Cargo.toml"], web), Ok(Runtime::Rust));
        assert_eq!(detect_in(&["README"], web), Ok(Runtime::Generic));
        assert_eq!(detect_in(&["index.html"], "static: ."), Ok(Runtime::Static));
        assert_eq!(
            detect_in(&["x"], "release: ./migrate"),
            Err(DetectError::Nothing)
        );
    }

    #[test]
    fn a_php_entry_is_php_alone_and_refused_beside_another_runtime() {
        assert_eq!(detect_in(&["index.php"], "php: ."), Ok(Runtime::Php));
        assert_eq!(
            detect_in(&["package.json"], "php: ."),
            Err(DetectError::PhpBeside("Node"))
        );
    }

    #[test]
    fn names_stay_what_release_json_recorded() {
        let names: Vec<&str> = [
            Runtime::Python(python::Tool::Uv),
            Runtime::Ruby,
            Runtime::Node,
            Runtime::Java(java::Tool::Maven),
            Runtime::Java(java::Tool::Gradle),
            Runtime::Go,
            Runtime::Clojure(clojure::Tool::Cli),
            Runtime::Clojure(clojure::Tool::Leiningen),
            Runtime::Rust,
            Runtime::Static,
            Runtime::Generic,
        ]
        .iter()
        .map(|r| r.name())
        .collect();
        assert_eq!(
            names,
            [
                "python",
                "ruby",
                "node",
                "maven",
                "gradle",
                "go",
                "clojure",
                "leiningen",
                "rust",
                "static",
                "generic"
            ]
        );
    }

    #[test]
    fn pyproject_without_uv_or_poetry_names_what_to_install() {
        let err = detect_in(&["pyproject.toml"], "web: x").unwrap_err();
        assert!(err.to_string().contains("python3-poetry"), "{err}");
    }

    #[test]
    fn missing_toolchain_names_the_debian_package() {
        let msg = Runtime::Go
            .missing_toolchain(OsStr::new("/nonexistent"))
            .unwrap();
        assert_eq!(
            msg,
            "Go app needs 'go', which is not installed on the server \
             (Debian/Ubuntu: apt-get install golang)"
        );
        assert_eq!(Runtime::Generic.missing_toolchain(OsStr::new("")), None);
    }
}
