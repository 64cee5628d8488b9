//! Python: a venv per dependency set, filled by pip (`requirements.txt`), poetry or uv
//! (`pyproject.toml`), plus the WSGI server a `wsgi:` entry needs ([`wsgi`]).
//!
//! Detection follows piku: `requirements.txt` means pip; `pyproject.toml` means poetry or uv,
//! whichever is installed (the lock file decides when both are). The interpreter is the one
//! the app asks for when the server has it ([`version`]), and a Django app gets Heroku's
//! `collectstatic` after the install ([`django`]). The venv is the release's dependency
//! environment: its `bin` goes first on the processes' `PATH` and `VIRTUAL_ENV` points at it.

pub mod django;
pub mod version;
pub mod wsgi;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use piku_model::EnvMap;

use crate::buildlog::BuildLog;
use crate::error::{Context, DeployError};
use crate::runtime::build::{BuildCtx, Built, BuiltRelease, RuntimeEnv, find_program};
use crate::runtime::deps::Deps;
use wsgi::Server;

/// The name recorded in `release.json`, whatever the tool.
pub const NAME: &str = "python";

/// How a Python project's dependencies are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `requirements.txt`: a venv and pip.
    Pip,
    /// `pyproject.toml` with poetry.
    Poetry,
    /// `pyproject.toml` with uv.
    Uv,
}

/// Why a Python project cannot be built here.
pub const NO_PYPROJECT_TOOL: &str = "pyproject.toml needs uv or poetry to install its \
     dependencies; install one (Debian: python3-poetry) or add a requirements.txt";

/// Which tool installs the checkout's dependencies; `None` when it is no Python project;
/// `Some(Err)` for a `pyproject.toml` with neither poetry nor uv on `path`.
pub fn detect(src: &Path, path: &OsStr) -> Option<Result<Tool, &'static str>> {
    let has = |name: &str| src.join(name).exists();
    if has("requirements.txt") {
        return Some(Ok(Tool::Pip));
    }
    if !has("pyproject.toml") {
        return None;
    }
    let poetry = find_program("poetry", path).is_some();
    let uv = find_program("uv", path).is_some();
    Some(match (poetry, uv) {
        // The lock file says which tool the project uses; else piku's order.
        (true, true) if has("uv.lock") && !has("poetry.lock") => Ok(Tool::Uv),
        (true, _) => Ok(Tool::Poetry),
        (false, true) => Ok(Tool::Uv),
        (false, false) => Err(NO_PYPROJECT_TOOL),
    })
}

impl Tool {
    /// piku's `-----> <X> app detected.` wording.
    pub fn label(self) -> &'static str {
        match self {
            Tool::Pip => "Python",
            Tool::Poetry => "Python (poetry)",
            Tool::Uv => "Python (uv)",
        }
    }

    /// Programs the build runs, each with the Debian package(s) that provide it.
    pub fn toolchain(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Tool::Pip => &[("python3", "python3 python3-venv")],
            Tool::Poetry => &[
                ("python3", "python3 python3-venv"),
                ("poetry", "python3-poetry"),
            ],
            Tool::Uv => &[("uv", "uv, https://docs.astral.sh/uv/ or `pip install uv`")],
        }
    }
}

/// The venv's `bin` first on `PATH`.
pub fn env(release: &BuiltRelease) -> RuntimeEnv {
    RuntimeEnv {
        path: release.deps.map(|d| d.join("bin")).into_iter().collect(),
        vars: EnvMap::new(),
    }
}

/// Fills (or reuses) the venv for the checkout's dependencies and the WSGI server.
pub fn build(tool: Tool, ctx: &BuildCtx, log: &mut BuildLog) -> Result<Built, DeployError> {
    let wanted = version::wanted(ctx.env, ctx.src)?;
    let deps = match tool {
        Tool::Pip | Tool::Poetry => {
            let (python, why) = version::interpreter(wanted.as_ref(), ctx.path());
            if let Some(why) = why {
                log.step(why);
            }
            if find_program(&python, ctx.path()).is_none() {
                return Err(DeployError::refused(format!(
                    "Python app needs '{python}', which is not installed on the server \
                     (Debian/Ubuntu: apt-get install python3 python3-venv)"
                )));
            }
            if tool == Tool::Pip {
                pip_install(ctx, &python, log)?
            } else {
                poetry_install(ctx, &python, log)?
            }
        }
        Tool::Uv => uv_sync(ctx, wanted.as_ref(), log)?,
    };
    let server = match ctx.wsgi {
        Some(server) if !deps.ready => {
            install_wsgi_server(tool, server, ctx, &deps.dir, log)?;
            Some(server)
        }
        other => other,
    };
    deps.mark_ready()?;
    django::collectstatic(ctx, &deps.dir, log)?;
    Ok(Built {
        deps: Some(deps.name),
        wsgi_server: server,
    })
}

/// The WSGI server's name as part of a dependency key: a venv built for uWSGI is not one
/// built for granian.
fn server_key(ctx: &BuildCtx) -> &'static str {
    ctx.wsgi.map(Server::name).unwrap_or("")
}

fn pip_install(ctx: &BuildCtx, python: &str, log: &mut BuildLog) -> Result<Deps, DeployError> {
    let requirements = ctx.read_manifest("requirements.txt")?;
    let version = ctx.version_of(python)?;
    let pinned: &[u8] = if requirements_use_source(&String::from_utf8_lossy(&requirements)) {
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
            server_key(ctx).as_bytes(),
            pinned,
        ],
    )?;
    if deps.ready {
        log.step("Reusing the virtualenv (requirements.txt and Python unchanged)");
        return Ok(deps);
    }
    create_venv(ctx, python, &version, &deps.dir, log)?;
    log.step(format!("Running pip for '{}'", ctx.app));
    let mut cmd = pip(ctx, &deps.dir);
    cmd.args(["-r", "requirements.txt"]);
    // One pip run for both: each pip start costs a second or two. If the requirements pin
    // the server, pip merges the two requirements.
    if let Some(server) = ctx.wsgi {
        log.step(format!(
            "Adding {} to serve the 'wsgi:' entry",
            server.name()
        ));
        cmd.arg(server.package());
    }
    log.run(cmd, "pip install -r requirements.txt")?;
    Ok(deps)
}

fn poetry_install(ctx: &BuildCtx, python: &str, log: &mut BuildLog) -> Result<Deps, DeployError> {
    let version = ctx.version_of(python)?;
    let deps = Deps::open(
        ctx,
        "poetry",
        &[
            &ctx.read_manifest("pyproject.toml")?,
            &ctx.read_manifest("poetry.lock")?,
            version.as_bytes(),
            server_key(ctx).as_bytes(),
        ],
    )?;
    if deps.ready {
        log.step("Reusing the virtualenv (pyproject.toml, poetry.lock and Python unchanged)");
        return Ok(deps);
    }
    create_venv(ctx, python, &version, &deps.dir, log)?;
    log.step(format!("Running poetry install for '{}'", ctx.app));
    let mut cmd = ctx.command("poetry", ctx.src);
    cmd.args(["install", "--no-root", "--no-interaction"])
        .env("VIRTUAL_ENV", &deps.dir)
        .env("POETRY_VIRTUALENVS_CREATE", "false")
        .env("PATH", ctx.path_with(&deps.dir.join("bin")));
    log.run(cmd, "poetry install")?;
    Ok(deps)
}

fn uv_sync(
    ctx: &BuildCtx,
    wanted: Option<&version::Wanted>,
    log: &mut BuildLog,
) -> Result<Deps, DeployError> {
    let python = uv_python(ctx, wanted, log);
    let deps = Deps::open(
        ctx,
        "uv",
        &[
            &ctx.read_manifest("pyproject.toml")?,
            &ctx.read_manifest("uv.lock")?,
            python.as_deref().unwrap_or("").as_bytes(),
            server_key(ctx).as_bytes(),
        ],
    )?;
    if deps.ready {
        log.step("Reusing the virtualenv (pyproject.toml and uv.lock unchanged)");
        return Ok(deps);
    }
    log.step(format!("Running uv sync for '{}'", ctx.app));
    let mut cmd = ctx.command("uv", ctx.src);
    // The project itself runs from the checkout; only its dependencies go in the shared
    // environment, so it stays valid for the next commit.
    cmd.args(["sync", "--no-install-project"])
        .env("UV_PROJECT_ENVIRONMENT", &deps.dir)
        .env("UV_CACHE_DIR", ctx.shared_cache("uv"));
    if !ctx.env.contains_key("UV_PYTHON_PREFERENCE") {
        cmd.env("UV_PYTHON_PREFERENCE", "managed");
    }
    if let Some(python) = &python {
        cmd.args(["--python", python]);
    }
    log.run(cmd, "uv sync")?;
    Ok(deps)
}

/// What `uv sync --python` gets: the version the app asks for when uv finds it on the server
/// (uv reads `.python-version` itself, but not `runtime.txt`, and would try to download a
/// missing one), else the default interpreter, said in one line. `None`: the app asks for
/// nothing and uv picks.
fn uv_python(
    ctx: &BuildCtx,
    wanted: Option<&version::Wanted>,
    log: &mut BuildLog,
) -> Option<String> {
    let wanted = wanted?;
    let mut find = ctx.command("uv", ctx.src);
    find.args(["python", "find", "--no-python-downloads", &wanted.version])
        .stdin(std::process::Stdio::null());
    if !ctx.env.contains_key("UV_PYTHON_PREFERENCE") {
        find.env("UV_PYTHON_PREFERENCE", "managed");
    }
    match find.output() {
        Ok(out) if out.status.success() => Some(wanted.version.clone()),
        _ => {
            log.step(format!(
                "Python {} (from {}) is not installed on the server (uv python find found \
                 none); using {}",
                wanted.version,
                wanted.source,
                version::DEFAULT
            ));
            Some(version::DEFAULT.to_owned())
        }
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

fn create_venv(
    ctx: &BuildCtx,
    python: &str,
    version: &str,
    dir: &Path,
    log: &mut BuildLog,
) -> Result<(), DeployError> {
    log.step(format!(
        "Creating a virtualenv for '{}' ({version})",
        ctx.app
    ));
    // virtualenv (what piku uses) seeds pip from a cache in well under a second; the
    // standard library's venv runs ensurepip, which takes several.
    if find_program("virtualenv", ctx.path()).is_some() {
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
    tool: Tool,
    server: Server,
    ctx: &BuildCtx,
    venv: &Path,
    log: &mut BuildLog,
) -> Result<(), DeployError> {
    if venv.join("bin").join(server.executable()).is_file() {
        return Ok(());
    }
    log.step(format!(
        "Installing {} to serve the 'wsgi:' entry",
        server.name()
    ));
    let cmd = match tool {
        Tool::Uv => {
            let mut cmd = ctx.command("uv", ctx.src);
            cmd.args(["pip", "install", "--python"])
                .arg(venv.join("bin/python"))
                .arg(server.package())
                .env("UV_CACHE_DIR", ctx.shared_cache("uv"));
            cmd
        }
        Tool::Pip | Tool::Poetry => {
            let mut cmd = pip(ctx, venv);
            cmd.arg(server.package());
            cmd
        }
    };
    log.run(cmd, &format!("installing {}", server.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect_in(files: &[&str], path: &str) -> Option<Result<Tool, &'static str>> {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        detect(dir.path(), OsStr::new(path))
    }

    #[test]
    fn requirements_mean_pip_and_a_bare_pyproject_names_what_to_install() {
        assert_eq!(
            detect_in(&["requirements.txt", "pyproject.toml"], ""),
            Some(Ok(Tool::Pip))
        );
        assert_eq!(detect_in(&["package.json"], ""), None);
        let err = detect_in(&["pyproject.toml"], "/nonexistent")
            .unwrap()
            .unwrap_err();
        assert!(err.contains("python3-poetry"), "{err}");
    }

    #[test]
    fn requirements_that_install_the_checkout_are_recognised() {
        assert!(requirements_use_source("flask\n-e .\n"));
        assert!(requirements_use_source("./vendored/pkg\n"));
        assert!(!requirements_use_source("flask==3.0\n# -e .\n"));
    }

    #[test]
    fn the_venv_bin_goes_first_on_path() {
        let built = BuiltRelease {
            deps: Some(Path::new("/r/envs/blog/deps/python-1")),
            bin: Path::new("/r/releases/blog/v1/bin"),
        };
        assert_eq!(
            env(&built).path,
            [Path::new("/r/envs/blog/deps/python-1/bin")]
        );
    }
}
