//! `config`, `config:get`, `config:set`, `config:unset`, `config:live`.
//!
//! `envs/<app>/ENV` holds only the `config:set` overrides (as in piku); `LIVE_ENV` is the merged
//! environment of the live release, written by the deploy. Unlike piku, a change does not
//! rebuild: the file is written first, then [`releases::reapply`] restarts the processes with the
//! new environment. If the app has no live release yet the setting waits for its first deploy;
//! if the supervisor is down the setting is kept and the error says it was not applied.

use anyhow::{Context, bail};
use piku_deploy::app_config::{read_overrides, write_overrides};
use piku_deploy::files::read_optional;
use piku_deploy::releases;
use piku_model::{AppName, EnvMap, check_env_key, front, limits};

use super::Ctx;
use super::args::{Args, is_deployed};
use crate::output;

pub fn show(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("config", words);
    let app = args.existing_app(ctx)?;
    args.finish()?;
    match read_optional(&ctx.root.env_file(&app))? {
        Some(text) => output::print_text(text.trim()),
        None if !is_deployed(&ctx.root, &app) => {
            output::warn(format_args!("app '{app}' not deployed, no config found."))
        }
        // Deployed and never configured: there are simply no overrides.
        None => {}
    }
    Ok(0)
}

/// Prints the override's bare value; exits 1 without output when the key is not set (like
/// `git config --get`), so scripts can tell "empty" from "absent".
pub fn get(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("config:get", words);
    let app = args.existing_app(ctx)?;
    let key = args.required("KEY")?;
    args.finish()?;
    let Some(env) = read_overrides(&ctx.root, &app)? else {
        output::warn(format_args!("no active configuration for '{app}'"));
        return Ok(1);
    };
    match env.get(&key) {
        Some(value) => {
            output::say(value);
            Ok(0)
        }
        None => Ok(1),
    }
}

pub fn live(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("config:live", words);
    let app = args.existing_app(ctx)?;
    args.finish()?;
    match read_optional(&ctx.root.live_env_file(&app))? {
        Some(text) => output::print_text(text.trim()),
        None => output::warn(format_args!("app '{app}' not deployed, no config found.")),
    }
    Ok(0)
}

pub fn set(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("config:set", words);
    let app = args.existing_app(ctx)?;
    let settings = args.at_least_one("KEY=VALUE")?;
    // Every setting is checked before anything is written: all or nothing.
    let parsed = settings
        .iter()
        .map(|s| parse_setting(s))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let before = read_overrides(&ctx.root, &app)?;
    let mut env = before.clone().unwrap_or_default();
    for (key, value) in parsed {
        output::say(format_args!("Setting {key}={value} for '{app}'"));
        env.insert(key, value);
    }
    write_overrides(&ctx.root, &app, &env)?;
    apply(ctx, &app, before)?;
    Ok(0)
}

pub fn unset(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("config:unset", words);
    let app = args.existing_app(ctx)?;
    let keys = args.at_least_one("KEY")?;
    let before = read_overrides(&ctx.root, &app)?;
    let mut env: EnvMap = before.clone().unwrap_or_default();
    let mut changed = false;
    for key in &keys {
        if env.remove(key).is_some() {
            output::say(format_args!("Unsetting {key} for '{app}'"));
            changed = true;
        }
    }
    if changed {
        write_overrides(&ctx.root, &app, &env)?;
        apply(ctx, &app, before)?;
    }
    Ok(0)
}

/// `KEY=value` → (key, value), both trimmed as piku did; errors in piku's words.
fn parse_setting(setting: &str) -> anyhow::Result<(String, String)> {
    let Some((key, value)) = setting.split_once('=') else {
        bail!("malformed setting '{}'", setting.escape_debug());
    };
    let (key, value) = (key.trim(), value.trim());
    check_env_key(key)
        .with_context(|| format!("malformed setting '{}'", setting.escape_debug()))?;
    // The ENV file is one `K=V` per line: a line break would smuggle in another key.
    if value.contains(['\n', '\r', '\0']) {
        bail!("the value of '{key}' must be a single line");
    }
    // A limit or front setting the next deploy would refuse is refused now, before anything
    // is saved.
    limits::check_setting(key, value)?;
    front::check_setting(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Makes the running processes see the changed overrides, without a rebuild. When the
/// change is refused (by the deploy's checks, nginx or the supervisor), the overrides go
/// back to `before`, so what is saved is always what runs; when it merely could not be
/// applied (the supervisor is down), it is kept for the next start.
fn apply(ctx: &Ctx, app: &AppName, before: Option<EnvMap>) -> anyhow::Result<()> {
    if !is_deployed(&ctx.root, app) {
        output::step(format_args!(
            "'{app}' has no live release yet: the config applies at its next deploy"
        ));
        return Ok(());
    }
    match releases::reapply(&ctx.root, app) {
        Ok(()) => Ok(()),
        Err(e) if e.is_refusal() => {
            restore_overrides(ctx, app, before)?;
            Err(anyhow::Error::new(e).context("the config was refused and is unchanged"))
        }
        Err(e) => Err(anyhow::Error::new(e)
            .context("the config is saved but the running app was not updated")),
    }
}

fn restore_overrides(ctx: &Ctx, app: &AppName, before: Option<EnvMap>) -> anyhow::Result<()> {
    match before {
        Some(env) => write_overrides(&ctx.root, app, &env)?,
        None => {
            let path = ctx.root.env_file(app);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove '{}'", path.display()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_setting;

    #[test]
    fn settings_split_on_the_first_equals_sign() {
        assert_eq!(
            parse_setting("URL=postgres://u:p@h/db?x=1").unwrap(),
            ("URL".into(), "postgres://u:p@h/db?x=1".into())
        );
        assert_eq!(
            parse_setting("EMPTY=").unwrap(),
            ("EMPTY".into(), "".into())
        );
        assert_eq!(parse_setting("X=a b").unwrap(), ("X".into(), "a b".into()));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(
            parse_setting("novalue").unwrap_err().to_string(),
            "malformed setting 'novalue'"
        );
        assert!(parse_setting("1X=y").is_err());
        assert!(parse_setting("X=a\nY=b").is_err());
    }

    #[test]
    fn malformed_limits_are_refused_in_one_line() {
        assert_eq!(
            parse_setting("PIKU_MEMORY_MAX=256M").unwrap(),
            ("PIKU_MEMORY_MAX".into(), "256M".into())
        );
        let err = parse_setting("PIKU_CPU_QUOTA=half")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("PIKU_CPU_QUOTA='half' must be a whole percentage"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        assert!(parse_setting("PIKU_TASKS_MAX=0").is_err());
    }

    #[test]
    fn bad_front_settings_are_refused_in_one_line() {
        assert_eq!(
            parse_setting("PIKU_RESPONSE_TIMEOUT=120").unwrap(),
            ("PIKU_RESPONSE_TIMEOUT".into(), "120".into())
        );
        assert!(parse_setting("NGINX_CLIENT_MAX_BODY_SIZE=100m").is_ok());
        let err = parse_setting("PIKU_RESPONSE_TIMEOUT=0")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "PIKU_RESPONSE_TIMEOUT='0' must be a whole number of seconds from 1 to 3600"
        );
        assert!(parse_setting("PIKU_KEEPALIVE_TIMEOUT=1").is_err());
        assert!(parse_setting("PIKU_HEADER_TIMEOUT=301").is_err());
        assert!(parse_setting("NGINX_CLIENT_MAX_BODY_SIZE=1.5m").is_err());
        assert!(parse_setting("PIKU_STALL_TIMEOUT=0").is_ok());
        assert!(parse_setting("PIKU_STALL_TIMEOUT=750ms").is_ok());
        let err = parse_setting("PIKU_STALL_TIMEOUT=soon")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("PIKU_STALL_TIMEOUT='soon' must be 0 (off)"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}
