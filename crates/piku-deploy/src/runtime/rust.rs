//! Rust: a `Cargo.toml` (piku also wanted `rust-toolchain.toml`; we do not);
//! `cargo build --release` with the target directory inside the checkout.

use std::path::Path;

use crate::buildlog::BuildLog;
use crate::error::DeployError;
use crate::runtime::build::{BuildCtx, Built};

pub const NAME: &str = "rust";
pub const LABEL: &str = "Rust";
pub const TOOLCHAIN: &[(&str, &str)] = &[("cargo", "cargo")];

pub fn detect(src: &Path) -> bool {
    src.join("Cargo.toml").exists()
}

pub fn build(ctx: &BuildCtx, log: &mut BuildLog) -> Result<Built, DeployError> {
    log.step(format!("Running cargo build --release for '{}'", ctx.app));
    let mut cmd = ctx.command("cargo", ctx.src);
    cmd.args(["build", "--release"])
        .env("CARGO_TARGET_DIR", ctx.src.join("target"));
    log.run(cmd, "cargo build")?;
    Ok(Built::default())
}
