//! What the operator allows: auth, per-client limits, and the counts the
//! metrics report. Transports ask the [`Gate`] before they hand a request
//! to the relay core; the core itself stays unaware of any of it.
//!
//! The [`Policy`] is built from [`Settings`] and swapped whole on reload
//! (SIGHUP): a request takes the current one at its start and keeps it,
//! so a reload never changes the rules under a request in flight.

pub mod auth;
pub mod limits;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::settings::{Limits, Settings};
pub use auth::{Action, Credentials, Denied, PasswordCheck, Verdict};

/// The checked form of the reloadable settings.
pub struct Policy {
    pub auth: Option<auth::Auth>,
    pub limits: Limits,
    rate: Option<limits::RequestRate>,
}

impl Policy {
    /// Checks settings and loads what they name (keys, JWKS); the error
    /// is one line.
    pub fn from_settings(settings: &Settings) -> Result<Policy, String> {
        let auth = settings
            .auth
            .as_ref()
            .map(auth::Auth::from_settings)
            .transpose()
            .map_err(|e| format!("[auth]: {e}"))?;
        let limits = settings.limits.clone();
        if limits.max_header_bytes.is_some_and(|max| max < 8192) {
            return Err("[limits] max_header_bytes must be at least 8192".into());
        }
        if limits.wait_timeout.is_zero() || limits.header_read_timeout.is_zero() {
            return Err("[limits] timeouts must be more than zero".into());
        }
        let rate = limits::RequestRate::new(limits.requests_per_second, limits.request_burst);
        Ok(Policy { auth, limits, rate })
    }

    /// No auth, default limits.
    pub fn open() -> Policy {
        Policy {
            auth: None,
            limits: Limits::default(),
            rate: None,
        }
    }

    /// Takes one request token for `ip`; `Err(wait)` when it has none.
    pub fn check_rate(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.rate {
            Some(rate) => rate.check(ip),
            None => Ok(()),
        }
    }

    /// Whether credentials allow `action` on `path` (always, without
    /// auth); a new Basic password comes back to be checked with
    /// [`Policy::check_password`].
    pub fn authorize(
        &self,
        path: &str,
        action: Action,
        credentials: &Credentials<'_>,
    ) -> Result<Verdict, Denied> {
        match &self.auth {
            Some(auth) => auth.authorize(path, action, credentials),
            None => Ok(Verdict::Allowed),
        }
    }

    /// Finishes a Basic check that [`Policy::authorize`] handed back.
    pub async fn check_password(&self, check: PasswordCheck) -> Result<(), Denied> {
        match &self.auth {
            Some(auth) => auth.check_password(check).await,
            None => Ok(()),
        }
    }

    /// The client's address, believing proxies the settings trust.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&[u8]>) -> IpAddr {
        limits::client_ip(peer, forwarded_for, &self.limits.trusted_proxies)
    }
}

/// A connection over the per-address limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many open connections from this address")]
pub struct TooManyConnections;

/// What every connection of a server shares: the current policy, the
/// per-address connection counts, and the metrics.
pub struct Gate {
    policy: ArcSwap<Policy>,
    connections: Arc<limits::Connections>,
    /// Connections open, on every listener.
    open: AtomicUsize,
    pub metrics: Metrics,
}

impl Gate {
    pub fn new(policy: Policy, metrics: Metrics) -> Arc<Gate> {
        Arc::new(Gate {
            policy: ArcSwap::from_pointee(policy),
            connections: Arc::default(),
            open: AtomicUsize::new(0),
            metrics,
        })
    }

    /// The policy now (a request keeps the one it started with).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Puts a new policy in place for requests from now on.
    pub fn replace(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// Admits a new connection from `peer`: `Err` when the peer has
    /// as many as the limit allows; `Ok(Some(slot))`, counted until the
    /// slot is dropped, when there is a limit; `Ok(None)` when there is
    /// none (nothing to keep per connection). Trusted proxies are not
    /// limited.
    pub fn connect(
        &self,
        peer: IpAddr,
    ) -> Result<Option<limits::ConnectionSlot>, TooManyConnections> {
        let policy = self.policy.load();
        let trusted = policy
            .limits
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer));
        let max = if trusted {
            0
        } else {
            policy.limits.connections_per_ip
        };
        drop(policy);
        if max == 0 {
            return Ok(None);
        }
        self.connections
            .open(peer, max)
            .map(Some)
            .ok_or(TooManyConnections)
    }

    /// Counts connections opened and closed, for the metrics.
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self, count: usize) {
        self.open.fetch_sub(count, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            policy: ArcSwap::from_pointee(Policy::open()),
            connections: Arc::default(),
            open: AtomicUsize::new(0),
            metrics: Metrics::default(),
        }
    }
}
