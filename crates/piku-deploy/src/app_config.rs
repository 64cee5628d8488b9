//! The app's files under `envs/<app>/`, each with one reader and one writer:
//!
//! - `ENV`: the `config:set` overrides, read **literally** here (no `$VAR` expansion), so
//!   `config:set app URL='$HOME/x'` stays `$HOME/x` however often the file is rewritten;
//!   expansion happens once, when a deploy merges the layers ([`crate::env::merge`]).
//! - `LIVE_ENV`: the merged environment of the live release, exactly what its processes got.
//!   Its values are final, so it is read literally too: expanding it again would turn a `$NAME`
//!   that stayed literal at merge time into the value of a key that merely sorts earlier in the
//!   file.
//! - `SCALING`: the formation, `kind:count` lines.
//!
//! All three hold secrets or state and are written atomically, mode 0600.

use std::collections::BTreeMap;
use std::path::Path;

use piku_model::{
    AppName, EnvMap, PikuRoot, parse_env_literal, parse_scaling, render_env, render_scaling,
};

use crate::error::DeployError;
use crate::files;

/// `envs/<app>/ENV`, the `config:set` overrides, verbatim; `None` when there is none.
pub fn read_overrides(root: &PikuRoot, app: &AppName) -> Result<Option<EnvMap>, DeployError> {
    read_literal(&root.env_file(app))
}

/// Replaces `envs/<app>/ENV`.
pub fn write_overrides(root: &PikuRoot, app: &AppName, env: &EnvMap) -> Result<(), DeployError> {
    write(root, app, &root.env_file(app), &render_env(env))
}

/// `envs/<app>/LIVE_ENV`: the environment the live release's processes got; `None` before the
/// first deploy.
pub fn read_live_env(root: &PikuRoot, app: &AppName) -> Result<Option<EnvMap>, DeployError> {
    read_literal(&root.live_env_file(app))
}

/// Replaces `envs/<app>/LIVE_ENV` with the environment just handed to the supervisor.
pub fn write_live_env(root: &PikuRoot, app: &AppName, env: &EnvMap) -> Result<(), DeployError> {
    write(root, app, &root.live_env_file(app), &render_env(env))
}

/// `envs/<app>/SCALING`; `None` before the first deploy.
pub fn read_scaling(
    root: &PikuRoot,
    app: &AppName,
) -> Result<Option<BTreeMap<String, u32>>, DeployError> {
    let path = root.scaling_file(app);
    let Some(text) = files::read_optional(&path)? else {
        return Ok(None);
    };
    parse_scaling(&text)
        .map(Some)
        .map_err(|errors| DeployError::Scaling {
            path: path.display().to_string(),
            errors,
        })
}

/// Replaces `envs/<app>/SCALING`.
pub fn write_scaling(
    root: &PikuRoot,
    app: &AppName,
    formation: &BTreeMap<String, u32>,
) -> Result<(), DeployError> {
    write(
        root,
        app,
        &root.scaling_file(app),
        &render_scaling(formation),
    )
}

fn read_literal(path: &Path) -> Result<Option<EnvMap>, DeployError> {
    let Some(text) = files::read_optional(path)? else {
        return Ok(None);
    };
    parse_env_literal(&text)
        .map(Some)
        .map_err(|errors| DeployError::Env {
            what: format!("'{}' is invalid", path.display()),
            errors,
        })
}

fn write(root: &PikuRoot, app: &AppName, path: &Path, text: &str) -> Result<(), DeployError> {
    files::create_private_dir(&root.env_dir(app))?;
    files::write(path, text.as_bytes(), piku_fs::MODE_PRIVATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_env_reads_back_exactly_what_the_processes_got() {
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        let app: AppName = "blog".parse().unwrap();
        assert_eq!(read_live_env(&root, &app).unwrap(), None);
        // ZED's `$ALPHA` stayed literal when the layers were merged (ALPHA came later, from
        // config:set); ALPHA sorts first in the file, so an expanding reader would change ZED.
        let env = EnvMap::from([
            ("ALPHA".into(), "from-config".into()),
            ("NGINX_SERVER_NAME".into(), "blog.example".into()),
            ("ZED".into(), "$ALPHA/${ALPHA}".into()),
        ]);
        write_live_env(&root, &app, &env).unwrap();
        assert_eq!(read_live_env(&root, &app).unwrap(), Some(env));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.live_env_file(&app))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(root.env_dir(&app))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn an_env_dir_left_open_by_an_older_piku_is_closed_to_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        let app: AppName = "blog".parse().unwrap();
        std::fs::create_dir_all(root.env_dir(&app)).unwrap();
        std::fs::set_permissions(root.env_dir(&app), PermissionsExt::from_mode(0o755)).unwrap();
        write_scaling(&root, &app, &BTreeMap::from([("web".into(), 1)])).unwrap();
        let mode = std::fs::metadata(root.env_dir(&app))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it_and_every_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        let app: AppName = "blog".parse().unwrap();
        std::fs::create_dir_all(root.env_dir(&app)).unwrap();
        std::fs::write(root.env_file(&app), "A=1\nnope\n1X=2\n").unwrap();
        let err = read_overrides(&root, &app).unwrap_err();
        let path = root.env_file(&app).display().to_string();
        assert_eq!(
            err.lines(),
            [
                format!("'{path}' is invalid: ENV line 2: malformed setting 'nope'"),
                format!(
                    "'{path}' is invalid: ENV line 3: invalid key '1X': keys must match [A-Za-z_][A-Za-z0-9_]*"
                ),
            ]
        );
        std::fs::write(root.scaling_file(&app), "web:x\n").unwrap();
        assert!(read_scaling(&root, &app).is_err());
        write_scaling(&root, &app, &BTreeMap::from([("web".into(), 2)])).unwrap();
        assert_eq!(
            read_scaling(&root, &app).unwrap(),
            Some(BTreeMap::from([("web".into(), 2)]))
        );
    }
}
