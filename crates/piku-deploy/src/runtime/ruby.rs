//! Ruby: a `Gemfile`; `bundle install` into a shared bundle keyed by `Gemfile`,
//! `Gemfile.lock` and Ruby's version. The processes find it through `BUNDLE_PATH`.

use std::path::Path;

use crate::buildlog::BuildLog;
use crate::error::DeployError;
use crate::runtime::build::{BuildCtx, Built, BuiltRelease, RuntimeEnv};
use crate::runtime::deps::Deps;

pub const NAME: &str = "ruby";
pub const LABEL: &str = "Ruby";
pub const TOOLCHAIN: &[(&str, &str)] = &[("ruby", "ruby"), ("bundle", "ruby-bundler")];

pub fn detect(src: &Path) -> bool {
    src.join("Gemfile").exists()
}

pub fn build(ctx: &BuildCtx, log: &mut BuildLog) -> Result<Built, DeployError> {
    let version = ctx.version_of("ruby")?;
    let deps = Deps::open(
        ctx,
        "ruby",
        &[
            &ctx.read_manifest("Gemfile")?,
            &ctx.read_manifest("Gemfile.lock")?,
            version.as_bytes(),
        ],
    )?;
    if deps.ready {
        log.step("Reusing the bundle (Gemfile, Gemfile.lock and Ruby unchanged)");
    } else {
        log.step(format!("Running bundle install for '{}'", ctx.app));
        let mut cmd = ctx.command("bundle", ctx.src);
        cmd.arg("install").env("BUNDLE_PATH", &deps.dir);
        log.run(cmd, "bundle install")?;
        deps.mark_ready()?;
    }
    Ok(Built {
        deps: Some(deps.name),
        wsgi_server: None,
    })
}

/// `BUNDLE_PATH` at the bundle, its `bin` on `PATH`.
pub fn env(release: &BuiltRelease) -> RuntimeEnv {
    let mut env = RuntimeEnv::default();
    if let Some(deps) = release.deps {
        env.path.push(deps.join("bin"));
        env.vars
            .insert("BUNDLE_PATH".into(), deps.to_string_lossy().into_owned());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_find_the_bundle() {
        let built = BuiltRelease {
            deps: Some(Path::new("/r/envs/blog/deps/ruby-1")),
            bin: Path::new("/unused"),
        };
        assert_eq!(env(&built).vars["BUNDLE_PATH"], "/r/envs/blog/deps/ruby-1");
        assert_eq!(
            env(&BuiltRelease {
                deps: None,
                bin: Path::new("/x")
            }),
            RuntimeEnv::default()
        );
    }
}
