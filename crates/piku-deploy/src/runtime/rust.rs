//! Rust: a `Cargo.toml` (piku also wanted `rust-toolchain.toml`; we do not);
//! `cargo install --path .` of the checkout into the release, so its binaries go first on
//! `PATH` (a Procfile names them bare: `web: myserver`) and stay with the release for a
//! rollback. Procfiles written for a build in the checkout (`web: ./target/release/myserver`)
//! keep working: the checkout gets `target/release/<binary>` links to them.
//!
//! The target directory is the app's build cache (`envs/<app>/cache/cargo-target`), not the
//! checkout: every release is a fresh checkout, and a target directory inside it would make
//! each redeploy compile every dependency again. Cargo's own fingerprints decide what a
//! redeploy rebuilds; its download cache is the piku user's `~/.cargo`.

use std::path::Path;

use crate::buildlog::BuildLog;
use crate::error::{DeployError, IoContext};
use crate::files;
use crate::runtime::build::{BuildCtx, Built, BuiltRelease, RuntimeEnv};

pub const NAME: &str = "rust";
pub const LABEL: &str = "Rust";
pub const TOOLCHAIN: &[(&str, &str)] = &[("cargo", "cargo")];

pub fn detect(src: &Path) -> bool {
    src.join("Cargo.toml").exists()
}

pub fn build(ctx: &BuildCtx, log: &mut BuildLog) -> Result<Built, DeployError> {
    let target = ctx.root.build_cache(ctx.app, "cargo-target");
    files::create_dir(&target)?;
    // `cargo install --root R` puts the binaries in R/bin: the release's bin.
    let release = ctx.release_bin.parent().unwrap_or(ctx.release_bin);
    log.step(format!(
        "Running cargo install (release profile) for '{}'",
        ctx.app
    ));
    let mut cmd = ctx.command("cargo", ctx.src);
    cmd.args(["install", "--path", ".", "--no-track", "--root"])
        .arg(release)
        .env("CARGO_TARGET_DIR", &target);
    // `cargo install` ignores Cargo.lock unless told: a committed lock file is what was tested.
    if ctx.src.join("Cargo.lock").is_file() {
        cmd.arg("--locked");
    }
    log.run(cmd, "cargo install")?;
    link_into_checkout(ctx)?;
    Ok(Built::default())
}

/// `target/release/<binary>` in the checkout, pointing at the release's copy, unless the
/// commit has a `target/` of its own.
fn link_into_checkout(ctx: &BuildCtx) -> Result<(), DeployError> {
    let target = ctx.src.join("target");
    if std::fs::symlink_metadata(&target).is_ok() {
        return Ok(());
    }
    let release = target.join("release");
    files::create_dir(&release)?;
    let entries = std::fs::read_dir(ctx.release_bin).cannot("list", ctx.release_bin)?;
    for entry in entries.flatten() {
        let link = release.join(entry.file_name());
        std::os::unix::fs::symlink(entry.path(), &link).cannot("link", &link)?;
    }
    Ok(())
}

/// The release's `bin` (what `cargo install` put there) first on `PATH`.
pub fn env(release: &BuiltRelease) -> RuntimeEnv {
    release.bin_on_path()
}
