//! Pair mode: two peers that meet on a path are joined full duplex, each
//! message passed to the other unchanged, until either leaves. Messages
//! keep their boundaries and their kind (text or binary), so two
//! WebSockets can talk through the relay as if connected to each other.
//!
//! Pairs live in their own registry beside the Piping transfers: a path
//! may hold a waiting pair peer and a Piping transfer without either
//! seeing the other. A third peer on a joined path is refused. Every entry
//! has an owner: a waiting peer's ticket removes it when dropped, and the
//! joined mark goes when both ends are dropped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{Reject, Relay, Shared};

/// Messages in flight in each direction before the sender is held back.
pub const PAIR_QUEUE: usize = 16;

/// One message between paired peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Text (valid UTF-8) rather than binary.
    pub text: bool,
    pub data: Bytes,
}

/// One side of a joined pair: what it sends reaches the other side's
/// `rx`. When the other side leaves, `rx` ends and `tx` fails.
pub struct PairEnd {
    pub tx: mpsc::Sender<Message>,
    pub rx: mpsc::Receiver<Message>,
    /// Whatever must live until both ends are gone (the joined mark of a
    /// pair, the slot of a name's channel).
    pub(super) _joined: Arc<dyn Send + Sync>,
}

impl PairEnd {
    /// Two ends joined to each other, both holding `guard`.
    pub(super) fn joined(guard: Arc<dyn Send + Sync>) -> (PairEnd, PairEnd) {
        let (a_tx, b_rx) = mpsc::channel(PAIR_QUEUE);
        let (b_tx, a_rx) = mpsc::channel(PAIR_QUEUE);
        let a = PairEnd {
            tx: a_tx,
            rx: a_rx,
            _joined: Arc::clone(&guard),
        };
        let b = PairEnd {
            tx: b_tx,
            rx: b_rx,
            _joined: guard,
        };
        (a, b)
    }
}

#[derive(Default)]
pub(super) struct Pairs {
    map: Mutex<HashMap<Box<str>, PairSlot>>,
}

enum PairSlot {
    Waiting {
        id: u64,
        deliver: oneshot::Sender<PairEnd>,
    },
    Joined(u64),
}

impl Pairs {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, PairSlot>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (waiting, joined) counts.
    pub(super) fn counts(&self) -> (usize, usize) {
        let map = self.lock();
        let waiting = map
            .values()
            .filter(|s| matches!(s, PairSlot::Waiting { .. }))
            .count();
        (waiting, map.len() - waiting)
    }
}

/// Removes a waiting peer when its ticket is dropped unanswered.
struct WaitingGuard {
    shared: Arc<Shared>,
    path: Box<str>,
    id: u64,
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        remove_if(
            &self.shared,
            &self.path,
            |slot| matches!(slot, PairSlot::Waiting { id, .. } if *id == self.id),
        );
    }
}

/// Frees a joined path when both ends are gone.
struct JoinedGuard {
    shared: Arc<Shared>,
    path: Box<str>,
    id: u64,
}

impl Drop for JoinedGuard {
    fn drop(&mut self) {
        remove_if(
            &self.shared,
            &self.path,
            |slot| matches!(slot, PairSlot::Joined(id) if *id == self.id),
        );
    }
}

fn remove_if(shared: &Shared, path: &str, pred: impl Fn(&PairSlot) -> bool) {
    let mut map = shared.pairs.lock();
    if map.get(path).is_some_and(pred) {
        map.remove(path);
        if map.capacity() > 64 && map.len() * 4 < map.capacity() {
            let keep = map.len() * 2;
            map.shrink_to(keep);
        }
    }
    drop(map);
    shared.changed.notify_waiters();
}

/// A peer waiting for its partner; resolves to its end of the pair.
pub struct PairTicket {
    state: TicketState,
}

enum TicketState {
    Ready(Option<PairEnd>),
    Waiting {
        rx: oneshot::Receiver<PairEnd>,
        _guard: WaitingGuard,
    },
}

impl Future for PairTicket {
    /// `None` if the ticket can no longer be served (the relay dropped it).
    type Output = Option<PairEnd>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            TicketState::Ready(end) => Poll::Ready(end.take()),
            TicketState::Waiting { rx, .. } => Pin::new(rx).poll(cx).map(Result::ok),
        }
    }
}

impl Relay {
    /// Joins `path` in pair mode: resolves once a second peer comes (at
    /// once if one is already waiting). A path already joined is refused.
    pub fn pair(&self, path: &str) -> Result<PairTicket, Reject> {
        let shared = &self.shared;
        let id = shared.next_id();
        let mut map = shared.pairs.lock();
        let state = match map.remove(path) {
            Some(PairSlot::Joined(owner)) => {
                map.insert(path.into(), PairSlot::Joined(owner));
                return Err(Reject::Established(path.to_owned()));
            }
            Some(PairSlot::Waiting { deliver, .. }) => {
                let joined = Arc::new(JoinedGuard {
                    shared: Arc::clone(shared),
                    path: path.into(),
                    id,
                });
                let (ours, theirs) = PairEnd::joined(joined);
                map.insert(path.into(), PairSlot::Joined(id));
                match deliver.send(theirs) {
                    Ok(()) => TicketState::Ready(Some(ours)),
                    Err(_) => {
                        // The waiting peer left just now: wait in its place.
                        // (Dropping `ours` after the map is released frees
                        // the joined mark we just set.)
                        let (deliver, rx) = oneshot::channel();
                        map.insert(path.into(), PairSlot::Waiting { id, deliver });
                        drop(map);
                        drop(ours);
                        shared.changed.notify_waiters();
                        return Ok(self.waiting_ticket(path, id, rx));
                    }
                }
            }
            None => {
                let (deliver, rx) = oneshot::channel();
                map.insert(path.into(), PairSlot::Waiting { id, deliver });
                drop(map);
                shared.changed.notify_waiters();
                return Ok(self.waiting_ticket(path, id, rx));
            }
        };
        drop(map);
        shared.changed.notify_waiters();
        Ok(PairTicket { state })
    }

    fn waiting_ticket(&self, path: &str, id: u64, rx: oneshot::Receiver<PairEnd>) -> PairTicket {
        PairTicket {
            state: TicketState::Waiting {
                rx,
                _guard: WaitingGuard {
                    shared: Arc::clone(&self.shared),
                    path: path.into(),
                    id,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::RelayConfig;

    fn msg(s: &str) -> Message {
        Message {
            text: true,
            data: Bytes::copy_from_slice(s.as_bytes()),
        }
    }

    #[tokio::test]
    async fn two_peers_talk_both_ways_and_a_third_is_refused() {
        let relay = Relay::new(RelayConfig::default());
        let first = relay.pair("/p").unwrap();
        assert_eq!(relay.stats().pairs_waiting, 1);
        let mut b = relay.pair("/p").unwrap().await.unwrap();
        let mut a = first.await.unwrap();
        assert!(matches!(relay.pair("/p"), Err(Reject::Established(_))));
        a.tx.send(msg("hi")).await.unwrap();
        assert_eq!(b.rx.recv().await, Some(msg("hi")));
        b.tx.send(msg("yo")).await.unwrap();
        assert_eq!(a.rx.recv().await, Some(msg("yo")));
        drop(a);
        assert_eq!(b.rx.recv().await, None);
        assert_eq!(relay.stats().pairs_joined, 1);
        drop(b);
        assert_eq!(relay.stats(), crate::relay::Stats::default());
    }

    #[tokio::test]
    async fn a_waiting_peer_that_leaves_frees_the_path() {
        let relay = Relay::new(RelayConfig::default());
        let ticket = relay.pair("/q").unwrap();
        drop(ticket);
        assert_eq!(relay.stats(), crate::relay::Stats::default());
        // The next two pair normally.
        let first = relay.pair("/q").unwrap();
        let _b = relay.pair("/q").unwrap().await.unwrap();
        assert!(first.await.is_some());
    }
}
