//! TCP ports for web instances: one per instance, distinct across every app, kept for as
//! long as the instance exists (across restarts of its process and of the daemon).

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener};

/// Attempts before giving up on finding a port that no instance holds yet.
const ATTEMPTS: usize = 64;

/// Picks a port that is free right now (the kernel chooses, by binding port 0 on loopback)
/// and not already assigned to another instance (which may be between two runs and so not
/// bound at this moment).
pub fn allocate(taken: &BTreeSet<u16>) -> io::Result<u16> {
    for _ in 0..ATTEMPTS {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if !taken.contains(&port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "no free TCP port that is not already assigned",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_returns_a_taken_port() {
        let mut taken = BTreeSet::new();
        for _ in 0..20 {
            let p = allocate(&taken).unwrap();
            assert!(taken.insert(p), "{p} handed out twice");
        }
    }
}
