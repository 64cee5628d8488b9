//! What one app's nginx settings may not take from another: a host name another app serves
//! (`NGINX_SERVER_NAME`), another app's cache directory (`NGINX_CACHE_PATH`). Each passes
//! the app's own `nginx -t`, yet the first silently steals the other app's traffic and the
//! second breaks every later nginx reload; both are refused here, naming the other app.
//! The other apps are known by their live environment (`envs/<app>/LIVE_ENV`).

use std::path::{Path, PathBuf};

use piku_model::{AppName, EnvMap, PikuRoot};
use piku_nginx::NginxSettings;

use crate::app_config;
use crate::error::DeployError;

/// Every problem found, one line each; `Ok` when `nginx` takes nothing of another app's.
pub fn check(root: &PikuRoot, nginx: &NginxSettings) -> Result<(), DeployError> {
    let mut problems = Vec::new();
    for (other, env) in other_apps(root, &nginx.app) {
        for name in server_names(&env) {
            if name != "_"
                && let Some(ours) = nginx
                    .server_names
                    .iter()
                    .find(|n| n.eq_ignore_ascii_case(&name))
            {
                problems.push(format!(
                    "NGINX_SERVER_NAME: '{ours}' is already served by app {other}"
                ));
            }
        }
        if let Some(cache) = &nginx.cache
            && overlaps(&cache.path, &cache_path(root, &other, &env))
        {
            problems.push(format!(
                "NGINX_CACHE_PATH: '{}' is the cache directory of app {other}",
                cache.path.display()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DeployError::Conflict(problems.join("; ")))
    }
}

/// The other apps with a live environment, in name order.
fn other_apps(root: &PikuRoot, app: &AppName) -> Vec<(AppName, EnvMap)> {
    let Ok(entries) = std::fs::read_dir(root.envs()) else {
        return Vec::new();
    };
    let mut apps: Vec<(AppName, EnvMap)> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<AppName>().ok())
        .filter(|other| other != app)
        .filter_map(|other| {
            let env = app_config::read_live_env(root, &other).ok().flatten()?;
            Some((other, env))
        })
        .collect();
    apps.sort_by(|a, b| a.0.cmp(&b.0));
    apps
}

fn server_names(env: &EnvMap) -> Vec<String> {
    env.get("NGINX_SERVER_NAME")
        .map(|v| {
            v.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The cache directory `other` uses or would use: its `NGINX_CACHE_PATH`, else `cache/<app>`.
fn cache_path(root: &PikuRoot, other: &AppName, env: &EnvMap) -> PathBuf {
    env.get("NGINX_CACHE_PATH")
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root.cache_dir(other))
}

/// Whether one directory is the other or inside it, symlinks resolved where they exist.
fn overlaps(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (a, b) = (resolve(a), resolve(b));
    a.starts_with(&b) || b.starts_with(&a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(root: &PikuRoot, app: &str, pairs: &[(&str, &str)]) -> NginxSettings {
        let env: EnvMap = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let app: AppName = app.parse().unwrap();
        NginxSettings::from_env(&app, root, &env, true, None)
            .unwrap()
            .unwrap()
    }

    fn live(root: &PikuRoot, app: &str, pairs: &[(&str, &str)]) {
        let env: EnvMap = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        app_config::write_live_env(root, &app.parse().unwrap(), &env).unwrap();
    }

    /// Issue 10 items 4 and 6: another app's host name or cache directory is refused,
    /// naming that app.
    #[test]
    fn another_apps_host_name_or_cache_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        live(
            &root,
            "shop",
            &[("NGINX_SERVER_NAME", "shop.example, www.shop.example")],
        );
        live(&root, "blog", &[("NGINX_SERVER_NAME", "old.blog.example")]);

        let thief = settings(
            &root,
            "blog",
            &[("NGINX_SERVER_NAME", "blog.example WWW.shop.example")],
        );
        assert_eq!(
            check(&root, &thief).unwrap_err().to_string(),
            "NGINX_SERVER_NAME: 'WWW.shop.example' is already served by app shop"
        );
        let own = settings(&root, "blog", &[("NGINX_SERVER_NAME", "blog.example")]);
        assert!(check(&root, &own).is_ok());

        let shop_cache = root.cache_dir(&"shop".parse().unwrap());
        std::fs::create_dir_all(&shop_cache).unwrap();
        let cache_thief = settings(
            &root,
            "blog",
            &[
                ("NGINX_SERVER_NAME", "blog.example"),
                ("NGINX_CACHE_PREFIXES", "/api"),
                ("NGINX_CACHE_PATH", &shop_cache.display().to_string()),
            ],
        );
        let err = check(&root, &cache_thief).unwrap_err().to_string();
        assert!(err.ends_with("is the cache directory of app shop"), "{err}");
        let own_cache = settings(
            &root,
            "blog",
            &[
                ("NGINX_SERVER_NAME", "blog.example"),
                ("NGINX_CACHE_PREFIXES", "/api"),
            ],
        );
        assert!(check(&root, &own_cache).is_ok());
    }
}
