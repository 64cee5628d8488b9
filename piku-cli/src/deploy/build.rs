//! Building a release for its runtime, with every command's output streamed and its exit
//! status checked: a failed build fails the deploy.
//!
//! Installed dependencies (a Python venv, `node_modules`, a bundle) live outside the release in
//! `envs/<app>/deps/<runtime>-<key>/`, where `<key>` hashes the dependency manifests and the
//! runtime version. A later release with the same manifests reuses the directory as is, so a
//! code-only redeploy installs nothing, and each kept release keeps the environment it was
//! built with, so a rollback needs no rebuild. A directory is only reused once its build
//! finished (`.piku-complete`); a half-built one is wiped and built again.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use piku_model::{AppName, EnvMap, PikuRoot};

use super::buildlog::BuildLog;
use super::checkout::clean_git_env;
use super::runtime::{PythonTool, Runtime, find_program};
use super::store::deps_root;
use super::wsgi::Server;

/// Marks a dependency directory whose build completed.
const COMPLETE: &str = ".piku-complete";

/// What a build needs to know.
pub struct BuildCtx<'a> {
    pub root: &'a PikuRoot,
    pub app: &'a AppName,
    /// The release's checkout.
    pub src: &'a Path,
    /// `releases/<app>/<id>`.
    pub release_dir: &'a Path,
    pub commit: &'a str,
    /// The app's environment without dependency paths (bootstrap + repo ENV + overrides).
    pub env: &'a EnvMap,
    /// The WSGI server to install, if the Procfile has a `wsgi:` entry.
    pub wsgi: Option<Server>,
}

/// What the build produced, recorded in `release.json`.
#[derive(Debug, Default)]
pub struct Built {
    /// Name of the dependency directory under `envs/<app>/deps/`.
    pub deps: Option<String>,
    pub wsgi_server: Option<Server>,
}

/// Builds the release in `ctx.src` for `runtime`.
pub fn build(runtime: Runtime, ctx: &BuildCtx, log: &mut BuildLog) -> anyhow::Result<Built> {
    if ctx.wsgi.is_some() && !matches!(runtime, Runtime::Python(_)) {
        bail!(
            "'wsgi:' entries need a Python app (requirements.txt or pyproject.toml); \
             found a {} app",
            runtime.label()
        );
    }
    match runtime {
        Runtime::Python(tool) => python(tool, ctx, log),
        Runtime::Node => node(ctx, log),
        Runtime::Ruby => ruby(ctx, log),
        Runtime::Go => {
            let bin = ctx.release_dir.join("bin");
            let mut out = bin.into_os_string();
            out.push("/");
            log.step(format!("Running go build for '{}'", ctx.app));
            let mut cmd = ctx.command("go", ctx.src);
            cmd.arg("build").arg("-o").arg(out).arg("./...");
            log.run(cmd, "go build")?;
            Ok(Built::default())
        }
        Runtime::Rust => {
            log.step(format!("Running cargo build --release for '{}'", ctx.app));
            let mut cmd = ctx.command("cargo", ctx.src);
            cmd.args(["build", "--release"])
                .env("CARGO_TARGET_DIR", ctx.src.join("target"));
            log.run(cmd, "cargo build")?;
            Ok(Built::default())
        }
        Runtime::Maven => {
            log.step(format!("Running mvn package for '{}'", ctx.app));
            let mut cmd = ctx.command("mvn", ctx.src);
            cmd.args(["-B", "package"]);
            log.run(cmd, "mvn package")?;
            Ok(Built::default())
        }
        Runtime::Gradle => {
            let wrapper = ctx.src.join("gradlew");
            let program = if wrapper.is_file() {
                wrapper.to_string_lossy().into_owned()
            } else if find_program("gradle", path_of(ctx.env)).is_some() {
                "gradle".to_owned()
            } else {
                bail!(
                    "Java Gradle app needs 'gradle' (or a gradlew wrapper in the repo), which \
                     is not installed on the server (Debian/Ubuntu: apt-get install gradle)"
                );
            };
            log.step(format!("Running gradle build for '{}'", ctx.app));
            let mut cmd = ctx.command(&program, ctx.src);
            cmd.args(["build", "--no-daemon"]);
            log.run(cmd, "gradle build")?;
            Ok(Built::default())
        }
        Runtime::ClojureCli => {
            log.step(format!(
                "Running clojure -T:build release for '{}'",
                ctx.app
            ));
            let mut cmd = ctx.command("clojure", ctx.src);
            cmd.args(["-T:build", "release"]);
            log.run(cmd, "clojure build")?;
            Ok(Built::default())
        }
        Runtime::Leiningen => {
            log.step(format!("Running lein uberjar for '{}'", ctx.app));
            let mut cmd = ctx.command("lein", ctx.src);
            cmd.arg("uberjar");
            log.run(cmd, "lein uberjar")?;
            Ok(Built::default())
        }
        Runtime::Static | Runtime::Generic => Ok(Built::default()),
    }
}

impl BuildCtx<'_> {
    /// A build command: our environment without git's hook variables, with the app's
    /// environment on top, run in `cwd`.
    fn command(&self, program: impl AsRef<OsStr>, cwd: &Path) -> Command {
        let mut cmd = Command::new(program);
        clean_git_env(&mut cmd).envs(self.env).current_dir(cwd);
        cmd
    }

    /// `cache/.<tool>`: download caches shared by every app (app names cannot start with `.`).
    fn shared_cache(&self, tool: &str) -> PathBuf {
        self.root.cache().join(format!(".{tool}"))
    }

    fn read_manifest(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.src.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("cannot read '{name}'")),
        }
    }

    /// The first line `program --version` prints, part of the dependency key.
    fn version_of(&self, program: &str) -> anyhow::Result<String> {
        let out = self
            .command(program, self.src)
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run '{program} --version'"))?;
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
}

fn path_of(env: &EnvMap) -> &OsStr {
    OsStr::new(env.get("PATH").map(String::as_str).unwrap_or(""))
}

/// A dependency directory, and whether it is already built.
struct Deps {
    name: String,
    dir: PathBuf,
    ready: bool,
}

impl Deps {
    /// The directory for `runtime` whose key hashes `inputs`; wiped if a build of it
    /// did not finish.
    fn open(ctx: &BuildCtx, runtime: &str, inputs: &[&[u8]]) -> anyhow::Result<Deps> {
        let name = format!("{runtime}-{:016x}", key(inputs));
        let dir = deps_root(ctx.root, ctx.app).join(&name);
        let ready = dir.join(COMPLETE).is_file();
        if !ready {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot clear '{}'", dir.display()));
                }
            }
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create '{}'", dir.display()))?;
        }
        Ok(Deps { name, dir, ready })
    }

    fn mark_ready(&self) -> anyhow::Result<()> {
        std::fs::write(self.dir.join(COMPLETE), b"")
            .with_context(|| format!("cannot mark '{}' complete", self.dir.display()))
    }
}

/// FNV-1a (64 bit) over length-prefixed inputs: stable across Rust versions, which a cache
/// key kept on disk needs (std's hasher is not), and plenty for telling manifests apart.
fn key(inputs: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for input in inputs {
        eat(&(input.len() as u64).to_le_bytes());
        eat(input);
    }
    hash
}

/// The interpreter `PYTHON_VERSION` asks for: `python3` by default, `python3.12` for `3.12`.
fn python_program(env: &EnvMap) -> String {
    match env.get("PYTHON_VERSION").map(|v| v.trim()) {
        None | Some("") => "python3".to_owned(),
        Some(v) => format!("python{v}"),
    }
}

/// True if requirements.txt installs something from the checkout itself (`-e .`, `./pkg`),
/// which ties the venv to one commit.
fn requirements_use_source(text: &str) -> bool {
    text.lines().map(str::trim).any(|line| {
        line.starts_with("-e")
            || line.starts_with("--editable")
            || line.starts_with('.')
            || line.starts_with("file:")
    })
}

fn python(tool: PythonTool, ctx: &BuildCtx, log: &mut BuildLog) -> anyhow::Result<Built> {
    let server_name = ctx.wsgi.map(Server::name).unwrap_or("");
    let python = python_program(ctx.env);
    if tool != PythonTool::Uv && find_program(&python, path_of(ctx.env)).is_none() {
        bail!(
            "Python app needs '{python}', which is not installed on the server \
             (Debian/Ubuntu: apt-get install python3 python3-venv)"
        );
    }
    let deps = match tool {
        PythonTool::Pip => {
            let requirements = ctx.read_manifest("requirements.txt")?;
            let version = ctx.version_of(&python)?;
            let pinned: &[u8] = if requirements_use_source(&String::from_utf8_lossy(&requirements))
            {
                ctx.commit.as_bytes()
            } else {
                b""
            };
            let deps = Deps::open(
                ctx,
                "python",
                &[
                    &requirements,
                    version.as_bytes(),
                    server_name.as_bytes(),
                    pinned,
                ],
            )?;
            if deps.ready {
                log.step("Reusing the virtualenv (requirements.txt and Python unchanged)");
            } else {
                create_venv(ctx, &python, &version, &deps.dir, log)?;
                log.step(format!("Running pip for '{}'", ctx.app));
                let mut cmd = pip(ctx, &deps.dir);
                cmd.args(["-r", "requirements.txt"]);
                // One pip run for both: each pip start costs a second or two. If the
                // requirements pin the server, pip merges the two requirements.
                if let Some(server) = ctx.wsgi {
                    log.step(format!(
                        "Adding {} to serve the 'wsgi:' entry",
                        server.name()
                    ));
                    cmd.arg(server.name());
                }
                log.run(cmd, "pip install -r requirements.txt")?;
            }
            deps
        }
        PythonTool::Poetry => {
            let version = ctx.version_of(&python)?;
            let deps = Deps::open(
                ctx,
                "poetry",
                &[
                    &ctx.read_manifest("pyproject.toml")?,
                    &ctx.read_manifest("poetry.lock")?,
                    version.as_bytes(),
                    server_name.as_bytes(),
                ],
            )?;
            if deps.ready {
                log.step(
                    "Reusing the virtualenv (pyproject.toml, poetry.lock and Python unchanged)",
                );
            } else {
                create_venv(ctx, &python, &version, &deps.dir, log)?;
                log.step(format!("Running poetry install for '{}'", ctx.app));
                let mut cmd = ctx.command("poetry", ctx.src);
                cmd.args(["install", "--no-root", "--no-interaction"])
                    .env("VIRTUAL_ENV", &deps.dir)
                    .env("POETRY_VIRTUALENVS_CREATE", "false")
                    .env("PATH", prepend_path(&deps.dir.join("bin"), ctx.env));
                log.run(cmd, "poetry install")?;
            }
            deps
        }
        PythonTool::Uv => {
            let wanted = ctx.env.get("PYTHON_VERSION").cloned().unwrap_or_default();
            let deps = Deps::open(
                ctx,
                "uv",
                &[
                    &ctx.read_manifest("pyproject.toml")?,
                    &ctx.read_manifest("uv.lock")?,
                    &ctx.read_manifest(".python-version")?,
                    wanted.as_bytes(),
                    server_name.as_bytes(),
                ],
            )?;
            if deps.ready {
                log.step("Reusing the virtualenv (pyproject.toml and uv.lock unchanged)");
            } else {
                log.step(format!("Running uv sync for '{}'", ctx.app));
                let mut cmd = ctx.command("uv", ctx.src);
                // The project itself runs from the checkout; only its dependencies go in the
                // shared environment, so it stays valid for the next commit.
                cmd.args(["sync", "--no-install-project"])
                    .env("UV_PROJECT_ENVIRONMENT", &deps.dir)
                    .env("UV_CACHE_DIR", ctx.shared_cache("uv"));
                if !ctx.env.contains_key("UV_PYTHON_PREFERENCE") {
                    cmd.env("UV_PYTHON_PREFERENCE", "managed");
                }
                if !wanted.trim().is_empty() {
                    cmd.args(["--python", wanted.trim()]);
                }
                log.run(cmd, "uv sync")?;
            }
            deps
        }
    };
    let server = match ctx.wsgi {
        Some(server) if !deps.ready => {
            install_wsgi_server(tool, server, ctx, &deps.dir, log)?;
            Some(server)
        }
        other => other,
    };
    deps.mark_ready()?;
    Ok(Built {
        deps: Some(deps.name),
        wsgi_server: server,
    })
}

fn create_venv(
    ctx: &BuildCtx,
    python: &str,
    version: &str,
    dir: &Path,
    log: &mut BuildLog,
) -> anyhow::Result<()> {
    log.step(format!(
        "Creating a virtualenv for '{}' ({version})",
        ctx.app
    ));
    // virtualenv (what piku uses) seeds pip from a cache in well under a second; the
    // standard library's venv runs ensurepip, which takes several.
    if find_program("virtualenv", path_of(ctx.env)).is_some() {
        let mut cmd = ctx.command("virtualenv", ctx.src);
        cmd.args(["--quiet", "--python", python]).arg(dir);
        return log.run(cmd, "virtualenv");
    }
    let mut cmd = ctx.command(python, ctx.src);
    cmd.args(["-m", "venv"]).arg(dir);
    log.run(cmd, "creating the virtualenv")
        .context("is python3-venv installed? (Debian/Ubuntu: apt-get install python3-venv)")
}

/// `<venv>/bin/pip install` with a shared download cache and no version nagging.
fn pip(ctx: &BuildCtx, venv: &Path) -> Command {
    let mut cmd = ctx.command(venv.join("bin/pip"), ctx.src);
    cmd.args(["install", "--disable-pip-version-check", "--no-input"])
        .env("PIP_CACHE_DIR", ctx.shared_cache("pip"))
        .env("VIRTUAL_ENV", venv)
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

/// Adds the WSGI server to the venv unless the app's own dependencies brought it.
fn install_wsgi_server(
    tool: PythonTool,
    server: Server,
    ctx: &BuildCtx,
    venv: &Path,
    log: &mut BuildLog,
) -> anyhow::Result<()> {
    if venv.join("bin").join(server.executable()).is_file() {
        return Ok(());
    }
    log.step(format!(
        "Installing {} to serve the 'wsgi:' entry",
        server.name()
    ));
    let cmd = match tool {
        PythonTool::Uv => {
            let mut cmd = ctx.command("uv", ctx.src);
            cmd.args(["pip", "install", "--python"])
                .arg(venv.join("bin/python"))
                .arg(server.name())
                .env("UV_CACHE_DIR", ctx.shared_cache("uv"));
            cmd
        }
        PythonTool::Pip | PythonTool::Poetry => {
            let mut cmd = pip(ctx, venv);
            cmd.arg(server.name());
            cmd
        }
    };
    log.run(cmd, &format!("installing {}", server.name()))
}

fn prepend_path(dir: &Path, env: &EnvMap) -> String {
    match env.get("PATH") {
        Some(path) if !path.is_empty() => format!("{}:{path}", dir.display()),
        _ => dir.display().to_string(),
    }
}

fn node(ctx: &BuildCtx, log: &mut BuildLog) -> anyhow::Result<Built> {
    let lock = ctx.read_manifest("package-lock.json")?;
    let shrinkwrap = ctx.read_manifest("npm-shrinkwrap.json")?;
    let version = ctx.version_of("node")?;
    let deps = Deps::open(
        ctx,
        "node",
        &[
            &ctx.read_manifest("package.json")?,
            &lock,
            &shrinkwrap,
            version.as_bytes(),
        ],
    )?;
    if deps.ready {
        log.step("Reusing node_modules (package.json, lock file and Node unchanged)");
    } else {
        for name in ["package.json", "package-lock.json", "npm-shrinkwrap.json"] {
            let from = ctx.src.join(name);
            if from.is_file() {
                std::fs::copy(&from, deps.dir.join(name))
                    .with_context(|| format!("cannot copy {name}"))?;
            }
        }
        log.step(format!(
            "Installing Node dependencies for '{}' ({version})",
            ctx.app
        ));
        let mut cmd = ctx.command("npm", &deps.dir);
        if lock.is_empty() && shrinkwrap.is_empty() {
            cmd.args(["install", "--package-lock=false"]);
        } else {
            cmd.arg("ci");
        }
        cmd.args(["--no-audit", "--no-fund"])
            .env("NPM_CONFIG_CACHE", ctx.shared_cache("npm"));
        log.run(cmd, "npm install")?;
        deps.mark_ready()?;
    }
    // Module resolution walks up from the script, so the checkout needs node_modules itself
    // (NODE_PATH alone does not reach ES modules).
    let link = ctx.src.join("node_modules");
    let target = deps.dir.join("node_modules");
    if target.is_dir() && std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("cannot link '{}'", link.display()))?;
    }
    Ok(Built {
        deps: Some(deps.name),
        wsgi_server: None,
    })
}

fn ruby(ctx: &BuildCtx, log: &mut BuildLog) -> anyhow::Result<Built> {
    let version = ctx.version_of("ruby")?;
    let deps = Deps::open(
        ctx,
        "ruby",
        &[
            &ctx.read_manifest("Gemfile")?,
            &ctx.read_manifest("Gemfile.lock")?,
            version.as_bytes(),
        ],
    )?;
    if deps.ready {
        log.step("Reusing the bundle (Gemfile, Gemfile.lock and Ruby unchanged)");
    } else {
        log.step(format!("Running bundle install for '{}'", ctx.app));
        let mut cmd = ctx.command("bundle", ctx.src);
        cmd.arg("install").env("BUNDLE_PATH", &deps.dir);
        log.run(cmd, "bundle install")?;
        deps.mark_ready()?;
    }
    Ok(Built {
        deps: Some(deps.name),
        wsgi_server: None,
    })
}

/// Variables a runtime's processes need to find what the build installed.
pub fn runtime_env(runtime: Option<&str>, deps: Option<&Path>) -> EnvMap {
    let mut env = EnvMap::new();
    if let (Some("ruby"), Some(dir)) = (runtime, deps) {
        env.insert("BUNDLE_PATH".into(), dir.to_string_lossy().into_owned());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_any_input_and_with_where_inputs_split() {
        let base = key(&[b"flask\n", b"Python 3.11.7"]);
        assert_eq!(base, key(&[b"flask\n", b"Python 3.11.7"]));
        assert_ne!(base, key(&[b"flask==3\n", b"Python 3.11.7"]));
        assert_ne!(base, key(&[b"flask\n", b"Python 3.12.0"]));
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
    }

    #[test]
    fn requirements_that_install_the_checkout_are_recognised() {
        assert!(requirements_use_source("flask\n-e .\n"));
        assert!(requirements_use_source("./vendored/pkg\n"));
        assert!(!requirements_use_source("flask==3.0\n# -e .\n"));
    }

    #[test]
    fn python_version_picks_the_interpreter() {
        assert_eq!(python_program(&EnvMap::new()), "python3");
        let env = EnvMap::from([("PYTHON_VERSION".into(), "3.12".into())]);
        assert_eq!(python_program(&env), "python3.12");
    }

    #[test]
    fn an_unfinished_deps_dir_is_wiped_and_a_finished_one_reused() {
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        let app: AppName = "blog".parse().unwrap();
        let env = EnvMap::new();
        let ctx = BuildCtx {
            root: &root,
            app: &app,
            src: dir.path(),
            release_dir: dir.path(),
            commit: "c",
            env: &env,
            wsgi: None,
        };
        let first = Deps::open(&ctx, "python", &[b"x"]).unwrap();
        assert!(!first.ready);
        std::fs::write(first.dir.join("half-installed"), "").unwrap();
        let again = Deps::open(&ctx, "python", &[b"x"]).unwrap();
        assert!(!again.ready);
        assert!(!again.dir.join("half-installed").exists());
        again.mark_ready().unwrap();
        let reused = Deps::open(&ctx, "python", &[b"x"]).unwrap();
        assert!(reused.ready);
        assert_eq!(reused.name, first.name);
        assert!(first.name.starts_with("python-"));
    }
}
