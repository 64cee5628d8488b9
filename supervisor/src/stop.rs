//! Process groups: signalling one, knowing when it is empty, clearing what a leader left.
//!
//! Every instance leads its own process group (spawned with `process_group(0)`), so the
//! group id is the leader's pid and one `killpg` reaches the app and every child it forked
//! that did not leave the group. A stop waits for the whole group, not just the leader: a
//! grandchild that ignores SIGTERM must still be gone (SIGKILL) when the stop is over. The
//! sequence of a stop (SIGTERM, grace, SIGKILL) is decided by the instance state machine.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

/// How often the group is polled while waiting for it to empty.
const GROUP_POLL: Duration = Duration::from_millis(10);
/// How long SIGKILLed processes get to disappear before we stop waiting (they cannot
/// refuse; only an uninterruptible sleep in the kernel delays them).
const AFTER_KILL: Duration = Duration::from_secs(5);

/// Signals the group; a group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!("killpg({pgid}, {signal}) failed: {e}"),
    }
}

/// Signals one process; one that is already gone is not an error.
pub fn signal_pid(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    match nix::sys::signal::kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!("kill({pid}, {signal}) failed: {e}"),
    }
}

/// Whether any process (zombies included) still belongs to the group. Orphans re-parented
/// to us are reaped first, so a dead one does not count as alive.
pub fn group_alive(pgid: u32) -> bool {
    crate::reaper::reap_orphans();
    let Ok(raw) = i32::try_from(pgid) else {
        return false;
    };
    // Signal 0 checks existence without sending anything.
    !matches!(killpg(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

/// Resolves once nothing is left of the group (zombies included). Unbounded: the caller
/// decides how long it waits (the instance state machine's deadlines).
pub async fn group_gone(pgid: u32) {
    while group_alive(pgid) {
        sleep(GROUP_POLL).await;
    }
}

/// After a leader exited on its own: members it left behind get the same treatment as in a
/// stop (SIGTERM, grace, SIGKILL), so a crashed instance leaves no orphans.
pub async fn clear_group(pgid: u32, grace: Duration) {
    if !group_alive(pgid) {
        return;
    }
    signal_group(pgid, Signal::SIGTERM);
    signal_group(pgid, Signal::SIGCONT);
    wait_group_empty(pgid, Instant::now() + grace).await;
    finish_group(pgid).await;
}

/// SIGKILL to whatever is left of the group, then wait (bounded) until it is empty.
async fn finish_group(pgid: u32) {
    if !group_alive(pgid) {
        return;
    }
    signal_group(pgid, Signal::SIGKILL);
    if !wait_group_empty(pgid, Instant::now() + AFTER_KILL).await {
        tracing::warn!("process group {pgid} still has members after SIGKILL");
    }
}

/// Polls until the group is empty (true) or `deadline` passes (false).
async fn wait_group_empty(pgid: u32, deadline: Instant) -> bool {
    loop {
        if !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(GROUP_POLL).await;
    }
}
