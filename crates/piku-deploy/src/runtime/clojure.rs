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
            Tool::Cli => &[("java", "default-jdk"), ("clojure", "clojure")],
            Tool::Leiningen => &[("java", "default-jdk"), ("lein", "leiningen")],
        }
    }
}

pub fn build(tool: Tool, ctx: &BuildCtx, log: &mut BuildLog) -> Result<Built, DeployError> {
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
