//! Which runtime an app uses, decided from its files in piku's order, and which programs
//! (and Debian packages) its build needs.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use piku_model::{ProcessClass, Procfile};

/// How a Python project's dependencies are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PythonTool {
    /// `requirements.txt`: a venv and pip.
    Pip,
    /// `pyproject.toml` with poetry.
    Poetry,
    /// `pyproject.toml` with uv.
    Uv,
}

/// The runtimes piku knows, in its detection order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Python(PythonTool),
    Ruby,
    Node,
    Maven,
    Gradle,
    Go,
    ClojureCli,
    Leiningen,
    Rust,
    /// Only a `static:` entry: nothing to build or run.
    Static,
    /// Processes in the Procfile and no recognised runtime: nothing to build.
    Generic,
}

impl Runtime {
    /// The name recorded in `release.json`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Python(_) => "python",
            Runtime::Ruby => "ruby",
            Runtime::Node => "node",
            Runtime::Maven => "maven",
            Runtime::Gradle => "gradle",
            Runtime::Go => "go",
            Runtime::ClojureCli => "clojure",
            Runtime::Leiningen => "leiningen",
            Runtime::Rust => "rust",
            Runtime::Static => "static",
            Runtime::Generic => "generic",
        }
    }

    /// piku's `-----> <X> app detected.` wording.
    pub fn label(self) -> &'static str {
        match self {
            Runtime::Python(PythonTool::Pip) => "Python",
            Runtime::Python(PythonTool::Poetry) => "Python (poetry)",
            Runtime::Python(PythonTool::Uv) => "Python (uv)",
            Runtime::Ruby => "Ruby",
            Runtime::Node => "Node",
            Runtime::Maven => "Java Maven",
            Runtime::Gradle => "Java Gradle",
            Runtime::Go => "Go",
            Runtime::ClojureCli => "Clojure CLI",
            Runtime::Leiningen => "Clojure Lein",
            Runtime::Rust => "Rust",
            Runtime::Static => "Static",
            Runtime::Generic => "Generic",
        }
    }

    /// Programs the build runs, each with the Debian package(s) that provide it.
    pub fn requirements(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Runtime::Python(PythonTool::Pip) => &[("python3", "python3 python3-venv")],
            Runtime::Python(PythonTool::Poetry) => &[
                ("python3", "python3 python3-venv"),
                ("poetry", "python3-poetry"),
            ],
            Runtime::Python(PythonTool::Uv) => &[("uv", "uv (https://docs.astral.sh/uv/)")],
            Runtime::Ruby => &[("ruby", "ruby"), ("bundle", "ruby-bundler")],
            Runtime::Node => &[("node", "nodejs"), ("npm", "npm")],
            Runtime::Maven => &[("java", "default-jdk"), ("mvn", "maven")],
            Runtime::Gradle => &[("java", "default-jdk")],
            Runtime::Go => &[("go", "golang")],
            Runtime::ClojureCli => &[("java", "default-jdk"), ("clojure", "clojure")],
            Runtime::Leiningen => &[("java", "default-jdk"), ("lein", "leiningen")],
            Runtime::Rust => &[("cargo", "cargo")],
            Runtime::Static | Runtime::Generic => &[],
        }
    }
}

/// Why no runtime could be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DetectError {
    #[error(
        "pyproject.toml needs uv or poetry to install its dependencies; install one \
         (Debian: python3-poetry) or add a requirements.txt"
    )]
    NoPyprojectTool,
    #[error(
        "could not detect a runtime and the Procfile has no process to run \
         (add e.g. 'web: <command that listens on $PORT>')"
    )]
    Nothing,
}

/// Picks the runtime for the checkout in `src`, first match wins (piku's order; Rust no
/// longer needs `rust-toolchain.toml`, and a plain `web:` app needs no `release:` line).
/// `path` is the PATH the build will use, to choose between poetry and uv.
pub fn detect(src: &Path, procfile: &Procfile, path: &OsStr) -> Result<Runtime, DetectError> {
    let has = |name: &str| src.join(name).exists();
    if has("requirements.txt") {
        return Ok(Runtime::Python(PythonTool::Pip));
    }
    if has("pyproject.toml") {
        let poetry = find_program("poetry", path).is_some();
        let uv = find_program("uv", path).is_some();
        return match (poetry, uv) {
            // The lock file says which tool the project uses; else piku's order.
            (true, true) if has("uv.lock") && !has("poetry.lock") => {
                Ok(Runtime::Python(PythonTool::Uv))
            }
            (true, _) => Ok(Runtime::Python(PythonTool::Poetry)),
            (false, true) => Ok(Runtime::Python(PythonTool::Uv)),
            (false, false) => Err(DetectError::NoPyprojectTool),
        };
    }
    if has("Gemfile") {
        return Ok(Runtime::Ruby);
    }
    if has("package.json") {
        return Ok(Runtime::Node);
    }
    if has("pom.xml") {
        return Ok(Runtime::Maven);
    }
    if has("build.gradle") || has("build.gradle.kts") {
        return Ok(Runtime::Gradle);
    }
    if has("go.mod") || has("Godeps") || has_go_files(src) {
        return Ok(Runtime::Go);
    }
    if has("deps.edn") {
        return Ok(Runtime::ClojureCli);
    }
    if has("project.clj") {
        return Ok(Runtime::Leiningen);
    }
    if has("Cargo.toml") {
        return Ok(Runtime::Rust);
    }
    if procfile.workers().next().is_some() {
        return Ok(Runtime::Generic);
    }
    if procfile
        .entries
        .iter()
        .any(|e| e.class == ProcessClass::Static)
    {
        return Ok(Runtime::Static);
    }
    Err(DetectError::Nothing)
}

fn has_go_files(src: &Path) -> bool {
    std::fs::read_dir(src)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|ext| ext == "go"))
        })
        .unwrap_or(false)
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

/// The first required program missing from `path`, as a one-line error naming the package.
pub fn missing_toolchain(runtime: Runtime, path: &OsStr) -> Option<String> {
    runtime
        .requirements()
        .iter()
        .find(|(program, _)| find_program(program, path).is_none())
        .map(|(program, package)| {
            format!(
                "{} app needs '{program}', which is not installed on the server \
                 (Debian/Ubuntu: apt-get install {package})",
                runtime.label()
            )
        })
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
            Ok(Runtime::Python(PythonTool::Pip))
        );
        assert_eq!(
            detect_in(&["Gemfile", "package.json"], web),
            Ok(Runtime::Ruby)
        );
        assert_eq!(
            detect_in(&["package.json", "go.mod"], web),
            Ok(Runtime::Node)
        );
        assert_eq!(detect_in(&["pom.xml"], web), Ok(Runtime::Maven));
        assert_eq!(detect_in(&["build.gradle"], web), Ok(Runtime::Gradle));
        assert_eq!(detect_in(&["main.go"], web), Ok(Runtime::Go));
        assert_eq!(detect_in(&["deps.edn"], web), Ok(Runtime::ClojureCli));
        assert_eq!(detect_in(&["project.clj"], web), Ok(Runtime::Leiningen));
        assert_eq!(detect_in(&["Cargo.toml"], web), Ok(Runtime::Rust));
        assert_eq!(detect_in(&["README"], web), Ok(Runtime::Generic));
        assert_eq!(detect_in(&["index.html"], "static: ."), Ok(Runtime::Static));
        assert_eq!(
            detect_in(&["x"], "release: ./migrate"),
            Err(DetectError::Nothing)
        );
    }

    #[test]
    fn pyproject_without_uv_or_poetry_names_what_to_install() {
        let err = detect_in(&["pyproject.toml"], "web: x").unwrap_err();
        assert!(err.to_string().contains("python3-poetry"), "{err}");
    }

    #[test]
    fn missing_toolchain_names_the_debian_package() {
        let msg = missing_toolchain(Runtime::Go, OsStr::new("/nonexistent")).unwrap();
        assert_eq!(
            msg,
            "Go app needs 'go', which is not installed on the server \
             (Debian/Ubuntu: apt-get install golang)"
        );
        assert_eq!(missing_toolchain(Runtime::Generic, OsStr::new("")), None);
        assert!(find_program("sh", OsStr::new("/usr/bin:/bin")).is_some());
    }
}
