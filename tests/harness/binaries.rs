//! Finding (and building, once per test process) the `piku` and `piku-supervisor` binaries
//! under test.
//!
//! The test executable lives in `<target>/<profile>/deps/`, so the binaries of the same build
//! are two directories up. Before the first use we run `cargo build --workspace --bins` into
//! that same target dir, so `cargo test -p piku-e2e` alone never tests stale binaries. It is
//! the very command `scripts/test-all` runs before `cargo test`, so there it is a no-op (a
//! narrower `-p` build would unify features differently and rebuild the shared deps); only
//! when that fails (another crate mid-edit) do we build the two packages alone.
//! `PIKU_E2E_BIN_DIR` points at prebuilt binaries instead (no build).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::run_with_timeout;

/// Paths of the two programs under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub piku: PathBuf,
    pub supervisor: PathBuf,
}

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Builds (once) and returns the binaries; panics with cargo's output if the build fails.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| match locate() {
        Ok(b) => b,
        Err(e) => panic!("e2e harness: cannot get the binaries under test: {e}"),
    })
}

fn locate() -> Result<Binaries, String> {
    if let Some(dir) = std::env::var_os("PIKU_E2E_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return check(Binaries {
            piku: dir.join("piku"),
            supervisor: dir.join("piku-supervisor"),
        });
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // <target>/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("no target dir above {}", profile_dir.display()))?;
    // The workspace build first (a no-op after test-all's); if some other crate does not
    // build, the two binaries under test alone (clippy and the other suites report the rest).
    let mut failures = Vec::new();
    for args in [
        &["build", "--workspace", "--bins"][..],
        &["build", "-p", "piku-cli", "-p", "piku-supervisor"][..],
    ] {
        let run = cargo_build(profile_dir, target_dir, args);
        if run.success() {
            failures.clear();
            break;
        }
        failures.push(run.to_string());
    }
    if !failures.is_empty() {
        return Err(format!(
            "building the binaries failed: {}",
            failures.join("\n")
        ));
    }
    check(Binaries {
        piku: profile_dir.join("piku"),
        supervisor: profile_dir.join("piku-supervisor"),
    })
}

fn cargo_build(profile_dir: &Path, target_dir: &Path, args: &[&str]) -> crate::process::Run {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .env("CARGO_TARGET_DIR", target_dir)
        .args(args);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    run_with_timeout(cmd, None, Duration::from_secs(900))
}

fn check(b: Binaries) -> Result<Binaries, String> {
    for p in [&b.piku, &b.supervisor] {
        if !p.is_file() {
            return Err(format!("{} does not exist", p.display()));
        }
    }
    Ok(b)
}
