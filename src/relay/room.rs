//! Signaling rooms: every message a member posts reaches every other
//! member of the room, in order. Built for WebRTC offers, answers and ICE
//! candidates, but any small messages work. A room exists while it has
//! members: joining creates it, the last member leaving removes it.
//!
//! Each member has a bounded queue; a member that stops reading until its
//! queue is full is dropped from the room (its stream ends), so one stuck
//! member never holds up the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::pair::Message;
use super::{Relay, Shared};

/// Messages queued for one member before it is dropped.
pub const MEMBER_QUEUE: usize = 256;
/// Members of one room at most.
pub const MAX_MEMBERS: usize = 64;

/// A room's members and their queues, by member id.
type Room = HashMap<u64, mpsc::Sender<Message>>;

#[derive(Default)]
pub(super) struct Rooms {
    map: Mutex<HashMap<Box<str>, Room>>,
}

impl Rooms {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Room>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (rooms, members).
    pub(super) fn counts(&self) -> (usize, usize) {
        let map = self.lock();
        (map.len(), map.values().map(HashMap::len).sum())
    }
}

/// Why a room refused a member or a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("[ERROR] The room '{0}' is full.\n")]
    Full(String),
    #[error("[ERROR] No member {1} in the room '{0}'.\n")]
    NoMember(String, u64),
    #[error("[ERROR] No room '{0}': nobody has joined it.\n")]
    NoRoom(String),
}

/// A member of a room: `rx` yields what the others post; dropping it
/// leaves the room.
pub struct Member {
    pub id: u64,
    pub rx: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
    path: Box<str>,
}

impl Member {
    /// Posts to every other member of the room.
    pub fn post(&self, message: Message) {
        post(&self.shared, &self.path, self.id, message);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        leave(&self.shared, &self.path, self.id);
    }
}

fn leave(shared: &Shared, path: &str, id: u64) {
    let mut map = shared.rooms.lock();
    if let Some(room) = map.get_mut(path) {
        room.remove(&id);
        if room.is_empty() {
            map.remove(path);
        }
    }
    drop(map);
    shared.changed.notify_waiters();
}

fn post(shared: &Shared, path: &str, from: u64, message: Message) {
    let mut stuck = Vec::new();
    {
        let map = shared.rooms.lock();
        let Some(room) = map.get(path) else { return };
        for (id, tx) in room {
            if *id != from && tx.try_send(message.clone()).is_err() {
                stuck.push(*id);
            }
        }
    }
    for id in stuck {
        leave(shared, path, id);
    }
}

impl Relay {
    /// Joins the room on `path` (creating it).
    pub fn join_room(&self, path: &str) -> Result<Member, RoomError> {
        let id = self.shared.next_id();
        let (tx, rx) = mpsc::channel(MEMBER_QUEUE);
        let mut map = self.shared.rooms.lock();
        let room = map.entry(path.into()).or_default();
        if room.len() >= MAX_MEMBERS {
            return Err(RoomError::Full(path.to_owned()));
        }
        room.insert(id, tx);
        drop(map);
        self.shared.changed.notify_waiters();
        Ok(Member {
            id,
            rx,
            shared: Arc::clone(&self.shared),
            path: path.into(),
        })
    }

    /// Posts to a room on behalf of member `from` (an SSE member posting
    /// with a separate request; it does not get its own message), or with
    /// `None` from outside the room (every member gets it).
    pub fn post_to_room(
        &self,
        path: &str,
        from: Option<u64>,
        message: Message,
    ) -> Result<(), RoomError> {
        {
            let map = self.shared.rooms.lock();
            let Some(room) = map.get(path) else {
                return Err(RoomError::NoRoom(path.to_owned()));
            };
            if let Some(id) = from {
                if !room.contains_key(&id) {
                    return Err(RoomError::NoMember(path.to_owned(), id));
                }
            }
        }
        post(&self.shared, path, from.unwrap_or(u64::MAX), message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::{RelayConfig, Stats};
    use bytes::Bytes;

    fn msg(s: &'static str) -> Message {
        Message {
            text: true,
            data: Bytes::from_static(s.as_bytes()),
        }
    }

    #[tokio::test]
    async fn everyone_but_the_poster_gets_each_message_in_order() {
        let relay = Relay::new(RelayConfig::default());
        let a = relay.join_room("/r").unwrap();
        let mut b = relay.join_room("/r").unwrap();
        let mut c = relay.join_room("/r").unwrap();
        a.post(msg("1"));
        relay.post_to_room("/r", Some(a.id), msg("2")).unwrap();
        for m in [&mut b, &mut c] {
            assert_eq!(m.rx.recv().await, Some(msg("1")));
            assert_eq!(m.rx.recv().await, Some(msg("2")));
        }
        assert!(relay.post_to_room("/r", Some(999_999), msg("x")).is_err());
        assert!(relay.post_to_room("/nobody", None, msg("x")).is_err());
        assert_eq!(relay.stats().room_members, 3);
        drop((a, b, c));
        assert_eq!(relay.stats(), Stats::default());
    }

    #[tokio::test]
    async fn a_stuck_member_is_dropped() {
        let relay = Relay::new(RelayConfig::default());
        let a = relay.join_room("/s").unwrap();
        let mut stuck = relay.join_room("/s").unwrap();
        for _ in 0..=MEMBER_QUEUE {
            a.post(msg("m"));
        }
        assert_eq!(relay.stats().room_members, 1);
        let mut n = 0;
        while stuck.rx.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, MEMBER_QUEUE);
    }
}
