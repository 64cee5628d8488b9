//! Finding the `piku` and `piku-supervisor` binaries under test.
//!
//! The test executable lives in `<target>/<profile>/deps/`, so the binaries of the same build
//! are two directories up. `cargo test --workspace` builds them there (with the same feature
//! set as the tests: dev-dependencies change feature unification, so a separate
//! `cargo build --bins` would produce, and relink, different binaries). Tests never build:
//! a build from inside a test raced the other test processes that run those binaries.
//! `PIKU_E2E_BIN_DIR` points at prebuilt binaries instead.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
    check(Binaries {
        piku: profile_dir.join("piku"),
        supervisor: profile_dir.join("piku-supervisor"),
    })
}

fn check(b: Binaries) -> Result<Binaries, String> {
    for p in [&b.piku, &b.supervisor] {
        if !p.is_file() {
            return Err(format!(
                "{} does not exist: build the workspace's test targets first \
                 (`cargo test --workspace --no-run`, as scripts/test-all does)",
                p.display()
            ));
        }
    }
    Ok(b)
}
