//! Heroku's Django step: `manage.py collectstatic --noinput` after the dependencies are
//! installed, on every deploy, so storages that need a manifest (whitenoise's
//! `CompressedManifestStaticFilesStorage`, Django's `ManifestStaticFilesStorage`) have one in
//! the release that serves.
//!
//! As Heroku does: only for a `manage.py` at the top of the checkout whose `help
//! collectstatic` works (Django installed, `django.contrib.staticfiles` in `INSTALLED_APPS`);
//! skipped when `DISABLE_COLLECTSTATIC` is set to anything but `0`; a failing collectstatic
//! fails the push with its own output. It runs in the release's checkout with the app's
//! environment, so `STATIC_ROOT` lands in the release and a rollback keeps its own files.

use std::path::Path;
use std::process::Stdio;

use crate::buildlog::BuildLog;
use crate::error::{Context, DeployError};
use crate::runtime::build::BuildCtx;

/// Runs collectstatic for a Django app using the interpreter of `venv`; a no-op for any other
/// app.
pub fn collectstatic(ctx: &BuildCtx, venv: &Path, log: &mut BuildLog) -> Result<(), DeployError> {
    if !ctx.src.join("manage.py").is_file() {
        return Ok(());
    }
    if disabled(ctx.env.get("DISABLE_COLLECTSTATIC").map(String::as_str)) {
        log.step("DISABLE_COLLECTSTATIC is set: not running manage.py collectstatic");
        return Ok(());
    }
    let python = venv.join("bin/python");
    let mut probe = manage(ctx, venv, &python);
    probe
        .args(["help", "collectstatic"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    // Not a Django app with staticfiles (or one whose settings do not load): nothing to
    // collect, as on Heroku; the app's own start shows a settings error.
    if !probe.status().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    log.step("Running manage.py collectstatic --noinput");
    let mut cmd = manage(ctx, venv, &python);
    cmd.args(["collectstatic", "--noinput"]);
    log.run(cmd, "manage.py collectstatic").context(
        "the Django static files were not collected (DISABLE_COLLECTSTATIC=1 skips this step)",
    )
}

/// `python manage.py …` in the checkout with the app's environment and the venv first.
fn manage(ctx: &BuildCtx, venv: &Path, python: &Path) -> std::process::Command {
    let mut cmd = ctx.command(python, ctx.src);
    cmd.arg("manage.py")
        .env("VIRTUAL_ENV", venv)
        .env("PATH", ctx.path_with(&venv.join("bin")))
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

/// Heroku skips on any value; `0` and the empty string read as "not set" here, so
/// `config:set DISABLE_COLLECTSTATIC=0` turns the step back on.
fn disabled(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v.trim(), "" | "0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_value_but_zero_or_empty_disables() {
        assert!(!disabled(None));
        assert!(!disabled(Some("")));
        assert!(!disabled(Some("0")));
        assert!(disabled(Some("1")));
        assert!(disabled(Some("true")));
    }
}
