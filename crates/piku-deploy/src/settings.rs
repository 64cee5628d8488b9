//! The deploy's own settings, read from the app's merged environment: how numbers and booleans
//! are read (a bad value is a warning and the default, as piku did), and the supervisor knobs
//! that ride in the app's spec (`PIKU_STOP_GRACE`, `UWSGI_LOG_MAXSIZE`), plus
//! `PIKU_KEEP_RELEASES`.

use piku_model::EnvMap;
use piku_proto::AppSettings;

/// Successful releases kept for rollback when `PIKU_KEEP_RELEASES` is unset.
pub const DEFAULT_KEEP_RELEASES: usize = 5;

/// piku's truthiness for settings: `1`, `true`, `yes`, `on` (any case).
pub fn is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// A numeric setting, or `default` with a warning when it is not a number.
pub fn number<T: std::str::FromStr + Copy + std::fmt::Display>(
    env: &EnvMap,
    key: &str,
    default: T,
    warnings: &mut Vec<String>,
) -> T {
    match env.get(key) {
        None => default,
        Some(text) => text.trim().parse().unwrap_or_else(|_| {
            warnings.push(format!(
                "Warning: {key}='{text}' is not a number, using {default}"
            ));
            default
        }),
    }
}

/// The supervisor knobs: `PIKU_STOP_GRACE` (seconds) and `UWSGI_LOG_MAXSIZE` (bytes).
pub fn app_settings(env: &EnvMap, warnings: &mut Vec<String>) -> AppSettings {
    let defaults = AppSettings::default();
    let grace_secs = number(
        env,
        "PIKU_STOP_GRACE",
        defaults.stop_grace_ms as f64 / 1000.0,
        warnings,
    );
    AppSettings {
        stop_grace_ms: (grace_secs.max(0.0) * 1000.0) as u64,
        log_max_bytes: number(env, "UWSGI_LOG_MAXSIZE", defaults.log_max_bytes, warnings),
        log_backups: defaults.log_backups,
        front: None,
        limits: defaults.limits,
    }
}

/// `PIKU_KEEP_RELEASES`, default 5, at least 1.
pub fn keep_releases(env: &EnvMap, warnings: &mut Vec<String>) -> usize {
    number(env, "PIKU_KEEP_RELEASES", DEFAULT_KEEP_RELEASES, warnings).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_grace_and_log_size_and_warn_on_garbage() {
        let mut warnings = Vec::new();
        let env = EnvMap::from([
            ("PIKU_STOP_GRACE".into(), "2.5".into()),
            ("UWSGI_LOG_MAXSIZE".into(), "lots".into()),
        ]);
        let s = app_settings(&env, &mut warnings);
        assert_eq!(s.stop_grace_ms, 2500);
        assert_eq!(s.log_max_bytes, AppSettings::default().log_max_bytes);
        assert_eq!(warnings.len(), 1);
        assert_eq!(keep_releases(&EnvMap::new(), &mut warnings), 5);
        assert!(is_true(Some(&"Yes".to_owned())));
        assert!(!is_true(Some(&"0".to_owned())));
    }
}
