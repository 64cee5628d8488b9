//! A process's memory as the kernel counts it (`/proc/<pid>/status`): what the front (inside
//! `piku-supervisor`) holds now and at its peak, for the tests that bound it while a big body
//! streams through or hundreds of slow clients hang on.

use std::fs;

/// Resident memory of one process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak of `VmRSS` since the process started or [`reset_peak`].
    pub hwm_kib: u64,
}

impl Memory {
    /// The process's memory now; `None` if it is gone (or `/proc` says nothing we understand).
    pub fn of(pid: u32) -> Option<Memory> {
        parse_status(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
    }
}

/// Resets the process's `VmHWM` to its current `VmRSS` (`echo 5 > /proc/<pid>/clear_refs`), so
/// the next [`Memory::of`] gives the peak of what happened in between. False if the kernel
/// refused (not the process's owner, or a kernel older than 4.0): then `VmHWM` is the peak
/// since the start.
pub fn reset_peak(pid: u32) -> bool {
    fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

fn parse_status(status: &str) -> Option<Memory> {
    let kib = |key: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(key)?.strip_prefix(':')?;
            value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    Some(Memory {
        rss_kib: kib("VmRSS")?,
        hwm_kib: kib("VmHWM")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_and_peak_are_read_from_the_status_file() {
        let status = "Name:\tpiku-supervisor\nVmPeak:\t  900000 kB\nVmHWM:\t   20480 kB\n\
                      VmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                rss_kib: 10240,
                hwm_kib: 20480
            })
        );
        assert_eq!(parse_status("Name:\tzombie\n"), None);
    }

    #[test]
    fn our_own_peak_can_be_reset_to_what_we_hold_now() {
        let me = std::process::id();
        // 64 MiB touched (non-zero) and given back (an allocation this large is its own
        // mapping): the peak holds it, the RSS no longer does.
        let big = std::hint::black_box(vec![1u8; 64 << 20]);
        drop(big);
        let before = Memory::of(me).expect("our own status");
        assert!(before.hwm_kib >= before.rss_kib + (32 << 10), "{before:?}");
        if reset_peak(me) {
            let after = Memory::of(me).expect("our own status");
            // Other tests of this process allocate meanwhile, but not 32 MiB.
            assert!(
                after.hwm_kib + (32 << 10) <= before.hwm_kib,
                "{before:?} → {after:?}"
            );
        }
    }
}
