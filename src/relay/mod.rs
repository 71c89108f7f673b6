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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};

pub use fanout::{Aborted, ReceiverStream};
pub use protocol::{parse_count, safe_content_type, Count, Head, Log, Reject};

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
    /// Limits and timings of registered names (see [`names`]).
    pub names: names::NamesConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            queue_chunks: 4,
            read_ahead: 64 * 1024,
            names: names::NamesConfig::default(),
        }
    }
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
    /// Registered names (see [`names`]).
    names: names::Names,
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
    start: oneshot::Sender<Vec<WaitingReceiver>>,
}

struct WaitingReceiver {
    id: u64,
    deliver: oneshot::Sender<Delivery>,
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
        Relay {
            shared: Arc::new(Shared {
                config,
                ..Shared::default()
            }),
        }
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
                    id,
                    log: log_tx.clone(),
                    start: start_tx,
                });
            }
            take_if_ready(&mut paths, path)
        };
        self.shared.changed.notify_waiters();
        let transfer = fanout::run_sender(fanout::SenderTask {
            guard: PeerGuard::new(&self.shared, path, id, true),
            n,
            head,
            body,
            start: start_rx,
            log: log_tx,
            queue_chunks: self.shared.config.queue_chunks,
            read_ahead: self.shared.config.read_ahead,
        });
        if let Some(start) = ready {
            start.go();
        }
        Ok(SenderLog {
            transfer: Some(Box::pin(transfer)),
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
                    w.receivers.push(WaitingReceiver { id, deliver });
                    if let Some(sender) = &w.sender {
                        let _ = sender.log.send(Log::ReceiverConnected);
                    }
                }
                None => {
                    paths.insert(
                        path.into(),
                        Slot::Waiting(Waiting {
                            n,
                            sender: None,
                            receivers: vec![WaitingReceiver { id, deliver }],
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
    sender: oneshot::Sender<Vec<WaitingReceiver>>,
    receivers: Vec<WaitingReceiver>,
}

impl Start {
    fn go(self) {
        // If the sender's transfer is gone, dropping the receivers' delivery
        // channels tells them so, and the transfer's guard frees the path.
        let _ = self.sender.send(self.receivers);
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
/// over. Dropping it ends the transfer: a waiting sender is unregistered,
/// a running transfer aborts every receiver.
pub struct SenderLog {
    transfer: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    log: mpsc::UnboundedReceiver<Log>,
    _guard: PeerGuard,
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
    delivery: oneshot::Receiver<Delivery>,
    _guard: PeerGuard,
}

impl ReceiverTicket {
    /// Waits for the transfer to start. `None` if it never will (the
    /// sender left between the rendezvous and the start).
    pub async fn ready(self) -> Option<Delivery> {
        let ReceiverTicket { delivery, _guard } = self;
        delivery.await.ok()
    }
}

#[cfg(test)]
mod tests;
