//! The settings of an app's HTTP path that both nginx and the daemon's front must agree on:
//! `PIKU_RESPONSE_TIMEOUT` (seconds an instance may take to start answering, 1–3600, default
//! 30), `PIKU_HEADER_TIMEOUT` (seconds a client may take to send a request head, 1–300,
//! default 10), `PIKU_KEEPALIVE_TIMEOUT` (seconds an idle client connection is kept, 2–3600,
//! default 75), `NGINX_CLIENT_MAX_BODY_SIZE` (the largest request body, in nginx's size
//! syntax: `100m`, `512k`, `1g`, a number of bytes, `0` for no limit) and `PIKU_STALL_TIMEOUT`
//! (the front's stall rule: how long an instance holding 8 requests may finish none before it
//! gets no more and is replaced; `500ms` by default, whole seconds or `ms`, `0` for off — the
//! daemon's front alone reads it, nginx has no such rule).
//!
//! This is the one parser of these values: the deploy reads them from the merged env (for the
//! front's spec and for the nginx config), and `config:set` checks them before it saves
//! anything, so a value one refuses the other refuses too.
//!
//! **Who gives up first.** The front does, by design: nginx's `proxy_read_timeout` and
//! `proxy_send_timeout` are [`FrontSettings::nginx_proxy_timeout_secs`] (10 s past the longest
//! wait of the front, at least nginx's 60 s default), so a slow instance is answered with the
//! front's 504, logged with the instance and the path and counted against that instance, and
//! nginx only passes it on. The other way round for idle keep-alive connections between nginx
//! and the front: nginx's upstream `keepalive_timeout` is below the front's keep-alive timeout
//! ([`FrontSettings::nginx_upstream_keepalive_secs`]), so nginx never sends a request on a
//! connection the front is closing at that moment.

use crate::EnvMap;
use crate::problems::Problems;

pub const RESPONSE_TIMEOUT: &str = "PIKU_RESPONSE_TIMEOUT";
pub const HEADER_TIMEOUT: &str = "PIKU_HEADER_TIMEOUT";
pub const KEEPALIVE_TIMEOUT: &str = "PIKU_KEEPALIVE_TIMEOUT";
pub const CLIENT_MAX_BODY_SIZE: &str = "NGINX_CLIENT_MAX_BODY_SIZE";
pub const STALL_TIMEOUT: &str = "PIKU_STALL_TIMEOUT";

/// The stall rule's shortest setting: below it a busy instance's gap between two answers
/// would pass for a stall (the default, 500 ms, is fifty such gaps).
const MIN_STALL_MS: u64 = 100;
/// The longest: the response timeout's ceiling (past that, the timeouts find it first).
const MAX_STALL_MS: u64 = 3_600_000;

/// The front's waits that are not settings (its body idle timeout), in seconds: nginx must
/// outwait them too.
const FRONT_BODY_IDLE_SECS: u64 = 30;
/// nginx's own default for `proxy_read_timeout` / `proxy_send_timeout`; never set lower.
const NGINX_PROXY_TIMEOUT_SECS: u64 = 60;
/// nginx's own default upstream `keepalive_timeout`; never set higher.
const NGINX_UPSTREAM_KEEPALIVE_SECS: u64 = 60;

/// The timeouts and body limit of one app's HTTP path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontSettings {
    pub response_timeout_secs: u64,
    pub header_timeout_secs: u64,
    pub keepalive_timeout_secs: u64,
    /// `NGINX_CLIENT_MAX_BODY_SIZE` in bytes: `None` when unset (nginx keeps its own default,
    /// the front sets no limit), `Some(0)` for no limit (nginx's `0`).
    pub client_max_body_size: Option<u64>,
    /// `PIKU_STALL_TIMEOUT` in milliseconds; 0: the stall rule is off.
    pub stall_timeout_ms: u64,
}

impl Default for FrontSettings {
    fn default() -> Self {
        FrontSettings {
            response_timeout_secs: 30,
            header_timeout_secs: 10,
            keepalive_timeout_secs: 75,
            client_max_body_size: None,
            stall_timeout_ms: 500,
        }
    }
}

/// A setting whose value cannot be used: `PIKU_RESPONSE_TIMEOUT='0' must be …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}='{value}' {why}")]
pub struct FrontSettingError {
    pub key: &'static str,
    pub value: String,
    pub why: String,
}

impl FrontSettings {
    /// The settings `env` sets (defaults for the rest); every malformed one is reported at once.
    /// An empty value is the default.
    pub fn from_env(env: &EnvMap) -> Result<FrontSettings, Problems<FrontSettingError>> {
        let mut settings = FrontSettings::default();
        let mut problems = Vec::new();
        for (key, value) in env {
            let Some(key) = known(key) else { continue };
            match parse(key, value) {
                Ok(Parsed::Default) => {}
                Ok(Parsed::Secs(secs)) => *settings.secs_mut(key) = secs,
                Ok(Parsed::Bytes(bytes)) => settings.client_max_body_size = Some(bytes),
                Ok(Parsed::Millis(ms)) => settings.stall_timeout_ms = ms,
                Err(why) => problems.push(error(key, value, why)),
            }
        }
        Problems::check(settings, problems)
    }

    fn secs_mut(&mut self, key: &'static str) -> &mut u64 {
        match key {
            HEADER_TIMEOUT => &mut self.header_timeout_secs,
            KEEPALIVE_TIMEOUT => &mut self.keepalive_timeout_secs,
            _ => &mut self.response_timeout_secs,
        }
    }

    /// nginx's `proxy_read_timeout` and `proxy_send_timeout`: 10 s past the longest the front
    /// waits for an instance (its response timeout, its 30 s body idle timeout), at least
    /// nginx's default 60 s. nginx never gives up before the front does.
    pub fn nginx_proxy_timeout_secs(&self) -> u64 {
        let front = self.response_timeout_secs.max(FRONT_BODY_IDLE_SECS);
        NGINX_PROXY_TIMEOUT_SECS.max(front + 10)
    }

    /// nginx's upstream `keepalive_timeout`: a second below the front's keep-alive timeout, at
    /// most nginx's default 60 s. nginx closes an idle connection before the front can.
    pub fn nginx_upstream_keepalive_secs(&self) -> u64 {
        self.keepalive_timeout_secs
            .saturating_sub(1)
            .clamp(1, NGINX_UPSTREAM_KEEPALIVE_SECS)
    }

    /// The request body limit the front enforces: `None` for no limit.
    pub fn max_request_body(&self) -> Option<u64> {
        self.client_max_body_size.filter(|bytes| *bytes > 0)
    }

    /// The front's stall rule's period: `None` when it is off.
    pub fn stall_after_ms(&self) -> Option<u64> {
        Some(self.stall_timeout_ms).filter(|ms| *ms > 0)
    }
}

/// Checks one `KEY=value` setting (`config:set`); keys that are not front settings pass.
pub fn check_setting(key: &str, value: &str) -> Result<(), FrontSettingError> {
    match known(key) {
        Some(key) => parse(key, value)
            .map(|_| ())
            .map_err(|why| error(key, value, why)),
        None => Ok(()),
    }
}

enum Parsed {
    Default,
    Secs(u64),
    Bytes(u64),
    Millis(u64),
}

fn known(key: &str) -> Option<&'static str> {
    [
        RESPONSE_TIMEOUT,
        HEADER_TIMEOUT,
        KEEPALIVE_TIMEOUT,
        CLIENT_MAX_BODY_SIZE,
        STALL_TIMEOUT,
    ]
    .into_iter()
    .find(|known| *known == key)
}

fn parse(key: &'static str, value: &str) -> Result<Parsed, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(Parsed::Default);
    }
    let (min, max) = match key {
        CLIENT_MAX_BODY_SIZE => return parse_nginx_size(value).map(Parsed::Bytes),
        STALL_TIMEOUT => return parse_stall(value).map(Parsed::Millis),
        HEADER_TIMEOUT => (1, 300),
        KEEPALIVE_TIMEOUT => (2, 3600),
        _ => (1, 3600),
    };
    match value.strip_suffix('s').unwrap_or(value).parse::<u64>() {
        Ok(secs) if (min..=max).contains(&secs) => Ok(Parsed::Secs(secs)),
        _ => Err(format!(
            "must be a whole number of seconds from {min} to {max}"
        )),
    }
}

/// `PIKU_STALL_TIMEOUT`: `0` (off), whole seconds (`2`, `2s`) or milliseconds (`500ms`),
/// from 100 ms to an hour; in milliseconds.
fn parse_stall(value: &str) -> Result<u64, String> {
    let ms = match value.strip_suffix("ms") {
        Some(ms) => ms.parse::<u64>().ok(),
        None => value
            .strip_suffix('s')
            .unwrap_or(value)
            .parse::<u64>()
            .ok()
            .and_then(|secs| secs.checked_mul(1000)),
    };
    match ms {
        Some(ms) if ms == 0 || (MIN_STALL_MS..=MAX_STALL_MS).contains(&ms) => Ok(ms),
        _ => Err(format!(
            "must be 0 (off), or whole seconds (2, 2s) or milliseconds (500ms) from \
             {MIN_STALL_MS}ms to {}s",
            MAX_STALL_MS / 1000
        )),
    }
}

/// nginx's size syntax (`ngx_parse_size`): digits, then nothing (bytes), `k`/`K`, `m`/`M` or
/// `g`/`G` (powers of 1024). `0` is nginx's "no limit".
pub fn parse_nginx_size(value: &str) -> Result<u64, String> {
    const SHAPE: &str = "must be a size in nginx's syntax such as 100m, 512k or 1g (k, m, g: \
                         powers of 1024), a number of bytes, or 0 for no limit";
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    let shift = match suffix {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        _ => return Err(SHAPE.to_owned()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        // nginx keeps sizes in an off_t.
        .filter(|bytes| i64::try_from(*bytes).is_ok())
        .ok_or_else(|| SHAPE.to_owned())
}

fn error(key: &'static str, value: &str, why: String) -> FrontSettingError {
    FrontSettingError {
        key,
        value: value.to_owned(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn unset_or_empty_settings_are_the_defaults() {
        let settings = FrontSettings::from_env(&env(&[(RESPONSE_TIMEOUT, " ")])).unwrap();
        assert_eq!(settings, FrontSettings::default());
        assert_eq!(settings.response_timeout_secs, 30);
        assert_eq!(settings.header_timeout_secs, 10);
        assert_eq!(settings.keepalive_timeout_secs, 75);
        assert_eq!(settings.max_request_body(), None);
        assert_eq!(settings.stall_after_ms(), Some(500));
        assert_eq!(settings.nginx_proxy_timeout_secs(), 60);
        assert_eq!(settings.nginx_upstream_keepalive_secs(), 60);
    }

    #[test]
    fn settings_are_read_and_nginx_outwaits_the_front() {
        let settings = FrontSettings::from_env(&env(&[
            (RESPONSE_TIMEOUT, "120"),
            (HEADER_TIMEOUT, "5s"),
            (KEEPALIVE_TIMEOUT, "20"),
            (CLIENT_MAX_BODY_SIZE, "100m"),
            ("OTHER", "x"),
        ]))
        .unwrap();
        assert_eq!(settings.response_timeout_secs, 120);
        assert_eq!(settings.header_timeout_secs, 5);
        assert_eq!(settings.keepalive_timeout_secs, 20);
        assert_eq!(settings.max_request_body(), Some(100 << 20));
        assert_eq!(settings.nginx_proxy_timeout_secs(), 130);
        assert_eq!(settings.nginx_upstream_keepalive_secs(), 19);
        let short = FrontSettings {
            response_timeout_secs: 1,
            keepalive_timeout_secs: 2,
            ..FrontSettings::default()
        };
        assert_eq!(short.nginx_proxy_timeout_secs(), 60);
        assert_eq!(short.nginx_upstream_keepalive_secs(), 1);
    }

    #[test]
    fn the_stall_rule_is_set_in_seconds_or_milliseconds_and_zero_turns_it_off() {
        let read = |value: &str| FrontSettings::from_env(&env(&[(STALL_TIMEOUT, value)]));
        assert_eq!(read("0").unwrap().stall_after_ms(), None);
        assert_eq!(read("2").unwrap().stall_after_ms(), Some(2000));
        assert_eq!(read("2s").unwrap().stall_after_ms(), Some(2000));
        assert_eq!(read("250ms").unwrap().stall_after_ms(), Some(250));
        assert_eq!(read("100ms").unwrap().stall_after_ms(), Some(100));
        assert_eq!(read("3600").unwrap().stall_after_ms(), Some(3_600_000));
        assert_eq!(read("").unwrap(), FrontSettings::default());
        let err = check_setting(STALL_TIMEOUT, "50ms")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "PIKU_STALL_TIMEOUT='50ms' must be 0 (off), or whole seconds (2, 2s) or \
             milliseconds (500ms) from 100ms to 3600s"
        );
    }

    #[test]
    fn sizes_read_as_nginx_reads_them() {
        assert_eq!(parse_nginx_size("0"), Ok(0));
        assert_eq!(parse_nginx_size("1024"), Ok(1024));
        assert_eq!(parse_nginx_size("512k"), Ok(512 << 10));
        assert_eq!(parse_nginx_size("100M"), Ok(100 << 20));
        assert_eq!(parse_nginx_size("2g"), Ok(2 << 30));
        for bad in ["", "lots", "1.5m", "100MB", "-1", "1t", "m", "99999999999g"] {
            assert!(parse_nginx_size(bad).is_err(), "{bad} taken");
        }
        let unlimited = FrontSettings::from_env(&env(&[(CLIENT_MAX_BODY_SIZE, "0")])).unwrap();
        assert_eq!(unlimited.client_max_body_size, Some(0));
        assert_eq!(unlimited.max_request_body(), None);
    }

    #[test]
    fn out_of_range_values_are_refused_with_one_line_each() {
        for (key, bad) in [
            (RESPONSE_TIMEOUT, "0"),
            (RESPONSE_TIMEOUT, "3601"),
            (RESPONSE_TIMEOUT, "1.5"),
            (HEADER_TIMEOUT, "301"),
            (KEEPALIVE_TIMEOUT, "1"),
            (KEEPALIVE_TIMEOUT, "soon"),
            (CLIENT_MAX_BODY_SIZE, "big"),
            (STALL_TIMEOUT, "99ms"),
            (STALL_TIMEOUT, "3601"),
            (STALL_TIMEOUT, "0.5"),
            (STALL_TIMEOUT, "off"),
        ] {
            let err = check_setting(key, bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{key}='{bad}' must be")), "{err}");
            assert!(!err.contains('\n'));
        }
        assert!(check_setting(RESPONSE_TIMEOUT, "3600").is_ok());
        assert!(check_setting("PIKU_OTHER", "whatever").is_ok());
        let problems =
            FrontSettings::from_env(&env(&[(RESPONSE_TIMEOUT, "0"), (HEADER_TIMEOUT, "x")]))
                .unwrap_err();
        assert_eq!(problems.as_slice().len(), 2);
    }
}
