//! The deploy's own settings, read from the app's merged environment: how numbers and booleans
//! are read (a bad value is a warning and the default, as piku did), and the supervisor knobs
//! that ride in the app's spec (`PIKU_STOP_GRACE`, `UWSGI_LOG_MAXSIZE`, and the resource
//! limits, which are refused when malformed), plus `PIKU_KEEP_RELEASES`.

use piku_model::{EnvMap, Limits};
use piku_proto::{AppSettings, ResourceLimits};

use crate::error::DeployError;

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
    let max_secs = piku_proto::MAX_STOP_GRACE_MS as f64 / 1000.0;
    let grace_secs = if grace_secs > max_secs {
        let text = env.get("PIKU_STOP_GRACE").map_or("", |t| t.trim());
        warnings.push(format!(
            "Warning: PIKU_STOP_GRACE={text} is more than {max_secs} s, using {max_secs}"
        ));
        max_secs
    } else {
        grace_secs
    };
    AppSettings {
        // `as` saturates and maps NaN to 0; the value is at most MAX_STOP_GRACE_MS here.
        stop_grace_ms: (grace_secs.max(0.0) * 1000.0) as u64,
        log_max_bytes: number(env, "UWSGI_LOG_MAXSIZE", defaults.log_max_bytes, warnings),
        log_backups: defaults.log_backups,
        front: None,
        limits: defaults.limits,
    }
}

/// `PIKU_MEMORY_MAX`, `PIKU_CPU_QUOTA`, `PIKU_TASKS_MAX` (piku-model's parser, as
/// `config:set` uses). Unlike the knobs above, a malformed limit refuses the deploy: a
/// limit silently dropped is one the user believes in.
pub fn limits(env: &EnvMap) -> Result<ResourceLimits, DeployError> {
    let limits = Limits::from_env(env).map_err(DeployError::refused)?;
    Ok(ResourceLimits {
        memory_max_bytes: limits.memory_max_bytes,
        cpu_quota_percent: limits.cpu_quota_percent,
        tasks_max: limits.tasks_max,
    })
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

    #[test]
    fn a_stop_grace_beyond_five_minutes_is_capped_with_a_warning() {
        for huge in ["1e30", "inf", "301"] {
            let env = EnvMap::from([("PIKU_STOP_GRACE".into(), huge.into())]);
            let mut warnings = Vec::new();
            let s = app_settings(&env, &mut warnings);
            assert_eq!(s.stop_grace_ms, 300_000, "{huge}");
            assert_eq!(warnings.len(), 1, "{huge}");
            assert_eq!(
                warnings[0],
                format!("Warning: PIKU_STOP_GRACE={huge} is more than 300 s, using 300")
            );
        }
        let env = EnvMap::from([("PIKU_STOP_GRACE".into(), "NaN".into())]);
        let mut warnings = Vec::new();
        assert_eq!(app_settings(&env, &mut warnings).stop_grace_ms, 0);
    }

    #[test]
    fn limits_are_read_and_a_malformed_one_refuses() {
        let env = EnvMap::from([
            ("PIKU_MEMORY_MAX".into(), "256M".into()),
            ("PIKU_CPU_QUOTA".into(), "50%".into()),
        ]);
        let limits = limits(&env).unwrap();
        assert_eq!(limits.memory_max_bytes, Some(256 << 20));
        assert_eq!(limits.cpu_quota_percent, Some(50));
        assert_eq!(limits.tasks_max, None);
        let env = EnvMap::from([("PIKU_TASKS_MAX".into(), "lots".into())]);
        let err = super::limits(&env).unwrap_err().to_string();
        assert!(err.starts_with("PIKU_TASKS_MAX='lots' must be"), "{err}");
    }
}
