//! Failed admin authentication, rate-limited per client address: a token bucket per IP that
//! a wrong token empties and time refills. Without it a client could try thousands of tokens
//! a second (the compare is constant-time, but guessing needs no timing).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// The peer address of a request's connection (the server puts it in the extensions).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

/// Wrong tokens one client may send at once before it must wait.
pub const BURST: f64 = 30.0;
/// Wrong tokens per second a client earns back.
pub const PER_SECOND: f64 = 1.0;
/// Clients remembered at once; past it, those whose buckets are full again are forgotten
/// (so a flood of addresses costs bounded memory).
const MAX_CLIENTS: usize = 10_000;

#[derive(Default)]
pub struct AuthThrottle {
    buckets: Mutex<HashMap<Option<IpAddr>, (f64, Instant)>>,
}

impl AuthThrottle {
    fn level(tokens: f64, since: Instant, now: Instant) -> f64 {
        (tokens + now.duration_since(since).as_secs_f64() * PER_SECOND).min(BURST)
    }

    /// `Err(seconds)` to wait when `peer` has no attempt left.
    pub fn check(&self, peer: Option<IpAddr>) -> Result<(), u32> {
        let now = Instant::now();
        let Ok(b) = self.buckets.lock() else { return Ok(()) };
        match b.get(&peer) {
            Some(&(t, at)) if Self::level(t, at, now) < 1.0 => {
                let wait = (1.0 - Self::level(t, at, now)) / PER_SECOND;
                Err(wait.ceil().max(1.0) as u32)
            }
            _ => Ok(()),
        }
    }

    /// A wrong token from `peer`: one attempt spent.
    pub fn failed(&self, peer: Option<IpAddr>) {
        let now = Instant::now();
        let Ok(mut b) = self.buckets.lock() else { return };
        if b.len() >= MAX_CLIENTS && !b.contains_key(&peer) {
            b.retain(|_, (t, at)| Self::level(*t, *at, now) < BURST);
            if b.len() >= MAX_CLIENTS {
                b.clear();
            }
        }
        let e = b.entry(peer).or_insert((BURST, now));
        *e = (Self::level(e.0, e.1, now) - 1.0, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_runs_out_and_others_do_not() {
        let t = AuthThrottle::default();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..BURST as usize {
            assert!(t.check(a).is_ok());
            t.failed(a);
        }
        assert_eq!(t.check(a), Err(1));
        assert!(t.check(b).is_ok());
    }
}
