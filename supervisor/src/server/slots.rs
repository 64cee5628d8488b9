//! Who holds the control socket: at most [`MAX_CONNECTIONS`] clients at once, of which at
//! most [`MAX_FOLLOWERS`] follow logs. When every connection is taken, the one idle for
//! longest (waiting for its handshake or its next request) is closed to make room, so idle
//! clients can never starve a deploy or a `ps`; followers have their own slots, so `piku
//! logs` in many terminals cannot either.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Connections following logs at once (within [`MAX_CONNECTIONS`]).
pub const MAX_FOLLOWERS: usize = 32;

pub struct Slots {
    /// Places in `connections`, so that [`Slots::all_free`] can take them all.
    capacity: u32,
    connections: Arc<Semaphore>,
    followers: Arc<Semaphore>,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: BTreeMap<u64, Open>,
}

struct Open {
    /// `Some(since)` while the connection waits for the client.
    idle_since: Option<Instant>,
    evict: CancellationToken,
}

/// One accepted connection's place: freed when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    pub evicted: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    pub fn new() -> Arc<Slots> {
        Slots::with_limits(MAX_CONNECTIONS, MAX_FOLLOWERS)
    }

    fn with_limits(connections: usize, followers: usize) -> Arc<Slots> {
        Arc::new(Slots {
            capacity: u32::try_from(connections).unwrap_or(u32::MAX),
            connections: Arc::new(Semaphore::new(connections)),
            followers: Arc::new(Semaphore::new(followers)),
            table: Mutex::new(Table::default()),
        })
    }

    /// A place for a connection just accepted: at once if one is free, else the oldest idle
    /// connection is closed and its place taken; with none idle, waits for one to finish.
    /// `None` only if the semaphore was closed, which nothing does.
    pub async fn take(self: &Arc<Self>) -> Option<Slot> {
        let permit = match self.connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.evict_oldest_idle();
                self.connections.clone().acquire_owned().await.ok()?
            }
        };
        let evicted = CancellationToken::new();
        let id = {
            let mut table = self.lock();
            let id = table.next_id;
            table.next_id += 1;
            table.open.insert(
                id,
                Open {
                    idle_since: Some(Instant::now()),
                    evict: evicted.clone(),
                },
            );
            id
        };
        Some(Slot {
            slots: self.clone(),
            id,
            evicted,
            _permit: permit,
        })
    }

    /// Waits until no connection holds a place (each one's request answered); false after
    /// `within`.
    pub async fn all_free(&self, within: std::time::Duration) -> bool {
        tokio::time::timeout(within, self.connections.acquire_many(self.capacity))
            .await
            .is_ok_and(|permits| permits.is_ok())
    }

    /// A follower's place, or `None` when all are taken.
    pub fn follower(&self) -> Option<OwnedSemaphorePermit> {
        self.followers.clone().try_acquire_owned().ok()
    }

    fn evict_oldest_idle(&self) {
        let table = self.lock();
        let oldest = table
            .open
            .values()
            .filter_map(|o| o.idle_since.map(|since| (since, &o.evict)))
            .min_by_key(|(since, _)| *since);
        if let Some((_, evict)) = oldest {
            tracing::info!("{MAX_CONNECTIONS} clients connected: closing the one idle longest");
            evict.cancel();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Each change is one insert, update or remove: consistent even after a panic.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Slot {
    /// The connection now waits for its client (true) or works on a request (false).
    pub fn set_idle(&self, idle: bool) {
        if let Some(open) = self.slots.lock().open.get_mut(&self.id) {
            open.idle_since = idle.then(Instant::now);
        }
    }

    pub fn follower(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.follower()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().open.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_table_closes_the_connection_idle_longest_never_a_busy_one() {
        let slots = Slots::with_limits(3, 1);
        let oldest = slots.take().await.unwrap();
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let busy = slots.take().await.unwrap();
        busy.set_idle(false);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let newer = slots.take().await.unwrap();
        let taking = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take().await.unwrap() })
        };
        tokio::task::yield_now().await;
        assert!(oldest.evicted.is_cancelled());
        assert!(!busy.evicted.is_cancelled() && !newer.evicted.is_cancelled());
        assert!(!taking.is_finished());
        drop(oldest);
        let fourth = taking.await.unwrap();
        assert!(!fourth.evicted.is_cancelled());
    }

    #[test]
    fn followers_have_their_own_cap() {
        let slots = Slots::with_limits(4, 2);
        let a = slots.follower();
        let b = slots.follower();
        assert!(a.is_some() && b.is_some());
        assert!(slots.follower().is_none());
        drop(a);
        assert!(slots.follower().is_some());
    }
}
