//! A fan-out's receivers sharing one upload's socket: the bytes are
//! spliced from the sender's socket into one pipe, duplicated into each
//! other receiver's pipe with `tee(2)` (the kernel shares the pages, it
//! copies nothing), and spliced from each pipe to its receiver's socket.
//!
//! Every receiver of the fan-out must be a first request here, or the
//! others would starve: each asks for the socket when its response starts
//! ([`ask`]), and only when all `n` have asked does the group form. The
//! upload's body then stops feeding the core, each receiver takes from the
//! core what the body had handed out before, and joins the group with (a
//! duplicate of) its socket. The last one to join, or to leave, drives the
//! transfer for all; the others wait for their result. A receiver that
//! leaves before all asked spoils the group: the core then carries every
//! byte, as it does for receivers of other transports.
//!
//! The pipes move in rounds: the sender's bytes are read into a staging
//! pipe, and go on into the receivers' pipes only when every one of them
//! is empty, so a copy always fits (reading goes on while they drain);
//! the slowest receiver sets the pace as it does in the core. A receiver that fails is dropped from the
//! group and the others go on; if all fail, the socket goes back to the
//! body, and the core sees every receiver gone.

use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use bytes::Bytes;
use rustix::pipe::SpliceFlags;
use tokio::io::Interest;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{write_all, Pipe, Source, YIELD_EVERY};

/// The fan-out's receivers, once all asked for the socket.
pub(in super::super) struct Group {
    /// Bytes each receiver gets through the core before the group's.
    after: u64,
    inner: Mutex<Inner>,
    /// Told when a member joins or leaves, and when the transfer ends.
    changed: Notify,
}

struct Inner {
    /// Members that have not left (joined, or on their way).
    present: usize,
    /// Members that joined, with their sockets.
    joined: Vec<Out>,
    /// What the group takes from the upload; the driver takes it.
    upload: Option<Upload>,
    driving: bool,
    /// Each member's result, by id, once the transfer ended.
    results: Vec<Option<io::Result<u64>>>,
}

struct Upload {
    read: Arc<OwnedReadHalf>,
    /// Where the sender's next bytes wait for the receivers' pipes.
    stage: Pipe,
    /// Bytes read with the head.
    before: Bytes,
    /// Bytes still in the socket.
    remaining: u64,
}

impl Group {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A member leaves before it joined (its response is gone).
    fn leave(&self, source: &Source) {
        let mut inner = self.inner();
        inner.present = inner.present.saturating_sub(1);
        if inner.present == 0 && inner.joined.is_empty() && !inner.driving {
            // Every member left: nobody will splice, the body reads again.
            let upload = inner.upload.take();
            drop(inner);
            if let Some(upload) = upload {
                source.give_back(0, upload.before);
            }
            return;
        }
        drop(inner);
        self.changed.notify_waiters();
    }
}

/// One receiver's part in a fan-out's group.
pub(in super::super) struct Member {
    source: Arc<Source>,
    id: usize,
    /// Its socket's duplicate and its pipe, until it joins.
    out: Option<Out>,
    /// Joined (or failed to): dropping it then changes nothing.
    settled: bool,
    /// The group had formed when [`Member::after`] last looked.
    seen_formed: bool,
}

/// Asks for the upload's socket for one of a fan-out's receivers, whose
/// socket is `to`; `None` if it cannot be had.
///
/// What the group will need (each receiver's pipe and a duplicate of its
/// socket, the staging pipe) is made first: a receiver that cannot have
/// it spoils the group, and the relay's queues carry the bytes to all.
pub(super) fn ask(source: Arc<Source>, to: &TcpStream) -> Option<Member> {
    let resources = Pipe::new().and_then(|pipe| Ok((pipe, duplicate(to)?)));
    let mut state = source.state();
    if state.claimed || state.ended.is_some() || state.remaining == 0 {
        return None;
    }
    let asked = state.candidates?;
    if asked >= source.receivers {
        return None;
    }
    let formed = asked + 1 == source.receivers;
    let stage = if formed {
        Pipe::new().map(Some)
    } else {
        Ok(None)
    };
    let (out, stage) = match resources.and_then(|out| Ok((out, stage?))) {
        Ok(ready) => ready,
        Err(error) => {
            tracing::debug!(%error, "no pipe for a fan-out: the upload goes through the relay");
            state.candidates = None;
            drop(state);
            source.formed.notify_waiters();
            return None;
        }
    };
    let id = asked;
    state.candidates = Some(asked + 1);
    if let Some(stage) = stage {
        // From here the body waits; each member first takes what it had
        // handed out.
        state.claimed = true;
        let upload = Upload {
            read: Arc::clone(&state.read),
            stage,
            before: std::mem::take(&mut state.before),
            remaining: state.remaining,
        };
        state.group = Some(Arc::new(Group {
            after: state.yielded,
            inner: Mutex::new(Inner {
                present: source.receivers,
                joined: Vec::with_capacity(source.receivers),
                upload: Some(upload),
                driving: false,
                results: (0..source.receivers).map(|_| None).collect(),
            }),
            changed: Notify::new(),
        }));
    }
    drop(state);
    tracing::trace!(id, formed, "fan-out receiver asks for the upload");
    if formed {
        source.formed.notify_waiters();
    }
    let (pipe, stream) = out;
    Some(Member {
        source,
        id,
        out: Some(Out {
            id,
            stream,
            pipe: Some(pipe),
            in_pipe: 0,
        }),
        settled: false,
        seen_formed: false,
    })
}

enum Step {
    Done(io::Result<u64>),
    Drive(Vec<Out>, Upload),
    Wait,
}

impl Member {
    fn group(&self) -> Option<Arc<Group>> {
        self.source.state().group.clone()
    }

    /// Bytes this receiver gets through the core first, once the group
    /// formed.
    pub(in super::super) fn after(&mut self) -> Option<u64> {
        let after = self.source.state().group.as_ref().map(|group| group.after);
        self.seen_formed = after.is_some();
        after
    }

    /// Completes when the group forms, if [`Member::after`] has not seen
    /// it formed yet; else, or if it cannot form, never.
    pub(in super::super) async fn formed(&self) {
        if self.seen_formed {
            return std::future::pending().await;
        }
        loop {
            let notified = self.source.formed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (formed, hopeless) = {
                let state = self.source.state();
                (state.group.is_some(), state.candidates.is_none())
            };
            if formed {
                return;
            }
            if hopeless {
                return std::future::pending().await;
            }
            notified.await;
        }
    }

    /// Joins the group (with the duplicate of its socket made when it
    /// asked), and waits for the transfer's end (or drives it). Returns
    /// the bytes written to the receiver.
    pub(in super::super) async fn run(mut self) -> io::Result<u64> {
        let Some(group) = self.group() else {
            return Err(io::Error::other("the receivers' group has not formed"));
        };
        self.settled = true;
        match self.out.take() {
            Some(out) => group.inner().joined.push(out),
            None => {
                group.leave(&self.source);
                return Err(io::Error::other("a fan-out receiver joined twice"));
            }
        }
        loop {
            let notified = group.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = {
                let mut inner = group.inner();
                if let Some(result) = inner.results.get_mut(self.id).and_then(Option::take) {
                    Step::Done(result)
                } else if inner.present == inner.joined.len() && !inner.driving {
                    // Everyone still here joined: this one drives.
                    match inner.upload.take() {
                        Some(upload) => {
                            inner.driving = true;
                            Step::Drive(std::mem::take(&mut inner.joined), upload)
                        }
                        None => Step::Done(Err(io::Error::other("the group ended"))),
                    }
                } else {
                    Step::Wait
                }
            };
            tracing::trace!(id = self.id, step = ?std::mem::discriminant(&step), "tee member");
            match step {
                Step::Done(result) => return result,
                Step::Drive(outs, upload) => {
                    let mut run = Run {
                        source: &self.source,
                        group: &group,
                        outs,
                        failed: Vec::new(),
                        taken: 0,
                        written: upload.before.len() as u64,
                        ended: false,
                    };
                    let outcome = run.transfer(upload).await;
                    tracing::debug!(
                        bytes = run.written,
                        receivers = run.outs.len(),
                        failed = run.failed.len(),
                        whole = outcome == Ended::Whole,
                        "upload teed"
                    );
                    run.end(outcome);
                }
                Step::Wait => notified.await,
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut state = self.source.state();
        match state.group.clone() {
            // Gone before all asked: no group will form, the core goes on
            // carrying the bytes to every receiver.
            None => state.candidates = None,
            Some(group) => {
                drop(state);
                group.leave(&self.source);
            }
        }
    }
}

/// A receiver's socket (a duplicate: the receiver's task keeps its own)
/// and its pipe.
struct Out {
    id: usize,
    stream: TcpStream,
    pipe: Option<Pipe>,
    /// Bytes in its pipe.
    in_pipe: usize,
}

fn duplicate(stream: &TcpStream) -> io::Result<TcpStream> {
    let fd = rustix::io::dup(stream)?;
    let stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(true)?;

    TcpStream::from_std(stream)
}

/// How a group's transfer ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    Whole,
    SenderCut,
    /// Every receiver failed.
    NoReceivers,
}

/// The driver's transfer, ended once, also when dropped halfway.
struct Run<'a> {
    source: &'a Source,
    group: &'a Group,
    outs: Vec<Out>,
    failed: Vec<(usize, io::Error)>,
    /// Bytes taken from the sender's socket.
    taken: u64,
    /// Bytes written to each receiver that is still there.
    written: u64,
    ended: bool,
}

impl Run<'_> {
    async fn transfer(&mut self, upload: Upload) -> Ended {
        let Upload {
            read,
            stage,
            before,
            remaining,
        } = upload;
        let mut i = 0;
        while i < self.outs.len() {
            match write_all(&self.outs[i].stream, &before).await {
                Ok(()) => i += 1,
                Err(error) => self.fail(i, error),
            }
        }
        if !self.outs.is_empty() {
            self.source.relay.count_relayed(before.len() as u64, false);
        }
        self.tee_all(read.as_ref().as_ref(), &stage, remaining)
            .await
    }

    fn fail(&mut self, i: usize, error: io::Error) {
        let out = self.outs.swap_remove(i);
        self.failed.push((out.id, error));
    }

    /// Moves `length` bytes from `from` to every receiver.
    /// The sender's next bytes wait in `stage` while the receivers' pipes
    /// drain, so reading goes on meanwhile.
    async fn tee_all(&mut self, from: &TcpStream, stage: &Pipe, length: u64) -> Ended {
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        let mut staged: usize = 0;
        let mut rounds: u32 = 0;
        loop {
            if self.outs.is_empty() {
                return Ended::NoReceivers;
            }
            let empty = self.outs.iter().all(|out| out.in_pipe == 0);
            if empty && staged == 0 && self.taken == length {
                return Ended::Whole;
            }
            // The smallest pipe takes the staged bytes: each other, empty
            // and at least as large, then takes a copy whole.
            let (source, capacity) = self
                .outs
                .iter()
                .enumerate()
                .filter_map(|(i, out)| Some((i, out.pipe.as_ref()?.capacity)))
                .min_by_key(|&(_, capacity)| capacity)
                .unwrap_or((0, 0));
            let mut moved = false;
            let reading = staged == 0 && self.taken < length;
            if reading {
                let want = usize::try_from(length - self.taken)
                    .unwrap_or(usize::MAX)
                    .min(capacity)
                    .min(stage.capacity);
                match from.try_io(Interest::READABLE, || {
                    rustix::pipe::splice(from, None, &stage.write, None, want, flags)
                        .map_err(io::Error::from)
                }) {
                    Ok(0) => return Ended::SenderCut,
                    Ok(n) => {
                        self.taken += n as u64;
                        staged = n;
                        moved = true;
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Ended::SenderCut,
                }
            }
            if staged > 0 && empty {
                let Some(pipe) = self.outs[source].pipe.as_ref() else {
                    return Ended::NoReceivers;
                };
                match rustix::pipe::splice(&stage.read, None, &pipe.write, None, staged, flags) {
                    Ok(n) => {
                        staged -= n;
                        self.written += n as u64;
                        self.copy(source, n);
                    }
                    Err(error) => self.fail(source, error.into()),
                }
                moved = true;
            }
            let mut i = 0;
            while i < self.outs.len() {
                let out = &mut self.outs[i];
                if out.in_pipe == 0 {
                    i += 1;
                    continue;
                }
                let (Some(pipe), stream) = (out.pipe.as_ref(), &out.stream) else {
                    i += 1;
                    continue;
                };
                match stream.try_io(Interest::WRITABLE, || {
                    rustix::pipe::splice(&pipe.read, None, stream, None, out.in_pipe, flags)
                        .map_err(io::Error::from)
                }) {
                    Ok(n) => {
                        out.in_pipe -= n;
                        moved = true;
                        i += 1;
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => i += 1,
                    Err(error) => {
                        self.fail(i, error);
                        // Not a wait: the one that failed may have been
                        // the last with bytes in its pipe (or the last).
                        moved = true;
                    }
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
            // Nothing could move: wait for the sender (when nothing is
            // staged) or for a receiver with bytes in its pipe.
            let outs = &self.outs;
            poll_fn(|cx| {
                if reading && from.poll_read_ready(cx).is_ready() {
                    return Poll::Ready(());
                }
                for out in outs.iter().filter(|out| out.in_pipe > 0) {
                    if out.stream.poll_write_ready(cx).is_ready() {
                        return Poll::Ready(());
                    }
                }
                Poll::Pending
            })
            .await;
        }
    }

    /// `n` bytes went into the pipe of `outs[source]`: each other pipe
    /// gets a copy.
    fn copy(&mut self, source: usize, n: usize) {
        let mut short = Vec::new();
        if let Some(from) = self.outs[source].pipe.as_ref() {
            for (i, out) in self.outs.iter().enumerate() {
                if i == source {
                    continue;
                }
                let copied = out
                    .pipe
                    .as_ref()
                    .map(|to| rustix::pipe::tee(&from.read, &to.write, n, SpliceFlags::NONBLOCK));
                if !matches!(copied, Some(Ok(copied)) if copied == n) {
                    short.push(i);
                }
            }
        }
        for out in &mut self.outs {
            out.in_pipe = n;
        }
        // (Not expected: each pipe was empty and at least as large.)
        for &i in short.iter().rev() {
            self.fail(i, io::Error::other("a pipe took part of a copy"));
        }
    }

    /// Tells each member its result, and the body how the upload ended.
    fn end(&mut self, ended: Ended) {
        if self.ended {
            return;
        }
        self.ended = true;
        let mut inner = self.group.inner();
        for out in self.outs.drain(..) {
            let result = match ended {
                Ended::Whole => Ok(self.written),
                Ended::SenderCut | Ended::NoReceivers => {
                    Err(io::Error::other("the sender's upload was cut short"))
                }
            };
            if let Some(slot) = inner.results.get_mut(out.id) {
                *slot = Some(result);
            }
        }
        for (id, error) in self.failed.drain(..) {
            if let Some(slot) = inner.results.get_mut(id) {
                *slot = Some(Err(error));
            }
        }
        drop(inner);
        match ended {
            Ended::Whole => self.source.end(self.taken, true),
            Ended::SenderCut => self.source.end(self.taken, false),
            Ended::NoReceivers => self.source.give_back(self.taken, Bytes::new()),
        }
        self.group.changed.notify_waiters();
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        // Dropped halfway (the driving task was stopped): every receiver
        // is cut, and so is the transfer.
        self.end(Ended::SenderCut);
    }
}
