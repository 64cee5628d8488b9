//! Java: Maven (`pom.xml`, `mvn -B package`) or Gradle (`build.gradle[.kts]`, the repo's
//! `gradlew` wrapper if it has one, else `gradle build`). The build products stay in the
//! checkout; the Procfile runs them (`web: java -jar target/app.jar`).

use std::path::Path;

use crate::buildlog::BuildLog;
use crate::error::DeployError;
use crate::runtime::build::{BuildCtx, Built, find_program};

/// The Java build tools piku knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Maven,
    Gradle,
}

/// Maven first, as piku checks `pom.xml` before `build.gradle`.
pub fn detect(src: &Path) -> Option<Tool> {
    let has = |name: &str| src.join(name).exists();
    if has("pom.xml") {
        Some(Tool::Maven)
    } else if has("build.gradle") || has("build.gradle.kts") {
        Some(Tool::Gradle)
    } else {
        None
    }
}

impl Tool {
    /// The name recorded in `release.json`.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Maven => "maven",
            Tool::Gradle => "gradle",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Tool::Maven => "Java Maven",
            Tool::Gradle => "Java Gradle",
        }
    }

    /// Programs the build needs up front (Gradle may bring its own wrapper).
    pub fn toolchain(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Tool::Maven => &[("java", "default-jdk"), ("mvn", "maven")],
            Tool::Gradle => &[("java", "default-jdk")],
        }
    }
}

pub fn build(tool: Tool, ctx: &BuildCtx, log: &mut BuildLog) -> Result<Built, DeployError> {
    match tool {
        Tool::Maven => {
            log.step(format!("Running mvn package for '{}'", ctx.app));
            let mut cmd = ctx.command("mvn", ctx.src);
            cmd.args(["-B", "package"]);
            log.run(cmd, "mvn package")?;
        }
        Tool::Gradle => {
            let wrapper = ctx.src.join("gradlew");
            let program = if wrapper.is_file() {
                wrapper.to_string_lossy().into_owned()
            } else if find_program("gradle", ctx.path()).is_some() {
                "gradle".to_owned()
            } else {
                return Err(DeployError::refused(
                    "Java Gradle app needs 'gradle' (or a gradlew wrapper in the repo), which \
                     is not installed on the server (Debian/Ubuntu: apt-get install gradle)",
                ));
            };
            log.step(format!("Running gradle build for '{}'", ctx.app));
            let mut cmd = ctx.command(&program, ctx.src);
            cmd.args(["build", "--no-daemon"]);
            log.run(cmd, "gradle build")?;
        }
    }
    Ok(Built::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maven_wins_over_gradle() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect(dir.path()), None);
        std::fs::write(dir.path().join("build.gradle.kts"), "").unwrap();
        assert_eq!(detect(dir.path()), Some(Tool::Gradle));
        std::fs::write(dir.path().join("pom.xml"), "").unwrap();
        assert_eq!(detect(dir.path()), Some(Tool::Maven));
    }
}
