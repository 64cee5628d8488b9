//! Clojure: the Clojure CLI (`deps.edn`, `clojure -T:build release`) or Leiningen
//! (`project.clj`, `lein uberjar`). The jar stays in the checkout for the Procfile to run.

use std::path::Path;

use crate::buildlog::BuildLog;
use crate::error::DeployError;
use crate::runtime::build::{BuildCtx, Built};

/// The Clojure build tools piku knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Cli,
    Leiningen,
}

/// The CLI first, as piku checks `deps.edn` before `project.clj`.
pub fn detect(src: &Path) -> Option<Tool> {
    if src.join("deps.edn").exists() {
        Some(Tool::Cli)
    } else if src.join("project.clj").exists() {
        Some(Tool::Leiningen)
    } else {
        None
    }
}

impl Tool {
    /// The name recorded in `release.json`.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Cli => "clojure",
            Tool::Leiningen => "leiningen",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Tool::Cli => "Clojure CLI",
            Tool::Leiningen => "Clojure Lein",
        }
    }

    pub fn toolchain(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // Debian's `clojure` package is only the language (`clojure.main`), not the CLI.
            Tool::Cli => &[
                ("java", "default-jdk"),
                (
                    "clojure",
                    "the Clojure CLI, https://clojure.org/guides/install_clojure; Debian's \
                     'clojure' package is only the language",
                ),
            ],
            Tool::Leiningen => &[("java", "default-jdk"), ("lein", "leiningen")],
        }
    }
}

pub fn build(tool: Tool, ctx: &BuildCtx, log: &mut BuildLog) -> Result<Built, DeployError> {
    if tool == Tool::Cli && !is_clojure_cli(ctx) {
        return Err(DeployError::refused(
            "Clojure CLI app (deps.edn) needs the Clojure CLI, but the server's 'clojure' is \
             not it (Debian's 'clojure' package runs only clojure.main); install the CLI from \
             https://clojure.org/guides/install_clojure",
        ));
    }
    let (program, args, what) = match tool {
        Tool::Cli => ("clojure", &["-T:build", "release"][..], "clojure build"),
        Tool::Leiningen => ("lein", &["uberjar"][..], "lein uberjar"),
    };
    log.step(format!(
        "Running {program} {} for '{}'",
        args.join(" "),
        ctx.app
    ));
    let mut cmd = ctx.command(program, ctx.src);
    cmd.args(args);
    log.run(cmd, what)?;
    Ok(Built::default())
}

/// Whether the `clojure` on the build's `PATH` is the Clojure CLI: only the CLI knows
/// `-Sdescribe` (Debian's `clojure.main` wrapper takes it for a file and fails).
fn is_clojure_cli(ctx: &BuildCtx) -> bool {
    ctx.command("clojure", ctx.src)
        .arg("-Sdescribe")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_wins_over_leiningen() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect(dir.path()), None);
        std::fs::write(dir.path().join("project.clj"), "").unwrap();
        assert_eq!(detect(dir.path()), Some(Tool::Leiningen));
        std::fs::write(dir.path().join("deps.edn"), "").unwrap();
        assert_eq!(detect(dir.path()), Some(Tool::Cli));
    }
}
