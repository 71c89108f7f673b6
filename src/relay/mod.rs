//! The relay core: paths, rendezvous, fan-out, backpressure and cleanup.
//!
//! It knows nothing of HTTP. A transport turns a request into a call to
//! [`Relay::send`] or [`Relay::receive`] and turns what comes back into a
//! response:
//!
//! - a sender hands over its [`Head`] and its body as a [`ByteStream`], and
//!   gets a [`SenderLog`], the stream of lines for its live log;
//! - a receiver gets a [`ReceiverTicket`], which resolves to the sender's
//!   head and a [`ReceiverStream`] once the sender and all `n` receivers
//!   are present.
//!
//! Ownership is what keeps the registry exact. Each waiting peer's handle
//! removes its entry when dropped, whatever the reason (the client left,
//! the transport failed, the task was cancelled). The sender's log owns
//! the transfer: the body, the receivers' queues and the "busy" mark of
//! the path, so when it ends or is dropped, all of them go. There is no
//! task per transfer: polling the log runs it, on the sender's connection.
//! The registry's lock is a plain mutex that is never held across an
//! `.await`.

mod fanout;
pub mod live;
pub mod names;
pub mod pair;
pub mod protocol;
pub mod room;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};

pub use fanout::{Aborted, ReceiverStream};
pub use protocol::{parse_count, safe_content_type, Count, Head, Log, Offer, Reject};

/// Why a sender's body stopped before its end.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A sender's body as the core sees it: chunks of bytes, then the end
/// (`None`), or an error if the sender was cut short.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// Tuning of the core. The defaults bound memory per transfer to a few
/// chunks per receiver.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Chunks queued towards each receiver before the sender is held back.
    pub queue_chunks: usize,
    /// Bytes of a waiting sender's body read ahead so that the relay sees
    /// the sender leave (a connection is only seen closing when read).
    pub read_ahead: usize,
    /// How long a sender or receiver may wait for its peers.
    pub wait_timeout: Option<Duration>,
    /// Paths in use at once (waiting or transferring); 0: no limit.
    pub max_paths: usize,
    /// Bytes one transfer may carry; 0: no limit.
    pub max_transfer_bytes: u64,
    /// Limits and timings of registered names (see [`names`]).
    pub names: names::NamesConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            queue_chunks: 4,
            read_ahead: 64 * 1024,
            wait_timeout: None,
            max_paths: 0,
            max_transfer_bytes: 0,
            names: names::NamesConfig::default(),
        }
    }
}

/// Running totals since start, for metrics.
#[derive(Debug, Default)]
struct Totals {
    started: AtomicU64,
    completed: AtomicU64,
    aborted: AtomicU64,
    bytes: AtomicU64,
    spliced: AtomicU64,
    /// How long ended transfers ran.
    durations: Histogram,
    /// How long receivers waited for their transfer to start.
    waits: Histogram,
}

/// Counts of durations per bucket of [`DURATION_BUCKETS`] (and one past
/// the last), and their sum in ms: plain atomics, read at scrape time.
#[derive(Debug, Default)]
struct Histogram {
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_ms: AtomicU64,
}

impl Histogram {
    fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum: self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

/// A snapshot of a duration histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Per bucket of [`DURATION_BUCKETS`] (not cumulative), the last one
    /// past the last bound.
    pub counts: [u64; DURATION_BUCKETS.len() + 1],
    /// The durations' sum, in seconds.
    pub sum: f64,
}

/// Upper bounds, in seconds, of the transfer duration histogram.
pub const DURATION_BUCKETS: [f64; 8] = [0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 86400.0];

/// A snapshot of [`Relay::totals`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TotalsSnapshot {
    /// Transfers that started (all peers met).
    pub started: u64,
    /// Transfers every receiver got whole.
    pub completed: u64,
    /// Transfers cut short (sender cut, every receiver gone, too large).
    pub aborted: u64,
    /// Bytes read from senders of started transfers.
    pub bytes: u64,
    /// Of those, bytes a transport moved itself, socket to socket (see
    /// [`Relay::count_relayed`]).
    pub spliced: u64,
    /// How long ended transfers ran.
    pub durations: HistogramSnapshot,
    /// How long receivers waited for their transfer to start.
    pub waits: HistogramSnapshot,
}

/// The registry of paths. Cheap to clone; all clones share one registry.
#[derive(Clone, Default)]
pub struct Relay {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    paths: Mutex<HashMap<Box<str>, Slot>>,
    next_id: AtomicU64,
    config: RelayConfig,
    /// Woken on every change of the registry, for [`Relay::wait_until`].
    changed: tokio::sync::Notify,
    /// Peers in pair mode (see [`pair`]).
    pairs: pair::Pairs,
    /// Live streams (see [`live`]).
    lives: live::Lives,
    /// Signaling rooms (see [`room`]).
    rooms: room::Rooms,
    totals: Totals,
    /// The limits of the config, changeable while running.
    limits: Limits,
    /// Registered names (see [`names`]).
    names: names::Names,
}

/// [`RelayConfig`]'s limits, which [`Relay::set_limits`] changes for
/// peers that come from then on.
#[derive(Debug, Default)]
struct Limits {
    /// Milliseconds; 0: no limit.
    wait_timeout_ms: AtomicU64,
    max_paths: AtomicUsize,
    max_transfer_bytes: AtomicU64,
}

impl Limits {
    fn set(&self, config: &RelayConfig) {
        let ms = config.wait_timeout.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.wait_timeout_ms.store(ms, Ordering::Relaxed);
        self.max_paths.store(config.max_paths, Ordering::Relaxed);
        self.max_transfer_bytes
            .store(config.max_transfer_bytes, Ordering::Relaxed);
    }

    fn wait_timeout(&self) -> Option<Duration> {
        match self.wait_timeout_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    fn max_transfer_bytes(&self) -> u64 {
        self.max_transfer_bytes.load(Ordering::Relaxed)
    }
}

enum Slot {
    /// Peers gather; nothing flows yet.
    Waiting(Waiting),
    /// A transfer runs; the id is its sender's.
    Busy(u64),
}

struct Waiting {
    n: Count,
    sender: Option<WaitingSender>,
    receivers: Vec<WaitingReceiver>,
}

struct WaitingSender {
    id: u64,
    log: mpsc::UnboundedSender<Log>,
    /// `Err`: turned away (timed out, shutting down); no transfer.
    start: oneshot::Sender<Result<Vec<WaitingReceiver>, Undelivered>>,
    since: tokio::time::Instant,
}

struct WaitingReceiver {
    id: u64,
    deliver: oneshot::Sender<Result<Delivery, Undelivered>>,
    since: tokio::time::Instant,
}

/// What a receiver gets when its transfer starts.
pub struct Delivery {
    pub head: Head,
    pub body: ReceiverStream,
}

/// Counts of what the registry holds, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub paths: usize,
    pub waiting_senders: usize,
    pub waiting_receivers: usize,
    pub transfers: usize,
    /// Pair-mode peers waiting for a partner.
    pub pairs_waiting: usize,
    /// Joined pairs.
    pub pairs_joined: usize,
    /// Live paths (with a sender, or receivers waiting for one).
    pub live_paths: usize,
    /// Receivers of live streams.
    pub live_receivers: usize,
    /// Signaling rooms, and their members.
    pub rooms: usize,
    pub room_members: usize,
    /// Registered names, those whose host is connected, and their
    /// channels (asked for or open).
    pub names: usize,
    pub names_held: usize,
    pub name_channels: usize,
}

impl Relay {
    pub fn new(config: RelayConfig) -> Self {
        let shared = Shared {
            config,
            ..Shared::default()
        };
        shared.limits.set(&shared.config);
        Relay {
            shared: Arc::new(shared),
        }
    }

    /// Changes the wait limit, the path cap and the byte limit for peers
    /// that come from now on (a reload of the settings).
    pub fn set_limits(
        &self,
        wait_timeout: Option<Duration>,
        max_paths: usize,
        max_transfer_bytes: u64,
    ) {
        self.shared.limits.set(&RelayConfig {
            wait_timeout,
            max_paths,
            max_transfer_bytes,
            ..RelayConfig::default()
        });
    }

    /// Registers a sender of `n` receivers on `path`. On success the
    /// returned log owns `body` and, polled, runs the transfer; it ends
    /// when the transfer is over.
    pub fn send(
        &self,
        path: &str,
        n: Count,
        head: Head,
        body: ByteStream,
    ) -> Result<SenderLog, Reject> {
        let max = self.shared.limits.max_transfer_bytes();
        if max > 0 && head.content_length.is_some_and(|length| length > max) {
            return Err(Reject::TooLarge(max));
        }
        let id = self.shared.next_id();
        let (log_tx, log_rx) = mpsc::unbounded_channel();
        let (start_tx, start_rx) = oneshot::channel();
        let ready = {
            let mut paths = self.shared.lock();
            match paths.get(path) {
                Some(Slot::Busy(_)) => return Err(Reject::Established(path.to_string())),
                Some(Slot::Waiting(w)) if w.sender.is_some() => {
                    return Err(Reject::AnotherSender(path.to_string()))
                }
                Some(Slot::Waiting(w)) if w.n != n => {
                    return Err(Reject::CountMismatch {
                        expected: w.n,
                        got: n,
                    })
                }
                Some(Slot::Waiting(_)) => {}
                None => {
                    self.shared.check_room_for_a_path(paths.len())?;
                    paths.insert(
                        path.into(),
                        Slot::Waiting(Waiting {
                            n,
                            sender: None,
                            receivers: Vec::new(),
                        }),
                    );
                }
            }
            if let Some(Slot::Waiting(waiting)) = paths.get_mut(path) {
                // The receiving end of the log is alive right here, so
                // these sends cannot fail.
                let _ = log_tx.send(Log::Waiting(n));
                if !waiting.receivers.is_empty() {
                    let _ = log_tx.send(Log::ReceiversPresent(waiting.receivers.len()));
                }
                waiting.sender = Some(WaitingSender {
                    since: tokio::time::Instant::now(),
                    id,
                    log: log_tx.clone(),
                    start: start_tx,
                });
            }
            take_if_ready(&mut paths, path)
        };
        self.shared.changed.notify_waiters();
        let uploaded = Arc::new(AtomicBool::new(false));
        let transfer = fanout::run_sender(fanout::SenderTask {
            guard: PeerGuard::new(&self.shared, path, id, true),
            n,
            head,
            body,
            start: start_rx,
            log: log_tx,
            queue_chunks: self.shared.config.queue_chunks,
            read_ahead: self.shared.config.read_ahead,
            max_bytes: self.shared.limits.max_transfer_bytes(),
            uploaded: Arc::clone(&uploaded),
        });
        if let Some(start) = ready {
            start.go();
        }
        Ok(SenderLog {
            transfer: Some(Box::pin(transfer)),
            uploaded,
            log: log_rx,
            _guard: PeerGuard::new(&self.shared, path, id, false),
        })
    }

    /// Registers one of `n` receivers on `path`.
    pub fn receive(&self, path: &str, n: Count) -> Result<ReceiverTicket, Reject> {
        let id = self.shared.next_id();
        let (deliver, delivery) = oneshot::channel();
        let ready = {
            let mut paths = self.shared.lock();
            match paths.get_mut(path) {
                Some(Slot::Busy(_)) => return Err(Reject::Established(path.to_string())),
                Some(Slot::Waiting(w)) => {
                    if w.n != n {
                        return Err(Reject::CountMismatch {
                            expected: w.n,
                            got: n,
                        });
                    }
                    if w.receivers.len() >= w.n as usize {
                        return Err(Reject::ReceiversFull);
                    }
                    w.receivers.push(WaitingReceiver {
                        id,
                        deliver,
                        since: tokio::time::Instant::now(),
                    });
                    if let Some(sender) = &w.sender {
                        let _ = sender.log.send(Log::ReceiverConnected);
                    }
                }
                None => {
                    self.shared.check_room_for_a_path(paths.len())?;
                    paths.insert(
                        path.into(),
                        Slot::Waiting(Waiting {
                            n,
                            sender: None,
                            receivers: vec![WaitingReceiver {
                                id,
                                deliver,
                                since: tokio::time::Instant::now(),
                            }],
                        }),
                    );
                }
            }
            take_if_ready(&mut paths, path)
        };
        self.shared.changed.notify_waiters();
        if let Some(start) = ready {
            start.go();
        }
        Ok(ReceiverTicket {
            delivery,
            _guard: PeerGuard::new(&self.shared, path, id, false),
        })
    }

    /// Waits until `pred` holds for the registry's [`Stats`], or `limit`
    /// passes; returns the last stats seen and whether `pred` held. For
    /// tests and health checks that must wait for an event, not a time.
    pub async fn wait_until(
        &self,
        limit: std::time::Duration,
        pred: impl Fn(&Stats) -> bool,
    ) -> (Stats, bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let stats = self.stats();
            if pred(&stats) {
                return (stats, true);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return (self.stats(), false);
            }
        }
    }

    /// Turns every waiting peer away (the server is shutting down):
    /// waiting receivers get [`Undelivered::ShuttingDown`], waiting
    /// senders a last log line. Running transfers go on. Returns how many
    /// peers were turned away.
    pub fn turn_away_waiting(&self) -> usize {
        self.turn_away(|_| true, Undelivered::ShuttingDown)
    }

    /// Turns away the peers that have waited longer than the wait limit
    /// ([`Undelivered::TimedOut`] for receivers, a last log line for
    /// senders); returns how many.
    pub fn expire_waiting(&self) -> usize {
        let Some(limit) = self.shared.limits.wait_timeout() else {
            return 0;
        };
        let Some(cutoff) = tokio::time::Instant::now().checked_sub(limit) else {
            return 0;
        };
        self.turn_away(|since| since <= cutoff, Undelivered::TimedOut(limit))
    }

    /// Runs [`Relay::expire_waiting`] for as long as it is polled, every
    /// twentieth of the wait limit (between 50 ms and 30 s): one timer for
    /// the whole registry instead of one per waiting peer.
    pub async fn expire_forever(self) {
        loop {
            let every = self
                .shared
                .limits
                .wait_timeout()
                .map_or(EXPIRY_MAX, |limit| {
                    (limit / 20).clamp(EXPIRY_MIN, EXPIRY_MAX)
                });
            tokio::time::sleep(every).await;
            let expired = self.expire_waiting();
            if expired > 0 {
                tracing::debug!(expired, "waiting peers timed out");
            }
        }
    }

    /// Turns away the waiting peers that came at a time `pick` chooses.
    fn turn_away(&self, pick: impl Fn(tokio::time::Instant) -> bool, why: Undelivered) -> usize {
        let mut turned = Vec::new();
        {
            let mut paths = self.shared.lock();
            for slot in paths.values_mut() {
                if let Slot::Waiting(w) = slot {
                    if w.sender.as_ref().is_some_and(|s| pick(s.since)) {
                        turned.extend(w.sender.take().map(|s| Err(s.start)));
                    }
                    let (gone, stay) = std::mem::take(&mut w.receivers)
                        .into_iter()
                        .partition(|r| pick(r.since));
                    w.receivers = stay;
                    turned.extend(gone.into_iter().map(|r: WaitingReceiver| Ok(r.deliver)));
                }
            }
        }
        let count = turned.len();
        // Outside the lock: each peer's guard unregisters it.
        for peer in turned {
            match peer {
                Ok(deliver) => {
                    let _ = deliver.send(Err(why));
                }
                Err(start) => {
                    let _ = start.send(Err(why));
                }
            }
        }
        if count > 0 {
            self.shared.changed.notify_waiters();
        }
        count
    }

    /// Totals since the relay started.
    /// Counts bytes a transport relayed itself, past the fan-out (see
    /// [`Head::offer`]): `spliced` from a sender's socket to its
    /// receivers', or copied (read with the sender's head).
    pub fn count_relayed(&self, bytes: u64, spliced: bool) {
        let totals = &self.shared.totals;
        totals.bytes.fetch_add(bytes, Ordering::Relaxed);
        if spliced {
            totals.spliced.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub fn totals(&self) -> TotalsSnapshot {
        let t = &self.shared.totals;
        TotalsSnapshot {
            started: t.started.load(Ordering::Relaxed),
            completed: t.completed.load(Ordering::Relaxed),
            aborted: t.aborted.load(Ordering::Relaxed),
            bytes: t.bytes.load(Ordering::Relaxed),
            spliced: t.spliced.load(Ordering::Relaxed),
            durations: t.durations.snapshot(),
            waits: t.waits.snapshot(),
        }
    }

    /// The core's settings.
    pub fn config(&self) -> &RelayConfig {
        &self.shared.config
    }

    /// What the registry holds right now.
    pub fn stats(&self) -> Stats {
        let paths = self.shared.lock();
        let mut stats = Stats {
            paths: paths.len(),
            ..Stats::default()
        };
        for slot in paths.values() {
            match slot {
                Slot::Busy(_) => stats.transfers += 1,
                Slot::Waiting(w) => {
                    stats.waiting_senders += usize::from(w.sender.is_some());
                    stats.waiting_receivers += w.receivers.len();
                }
            }
        }
        drop(paths);
        (stats.pairs_waiting, stats.pairs_joined) = self.shared.pairs.counts();
        (stats.live_paths, stats.live_receivers) = self.shared.lives.counts();
        (stats.rooms, stats.room_members) = self.shared.rooms.counts();
        (stats.names, stats.names_held, stats.name_channels) = self.shared.names.counts();
        stats
    }
}

/// A rendezvous that just completed: the sender's transfer is told to start.
struct Start {
    sender: oneshot::Sender<Result<Vec<WaitingReceiver>, Undelivered>>,
    receivers: Vec<WaitingReceiver>,
}

impl Start {
    fn go(self) {
        // If the sender's transfer is gone, dropping the receivers' delivery
        // channels tells them so, and the transfer's guard frees the path.
        let _ = self.sender.send(Ok(self.receivers));
    }
}

/// If `path` has its sender and all its receivers, marks it busy and
/// returns what the sender's transfer needs to start.
fn take_if_ready(paths: &mut HashMap<Box<str>, Slot>, path: &str) -> Option<Start> {
    let slot = paths.get_mut(path)?;
    let Slot::Waiting(w) = slot else { return None };
    if w.sender.is_none() || w.receivers.len() < w.n as usize {
        return None;
    }
    let sender = w.sender.take()?;
    let receivers = std::mem::take(&mut w.receivers);
    *slot = Slot::Busy(sender.id);
    Some(Start {
        sender: sender.start,
        receivers,
    })
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Refuses a new path when the registry holds as many as allowed.
    fn check_room_for_a_path(&self, in_use: usize) -> Result<(), Reject> {
        let max = self.limits.max_paths.load(Ordering::Relaxed);
        if max > 0 && in_use >= max {
            Err(Reject::TooManyPaths)
        } else {
            Ok(())
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Slot>> {
        // A panic while holding the lock cannot leave the map half-updated
        // in a way that matters more than stopping every transfer would.
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes peer `id` from `path`: a waiting sender or receiver, or,
    /// with `busy`, the busy mark of its transfer. Idempotent.
    fn unregister(&self, path: &str, id: u64, busy: bool) {
        let mut paths = self.lock();
        let remove = match paths.get_mut(path) {
            Some(Slot::Busy(owner)) => busy && *owner == id,
            Some(Slot::Waiting(w)) => {
                if w.sender.as_ref().is_some_and(|s| s.id == id) {
                    w.sender = None;
                }
                w.receivers.retain(|r| r.id != id);
                w.sender.is_none() && w.receivers.is_empty()
            }
            None => false,
        };
        if remove {
            paths.remove(path);
            // Give memory back after a burst of paths.
            if paths.capacity() > 64 && paths.len() * 4 < paths.capacity() {
                let keep = paths.len() * 2;
                paths.shrink_to(keep);
            }
        }
        drop(paths);
        self.changed.notify_waiters();
    }
}

/// Removes a peer from the registry when dropped.
struct PeerGuard {
    shared: Arc<Shared>,
    path: Box<str>,
    id: u64,
    busy: bool,
}

impl PeerGuard {
    fn new(shared: &Arc<Shared>, path: &str, id: u64, busy: bool) -> Self {
        PeerGuard {
            shared: Arc::clone(shared),
            path: path.into(),
            id,
            busy,
        }
    }
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        self.shared.unregister(&self.path, self.id, self.busy);
    }
}

/// The sender's live log, and the transfer itself: polling the log drives
/// the rendezvous and the copy to the receivers, so the transfer runs on
/// the sender's own connection with no task of its own (one hand-over
/// between threads less per chunk). The log ends when the transfer is
/// over. Dropping it (the sender left) ends the transfer: a waiting sender
/// is unregistered, a running transfer aborts every receiver, unless the
/// whole upload is in already: then the transfer finishes on a task of its
/// own, and the receivers get every byte and a clean end.
pub struct SenderLog {
    transfer: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Set by the transfer once it has started and read the whole upload.
    uploaded: Arc<AtomicBool>,
    log: mpsc::UnboundedReceiver<Log>,
    _guard: PeerGuard,
}

impl Drop for SenderLog {
    fn drop(&mut self) {
        if !self.uploaded.load(Ordering::Relaxed) {
            return;
        }
        if let (Some(transfer), Ok(runtime)) =
            (self.transfer.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(transfer);
        }
    }
}

impl Stream for SenderLog {
    type Item = Log;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Log>> {
        if let Some(transfer) = self.transfer.as_mut() {
            if transfer.as_mut().poll(cx).is_ready() {
                self.transfer = None;
            }
        }
        match self.log.poll_recv(cx) {
            // Lines first; the end only once the transfer is over too.
            Poll::Ready(Some(line)) => Poll::Ready(Some(line)),
            Poll::Ready(None) if self.transfer.is_none() => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

/// A waiting receiver. Dropping it (its client left) unregisters it.
pub struct ReceiverTicket {
    delivery: oneshot::Receiver<Result<Delivery, Undelivered>>,
    _guard: PeerGuard,
}

/// Bounds on how often [`Relay::expire_forever`] looks.
const EXPIRY_MIN: Duration = Duration::from_millis(50);
const EXPIRY_MAX: Duration = Duration::from_secs(30);

/// Why a receiver's transfer did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Undelivered {
    /// The sender left between the rendezvous and the start.
    #[error("[ERROR] The sender left before the transfer started.\n")]
    SenderLeft,
    /// Not in the Piping spec: nobody came within the wait limit.
    #[error("[ERROR] No sender came within {}.\n", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// Not in the Piping spec: the server stops; try another time.
    #[error("[ERROR] The server is shutting down; try again.\n")]
    ShuttingDown,
}

impl ReceiverTicket {
    /// Waits for the transfer to start, or to be turned away (the wait
    /// limit, see [`Relay::expire_forever`]; a shutdown).
    pub async fn ready(self) -> Result<Delivery, Undelivered> {
        let ReceiverTicket { delivery, _guard } = self;
        delivery.await.unwrap_or(Err(Undelivered::SenderLeft))
    }
}

#[cfg(test)]
mod tests;
