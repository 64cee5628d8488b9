//! How the end of a process is named, in status (`last exit`) and in the log: `exit 3`,
//! `SIGKILL`, `SIGSEGV (core dumped)`, and the two ends the daemon or the kernel chose,
//! [`OOM_KILLED`], [`MEMORY_SOFT_LIMIT`] and [`WEDGED_RESTART`].

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::Signal;

/// The kernel's OOM killer ended it at its cgroup's memory limit.
pub const OOM_KILLED: &str = "oom-killed";
/// The daemon restarted it gracefully: its memory crossed the soft mark.
pub const MEMORY_SOFT_LIMIT: &str = "memory-soft-limit restart";
/// The daemon restarted it gracefully: its requests all timed out at the front, and went on
/// timing out (`app/wedged.rs`).
pub const WEDGED_RESTART: &str = "wedged restart";

/// `exit 1`, `SIGKILL`, `SIGSEGV (core dumped)`.
pub fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig)
                .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned());
            if status.core_dumped() {
                format!("{name} (core dumped)")
            } else {
                name
            }
        }
        (None, None) => "unknown exit".to_string(),
    }
}

/// Whether `what` (a [`describe`]d exit) is a SIGKILL, as the OOM killer sends.
pub fn is_sigkill(what: &str) -> bool {
    what == Signal::SIGKILL.as_str()
}

/// A log note's words for an exit: `exited with exit 3`, `killed by the kernel's OOM killer`.
pub fn ended(what: &str) -> String {
    if what == OOM_KILLED {
        "killed by the kernel's OOM killer at its memory limit (oom-killed)".to_owned()
    } else {
        format!("exited with {what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_named_by_code_or_signal() {
        assert_eq!(describe(&ExitStatus::from_raw(3 << 8)), "exit 3");
        assert_eq!(describe(&ExitStatus::from_raw(9)), "SIGKILL");
        assert!(is_sigkill(&describe(&ExitStatus::from_raw(9))));
        assert_eq!(
            describe(&ExitStatus::from_raw(11 | 0x80)),
            "SIGSEGV (core dumped)"
        );
        assert_eq!(describe(&ExitStatus::from_raw(15)), "SIGTERM");
        assert_eq!(ended("exit 3"), "exited with exit 3");
        assert!(ended(OOM_KILLED).contains("OOM killer"));
    }
}
