//! Live broadcast: one sender, any number of receivers that join and leave
//! at any time and get the stream from where it is.
//!
//! The sender is never held back: what it sends goes into a window of the
//! most recent bytes (a few MiB), from which each receiver reads at its
//! own pace. A receiver that falls out of the window is dropped (its
//! stream ends as aborted), unless the stream has frames, then it skips
//! ahead to the newest frame: a hole in a byte stream would corrupt it,
//! a skipped frame of a video or a line of a log only loses that frame.
//!
//! Frames are what a late joiner starts at: the parts of a
//! `multipart/x-mixed-replace` stream (so an M-JPEG viewer always starts
//! on a whole image) and the lines of a text stream. Every byte has an
//! offset from the start of the stream, so a receiver can also resume at
//! an offset still in the window (SSE's `Last-Event-ID`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::Notify;

use super::{ByteStream, Head, Reject, Relay, Shared};

/// Bytes of the most recent stream kept for receivers and resumption.
pub const LIVE_WINDOW: usize = 8 << 20;
/// A line spread over several chunks is copied into one piece up to this
/// length (beyond it, it is handed over chunk by chunk).
const MAX_JOINED_LINE: u64 = 1 << 20;
/// Frame starts remembered inside the window (the newest ones).
const MAX_FRAME_STARTS: usize = 65536;

/// How a live stream ended, as its receivers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Clean,
    Aborted,
}

/// Why a live receiver's stream stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LiveError {
    #[error("the sender was cut short")]
    Aborted,
    #[error("the receiver fell behind the live window and was dropped")]
    Lagged,
}

#[derive(Default)]
pub(super) struct Lives {
    map: Mutex<HashMap<Box<str>, Arc<Channel>>>,
    /// Every live receiver, also those still reading a stream that ended
    /// (whose channel has left the map).
    receivers: AtomicUsize,
}

impl Lives {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Arc<Channel>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (live paths, receivers reading them).
    pub(super) fn counts(&self) -> (usize, usize) {
        let paths = self.lock().len();
        (paths, self.receivers.load(Ordering::SeqCst))
    }
}

/// Finds frame starts in a stream fed in pieces.
enum Framing {
    /// Text: a frame starts after every `\n`.
    Lines,
    /// `multipart/x-mixed-replace`: a frame starts at every `--boundary`.
    Parts {
        delimiter: Vec<u8>,
        tail: Vec<u8>,
    },
    None,
}

impl Framing {
    fn for_head(head: &Head) -> Self {
        let Some(ct) = head.content_type.as_deref() else {
            return Framing::Lines;
        };
        let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
        let media = ct.split(';').next().unwrap_or("").trim().to_owned();
        if media == "multipart/x-mixed-replace" {
            let boundary = ct.split(';').skip(1).find_map(|p| {
                let (k, v) = p.split_once('=')?;
                (k.trim() == "boundary").then(|| v.trim().trim_matches('"').to_owned())
            });
            // The boundary's case matters: take it from the original.
            let original =
                String::from_utf8_lossy(head.content_type.as_deref().unwrap_or_default())
                    .into_owned();
            let boundary = boundary.and_then(|b| {
                let at = original.to_ascii_lowercase().find(&b)?;
                Some(original[at..at + b.len()].to_owned())
            });
            return match boundary {
                Some(b) if !b.is_empty() => Framing::Parts {
                    delimiter: format!("--{b}").into_bytes(),
                    tail: Vec::new(),
                },
                _ => Framing::None,
            };
        }
        if media.starts_with("text/")
            || media == "application/json"
            || media == "application/x-ndjson"
        {
            Framing::Lines
        } else {
            Framing::None
        }
    }

    /// Offsets of the frame starts in `chunk`, which begins at `offset`.
    fn scan(&mut self, offset: u64, chunk: &[u8], out: &mut Vec<u64>) {
        match self {
            Framing::None => {}
            Framing::Lines => {
                if offset == 0 && !chunk.is_empty() {
                    out.push(0); // the first line starts the stream
                }
                for (i, b) in chunk.iter().enumerate() {
                    if *b == b'\n' {
                        out.push(offset + i as u64 + 1);
                    }
                }
            }
            Framing::Parts { delimiter, tail } => {
                let mut window = std::mem::take(tail);
                let tail_len = window.len() as u64;
                window.extend_from_slice(chunk);
                let d = delimiter.len();
                if window.len() >= d {
                    for i in 0..=window.len() - d {
                        if window[i..i + d] == delimiter[..] {
                            out.push(offset + i as u64 - tail_len);
                        }
                    }
                }
                let keep = (d - 1).min(window.len());
                *tail = window[window.len() - keep..].to_vec();
            }
        }
    }
}

struct Channel {
    state: Mutex<State>,
    /// Woken on new data, on the end, and when a sender arrives.
    notify: Notify,
}

struct State {
    /// The sender's head, once a sender is there.
    head: Option<Head>,
    sender: Option<u64>,
    chunks: VecDeque<(u64, Bytes)>,
    /// Offset of the first byte in the window, and of the next byte.
    start: u64,
    end: u64,
    window_bytes: usize,
    framing: Framing,
    frame_starts: VecDeque<u64>,
    ended: Option<Ending>,
    receivers: usize,
}

impl Channel {
    /// A channel with its sender (`head`, `sender`), or waiting for one.
    fn new(head: Option<Head>, sender: Option<u64>) -> Self {
        Channel {
            state: Mutex::new(State {
                framing: head.as_ref().map_or(Framing::None, Framing::for_head),
                head,
                sender,
                chunks: VecDeque::new(),
                start: 0,
                end: 0,
                window_bytes: 0,
                frame_starts: VecDeque::new(),
                ended: None,
                receivers: 0,
            }),
            notify: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn push(&mut self, chunk: Bytes) {
        let mut found = Vec::new();
        self.framing.scan(self.end, &chunk, &mut found);
        self.frame_starts.extend(found);
        while self.frame_starts.len() > MAX_FRAME_STARTS {
            self.frame_starts.pop_front();
        }
        self.window_bytes += chunk.len();
        let len = chunk.len() as u64;
        self.chunks.push_back((self.end, chunk));
        self.end += len;
        while self.window_bytes > LIVE_WINDOW && self.chunks.len() > 1 {
            if let Some((_, old)) = self.chunks.pop_front() {
                self.window_bytes -= old.len();
            }
            self.start = self.chunks.front().map_or(self.end, |(o, _)| *o);
        }
        while self.frame_starts.front().is_some_and(|&f| f < self.start) {
            self.frame_starts.pop_front();
        }
    }

    /// The newest frame start with data from it in the window.
    fn newest_frame(&self) -> Option<u64> {
        self.frame_starts
            .iter()
            .rev()
            .copied()
            .find(|&f| f < self.end || self.end == 0)
    }

    /// What a receiver at `cursor` may read now: to the end of its chunk,
    /// but for a text stream only whole lines (a line still being written
    /// waits for its end), so that a receiver is never left in the middle
    /// of a line when it has to skip ahead.
    fn readable(&self, cursor: u64) -> Option<Bytes> {
        let piece = self.read_at(cursor)?;
        if !matches!(self.framing, Framing::Lines) || self.ended.is_some() {
            return Some(piece);
        }
        let piece_end = cursor + piece.len() as u64;
        let i = self.frame_starts.partition_point(|&f| f <= piece_end);
        match self.frame_starts.get(i.wrapping_sub(1)) {
            Some(&f) if f > cursor => Some(piece.slice(..(f - cursor) as usize)),
            // The line goes on in later chunks and ends there: hand it
            // over whole (copied together), unless it is very long.
            _ => {
                let j = self.frame_starts.partition_point(|&f| f <= cursor);
                let end = *self.frame_starts.get(j)?;
                if end - cursor > MAX_JOINED_LINE {
                    return Some(piece);
                }
                let mut line = Vec::with_capacity((end - cursor) as usize);
                let mut at = cursor;
                while at < end {
                    let part = self.read_at(at)?;
                    let take = part.len().min((end - at) as usize);
                    line.extend_from_slice(&part[..take]);
                    at += take as u64;
                }
                Some(line.into())
            }
        }
    }

    /// Bytes from `cursor` to the end of its chunk.
    fn read_at(&self, cursor: u64) -> Option<Bytes> {
        if cursor < self.start || cursor >= self.end {
            return None;
        }
        let i = self
            .chunks
            .partition_point(|(o, c)| o + c.len() as u64 <= cursor);
        let (o, c) = self.chunks.get(i)?;
        Some(c.slice((cursor - o) as usize..))
    }
}

/// A live sender's log: polling it reads the sender's body into the
/// window. It ends when the body ends; dropping it ends the stream as
/// aborted.
pub struct LiveSender {
    channel: Arc<Channel>,
    shared: Arc<Shared>,
    path: Box<str>,
    body: ByteStream,
    ending: Option<Ending>,
}

/// The lines a live sender's response shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveLog {
    Started,
    Ended { bytes: u64 },
    Failed,
}

impl std::fmt::Display for LiveLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LiveLog::Started => writeln!(f, "[INFO] Live: receivers may join at any time."),
            LiveLog::Ended { bytes } => {
                writeln!(f, "[INFO] Live stream ended after {bytes} bytes.")
            }
            LiveLog::Failed => writeln!(f, "[ERROR] Failed to send."),
        }
    }
}

impl LiveSender {
    /// Reads the body to its end; returns how it ended.
    pub async fn run(mut self) -> LiveLog {
        while let Some(item) = self.body.next().await {
            match item {
                Ok(chunk) if chunk.is_empty() => {}
                Ok(chunk) => {
                    self.channel.state().push(chunk);
                    self.channel.notify.notify_waiters();
                }
                Err(_) => {
                    self.ending = Some(Ending::Aborted);
                    return LiveLog::Failed;
                }
            }
        }
        self.ending = Some(Ending::Clean);
        LiveLog::Ended {
            bytes: self.channel.state().end,
        }
    }

    /// The stream of log lines: started, then how it ended.
    pub fn into_log(self) -> impl Stream<Item = LiveLog> + Send {
        futures_util::stream::once(async { LiveLog::Started })
            .chain(futures_util::stream::once(self.run()))
    }
}

impl Drop for LiveSender {
    fn drop(&mut self) {
        // Under the map's lock (map, then channel: the order everywhere),
        // so that no new sender can take this channel in between.
        let mut map = self.shared.lives.lock();
        {
            let mut state = self.channel.state();
            state.ended = Some(self.ending.unwrap_or(Ending::Aborted));
            state.sender = None;
        }
        // The path is free for the next live stream; receivers keep the
        // channel until they have read what is left.
        if map
            .get(&self.path)
            .is_some_and(|c| Arc::ptr_eq(c, &self.channel))
        {
            map.remove(&self.path);
        }
        drop(map);
        self.channel.notify.notify_waiters();
        self.shared.changed.notify_waiters();
    }
}

/// Where a live receiver starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// At the newest frame (or at the live edge for a stream without
    /// frames).
    Now,
    /// At this offset if it is still in the window, else as `Now`.
    At(u64),
}

/// A live receiver: its stream yields `(offset, bytes)` pieces.
pub struct LiveReceiver {
    channel: Arc<Channel>,
    shared: Arc<Shared>,
    path: Box<str>,
    /// Joined before the sender came: it gets the stream from its start.
    early: bool,
}

impl Drop for LiveReceiver {
    fn drop(&mut self) {
        self.shared.lives.receivers.fetch_sub(1, Ordering::SeqCst);
        let remove = {
            let mut state = self.channel.state();
            state.receivers -= 1;
            state.receivers == 0 && state.sender.is_none() && state.ended.is_none()
        };
        if remove {
            // The last receiver waiting for a sender that never came.
            let mut map = self.shared.lives.lock();
            if map
                .get(&self.path)
                .is_some_and(|c| Arc::ptr_eq(c, &self.channel))
            {
                map.remove(&self.path);
            }
        }
        self.shared.changed.notify_waiters();
    }
}

impl LiveReceiver {
    /// Waits for the sender if there is none yet; returns its head.
    pub async fn head(&self) -> Head {
        loop {
            let notified = self.channel.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(head) = self.channel.state().head.clone() {
                return head;
            }
            notified.await;
        }
    }

    /// The stream from the join point: pieces with their offsets, then the
    /// end (`None`), or an error when aborted or dropped for lagging.
    pub fn stream(self, join: Join) -> impl Stream<Item = Result<(u64, Bytes), LiveError>> + Send {
        // A receiver that was there before the sender misses nothing.
        let join = match join {
            Join::Now if self.early => Join::At(0),
            other => other,
        };
        futures_util::stream::unfold(
            (self, None::<u64>, join, false),
            |(rx, cursor, join, done)| async move {
                if done {
                    return None;
                }
                let mut cursor = cursor;
                let channel = Arc::clone(&rx.channel);
                loop {
                    let notified = channel.notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let step = {
                        let state = channel.state();
                        if state.head.is_none() {
                            None
                        } else {
                            let at = *cursor.get_or_insert_with(|| match join {
                                Join::At(offset)
                                    if offset >= state.start && offset <= state.end =>
                                {
                                    offset
                                }
                                _ => state.newest_frame().unwrap_or(state.end),
                            });
                            if at < state.start {
                                // Fell out of the window.
                                match state.newest_frame() {
                                    Some(frame) if frame >= state.start => {
                                        cursor = Some(frame);
                                        continue;
                                    }
                                    _ => Some(Err(LiveError::Lagged)),
                                }
                            } else if let Some(bytes) = state.readable(at) {
                                Some(Ok((at, bytes)))
                            } else {
                                match state.ended {
                                    Some(Ending::Clean) => return None,
                                    Some(Ending::Aborted) => Some(Err(LiveError::Aborted)),
                                    None => None,
                                }
                            }
                        }
                    };
                    match step {
                        Some(Ok((at, bytes))) => {
                            let next = at + bytes.len() as u64;
                            return Some((Ok((at, bytes)), (rx, Some(next), join, false)));
                        }
                        Some(Err(e)) => return Some((Err(e), (rx, cursor, join, true))),
                        None => notified.await,
                    }
                }
            },
        )
    }
}

impl Relay {
    /// Opens a live stream on `path`. One sender at a time; receivers may
    /// already be waiting.
    pub fn live_send(
        &self,
        path: &str,
        head: Head,
        body: ByteStream,
    ) -> Result<LiveSender, Reject> {
        let shared = &self.shared;
        let id = shared.next_id();
        let mut map = shared.lives.lock();
        // A channel whose stream ended is left to its receivers; a new
        // stream gets a new channel.
        let reusable = map.get(path).filter(|c| c.state().ended.is_none()).cloned();
        let channel = match reusable {
            Some(c) => {
                let mut state = c.state();
                if state.sender.is_some() {
                    return Err(Reject::AnotherSender(path.to_owned()));
                }
                state.framing = Framing::for_head(&head);
                state.head = Some(head);
                state.sender = Some(id);
                drop(state);
                c
            }
            None => {
                let c = Arc::new(Channel::new(Some(head), Some(id)));
                map.insert(path.into(), Arc::clone(&c));
                c
            }
        };
        drop(map);
        channel.notify.notify_waiters();
        shared.changed.notify_waiters();
        Ok(LiveSender {
            channel,
            shared: Arc::clone(shared),
            path: path.into(),
            body,
            ending: None,
        })
    }

    /// Joins the live stream on `path` (waiting for its sender if needed).
    pub fn live_receive(&self, path: &str) -> LiveReceiver {
        let shared = &self.shared;
        let mut map = shared.lives.lock();
        let channel = Arc::clone(
            map.entry(path.into())
                .or_insert_with(|| Arc::new(Channel::new(None, None))),
        );
        let early = {
            let mut state = channel.state();
            state.receivers += 1;
            state.head.is_none()
        };
        shared.lives.receivers.fetch_add(1, Ordering::SeqCst);
        drop(map);
        shared.changed.notify_waiters();
        LiveReceiver {
            channel,
            shared: Arc::clone(shared),
            path: path.into(),
            early,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::RelayConfig;
    use tokio::sync::mpsc;

    fn body() -> (
        mpsc::Sender<Result<Bytes, crate::relay::BodyError>>,
        ByteStream,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|i| (i, rx)) },
            );
        (tx, Box::pin(stream))
    }

    fn text_head() -> Head {
        Head {
            content_type: Some(Bytes::from_static(b"text/plain")),
            ..Head::default()
        }
    }

    #[tokio::test]
    async fn late_joiners_start_at_a_line_and_resume_by_offset() {
        let relay = Relay::new(RelayConfig::default());
        let (tx, b) = body();
        let sender = relay.live_send("/l", text_head(), b).unwrap();
        let run = tokio::spawn(sender.run());
        tx.send(Ok(Bytes::from_static(b"one\ntw"))).await.unwrap();
        tx.send(Ok(Bytes::from_static(b"o\nthree\n")))
            .await
            .unwrap();
        // Wait until the data is in: a receiver resuming at 0 reads it all.
        let early = relay.live_receive("/l").stream(Join::At(0));
        tokio::pin!(early);
        let mut got = Vec::new();
        while got.len() < 14 {
            let (_, b) = early.next().await.unwrap().unwrap();
            got.extend_from_slice(&b);
        }
        assert_eq!(got, b"one\ntwo\nthree\n");
        // A late joiner starts at the newest frame with data: the last line.
        let late = relay.live_receive("/l").stream(Join::Now);
        tokio::pin!(late);
        let (offset, bytes) = late.next().await.unwrap().unwrap();
        assert_eq!((offset, &bytes[..]), (8, &b"three\n"[..]));
        tx.send(Ok(Bytes::from_static(b"four\n"))).await.unwrap();
        let (offset, bytes) = late.next().await.unwrap().unwrap();
        assert_eq!((offset, &bytes[..]), (14, &b"four\n"[..]));
        // A resume in the middle continues exactly there.
        let resumed = relay.live_receive("/l").stream(Join::At(8));
        tokio::pin!(resumed);
        let (offset, bytes) = resumed.next().await.unwrap().unwrap();
        assert_eq!((offset, &bytes[..]), (8, &b"three\n"[..]));
        drop(tx);
        assert!(matches!(run.await.unwrap(), LiveLog::Ended { bytes: 19 }));
        let mut rest = Vec::new();
        while let Some(item) = late.next().await {
            rest.push(item.unwrap());
        }
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_cut_sender_aborts_receivers_and_frees_the_path() {
        let relay = Relay::new(RelayConfig::default());
        let rx = relay.live_receive("/c");
        assert_eq!(relay.stats().live_paths, 1);
        let (tx, b) = body();
        let sender = relay.live_send("/c", text_head(), b).unwrap();
        assert!(matches!(
            relay.live_send("/c", text_head(), body().1),
            Err(Reject::AnotherSender(_))
        ));
        let run = tokio::spawn(sender.run());
        let mut stream = Box::pin(rx.stream(Join::Now));
        tx.send(Ok(Bytes::from_static(b"x\n"))).await.unwrap();
        assert!(stream.next().await.unwrap().is_ok());
        tx.send(Err("cut".into())).await.unwrap();
        assert_eq!(run.await.unwrap(), LiveLog::Failed);
        assert_eq!(stream.next().await, Some(Err(LiveError::Aborted)));
        drop(stream);
        assert_eq!(relay.stats(), crate::relay::Stats::default());
    }

    #[test]
    fn parts_are_found_across_pieces() {
        let head = Head {
            content_type: Some(Bytes::from_static(
                b"multipart/x-mixed-replace; boundary=Frame",
            )),
            ..Head::default()
        };
        let mut f = Framing::for_head(&head);
        let mut out = Vec::new();
        f.scan(
            0,
            b"--Frame\r\nContent-Type: image/jpeg\r\n\r\nJPEG\r\n--Fr",
            &mut out,
        );
        f.scan(49, b"ame\r\n...", &mut out);
        assert_eq!(out, vec![0, 45]);
    }

    #[tokio::test]
    async fn a_slow_receiver_of_a_framed_stream_skips_ahead_and_others_are_not_slowed() {
        let relay = Relay::new(RelayConfig::default());
        let (tx, b) = body();
        let sender = relay.live_send("/v", text_head(), b).unwrap();
        let run = tokio::spawn(sender.run());
        let slow = relay.live_receive("/v").stream(Join::At(0));
        tokio::pin!(slow);
        let line = Bytes::from(
            vec![b'a'; 1023]
                .into_iter()
                .chain([b'\n'])
                .collect::<Vec<u8>>(),
        );
        // Three windows' worth, never read by `slow`: the sender is not held.
        for _ in 0..(3 * LIVE_WINDOW / 1024) {
            tx.send(Ok(line.clone())).await.unwrap();
        }
        drop(tx);
        run.await.unwrap();
        let (offset, _) = slow.next().await.unwrap().unwrap();
        assert!(
            offset >= 2 * LIVE_WINDOW as u64,
            "skipped ahead to {offset}"
        );
        assert_eq!(offset % 1024, 0, "at a line start");
    }
}
#[cfg(test)]
mod first_line {
    use super::*;
    use crate::relay::{BodyError, RelayConfig};
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn a_joiner_during_the_first_line_gets_it_whole() {
        let relay = Relay::new(RelayConfig::default());
        let (tx, rx) = mpsc::channel::<Result<Bytes, BodyError>>(4);
        let body: ByteStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|i| (i, rx))
        }));
        let head = Head {
            content_type: Some(Bytes::from_static(b"text/plain")),
            ..Head::default()
        };
        let sender = relay.live_send("/f", head, body).unwrap();
        let run = tokio::spawn(sender.run());
        tx.send(Ok(Bytes::from_static(b"seq-00"))).await.unwrap();
        let mut late = Box::pin(relay.live_receive("/f").stream(Join::Now));
        tx.send(Ok(Bytes::from_static(b"00\nseq-0001\n")))
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 9 {
            let (at, bytes) = late.next().await.unwrap().unwrap();
            assert_eq!(at, got.len() as u64);
            got.extend_from_slice(&bytes);
        }
        assert_eq!(&got[..9], b"seq-0000\n");
        drop(tx);
        run.await.unwrap();
    }
}
