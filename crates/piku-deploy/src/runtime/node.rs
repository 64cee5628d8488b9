//! Node: `package.json`; `npm ci` (with a lock file) or `npm install` into a shared
//! `node_modules`, keyed by the manifests and Node's version.
//!
//! The packages live in the dependency environment; the checkout gets a `node_modules`
//! symlink to them, because module resolution walks up from the script (`NODE_PATH` alone
//! does not reach ES modules). `node_modules/.bin` goes on `PATH` and `NODE_PATH` points at the
//! packages, as piku set them.
//!
//! `NODE_VERSION` (`20`, `20.11`, `20.11.1`) is honoured when the server's `node` is that
//! version; otherwise the push is refused, naming both. piku would download the version with
//! `nodeenv`; we build with what the operator installed.

use std::path::Path;

use crate::buildlog::BuildLog;
use crate::checkout::read_bytes;
use crate::error::{DeployError, IoContext};
use crate::files;
use crate::runtime::build::{BuildCtx, Built, BuiltRelease, RuntimeEnv};
use crate::runtime::deps::Deps;

pub const NAME: &str = "node";
pub const LABEL: &str = "Node";
pub const TOOLCHAIN: &[(&str, &str)] = &[("node", "nodejs"), ("npm", "npm")];

/// The manifests copied next to `node_modules`, so npm installs what the checkout asks for.
const MANIFESTS: [&str; 3] = ["package.json", "package-lock.json", "npm-shrinkwrap.json"];

pub fn detect(src: &Path) -> bool {
    src.join("package.json").exists()
}

pub fn build(ctx: &BuildCtx, log: &mut BuildLog) -> Result<Built, DeployError> {
    let lock = ctx.read_manifest("package-lock.json")?;
    let shrinkwrap = ctx.read_manifest("npm-shrinkwrap.json")?;
    let version = ctx.version_of("node")?;
    if let Some(wanted) = ctx
        .env
        .get("NODE_VERSION")
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    {
        check_version(wanted, &version)?;
        log.step(format!(
            "NODE_VERSION={wanted}: the server's Node is {version}"
        ));
    }
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
        for name in MANIFESTS {
            if let Some(manifest) = read_bytes(ctx.src, name)? {
                files::write(&deps.dir.join(name), &manifest, piku_fs::MODE_GROUP_READ)?;
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
    let link = ctx.src.join("node_modules");
    let target = deps.dir.join("node_modules");
    if target.is_dir() && std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&target, &link).cannot("link", &link)?;
    }
    Ok(Built {
        deps: Some(deps.name),
        wsgi_server: None,
    })
}

/// Whether `installed` (`node --version`: `v20.11.1`) is the `wanted` version or one of its
/// releases (`20` and `20.11` take any `20.11.x`).
fn check_version(wanted: &str, installed: &str) -> Result<(), DeployError> {
    let bare = wanted.strip_prefix('v').unwrap_or(wanted);
    let is_version = !bare.is_empty()
        && bare
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !is_version {
        return Err(DeployError::refused(format!(
            "NODE_VERSION='{wanted}' is not a Node version like 20 or 20.11.1"
        )));
    }
    let have = installed.strip_prefix('v').unwrap_or(installed);
    if have == bare || have.starts_with(&format!("{bare}.")) {
        return Ok(());
    }
    Err(DeployError::refused(format!(
        "NODE_VERSION={wanted} asks for Node {bare}, but the server's node is {installed}; \
         install Node {bare} on the server (piku builds with the 'node' on PATH) or change \
         NODE_VERSION"
    )))
}

/// The environment's `bin`, then `node_modules/.bin`, on `PATH`; `NODE_PATH` at the packages.
pub fn env(release: &BuiltRelease) -> RuntimeEnv {
    let mut env = RuntimeEnv::default();
    let Some(deps) = release.deps else {
        return env;
    };
    env.path.push(deps.join("bin"));
    let node_modules = deps.join("node_modules");
    if node_modules.is_dir() {
        env.path.push(node_modules.join(".bin"));
        env.vars.insert(
            "NODE_PATH".into(),
            node_modules.to_string_lossy().into_owned(),
        );
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_version_matches_the_installed_release_line() {
        assert!(check_version("20", "v20.20.2").is_ok());
        assert!(check_version("v20.20", "v20.20.2").is_ok());
        assert!(check_version("20.20.2", "v20.20.2").is_ok());
        assert!(check_version("2", "v20.20.2").is_err());
        let err = check_version("18", "v20.20.2").unwrap_err().to_string();
        assert!(
            err.starts_with("NODE_VERSION=18 asks for Node 18, but the server's node is v20.20.2"),
            "{err}"
        );
        let err = check_version("lts", "v20.20.2").unwrap_err().to_string();
        assert!(err.contains("not a Node version"), "{err}");
    }

    #[test]
    fn node_modules_bin_and_node_path_come_from_the_deps_dir() {
        let dir = tempfile::tempdir().unwrap();
        let deps = dir.path().join("node-1");
        std::fs::create_dir_all(deps.join("node_modules")).unwrap();
        let built = BuiltRelease {
            deps: Some(&deps),
            bin: Path::new("/unused"),
        };
        let env = env(&built);
        assert_eq!(env.path, [deps.join("bin"), deps.join("node_modules/.bin")]);
        assert_eq!(
            env.vars["NODE_PATH"],
            deps.join("node_modules").to_string_lossy()
        );
        assert!(!detect(dir.path()));
        std::fs::write(dir.path().join("package.json"), "{}").unwrap();
        assert!(detect(dir.path()));
    }
}
