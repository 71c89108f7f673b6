//! A sender's upload on a connection's first request (a PUT or POST with a
//! `Content-Length`), read without hyper, and offered to its receiver's
//! transport: when the receiver is also a first request on this path,
//! the upload's bytes go from the sender's socket to the receiver's with
//! `splice(2)` through a pipe, never copied into the relay's memory.
//!
//! The relay core still runs the transfer: rendezvous, the sender's log,
//! the end or the cut. The sender's body ([`Upload`]) is what the core
//! reads; when the receiver's writer claims the socket ([`claim`]), the
//! body stops reading and waits. The receiver first gets, through the
//! core's queue, every byte the body had handed out before the claim; then
//! the bytes read with the head; then the rest, spliced. It then tells
//! the body how the upload ended, and the core ends the transfer as it
//! would have: a clean end after the last byte, a cut if the sender left
//! early. A receiver that fails while splicing gives the socket back, and
//! the core sees that receiver leave as usual.
//!
//! A fan-out (`?n=` above 1) shares the socket the same way when all its
//! receivers are first requests: see [`tee`].

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{Request, Version};
use http_body::Frame;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

use super::{write_response, Outcome};
use crate::relay::{Offer, Relay};
use crate::transport::http::Handler;

mod tee;

/// The first read of an upload's body; reads that fill their buffer
/// double it, up to [`MAX_READ`].
const FIRST_READ: usize = 64 * 1024;
const MAX_READ: usize = 256 * 1024;

/// Bytes moved per `splice` call; the pipe is asked to hold as much (the
/// kernel's default is 64 KiB; unprivileged processes may grow it to
/// `/proc/sys/fs/pipe-max-size`, 1 MiB by default).
const PIPE_SIZE: usize = 1 << 20;

/// Serves an upload: the handler gets the request with an [`Upload`] body
/// and the socket on offer; the response (the sender's log) is written on
/// the connection's writing half, and the connection closes after it.
pub(super) async fn serve(
    mut stream: TcpStream,
    handler: &Handler,
    parts: http::request::Parts,
    (length, expect): (u64, bool),
    ahead: BytesMut,
) -> Outcome {
    if expect {
        // Before the request is even looked at: the client may send its
        // body now (a refusal then comes instead of a transfer; the
        // connection closes after it either way).
        let line: &[u8] = if parts.version == Version::HTTP_10 {
            b"HTTP/1.0 100 Continue\r\n\r\n"
        } else {
            b"HTTP/1.1 100 Continue\r\n\r\n"
        };
        if stream.write_all(line).await.is_err() {
            return Outcome::Closed;
        }
    }
    let (read, mut write) = stream.into_split();
    let read = Arc::new(read);
    let mut before = ahead.freeze();
    before.truncate(usize::try_from(length).unwrap_or(usize::MAX));
    let remaining = length - before.len() as u64;
    let receivers = crate::transport::http::receivers_asked(&parts.uri);
    let source = Arc::new(Source {
        whole: tokio::sync::Notify::new(),
        formed: tokio::sync::Notify::new(),
        receivers,
        state: Mutex::new(State {
            read,
            before,
            remaining,
            yielded: 0,
            claimed: false,
            ended: None,
            waker: None,
            candidates: Some(0),
            group: None,
        }),
        relay: handler.relay().clone(),
    });
    let mut request = Request::from_parts(
        parts,
        Upload {
            source: Arc::clone(&source),
            next_read: FIRST_READ,
        },
    );
    let offered: Arc<dyn std::any::Any + Send + Sync> = Arc::clone(&source) as _;
    request.extensions_mut().insert(Offer(offered));
    let respond = async {
        let response = match handler.handle(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        match write_response(&mut write, response, false, None).await {
            Ok(_) => {
                let _ = write.shutdown().await;
            }
            Err(error) => tracing::debug!(%error, "sender's response cut short"),
        }
    };
    // Once the whole upload is in, nothing reads the connection: watch it,
    // so a sender that leaves while it waits frees its path at once.
    tokio::select! {
        () = respond => {}
        () = source.sender_gone() => tracing::debug!("sender left"),
    }
    Outcome::Closed
}

/// The upload's socket and what is known of its bytes, shared by the body
/// (which the core reads) and a receiver's writer (which may claim it).
pub(super) struct Source {
    state: Mutex<State>,
    relay: Relay,
    /// Told when the whole upload has been read (by the body or by a
    /// claimant).
    whole: tokio::sync::Notify,
    /// The receivers the sender asked for (`?n=`).
    receivers: usize,
    /// Told when a fan-out's receivers formed their group (see [`tee`]).
    formed: tokio::sync::Notify,
}

struct State {
    /// The socket's reading half: the body reads it, or a claimant while
    /// `claimed`.
    read: Arc<OwnedReadHalf>,
    /// Body bytes read with the head, not handed out yet.
    before: Bytes,
    /// Body bytes still in the socket.
    remaining: u64,
    /// Bytes the body has handed out (to the core).
    yielded: u64,
    claimed: bool,
    /// Set by the claimant: whether the upload ended whole.
    ended: Option<bool>,
    /// The body, waiting for the claimant.
    waker: Option<Waker>,
    /// Receivers of a fan-out that asked for the socket so far; `None`
    /// once one of them left before all asked (no group then).
    candidates: Option<usize>,
    /// A fan-out's receivers, once all asked: they claim the socket
    /// together.
    group: Option<Arc<tee::Group>>,
}

impl Source {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The claimant is done: `spliced` bytes came from the socket, and
    /// the upload ended whole or not.
    fn end(&self, spliced: u64, whole: bool) {
        self.relay.count_relayed(spliced, true);
        let mut state = self.state();
        state.remaining = state.remaining.saturating_sub(spliced);
        state.ended = Some(whole);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        drop(state);
        if whole {
            self.whole.notify_one();
        }
    }

    /// The claimant failed on its side: the socket goes back to the body,
    /// `taken` bytes fewer, with the bytes read with the head that the
    /// claimant did not send.
    fn give_back(&self, taken: u64, before: Bytes) {
        self.relay.count_relayed(taken, true);
        let mut state = self.state();
        state.remaining = state.remaining.saturating_sub(taken);
        if !before.is_empty() {
            state.before = before;
        }
        state.claimed = false;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// Completes when the sender closes its connection after the whole
    /// upload (bytes past the upload are dropped: the connection closes
    /// after this request anyway).
    async fn sender_gone(&self) {
        self.whole.notified().await;
        let read = Arc::clone(&self.state().read);
        let mut scrap = [0u8; 512];
        loop {
            if read.readable().await.is_err() {
                return;
            }
            match read.try_read(&mut scrap) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

/// A receiver's claim on an upload's socket: alone, or as one of a
/// fan-out's receivers.
pub(super) enum Claim {
    One(One),
    Member(tee::Member),
}

/// Claims the socket an upload offers, if it is still there to take (for
/// one of a fan-out's receivers: asks for it, see [`tee`]).
pub(super) fn claim(offer: &Offer, to: &TcpStream) -> Option<Claim> {
    let source = Arc::clone(&offer.0).downcast::<Source>().ok()?;
    if source.receivers > 1 {
        return tee::ask(source, to).map(Claim::Member);
    }
    let mut state = source.state();
    if state.claimed || state.ended.is_some() || state.remaining == 0 {
        return None;
    }
    state.claimed = true;
    let claim = One {
        source: Arc::clone(&source),
        read: Arc::clone(&state.read),
        ran: false,
        after: state.yielded,
        before: std::mem::take(&mut state.before),
        remaining: state.remaining,
    };
    drop(state);
    Some(Claim::One(claim))
}

impl Claim {
    /// Whether the claim takes over now, `sent` bytes into the response
    /// (the bytes before it come through the core).
    pub(super) fn ready(&mut self, sent: u64) -> bool {
        match self {
            Claim::One(one) => one.after == sent,
            Claim::Member(member) => member.after() == Some(sent),
        }
    }

    /// Completes when a claim that was not ready at the last
    /// [`Claim::ready`] may have become so (a fan-out's group formed);
    /// never for a claim that needs no more than the bytes it is sent.
    pub(super) async fn changed(&self) {
        match self {
            Claim::One(_) => std::future::pending().await,
            Claim::Member(member) => member.formed().await,
        }
    }

    /// Writes the rest of the upload into `to` (see [`One::run`]).
    pub(super) async fn run(self, to: &TcpStream) -> io::Result<u64> {
        match self {
            Claim::One(one) => one.run(to).await,
            Claim::Member(member) => member.run().await,
        }
    }
}

/// The claim of a transfer's only receiver.
pub(super) struct One {
    source: Arc<Source>,
    read: Arc<OwnedReadHalf>,
    /// Whether it ran (else, dropped, it gives the socket back).
    ran: bool,
    /// Bytes the receiver gets through the core before the claim's.
    after: u64,
    before: Bytes,
    remaining: u64,
}

impl One {
    /// Writes the bytes read with the head, then splices the rest of the
    /// upload into `to`. Returns the bytes written; an error means the
    /// response must be cut.
    ///
    /// The pipe is made once the upload's bytes come, so that a transfer
    /// still waiting for its body holds no descriptors; if it cannot be
    /// made, the socket goes back to the body untouched and this returns
    /// 0: the relay's queues then carry every byte.
    pub(super) async fn run(mut self, to: &TcpStream) -> io::Result<u64> {
        if self.before.is_empty() {
            // An error shows in the first splice.
            let _ = self.read.readable().await;
        }
        // Without a pipe, dropped here, it gives the socket back.
        let Ok(pipe) = Pipe::new().inspect_err(|error| {
            tracing::debug!(%error, "no pipe: the upload goes through the relay");
        }) else {
            return Ok(0);
        };
        self.ran = true;
        let before = std::mem::take(&mut self.before);
        let mut written = before.len() as u64;
        if let Err(error) = write_all(to, &before).await {
            self.source.give_back(0, Bytes::new());
            return Err(error);
        }
        self.source.relay.count_relayed(before.len() as u64, false);
        match splice_all(&pipe, self.read.as_ref().as_ref(), to, self.remaining).await {
            Ok(()) => {
                tracing::debug!(bytes = written + self.remaining, "upload spliced");
                written += self.remaining;
                self.source.end(self.remaining, true);
                Ok(written)
            }
            Err(Cut::Sender(taken)) => {
                self.source.end(taken, false);
                Err(io::Error::other("the sender's upload was cut short"))
            }
            Err(Cut::Receiver(taken, error)) => {
                self.source.give_back(taken, Bytes::new());
                Err(error)
            }
        }
    }
}

impl Drop for One {
    fn drop(&mut self) {
        // Dropped before it took anything (the response was dropped while
        // it waited for the upload's bytes, or no pipe could be made): the
        // socket goes back, with the bytes read with the head.
        if !self.ran {
            self.source.give_back(0, std::mem::take(&mut self.before));
        }
    }
}

async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Rounds of splicing (each up to a pipe's worth) between two yields to
/// the runtime, while bytes keep moving.
const YIELD_EVERY: u32 = 16;

/// A pipe between two sockets, non-blocking, asked to hold [`PIPE_SIZE`].
struct Pipe {
    read: rustix::fd::OwnedFd,
    write: rustix::fd::OwnedFd,
    /// Bytes it holds (what the kernel granted).
    capacity: usize,
}

/// Pipes open at once (see [`Pipe::new`]).
static PIPES: AtomicUsize = AtomicUsize::new(0);

/// How many pipes may be open at once: an eighth of the process's file
/// descriptors' limit (each pipe takes two, so a quarter of them), so
/// that splicing never takes the descriptors that accepting connections
/// needs. Read once, after `tubes serve` raised the limit.
fn max_pipes() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        limit.map_or(usize::MAX, |n| usize::try_from(n / 8).unwrap_or(usize::MAX))
    })
}

impl Pipe {
    /// A new pipe; an error past [`max_pipes`] or when the system has no
    /// descriptor left. Callers make one before they take any of the
    /// upload's bytes, and leave them to the relay's queues if they
    /// cannot.
    fn new() -> io::Result<Pipe> {
        if PIPES.fetch_add(1, Ordering::Relaxed) >= max_pipes() {
            PIPES.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::other("as many pipes open as the limit allows"));
        }
        let pipe = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK);
        let (read, write) = match pipe {
            Ok(ends) => ends,
            Err(error) => {
                PIPES.fetch_sub(1, Ordering::Relaxed);
                return Err(error.into());
            }
        };
        // Refused past the user's pipe quota: the default size then.
        let capacity = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))
            .unwrap_or(64 * 1024);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        PIPES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why splicing stopped early, and the bytes taken from the sender's
/// socket by then.
enum Cut {
    Sender(u64),
    Receiver(u64, io::Error),
}

/// Moves `length` bytes from `from` to `to` through a pipe, reading and
/// writing as each side is ready (the pipe is the buffer between them).
async fn splice_all(pipe: &Pipe, from: &TcpStream, to: &TcpStream, length: u64) -> Result<(), Cut> {
    let (pipe_out, pipe_in, capacity) = (&pipe.read, &pipe.write, pipe.capacity);
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let mut taken: u64 = 0;
    let mut in_pipe: usize = 0;
    let mut rounds: u32 = 0;
    while taken < length || in_pipe > 0 {
        let mut moved = false;
        let room = capacity.saturating_sub(in_pipe);
        if taken < length && room > 0 {
            let want = usize::try_from(length - taken)
                .unwrap_or(usize::MAX)
                .min(room);
            match from.try_io(Interest::READABLE, || {
                rustix::pipe::splice(from, None, pipe_in, None, want, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(0) => return Err(Cut::Sender(taken)),
                Ok(n) => {
                    taken += n as u64;
                    in_pipe += n;
                    moved = true;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(Cut::Sender(taken)),
            }
        }
        if in_pipe > 0 {
            match to.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(pipe_out, None, to, None, in_pipe, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => {
                    in_pipe -= n;
                    moved = true;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(Cut::Receiver(taken, error)),
            }
        }
        if moved {
            rounds = rounds.wrapping_add(1);
            if rounds % YIELD_EVERY == 0 {
                // A long fast transfer still lets the thread's other
                // tasks run.
                tokio::task::yield_now().await;
            }
            continue;
        }
        // Neither side could go on: wait for one that can.
        let reading = taken < length && in_pipe < capacity;
        tokio::select! {
            ready = from.readable(), if reading => {
                if ready.is_err() {
                    return Err(Cut::Sender(taken));
                }
            }
            ready = to.writable(), if in_pipe > 0 => {
                if let Err(error) = ready {
                    return Err(Cut::Receiver(taken, error));
                }
            }
        }
    }
    Ok(())
}

/// An upload's body as the core reads it: the bytes read with the head,
/// then the socket, up to the length; while a receiver has claimed the
/// socket, it waits for the claimant's word on how the upload ended.
pub(super) struct Upload {
    source: Arc<Source>,
    next_read: usize,
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let mut state = this.source.state();
        if state.claimed {
            return match state.ended {
                Some(true) => Poll::Ready(None),
                Some(false) => Poll::Ready(Some(Err(cut()))),
                None => {
                    state.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            };
        }
        if !state.before.is_empty() {
            let before = std::mem::take(&mut state.before);
            state.yielded += before.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(before))));
        }
        if state.remaining == 0 {
            drop(state);
            this.source.whole.notify_one();
            return Poll::Ready(None);
        }
        let State {
            read,
            remaining,
            yielded,
            waker,
            ..
        } = &mut *state;
        let want = usize::try_from(*remaining)
            .unwrap_or(usize::MAX)
            .min(this.next_read);
        loop {
            match (**read).as_ref().poll_read_ready(cx) {
                Poll::Pending => {
                    // Kept here too: a claimant that takes the socket
                    // takes its readiness with it, and wakes this one
                    // from here when it is done.
                    if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Ok(())) => {}
            }
            let mut buf = BytesMut::with_capacity(want);
            match read.try_read_buf(&mut buf) {
                Ok(0) => return Poll::Ready(Some(Err(cut()))),
                Ok(n) => {
                    if n == want {
                        this.next_read = (this.next_read * 2).min(MAX_READ);
                    }
                    *remaining -= n as u64;
                    *yielded += n as u64;
                    return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.source.state();
        !state.claimed && state.before.is_empty() && state.remaining == 0
    }
}

fn cut() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the upload ended before its length",
    )
}
