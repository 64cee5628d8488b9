//! Process kinds and their instances: the one home of the kind-name rule, the per-kind
//! instance caps (cron entries run at most one), and [`InstanceId`] (`web.1`), the name an
//! instance has in logs, status, file names and reports.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest kind name: it becomes part of a log file name (`<kind>.<n>.log`).
pub const MAX_KIND_LEN: usize = 64;
/// Most instances of one kind: a typo (`web=1000`) must not fork-bomb the host.
pub const MAX_INSTANCES_PER_KIND: u32 = 256;
/// The most instances one app may run in all its kinds: a Procfile of many kinds must not
/// take the daemon's file descriptors and processes from every other app.
pub const MAX_INSTANCES_PER_APP: u32 = 512;
/// A cron entry is one scheduled command; a second copy would only run it twice.
pub const MAX_CRON_INSTANCES: u32 = 1;

/// True if `kind` is a usable process kind name: 1 to [`MAX_KIND_LEN`] characters from
/// `A-Z a-z 0-9 _ -`.
pub fn is_valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_KIND_LEN
        && kind
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// The one-line refusal of a bad kind name, or `Ok`.
pub fn check_kind(kind: &str) -> Result<(), KindError> {
    if is_valid_kind(kind) {
        Ok(())
    } else {
        Err(KindError::Name(kind.to_owned()))
    }
}

/// Whether `count` instances of `kind` may run (`cron` for cron entries).
pub fn check_count(kind: &str, count: u32, cron: bool) -> Result<(), KindError> {
    if cron && count > MAX_CRON_INSTANCES {
        return Err(KindError::CronCount {
            kind: kind.to_owned(),
            count,
        });
    }
    if count > MAX_INSTANCES_PER_KIND {
        return Err(KindError::Count {
            kind: kind.to_owned(),
            count,
        });
    }
    Ok(())
}

/// Whether an app may run `total` instances in all (see [`MAX_INSTANCES_PER_APP`]).
pub fn check_app_total(total: u64) -> Result<(), KindError> {
    if total > u64::from(MAX_INSTANCES_PER_APP) {
        return Err(KindError::AppTotal { total });
    }
    Ok(())
}

/// How many instances a formation count starts: cron entries at most one (an old state file
/// may hold more; `0` disables the entry).
pub fn running_count(count: u32, cron: bool) -> u32 {
    if cron {
        count.min(MAX_CRON_INSTANCES)
    } else {
        count
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    #[error("invalid process kind {0:?}: use 1 to {MAX_KIND_LEN} characters from A-Z a-z 0-9 _ -")]
    Name(String),
    #[error("{kind}={count} is more than the {MAX_INSTANCES_PER_KIND} instances a kind may have")]
    Count { kind: String, count: u32 },
    #[error("{total} instances in all is more than the {MAX_INSTANCES_PER_APP} an app may have")]
    AppTotal { total: u64 },
    #[error("cron entry {kind} can run at most {MAX_CRON_INSTANCES} instance, not {count}")]
    CronCount { kind: String, count: u32 },
    #[error("invalid instance name {0:?}: expected <kind>.<number>, e.g. web.1")]
    InstanceId(String),
}

/// One instance of a kind: `web.1` is the first `web` process. Indexes start at 1.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId {
    pub kind: String,
    pub index: u32,
}

impl InstanceId {
    pub fn new(kind: impl Into<String>, index: u32) -> InstanceId {
        InstanceId {
            kind: kind.into(),
            index,
        }
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind, self.index)
    }
}

impl FromStr for InstanceId {
    type Err = KindError;

    fn from_str(s: &str) -> Result<InstanceId, KindError> {
        let bad = || KindError::InstanceId(s.to_owned());
        let (kind, index) = s.rsplit_once('.').ok_or_else(bad)?;
        if !is_valid_kind(kind) || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let index: u32 = index.parse().map_err(|_| bad())?;
        if index == 0 {
            return Err(bad());
        }
        Ok(InstanceId::new(kind, index))
    }
}

/// On the wire and in state files an instance id is its name, `"web.1"`.
impl Serialize for InstanceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for InstanceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InstanceId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_file_name_safe() {
        for bad in [
            "",
            "a b",
            "a/b",
            "..",
            "a.b",
            "wé",
            &"k".repeat(MAX_KIND_LEN + 1),
        ] {
            assert!(check_kind(bad).is_err(), "{bad:?}");
        }
        for good in [
            "web",
            "worker-2",
            "cron_nightly",
            "W3",
            &"k".repeat(MAX_KIND_LEN),
        ] {
            assert_eq!(check_kind(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn counts_are_capped_and_cron_runs_once() {
        assert!(check_count("web", MAX_INSTANCES_PER_KIND, false).is_ok());
        let e = check_count("web", MAX_INSTANCES_PER_KIND + 1, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "web=257 is more than the 256 instances a kind may have"
        );
        assert!(check_app_total(u64::from(MAX_INSTANCES_PER_APP)).is_ok());
        assert_eq!(
            check_app_total(3000).unwrap_err().to_string(),
            "3000 instances in all is more than the 512 an app may have"
        );
        assert!(check_count("cron1", 1, true).is_ok());
        assert!(check_count("cron1", 0, true).is_ok());
        let e = check_count("cron1", 2, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cron entry cron1 can run at most 1 instance, not 2"
        );
        assert_eq!(running_count(3, true), 1);
        assert_eq!(running_count(0, true), 0);
        assert_eq!(running_count(3, false), 3);
    }

    #[test]
    fn instance_ids_round_trip_through_their_names() {
        let id = InstanceId::new("web", 2);
        assert_eq!(id.to_string(), "web.2");
        assert_eq!("web.2".parse::<InstanceId>(), Ok(id.clone()));
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"web.2\"");
        assert_eq!(serde_json::from_str::<InstanceId>("\"web.2\"").unwrap(), id);
        for bad in [
            "web",
            "web.",
            ".1",
            "web.0",
            "web.x",
            "web.-1",
            "a b.1",
            "web.99999999999",
        ] {
            assert!(bad.parse::<InstanceId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn instance_ids_sort_by_kind_then_number() {
        let mut ids: Vec<InstanceId> = ["web.10", "web.2", "cron1.1", "web.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        ids.sort();
        let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["cron1.1", "web.1", "web.2", "web.10"]);
    }
}
