//! Go: `go.mod`, `Godeps` or `*.go` files at the top; `go build -o <release>/bin/ ./...`. The
//! binaries live in the release (outside the checkout) and go first on `PATH`, so a Procfile
//! names them bare (`web: myserver`).

use std::path::Path;

use crate::buildlog::BuildLog;
use crate::error::DeployError;
use crate::runtime::build::{BuildCtx, Built, BuiltRelease, RuntimeEnv};

pub const NAME: &str = "go";
pub const LABEL: &str = "Go";
pub const TOOLCHAIN: &[(&str, &str)] = &[("go", "golang")];

pub fn detect(src: &Path) -> bool {
    src.join("go.mod").exists() || src.join("Godeps").exists() || has_go_files(src)
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

pub fn build(ctx: &BuildCtx, log: &mut BuildLog) -> Result<Built, DeployError> {
    let mut out = ctx.release_bin.as_os_str().to_owned();
    // A trailing slash makes `go build -o` put every main package's binary in the directory.
    out.push("/");
    log.step(format!("Running go build for '{}'", ctx.app));
    let mut cmd = ctx.command("go", ctx.src);
    cmd.arg("build").arg("-o").arg(out).arg("./...");
    log.run(cmd, "go build")?;
    Ok(Built::default())
}

/// The release's `bin` first on `PATH`.
pub fn env(release: &BuiltRelease) -> RuntimeEnv {
    release.bin_on_path()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_top_level_go_file_is_a_go_app_and_its_binaries_are_on_path() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!detect(dir.path()));
        std::fs::write(dir.path().join("main.go"), "package main\n").unwrap();
        assert!(detect(dir.path()));
        let built = BuiltRelease {
            deps: None,
            bin: dir.path(),
        };
        assert_eq!(env(&built).path, [dir.path()]);
    }
}
