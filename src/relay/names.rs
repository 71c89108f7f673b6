//! Names: a host that can only make outgoing connections registers under a
//! name with a secret, and clients reach it through the relay by that
//! name, each on a channel of its own.
//!
//! - [`Relay::register_name`] claims a name (or a random one) for the
//!   holder of a secret. The [`Registration`] it returns belongs to the
//!   host's control connection: it yields an [`OpenNotice`] for each
//!   channel a client asks for, and dropping it starts a grace period
//!   ([`NamesConfig::grace`]) during which the same secret can take the
//!   name back; after it the name is free. Only a digest of the secret is
//!   kept, compared in constant time. Registering again with the right
//!   secret while the name is held replaces the old control connection
//!   (its notices end).
//! - [`Relay::connect_name`] asks for a channel to a name and one of its
//!   services: the host is told (now, or when it comes back within its
//!   grace period) and the returned [`ChannelRequest`] resolves once the
//!   host answers with [`Relay::accept_channel`] (or fails when it refuses
//!   with [`Relay::refuse_channel`] or goes away).
//! - A channel is a pair of joined [`PairEnd`]s (messages both ways, as in
//!   pair mode); [`ChannelIo`] turns an end into a byte stream for the
//!   relay's own HTTP client. Its id is 128 random bits, known only to the
//!   relay and the host's control connection.
//!
//! Limits: names in all, names per secret, channels (asked for or open)
//! per name, services per name. Every entry has an owner: a waiting
//! request's [`ChannelRequest`], an open channel's two ends, a name's
//! [`Registration`] and then its grace timer.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::pair::{Message, PairEnd};
use super::{Relay, Shared};

/// Words for random names (the list the client's codes use).
const WORDS: &str = include_str!("../../assets/words.txt");
/// The longest name: one DNS label, so a name can be a sub-domain.
pub const MAX_NAME: usize = 63;
/// Secrets are this long at least and at most (bytes of printable ASCII).
pub const MIN_SECRET: usize = 16;
pub const MAX_SECRET: usize = 256;
/// The longest service name.
pub const MAX_SERVICE: usize = 64;
/// The service of a host that named none.
pub const DEFAULT_SERVICE: &str = "default";
/// Bytes per message [`ChannelIo`] writes at most.
const IO_CHUNK: usize = 64 * 1024;

/// Limits and timings of names. Defaults suit a public relay.
#[derive(Debug, Clone)]
pub struct NamesConfig {
    /// How long a name stays reserved for its secret after its control
    /// connection went away.
    pub grace: Duration,
    /// How long a client waits for the host to open its channel.
    pub open_timeout: Duration,
    /// How long a control connection may stay silent (the relay pings it
    /// every third of this) before it is dropped.
    pub control_idle: Duration,
    /// How long a channel may carry nothing either way before it is closed.
    pub channel_idle: Duration,
    /// Names registered at once, in all.
    pub max_names: usize,
    /// Names held by one secret at once.
    pub max_names_per_secret: usize,
    /// Channels asked for or open per name at once.
    pub max_channels_per_name: usize,
    /// Services one host may offer.
    pub max_services: usize,
    /// With a domain, `NAME.domain` reaches the host `NAME` (sub-domain
    /// routing; needs a wildcard DNS record and certificate).
    pub domain: Option<String>,
}

impl Default for NamesConfig {
    fn default() -> Self {
        NamesConfig {
            grace: Duration::from_secs(30),
            open_timeout: Duration::from_secs(10),
            control_idle: Duration::from_secs(45),
            channel_idle: Duration::from_secs(600),
            max_names: 10_000,
            max_names_per_secret: 8,
            max_channels_per_name: 256,
            max_services: 16,
            domain: None,
        }
    }
}

/// Why a name or a channel was refused. The messages are the one-line
/// errors clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("[ERROR] A name is 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'.\n")]
    BadName,
    #[error("[ERROR] A secret is 16 to 256 printable ASCII characters.\n")]
    BadSecret,
    #[error("[ERROR] A host offers 1 to 16 services, each 1 to 64 of a-z, 0-9, '.', '_', '/' and '-'.\n")]
    BadServices,
    #[error("[ERROR] The name '{0}' is held with another secret.\n")]
    Taken(String),
    #[error("[ERROR] This secret holds {0} names already, the most allowed.\n")]
    TooManyNames(usize),
    #[error("[ERROR] The relay holds as many names as it allows; try again later.\n")]
    Full,
    #[error("[ERROR] No host is registered as '{0}'.\n")]
    NoSuchName(String),
    #[error("[ERROR] The host '{0}' does not offer the service '{1}'.\n")]
    NoService(String, String),
    #[error("[ERROR] The host '{0}' has as many channels as it allows; try again later.\n")]
    TooManyChannels(String),
    #[error("[ERROR] No channel waits under this id (answered, given up, or never asked for).\n")]
    NoSuchChannel,
}

/// A channel a client asked for, as the host's control connection hears
/// of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenNotice {
    /// 32 hex digits (128 random bits): the host opens the channel with it.
    pub id: String,
    /// One of the services the host registered.
    pub service: String,
}

#[derive(Default)]
pub(super) struct Names {
    map: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    names: HashMap<Box<str>, Entry>,
    /// Waiting channel id -> the name it was asked of.
    waiting: HashMap<Box<str>, Box<str>>,
    /// Channels a host opens as two requests: the half not claimed yet.
    parked: HashMap<Box<str>, Parked>,
}

/// The other half of a channel whose first half a host claimed.
struct Parked {
    reader: Option<mpsc::Receiver<Message>>,
    writer: Option<mpsc::Sender<Message>>,
    joined: Arc<dyn Send + Sync>,
}

struct Entry {
    /// Tells this entry from a later one under the same name.
    id: u64,
    digest: [u8; 32],
    services: Vec<String>,
    holder: Option<Holder>,
    /// Set when the holder left: the grace timer of that release.
    released: Option<u64>,
    /// Channels waiting or open.
    channels: usize,
    waiting: HashMap<Box<str>, Waiting>,
}

struct Holder {
    id: u64,
    notices: mpsc::UnboundedSender<OpenNotice>,
}

struct Waiting {
    service: String,
    deliver: oneshot::Sender<Result<PairEnd, String>>,
}

/// (names, names with a connected host, channels waiting or open).
pub(super) type NameCounts = (usize, usize, usize);

impl Names {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn counts(&self) -> NameCounts {
        let inner = self.lock();
        let held = inner.names.values().filter(|e| e.holder.is_some()).count();
        let channels = inner.names.values().map(|e| e.channels).sum();
        (inner.names.len(), held, channels)
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A name as given, lower-cased, if it is one DNS label.
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    ok.then_some(name)
}

fn valid_secret(secret: &str) -> bool {
    (MIN_SECRET..=MAX_SECRET).contains(&secret.len())
        && secret.bytes().all(|b| b.is_ascii_graphic())
}

fn valid_service(service: &str) -> bool {
    !service.is_empty()
        && service.len() <= MAX_SERVICE
        && service.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'/' | b'-')
        })
}

/// 128 random bits as 32 hex digits.
fn random_hex() -> String {
    let bytes: [u8; 16] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `word-word-NNNN` from the word list.
fn random_name() -> String {
    let words: Vec<&str> = WORDS
        .lines()
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    let mut rng = rand::thread_rng();
    let mut pick = || words.get(rng.gen_range(0..words.len().max(1))).copied();
    let (a, b) = (pick().unwrap_or("host"), pick().unwrap_or("name"));
    format!("{a}-{b}-{}", rand::thread_rng().gen_range(1000..=9999))
}

/// What a host asks for when it registers.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// The name wanted; `None` for a random one.
    pub name: Option<String>,
    /// The secret that holds it; `None` to have one generated.
    pub secret: Option<String>,
    /// The services offered, first the default; none means
    /// [`DEFAULT_SERVICE`].
    pub services: Vec<String>,
}

/// A name held by a control connection. Dropping it starts the grace
/// period.
pub struct Registration {
    pub name: String,
    /// The secret, when the relay generated it (to show the host once).
    pub generated_secret: Option<String>,
    /// Whether the name was held already (a reconnection, or a replaced
    /// control connection) rather than new.
    pub resumed: bool,
    /// The services offered, the default first.
    pub services: Vec<String>,
    /// One notice per channel asked for. Ends when another control
    /// connection with the same secret takes over.
    pub notices: mpsc::UnboundedReceiver<OpenNotice>,
    _holder: HolderGuard,
}

struct HolderGuard {
    shared: Arc<Shared>,
    name: Box<str>,
    entry: u64,
    holder: u64,
}

impl Drop for HolderGuard {
    fn drop(&mut self) {
        let release = self.shared.next_id();
        {
            let mut inner = self.shared.names.lock();
            let Some(entry) = inner.names.get_mut(&*self.name) else {
                return;
            };
            if entry.id != self.entry || entry.holder.as_ref().map(|h| h.id) != Some(self.holder) {
                return; // replaced by a newer control connection
            }
            entry.holder = None;
            entry.released = Some(release);
        }
        self.shared.changed.notify_waiters();
        let grace = self.shared.config.names.grace;
        let shared = Arc::clone(&self.shared);
        let name = self.name.clone();
        let entry = self.entry;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(grace).await;
                    expire(&shared, &name, entry, release);
                });
            }
            // No runtime to wait in: no grace.
            Err(_) => expire(&self.shared, &self.name, entry, release),
        }
    }
}

/// Removes a name whose grace period ran out, unless its host came back.
fn expire(shared: &Shared, name: &str, entry_id: u64, release: u64) {
    let removed = {
        let mut inner = shared.names.lock();
        let stale = inner
            .names
            .get(name)
            .is_some_and(|e| e.id == entry_id && e.holder.is_none() && e.released == Some(release));
        if !stale {
            return;
        }
        let removed = inner.names.remove(name);
        if let Some(entry) = &removed {
            for id in entry.waiting.keys() {
                inner.waiting.remove(id);
            }
        }
        shrink(&mut inner.names);
        removed
    };
    // Waiting clients learn here that the host is gone (their senders drop
    // outside the lock).
    drop(removed);
    shared.changed.notify_waiters();
}

fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        let keep = map.len() * 2;
        map.shrink_to(keep);
    }
}

/// Why a channel could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChannelFailed(pub String);

/// A client's request for a channel: resolves to its end once the host
/// opened the channel. Dropping it withdraws the request.
pub struct ChannelRequest {
    pub id: String,
    pub service: String,
    rx: oneshot::Receiver<Result<PairEnd, String>>,
    _guard: WaitingGuard,
}

impl Future for ChannelRequest {
    type Output = Result<PairEnd, ChannelFailed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            Ok(Ok(end)) => Ok(end),
            Ok(Err(why)) => Err(ChannelFailed(why)),
            Err(_) => Err(ChannelFailed("the host went away".into())),
        })
    }
}

struct WaitingGuard {
    shared: Arc<Shared>,
    name: Box<str>,
    entry: u64,
    id: Box<str>,
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        let mut inner = self.shared.names.lock();
        if inner.waiting.remove(&*self.id).is_none() {
            return; // answered (the channel's ends own the slot now) or expired
        }
        if let Some(entry) = inner.names.get_mut(&*self.name) {
            if entry.id == self.entry && entry.waiting.remove(&*self.id).is_some() {
                entry.channels -= 1;
            }
        }
        drop(inner);
        self.shared.changed.notify_waiters();
    }
}

/// The slot of an open channel, freed when both its ends are gone.
struct ChannelGuard {
    shared: Arc<Shared>,
    name: Box<str>,
    entry: u64,
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        let mut inner = self.shared.names.lock();
        if let Some(entry) = inner.names.get_mut(&*self.name) {
            if entry.id == self.entry {
                entry.channels = entry.channels.saturating_sub(1);
            }
        }
        drop(inner);
        self.shared.changed.notify_waiters();
    }
}

impl Relay {
    /// The limits and timings of names.
    pub fn names_config(&self) -> &NamesConfig {
        &self.shared.config.names
    }

    /// Claims a name for a control connection (see the module docs).
    pub fn register_name(&self, claim: Claim) -> Result<Registration, NameError> {
        let config = &self.shared.config.names;
        let wanted = match &claim.name {
            Some(name) => Some(normalize_name(name).ok_or(NameError::BadName)?),
            None => None,
        };
        let (secret, generated_secret) = match claim.secret {
            Some(secret) if valid_secret(&secret) => (secret, None),
            Some(_) => return Err(NameError::BadSecret),
            None => {
                let secret = random_hex();
                (secret.clone(), Some(secret))
            }
        };
        let services = if claim.services.is_empty() {
            vec![DEFAULT_SERVICE.to_owned()]
        } else {
            claim.services
        };
        if services.len() > config.max_services || !services.iter().all(|s| valid_service(s)) {
            return Err(NameError::BadServices);
        }
        let digest = digest(&secret);
        let holder_id = self.shared.next_id();
        let (notices, rx) = mpsc::unbounded_channel();
        let mut inner = self.shared.names.lock();
        let (name, entry_id, resumed) = match wanted.as_deref().and_then(|n| inner.names.get_mut(n))
        {
            Some(entry) => {
                if !bool::from(entry.digest.ct_eq(&digest)) {
                    return Err(NameError::Taken(wanted.unwrap_or_default()));
                }
                // The same secret: a reconnection, or a new control
                // connection replacing the old one (whose notices end).
                // Requests that waited meanwhile are told now.
                for (id, waiting) in &entry.waiting {
                    let _ = notices.send(OpenNotice {
                        id: id.to_string(),
                        service: waiting.service.clone(),
                    });
                }
                entry.holder = Some(Holder {
                    id: holder_id,
                    notices,
                });
                entry.released = None;
                entry.services = services.clone();
                (wanted.unwrap_or_default(), entry.id, true)
            }
            None => {
                if inner.names.len() >= config.max_names {
                    return Err(NameError::Full);
                }
                let held = inner
                    .names
                    .values()
                    .filter(|e| bool::from(e.digest.ct_eq(&digest)))
                    .count();
                if held >= config.max_names_per_secret {
                    return Err(NameError::TooManyNames(held));
                }
                let name = match wanted {
                    Some(name) => name,
                    None => {
                        // A few tries; a collision is rare.
                        let mut name = random_name();
                        for _ in 0..16 {
                            if !inner.names.contains_key(name.as_str()) {
                                break;
                            }
                            name = format!(
                                "{}-{}",
                                random_name(),
                                random_hex().get(..6).unwrap_or("0")
                            );
                        }
                        if inner.names.contains_key(name.as_str()) {
                            return Err(NameError::Full);
                        }
                        name
                    }
                };
                let entry_id = self.shared.next_id();
                inner.names.insert(
                    name.as_str().into(),
                    Entry {
                        id: entry_id,
                        digest,
                        services: services.clone(),
                        holder: Some(Holder {
                            id: holder_id,
                            notices,
                        }),
                        released: None,
                        channels: 0,
                        waiting: HashMap::new(),
                    },
                );
                (name, entry_id, false)
            }
        };
        drop(inner);
        self.shared.changed.notify_waiters();
        Ok(Registration {
            _holder: HolderGuard {
                shared: Arc::clone(&self.shared),
                name: name.as_str().into(),
                entry: entry_id,
                holder: holder_id,
            },
            name,
            generated_secret,
            resumed,
            services,
            notices: rx,
        })
    }

    /// Asks the host `name` for a channel to `service` (its first service
    /// when `None`). A host away within its grace period is told when it
    /// comes back.
    pub fn connect_name(
        &self,
        name: &str,
        service: Option<&str>,
    ) -> Result<ChannelRequest, NameError> {
        let name = normalize_name(name).ok_or_else(|| NameError::NoSuchName(name.to_owned()))?;
        let id = random_hex();
        let (deliver, rx) = oneshot::channel();
        let mut guard = self.shared.names.lock();
        let inner = &mut *guard;
        let entry = inner
            .names
            .get_mut(name.as_str())
            .ok_or_else(|| NameError::NoSuchName(name.clone()))?;
        let service = match service {
            None => entry.services.first().cloned().unwrap_or_default(),
            Some(s) if entry.services.iter().any(|offered| offered == s) => s.to_owned(),
            Some(s) => return Err(NameError::NoService(name, s.to_owned())),
        };
        if entry.channels >= self.shared.config.names.max_channels_per_name {
            return Err(NameError::TooManyChannels(name));
        }
        entry.channels += 1;
        if let Some(holder) = &entry.holder {
            // A holder whose connection is closing misses it; it is sent
            // again when the host registers again.
            let _ = holder.notices.send(OpenNotice {
                id: id.clone(),
                service: service.clone(),
            });
        }
        entry.waiting.insert(
            id.as_str().into(),
            Waiting {
                service: service.clone(),
                deliver,
            },
        );
        let entry_id = entry.id;
        inner
            .waiting
            .insert(id.as_str().into(), name.as_str().into());
        drop(guard);
        self.shared.changed.notify_waiters();
        Ok(ChannelRequest {
            _guard: WaitingGuard {
                shared: Arc::clone(&self.shared),
                name: name.into(),
                entry: entry_id,
                id: id.as_str().into(),
            },
            id,
            service,
            rx,
        })
    }

    /// The host opens channel `id`: it gets its end, the waiting client
    /// the other.
    pub fn accept_channel(&self, id: &str) -> Result<PairEnd, NameError> {
        let (waiting, name, entry_id) = self.take_waiting(id)?;
        let guard = Arc::new(ChannelGuard {
            shared: Arc::clone(&self.shared),
            name,
            entry: entry_id,
        });
        let (host, client) = PairEnd::joined(guard);
        match waiting.deliver.send(Ok(client)) {
            Ok(()) => Ok(host),
            // The client gave up just now; dropping its end frees the slot.
            Err(_) => Err(NameError::NoSuchChannel),
        }
    }

    /// The host turns channel `id` down; the waiting client gets `reason`.
    pub fn refuse_channel(&self, id: &str, reason: &str) -> Result<(), NameError> {
        let (waiting, name, entry_id) = self.take_waiting(id)?;
        let _ = waiting.deliver.send(Err(reason.to_owned()));
        let mut inner = self.shared.names.lock();
        if let Some(entry) = inner.names.get_mut(&*name) {
            if entry.id == entry_id {
                entry.channels = entry.channels.saturating_sub(1);
            }
        }
        drop(inner);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    fn take_waiting(&self, id: &str) -> Result<(Waiting, Box<str>, u64), NameError> {
        take_waiting(&mut self.shared.names.lock(), id)
    }

    /// The client-to-host direction of channel `id`, for a host that opens
    /// the channel as two requests (a download and an upload). The first
    /// of the two opens the channel; the other half waits for the second
    /// for the open timeout, then the channel is closed.
    pub fn channel_reader(&self, id: &str) -> Result<ChannelReader, NameError> {
        match self.channel_half(id, true)? {
            (Some(rx), _, joined) => Ok(ChannelReader {
                rx,
                _joined: joined,
            }),
            _ => Err(NameError::NoSuchChannel),
        }
    }

    /// The host-to-client direction of channel `id` (see
    /// [`Relay::channel_reader`]).
    pub fn channel_writer(&self, id: &str) -> Result<ChannelWriter, NameError> {
        match self.channel_half(id, false)? {
            (_, Some(tx), joined) => Ok(ChannelWriter {
                tx,
                _joined: joined,
            }),
            _ => Err(NameError::NoSuchChannel),
        }
    }

    #[allow(clippy::type_complexity)]
    fn channel_half(
        &self,
        id: &str,
        reader: bool,
    ) -> Result<
        (
            Option<mpsc::Receiver<Message>>,
            Option<mpsc::Sender<Message>>,
            Arc<dyn Send + Sync>,
        ),
        NameError,
    > {
        let mut inner = self.shared.names.lock();
        if let Some(parked) = inner.parked.get_mut(id) {
            let half = match reader {
                true => (parked.reader.take(), None),
                false => (None, parked.writer.take()),
            };
            let joined = Arc::clone(&parked.joined);
            if parked.reader.is_none() && parked.writer.is_none() {
                inner.parked.remove(id);
            }
            drop(inner);
            return Ok((half.0, half.1, joined));
        }
        let (waiting, name, entry_id) = take_waiting(&mut inner, id)?;
        let guard = Arc::new(ChannelGuard {
            shared: Arc::clone(&self.shared),
            name,
            entry: entry_id,
        });
        let (host, client) = PairEnd::joined(guard);
        if let Err(client) = waiting.deliver.send(Ok(client)) {
            // The client gave up just now; its end and ours free the slot,
            // outside the lock (their guard takes it).
            drop(inner);
            drop((client, host));
            return Err(NameError::NoSuchChannel);
        }
        let PairEnd { tx, rx, _joined } = host;
        let (mine, parked) = match reader {
            true => ((Some(rx), None), (None, Some(tx))),
            false => ((None, Some(tx)), (Some(rx), None)),
        };
        inner.parked.insert(
            id.into(),
            Parked {
                reader: parked.0,
                writer: parked.1,
                joined: Arc::clone(&_joined),
            },
        );
        drop(inner);
        // The second request has as long as a host has to open a channel.
        let shared = Arc::clone(&self.shared);
        let limit = shared.config.names.open_timeout;
        let id: Box<str> = id.into();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(limit).await;
                let unclaimed = shared.names.lock().parked.remove(&id);
                drop(unclaimed);
            });
        }
        Ok((mine.0, mine.1, _joined))
    }
}

fn take_waiting(inner: &mut Inner, id: &str) -> Result<(Waiting, Box<str>, u64), NameError> {
    {
        let name = inner.waiting.remove(id).ok_or(NameError::NoSuchChannel)?;
        let entry = inner
            .names
            .get_mut(&*name)
            .ok_or(NameError::NoSuchChannel)?;
        let waiting = entry.waiting.remove(id).ok_or(NameError::NoSuchChannel)?;
        shrink(&mut inner.waiting);
        Ok((waiting, name, entry.id))
    }
}

/// The client-to-host direction of a channel opened as a download: the
/// bytes of the client's messages, until the client ends its direction
/// (an empty message) or the channel closes.
pub struct ChannelReader {
    rx: mpsc::Receiver<Message>,
    _joined: Arc<dyn Send + Sync>,
}

impl ChannelReader {
    /// The next bytes; `None` at the end.
    pub async fn next(&mut self) -> Option<Bytes> {
        match self.rx.recv().await {
            Some(message) if !message.data.is_empty() => Some(message.data),
            _ => None,
        }
    }
}

/// The host-to-client direction of a channel opened as an upload.
/// Dropping it without [`ChannelWriter::end`] closes the whole channel (an
/// upload cut short).
pub struct ChannelWriter {
    tx: mpsc::Sender<Message>,
    _joined: Arc<dyn Send + Sync>,
}

impl ChannelWriter {
    /// Passes `data` on, in binary messages of at most 64 KiB; `false`
    /// once the channel is closed.
    pub async fn send(&self, mut data: Bytes) -> bool {
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(IO_CHUNK));
            let message = Message {
                text: false,
                data: piece,
            };
            if self.tx.send(message).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Ends this direction (the client's side sees its half-close).
    pub async fn end(self) {
        let end = Message {
            text: false,
            data: Bytes::new(),
        };
        let _ = self.tx.send(end).await;
    }
}

/// One end of a channel as a byte stream: reads take the other side's
/// messages' bytes (text or binary alike), writes become binary messages
/// of at most 64 KiB. An empty message ends a direction: shutting down
/// sends one, and one received reads as the end, as the clients' channels
/// do (so half-closed connections work). Dropping it closes the channel.
pub struct ChannelIo {
    rx: mpsc::Receiver<Message>,
    tx: tokio_util::sync::PollSender<Message>,
    pending: Bytes,
    /// The other side ended its direction.
    ended: bool,
    /// This side sent its end.
    shut: bool,
    _joined: Arc<dyn Send + Sync>,
}

impl ChannelIo {
    pub fn new(end: PairEnd) -> Self {
        ChannelIo {
            rx: end.rx,
            tx: tokio_util::sync::PollSender::new(end.tx),
            pending: Bytes::new(),
            ended: false,
            shut: false,
            _joined: end._joined,
        }
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the channel was closed")
}

impl AsyncRead for ChannelIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(message) if !message.data.is_empty() => self.pending = message.data,
                // An empty message or a closed channel: the end.
                _ => {
                    self.ended = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ChannelIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.shut {
            return Poll::Ready(Err(broken()));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| broken())?;
        let n = buf.len().min(IO_CHUNK);
        let message = Message {
            text: false,
            data: Bytes::copy_from_slice(&buf[..n]),
        };
        self.tx.send_item(message).map_err(|_| broken())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.shut {
            return Poll::Ready(Ok(()));
        }
        // The other side may be gone already: then there is nothing to end.
        if ready!(self.tx.poll_reserve(cx)).is_ok() {
            let end = Message {
                text: false,
                data: Bytes::new(),
            };
            let _ = self.tx.send_item(end);
        }
        self.shut = true;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::{RelayConfig, Stats};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SECRET: &str = "0123456789abcdef-secret";
    const OTHER: &str = "another-secret-of-16+";

    fn relay(names: NamesConfig) -> Relay {
        Relay::new(RelayConfig {
            names,
            ..RelayConfig::default()
        })
    }

    fn claim(name: &str, secret: &str) -> Claim {
        Claim {
            name: Some(name.into()),
            secret: Some(secret.into()),
            services: vec![],
        }
    }

    #[tokio::test]
    async fn a_client_and_the_host_meet_on_a_channel() {
        let relay = relay(NamesConfig::default());
        let mut reg = relay.register_name(claim("Home", SECRET)).unwrap();
        assert_eq!(reg.name, "home");
        assert!(!reg.resumed);
        let request = relay.connect_name("home", None).unwrap();
        let notice = reg.notices.recv().await.unwrap();
        assert_eq!(notice.service, DEFAULT_SERVICE);
        assert_eq!(notice.id.len(), 32);
        assert_eq!(notice.id, request.id);
        let host = relay.accept_channel(&notice.id).unwrap();
        let client = request.await.unwrap();
        // Bytes both ways through the two ends as streams.
        let (mut h, mut c) = (ChannelIo::new(host), ChannelIo::new(client));
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        h.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        h.write_all(b"pong").await.unwrap();
        h.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"pong");
        assert_eq!(relay.stats().name_channels, 1);
        drop((h, c));
        assert_eq!(relay.stats().name_channels, 0);
        // An id is good once.
        assert_eq!(
            relay.accept_channel(&notice.id).err(),
            Some(NameError::NoSuchChannel)
        );
    }

    #[tokio::test]
    async fn only_the_secret_holds_or_retakes_a_name() {
        let relay = relay(NamesConfig::default());
        let mut first = relay.register_name(claim("box", SECRET)).unwrap();
        assert_eq!(
            relay.register_name(claim("box", OTHER)).err(),
            Some(NameError::Taken("box".into()))
        );
        // The same secret replaces the control connection: the old one's
        // notices end, the new one gets them.
        let mut second = relay.register_name(claim("box", SECRET)).unwrap();
        assert!(second.resumed);
        assert_eq!(first.notices.recv().await, None);
        drop(first); // the replaced connection leaving changes nothing
        assert_eq!(relay.stats().names_held, 1);
        let _request = relay.connect_name("box", None).unwrap();
        assert!(second.notices.recv().await.is_some());
        for bad in ["", "-x", "x-", "a b", "ü", &"x".repeat(64)] {
            assert_eq!(
                relay.register_name(claim(bad, SECRET)).err(),
                Some(NameError::BadName),
                "{bad:?}"
            );
        }
        assert_eq!(
            relay.register_name(claim("short", "too-short")).err(),
            Some(NameError::BadSecret)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_waits_out_its_grace_period_for_its_host() {
        let grace = Duration::from_secs(30);
        let relay = relay(NamesConfig {
            grace,
            ..NamesConfig::default()
        });
        let reg = relay.register_name(claim("home", SECRET)).unwrap();
        drop(reg);
        assert_eq!(relay.stats().names, 1);
        assert_eq!(relay.stats().names_held, 0);
        // Meanwhile: no one else takes it, and a client's request waits.
        assert!(matches!(
            relay.register_name(claim("home", OTHER)),
            Err(NameError::Taken(_))
        ));
        let request = relay.connect_name("home", None).unwrap();
        tokio::time::sleep(grace / 2).await;
        // The host comes back: the waiting request is told at once.
        let mut back = relay.register_name(claim("home", SECRET)).unwrap();
        assert!(back.resumed);
        let notice = back.notices.recv().await.unwrap();
        assert_eq!(notice.id, request.id);
        relay.refuse_channel(&notice.id, "no service here").unwrap();
        assert_eq!(
            request.await.err(),
            Some(ChannelFailed("no service here".into()))
        );
        // The first grace timer does not remove the name taken back.
        tokio::time::sleep(grace).await;
        assert_eq!(relay.stats().names_held, 1);
        drop(back);
        let waiting = relay.connect_name("home", None).unwrap();
        tokio::time::sleep(grace + Duration::from_millis(1)).await;
        // Gone: the waiting client is told, everything is freed, and
        // anyone may take the name.
        assert_eq!(
            waiting.await.err(),
            Some(ChannelFailed("the host went away".into()))
        );
        assert_eq!(relay.stats(), Stats::default());
        assert!(relay.register_name(claim("home", OTHER)).is_ok());
    }

    #[tokio::test]
    async fn limits_hold() {
        let relay = relay(NamesConfig {
            max_names: 3,
            max_names_per_secret: 2,
            max_channels_per_name: 2,
            ..NamesConfig::default()
        });
        let _a = relay.register_name(claim("a", SECRET)).unwrap();
        let _b = relay.register_name(claim("b", SECRET)).unwrap();
        assert_eq!(
            relay.register_name(claim("c", SECRET)).err(),
            Some(NameError::TooManyNames(2))
        );
        let _c = relay.register_name(claim("c", OTHER)).unwrap();
        assert_eq!(
            relay
                .register_name(claim("d", "third-secret-16chars"))
                .err(),
            Some(NameError::Full)
        );
        let one = relay.connect_name("a", None).unwrap();
        let _two = relay.connect_name("a", None).unwrap();
        assert!(matches!(
            relay.connect_name("a", None),
            Err(NameError::TooManyChannels(_))
        ));
        drop(one); // a withdrawn request frees its slot
        assert!(relay.connect_name("a", None).is_ok());
        assert!(matches!(
            relay.connect_name("a", Some("ssh")),
            Err(NameError::NoService(..))
        ));
        assert!(matches!(
            relay.connect_name("nobody", None),
            Err(NameError::NoSuchName(_))
        ));
        let services = (0..17).map(|i| format!("s{i}")).collect();
        assert_eq!(
            relay
                .register_name(Claim {
                    services,
                    ..claim("e", OTHER)
                })
                .err(),
            Some(NameError::BadServices)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_opened_as_two_requests() {
        let relay = relay(NamesConfig::default());
        let mut reg = relay.register_name(claim("two", SECRET)).unwrap();
        let request = relay.connect_name("two", None).unwrap();
        let id = reg.notices.recv().await.unwrap().id;
        // The upload half first: it opens the channel, the client is in.
        let writer = relay.channel_writer(&id).unwrap();
        let client = ChannelIo::new(request.await.unwrap());
        let (mut client_read, mut client_write) = tokio::io::split(client);
        assert!(writer.send(Bytes::from_static(b"from the host")).await);
        writer.end().await;
        let mut got = Vec::new();
        client_read.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"from the host");
        // Then the download half; each half is had once.
        let mut reader = relay.channel_reader(&id).unwrap();
        assert!(relay.channel_reader(&id).is_err());
        client_write.write_all(b"from the client").await.unwrap();
        client_write.shutdown().await.unwrap();
        assert_eq!(
            reader.next().await,
            Some(Bytes::from_static(b"from the client"))
        );
        assert_eq!(reader.next().await, None);
        drop((reader, client_read, client_write));
        assert_eq!(relay.stats().name_channels, 0);

        // A half never claimed is dropped after the open timeout, and the
        // channel with it.
        let request = relay.connect_name("two", None).unwrap();
        let id = reg.notices.recv().await.unwrap().id;
        let reader = relay.channel_reader(&id).unwrap();
        let mut client = ChannelIo::new(request.await.unwrap());
        tokio::time::sleep(relay.names_config().open_timeout * 2).await;
        assert!(relay.channel_writer(&id).is_err());
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop((reader, client));
        assert_eq!(relay.stats().name_channels, 0);
    }

    #[tokio::test]
    async fn random_names_and_secrets() {
        let relay = relay(NamesConfig::default());
        let reg = relay.register_name(Claim::default()).unwrap();
        assert!(normalize_name(&reg.name).is_some(), "{}", reg.name);
        let secret = reg.generated_secret.clone().unwrap();
        assert_eq!(secret.len(), 32);
        let name = reg.name.clone();
        let services = vec!["tcp/22".to_owned(), "http".to_owned()];
        let again = relay
            .register_name(Claim {
                name: Some(name.clone()),
                secret: Some(secret),
                services,
            })
            .unwrap();
        assert!(again.resumed && again.generated_secret.is_none());
        let request = relay.connect_name(&name, None).unwrap();
        assert_eq!(request.service, "tcp/22");
    }
}
