//! TCP ports for web instances and fronts: one per instance, distinct across every app, kept
//! for as long as the instance exists (across restarts of its process and of the daemon).
//!
//! Each app's actor owns its ports; this table only knows which ports each app holds, so
//! that two apps never get the same one. Its lock is held for a lookup and a bind of port 0,
//! never across an await.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Attempts before giving up on finding a port that no instance holds yet.
const ATTEMPTS: usize = 64;

/// The ports every app holds. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Ports {
    held: Arc<Mutex<BTreeMap<String, BTreeSet<u16>>>>,
}

impl Ports {
    /// A port free right now (the kernel chooses, by binding port 0 on loopback) and held by
    /// no app (an instance between two runs holds its port without binding it); from now on
    /// held by `app`.
    pub fn allocate(&self, app: &str) -> io::Result<u16> {
        let mut held = self.lock();
        for _ in 0..ATTEMPTS {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            if !held.values().any(|ports| ports.contains(&port)) {
                held.entry(app.to_string()).or_default().insert(port);
                return Ok(port);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "no free TCP port that is not already assigned",
        ))
    }

    /// The app other than `app` that holds `port`, if any.
    pub fn holder_besides(&self, app: &str, port: u16) -> Option<String> {
        self.lock()
            .iter()
            .find(|(name, ports)| name.as_str() != app && ports.contains(&port))
            .map(|(name, _)| name.clone())
    }

    /// The ports `app` holds from now on (ports it held and no longer lists are free again).
    pub fn hold(&self, app: &str, ports: BTreeSet<u16>) {
        let mut held = self.lock();
        if ports.is_empty() {
            held.remove(app);
        } else {
            held.insert(app.to_string(), ports);
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BTreeSet<u16>>> {
        // Every update is one insert or remove: consistent even if a holder panicked.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_returns_a_port_another_app_holds() {
        let ports = Ports::default();
        let mut seen = BTreeSet::new();
        for app in ["a", "b"] {
            for _ in 0..10 {
                let p = ports.allocate(app).unwrap();
                assert!(seen.insert(p), "{p} handed out twice");
            }
        }
        // A port released by its app may be given again; the others stay held.
        let a: BTreeSet<u16> = ports.lock()["a"].iter().copied().skip(1).collect();
        ports.hold("a", a.clone());
        assert_eq!(ports.lock()["a"], a);
        assert_eq!(ports.lock()["b"].len(), 10);
        let b_port = *ports.lock()["b"].first().unwrap();
        assert_eq!(ports.holder_besides("a", b_port), Some("b".to_string()));
        assert_eq!(ports.holder_besides("b", b_port), None);
        ports.hold("b", BTreeSet::new());
        assert!(!ports.lock().contains_key("b"));
        assert_eq!(ports.holder_besides("a", b_port), None);
    }
}
