//! Per-client limits: who the client is (behind trusted proxies), how
//! many connections it holds, and how fast it may make requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// The client's address: the peer's, or, when the peer is a trusted
/// proxy, the last address in `X-Forwarded-For` that is not a trusted
/// proxy itself (the one the first trusted proxy saw).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&[u8]>, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for.and_then(|h| std::str::from_utf8(h).ok()) else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // Garbage in the chain: stop at what we know.
            break;
        };
        client = canonical(ip);
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// IPv4 peers of a dual-stack socket arrive as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A token bucket per client address.
pub struct RequestRate {
    limiter: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>,
    clock: DefaultClock,
    checks: AtomicU64,
}

/// Checks between two sweeps of idle addresses out of the limiter.
const SWEEP_EVERY: u64 = 4096;

impl RequestRate {
    /// `None` when `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<RequestRate> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(RequestRate {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        })
    }

    /// Takes one token for `ip`; when there is none, how long until there
    /// is one.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// Open connections per client address.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection; counted until dropped.
pub struct ConnectionSlot {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    /// Counts a new connection from `ip`, unless it already has `max`
    /// (0: no limit).
    pub fn open(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ConnectionSlot> {
        let ip = canonical(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if max > 0 && *count >= max {
            if *count == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            connections: Arc::clone(self),
            ip,
        })
    }

    /// Open connections in all.
    pub fn total(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.values().sum()
    }
}

impl ConnectionSlot {
    /// The client's address (as the connection came: a proxy's, behind
    /// one).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let header = Some(&b"1.2.3.4, 5.6.7.8, 10.0.0.7"[..]);
        // Untrusted peer: its own address, whatever it claims.
        assert_eq!(client_ip(ip("9.9.9.9"), header, &trusted), ip("9.9.9.9"));
        // Trusted peer: the last untrusted hop.
        assert_eq!(client_ip(ip("10.0.0.1"), header, &trusted), ip("5.6.7.8"));
        assert_eq!(client_ip(ip("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"garbage"), &trusted),
            ip("10.0.0.1")
        );
        // Mapped IPv4 from a dual-stack socket.
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), Some(b"8.8.8.8"), &trusted),
            ip("8.8.8.8")
        );
    }

    #[test]
    fn connections_are_counted_per_address_and_freed() {
        let connections = Arc::new(Connections::default());
        let a = connections.open(ip("1.1.1.1"), 2).expect("1st");
        let b = connections.open(ip("1.1.1.1"), 2).expect("2nd");
        assert!(connections.open(ip("1.1.1.1"), 2).is_none());
        assert!(connections.open(ip("2.2.2.2"), 2).is_some());
        drop(a);
        assert!(connections.open(ip("1.1.1.1"), 2).is_some());
        drop(b);
        assert_eq!(connections.total(), 0);
        assert!(connections.open(ip("1.1.1.1"), 0).is_some());
    }

    #[test]
    fn the_bucket_empties_and_says_when_it_refills() {
        let rate = RequestRate::new(1, 3).expect("limit");
        for _ in 0..3 {
            assert!(rate.check(ip("1.1.1.1")).is_ok());
        }
        let wait = rate.check(ip("1.1.1.1")).expect_err("empty");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(rate.check(ip("2.2.2.2")).is_ok());
        assert!(RequestRate::new(0, 3).is_none());
    }
}
