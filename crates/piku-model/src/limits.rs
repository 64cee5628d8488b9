//! Per-instance resource limits as an app's settings name them, in systemd's words:
//! `PIKU_MEMORY_MAX` (like `MemoryMax=`: `256M`, `1.5G`, a number of bytes, or `infinity`),
//! `PIKU_CPU_QUOTA` (like `CPUQuota=`: `50%` of one CPU, `200%` for two) and `PIKU_TASKS_MAX`
//! (like `TasksMax=`: a number of processes and threads, or `infinity`).
//!
//! This is the one parser of these values: the deploy reads them from the merged env and
//! `config:set` checks them before it saves anything, so a value one refuses the other
//! refuses too. An empty value or `infinity` means no limit.

use std::fmt;

use crate::EnvMap;
use crate::problems::Problems;

pub const MEMORY_MAX: &str = "PIKU_MEMORY_MAX";
pub const CPU_QUOTA: &str = "PIKU_CPU_QUOTA";
pub const TASKS_MAX: &str = "PIKU_TASKS_MAX";

/// The smallest memory limit taken: no interpreter starts in less, and a bare number is
/// bytes (as in systemd), so `PIKU_MEMORY_MAX=256` is a slip for `256M`, not a wish.
pub const MIN_MEMORY_MAX: u64 = 4 << 20;
/// The largest CPU quota taken, in percent of one CPU (1024 CPUs).
pub const MAX_CPU_QUOTA_PERCENT: u32 = 102_400;

/// What one instance (all of its processes) may use; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_max_bytes: Option<u64>,
    /// Percent of one CPU.
    pub cpu_quota_percent: Option<u32>,
    pub tasks_max: Option<u64>,
}

/// A limit setting whose value cannot be used: `PIKU_MEMORY_MAX='lots' must be …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}='{value}' {why}")]
pub struct LimitError {
    pub key: &'static str,
    pub value: String,
    pub why: String,
}

impl Limits {
    /// The limits `env` sets; every malformed one is reported at once.
    pub fn from_env(env: &EnvMap) -> Result<Limits, Problems<LimitError>> {
        let mut problems = Vec::new();
        let read = |key: &'static str| env.get(key).map(|v| (key, v.as_str()));
        let mut limits = Limits::default();
        if let Some((key, value)) = read(MEMORY_MAX) {
            match parse_memory_max(value) {
                Ok(v) => limits.memory_max_bytes = v,
                Err(why) => problems.push(error(key, value, why)),
            }
        }
        if let Some((key, value)) = read(CPU_QUOTA) {
            match parse_cpu_quota(value) {
                Ok(v) => limits.cpu_quota_percent = v,
                Err(why) => problems.push(error(key, value, why)),
            }
        }
        if let Some((key, value)) = read(TASKS_MAX) {
            match parse_tasks_max(value) {
                Ok(v) => limits.tasks_max = v,
                Err(why) => problems.push(error(key, value, why)),
            }
        }
        Problems::check(limits, problems)
    }
}

/// Checks one `KEY=value` setting (`config:set`); keys that are not limits pass.
pub fn check_setting(key: &str, value: &str) -> Result<(), LimitError> {
    let (key, why) = match key {
        MEMORY_MAX => (MEMORY_MAX, parse_memory_max(value).err()),
        CPU_QUOTA => (CPU_QUOTA, parse_cpu_quota(value).err()),
        TASKS_MAX => (TASKS_MAX, parse_tasks_max(value).err()),
        _ => return Ok(()),
    };
    match why {
        Some(why) => Err(error(key, value, why)),
        None => Ok(()),
    }
}

fn error(key: &'static str, value: &str, why: String) -> LimitError {
    LimitError {
        key,
        value: value.to_owned(),
        why,
    }
}

/// `None` for no limit (empty, `infinity`).
fn unlimited(value: &str) -> bool {
    value.is_empty() || value.eq_ignore_ascii_case("infinity")
}

/// `256M`, `1.5G`, `1048576` (bytes): base 1024, as systemd's `MemoryMax=`.
pub fn parse_memory_max(value: &str) -> Result<Option<u64>, String> {
    let value = value.trim();
    if unlimited(value) {
        return Ok(None);
    }
    const SHAPE: &str = "must be a size such as 256M or 1.5G (K, M, G, T: powers of 1024), \
                         or infinity";
    if value.ends_with('%') {
        return Err(format!(
            "{SHAPE}; a share of the host's memory is not supported"
        ));
    }
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    let shift = match suffix {
        "" | "B" | "b" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(SHAPE.to_owned()),
    };
    let bytes = scaled(number, shift).ok_or_else(|| SHAPE.to_owned())?;
    if bytes < MIN_MEMORY_MAX {
        return Err(format!(
            "is below {}M: no app starts in that (a bare number is bytes; 256M is 256 MiB)",
            MIN_MEMORY_MAX >> 20
        ));
    }
    Ok(Some(bytes))
}

/// `number` (digits, at most one `.`) times 2^`shift`, in whole bytes; `None` if it is not
/// such a number or does not fit in 64 bits. Integer arithmetic: `1.1G` must not come out
/// a byte short through a float.
fn scaled(number: &str, shift: u32) -> Option<u64> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || fraction.len() > 9 {
        return None;
    }
    let digits = |s: &str| -> Option<u128> {
        if s.is_empty() {
            Some(0)
        } else {
            s.parse::<u128>().ok()
        }
    };
    let unit = 1u128 << shift;
    let whole = digits(whole)?.checked_mul(unit)?;
    let fraction = digits(fraction)? * unit / 10u128.pow(fraction.len() as u32);
    u64::try_from(whole + fraction).ok()
}

/// `50%` of one CPU, `200%` for two, as systemd's `CPUQuota=`.
pub fn parse_cpu_quota(value: &str) -> Result<Option<u32>, String> {
    let value = value.trim();
    if unlimited(value) {
        return Ok(None);
    }
    let shape = || {
        format!(
            "must be a whole percentage of one CPU such as 50% (200% is two CPUs), from 1% to \
             {MAX_CPU_QUOTA_PERCENT}%, or infinity"
        )
    };
    let percent: u32 = value
        .strip_suffix('%')
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(shape)?;
    if !(1..=MAX_CPU_QUOTA_PERCENT).contains(&percent) {
        return Err(shape());
    }
    Ok(Some(percent))
}

/// A number of processes and threads, as systemd's `TasksMax=`.
pub fn parse_tasks_max(value: &str) -> Result<Option<u64>, String> {
    let value = value.trim();
    if unlimited(value) {
        return Ok(None);
    }
    match value.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err("must be a number of processes and threads of at least 1, or infinity".into()),
    }
}

/// How a memory size reads in messages: `256M`, `1.5G`, `512K`, `123B`.
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        for (shift, unit) in [(40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')] {
            let scale = 1u64 << shift;
            if bytes >= scale {
                let value = bytes as f64 / scale as f64;
                return if bytes.is_multiple_of(scale) {
                    write!(f, "{}{unit}", bytes / scale)
                } else {
                    write!(f, "{value:.1}{unit}")
                };
            }
        }
        write!(f, "{bytes}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_read_as_systemd_reads_them() {
        let ok = |v: &str| parse_memory_max(v).unwrap();
        assert_eq!(ok("256M"), Some(256 << 20));
        assert_eq!(ok(" 1G "), Some(1 << 30));
        assert_eq!(ok("1.5G"), Some(3 << 29));
        assert_eq!(ok("512m"), Some(512 << 20));
        assert_eq!(ok("8388608"), Some(8 << 20));
        assert_eq!(ok("65536K"), Some(64 << 20));
        assert_eq!(ok("infinity"), None);
        assert_eq!(ok(""), None);
        for bad in [
            "lots", "256MB", "-1M", "1..5G", "50%", "256", "1.2.3M", "M", ".",
        ] {
            assert!(parse_memory_max(bad).is_err(), "{bad} taken");
        }
        assert!(parse_memory_max("99999999999T").is_err(), "overflow");
        assert!(parse_memory_max("256").unwrap_err().contains("256M"));
    }

    #[test]
    fn cpu_quotas_are_whole_percentages_of_one_cpu() {
        assert_eq!(parse_cpu_quota("50%"), Ok(Some(50)));
        assert_eq!(parse_cpu_quota("200%"), Ok(Some(200)));
        assert_eq!(parse_cpu_quota("infinity"), Ok(None));
        for bad in ["50", "0%", "12.5%", "half", "-5%", "200000%"] {
            assert!(parse_cpu_quota(bad).is_err(), "{bad} taken");
        }
    }

    #[test]
    fn tasks_are_a_positive_count() {
        assert_eq!(parse_tasks_max("64"), Ok(Some(64)));
        assert_eq!(parse_tasks_max("infinity"), Ok(None));
        for bad in ["0", "-1", "10%", "many"] {
            assert!(parse_tasks_max(bad).is_err(), "{bad} taken");
        }
    }

    #[test]
    fn every_bad_limit_of_an_env_is_reported_at_once() {
        let env = EnvMap::from([
            (MEMORY_MAX.to_owned(), "lots".to_owned()),
            (CPU_QUOTA.to_owned(), "50".to_owned()),
            (TASKS_MAX.to_owned(), "32".to_owned()),
        ]);
        let problems = Limits::from_env(&env).unwrap_err();
        let text = problems.to_string();
        assert_eq!(problems.as_slice().len(), 2, "{text}");
        assert!(
            text.starts_with("PIKU_MEMORY_MAX='lots' must be a size"),
            "{text}"
        );
        assert!(text.contains("PIKU_CPU_QUOTA='50' must be"), "{text}");

        let env = EnvMap::from([
            (MEMORY_MAX.to_owned(), "256M".to_owned()),
            (TASKS_MAX.to_owned(), "32".to_owned()),
        ]);
        assert_eq!(
            Limits::from_env(&env).unwrap(),
            Limits {
                memory_max_bytes: Some(256 << 20),
                cpu_quota_percent: None,
                tasks_max: Some(32),
            }
        );
    }

    #[test]
    fn one_setting_is_checked_by_its_key() {
        assert!(check_setting("PIKU_MEMORY_MAX", "1G").is_ok());
        assert!(check_setting("OTHER", "anything").is_ok());
        let e = check_setting("PIKU_TASKS_MAX", "0").unwrap_err();
        assert!(
            e.to_string().starts_with("PIKU_TASKS_MAX='0' must be"),
            "{e}"
        );
    }

    #[test]
    fn sizes_print_short() {
        assert_eq!(Size(256 << 20).to_string(), "256M");
        assert_eq!(Size(3 << 29).to_string(), "1.5G");
        assert_eq!(Size(1000).to_string(), "1000B");
    }
}
