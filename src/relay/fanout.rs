//! One task per sender: it waits for the rendezvous, then copies the body
//! to every receiver through a small bounded queue each, so the slowest
//! receiver sets the pace and memory per transfer stays a few chunks per
//! receiver whatever the speeds.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::{ByteStream, Count, Delivery, Head, Log, PeerGuard, WaitingReceiver};

/// A receiver's stream ended before the sender's did: the response must be
/// aborted, not ended cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the sender's stream was cut short")]
pub struct Aborted;

enum Frame {
    /// Chunks in order, handed over together (see [`gather`]).
    Data(Arc<[Bytes]>),
    End,
}

pub(super) struct SenderTask {
    pub guard: PeerGuard,
    pub n: Count,
    pub head: Head,
    pub body: ByteStream,
    pub start: oneshot::Receiver<Result<Vec<WaitingReceiver>, super::Undelivered>>,
    pub log: mpsc::UnboundedSender<Log>,
    pub queue_chunks: usize,
    pub read_ahead: usize,
    /// 0: no limit.
    pub max_bytes: u64,
    /// Set once the transfer has started and the whole upload has been
    /// read: from then on it can finish without its sender.
    pub uploaded: Arc<AtomicBool>,
}

/// What the task holds towards one receiver.
struct Out {
    queue: mpsc::Sender<Frame>,
    done: oneshot::Receiver<()>,
}

pub(super) async fn run_sender(task: SenderTask) {
    let SenderTask {
        guard,
        n,
        head,
        mut body,
        mut start,
        log,
        queue_chunks,
        read_ahead,
        max_bytes,
        uploaded,
    } = task;
    let say = |line| {
        // The sender may have stopped reading its log; the transfer goes on.
        let _ = log.send(line);
    };

    // Wait for the rendezvous, reading a little of the body meanwhile: a
    // connection is only seen closing when it is read.
    let mut early: VecDeque<Bytes> = VecDeque::new();
    let mut early_bytes = 0;
    let mut body_ended = false;
    // Once the read-ahead is full nothing reads the sender's connection,
    // so its leaving would go unseen (HTTP/1); writing is then the only
    // way to notice: the waiting line again, now and then. A write to a
    // closed connection fails, and that drops this sender.
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + WAITING_HEARTBEAT,
        WAITING_HEARTBEAT,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let receivers = loop {
        tokio::select! {
            biased;
            started = &mut start => match started {
                Ok(Ok(receivers)) => break receivers,
                Ok(Err(why)) => {
                    say(match why {
                        super::Undelivered::TimedOut(limit) => Log::WaitTimedOut(limit),
                        _ => Log::ShuttingDown,
                    });
                    tracing::debug!(path = %guard.path, ?why, "sender turned away");
                    return;
                }
                // Unregistered: the sender left.
                Err(_) => return,
            },
            item = body.next(), if !body_ended && early_bytes < read_ahead => match item {
                Some(Ok(chunk)) => {
                    early_bytes += chunk.len();
                    early.push_back(chunk);
                }
                None => body_ended = true,
                // The sender left while waiting; the guard frees the path.
                Some(Err(_)) => return,
            },
            _ = heartbeat.tick(), if !body_ended && early_bytes >= read_ahead => {
                say(Log::Waiting(n));
            }
        }
    };
    tracing::debug!(path = %guard.path, receivers = receivers.len(), "transfer starts");

    say(Log::Start(n));
    let totals = &guard.shared.totals;
    totals.started.fetch_add(1, Ordering::Relaxed);
    // Counted as aborted unless it reaches the end below.
    let mut outcome = Outcome {
        totals,
        complete: false,
        started: std::time::Instant::now(),
    };
    let mut outs = Vec::with_capacity(receivers.len());
    for receiver in receivers {
        totals.waits.record(receiver.since.elapsed());
        let (queue, rx) = mpsc::channel(queue_chunks.max(1));
        let (done_tx, done) = oneshot::channel();
        let stream = ReceiverStream {
            rx,
            remaining: head.content_length,
            done: Some(done_tx),
            batch: None,
        };
        let delivery = Delivery {
            head: head.clone(),
            body: stream,
        };
        if receiver.deliver.send(Ok(delivery)).is_ok() {
            outs.push(Out { queue, done });
        } else {
            say(Log::ReceiverAborted);
        }
    }
    let total = n as usize;

    let mut sent: u64 = 0;
    // An item read while gathering that must wait for the next round.
    let mut held: Option<Option<Result<Bytes, super::BodyError>>> = None;
    loop {
        let item = match (held.take(), early.pop_front()) {
            (Some(item), _) => item,
            (None, Some(chunk)) => Some(Ok(chunk)),
            (None, None) if body_ended => None,
            (None, None) => body.next().await,
        };
        match item {
            Some(Ok(chunk)) => {
                let batch = if early.is_empty() && !body_ended {
                    gather(chunk, &mut body, &mut held)
                } else {
                    vec![chunk]
                };
                let len: usize = batch.iter().map(Bytes::len).sum();
                if len == 0 {
                    continue;
                }
                sent += len as u64;
                // Every byte is in (the length is reached, or the end was
                // read while gathering): the sender is no longer needed.
                if head.content_length == Some(sent)
                    || (body_ended && early.is_empty())
                    || matches!(held, Some(None))
                {
                    uploaded.store(true, Ordering::Relaxed);
                }
                totals.bytes.fetch_add(len as u64, Ordering::Relaxed);
                if max_bytes > 0 && sent > max_bytes {
                    say(Log::TooLarge(max_bytes));
                    tracing::debug!(path = %guard.path, sent, "transfer over the bytes limit");
                    // Dropping the queues without an end aborts every receiver.
                    tokio::spawn(linger(body));
                    return;
                }
                let batch: Arc<[Bytes]> = batch.into();
                let mut i = 0;
                while i < outs.len() {
                    if outs[i]
                        .queue
                        .send(Frame::Data(Arc::clone(&batch)))
                        .await
                        .is_ok()
                    {
                        i += 1;
                    } else {
                        outs.swap_remove(i);
                        say(Log::ReceiverAborted);
                    }
                }
                if outs.is_empty() {
                    say(Log::AllAborted);
                    tracing::debug!(path = %guard.path, sent, "every receiver left");
                    // End the log, and give it time to reach the sender
                    // before its request is closed: closing a socket with
                    // unread upload bytes resets it, and a reset can
                    // overtake the last lines.
                    // The linger outlives the log: the response ends at
                    // once, and the connection closes after the linger.
                    tokio::spawn(linger(body));
                    return;
                }
            }
            None => {
                uploaded.store(true, Ordering::Relaxed);
                break;
            }
            Some(Err(error)) => {
                say(Log::SendFailed);
                tracing::debug!(path = %guard.path, sent, %error, "sender cut short");
                // Dropping the queues without an end aborts every receiver.
                return;
            }
        }
    }
    say(Log::Sent);
    let mut finished = 0;
    for out in outs {
        // A receiver of known length may be gone already, complete.
        let _ = out.queue.send(Frame::End).await;
        if out.done.await.is_ok() {
            finished += 1;
        } else {
            say(Log::ReceiverAborted);
        }
    }
    if finished == total {
        outcome.complete = true;
        say(Log::AllReceived);
    } else if finished == 0 {
        say(Log::AllAborted);
    }
    tracing::debug!(path = %guard.path, sent, finished, "transfer ends");
}

/// How often a waiting sender whose read-ahead is full hears that it
/// still waits (see `run_sender`).
pub(super) const WAITING_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// Counts a started transfer as completed or aborted when it ends, by
/// whatever way it ends.
struct Outcome<'a> {
    totals: &'a super::Totals,
    complete: bool,
    started: std::time::Instant,
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        self.totals.durations.record(self.started.elapsed());
        let counter = if self.complete {
            &self.totals.completed
        } else {
            &self.totals.aborted
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Bytes gathered into one hand-over when more of the body is already
/// there. HTTP/2 bodies come in frames of 16 KiB: passing each on alone
/// costs a wake-up and a write per frame at each receiver.
const GATHER_BYTES: usize = 256 * 1024;

/// `first` and whatever of the body is ready now, without waiting, up to
/// [`GATHER_BYTES`]; an end or error met on the way goes to `held`. The
/// chunks are not copied: a receiver yields them one by one.
fn gather(
    first: Bytes,
    body: &mut super::ByteStream,
    held: &mut Option<Option<Result<Bytes, super::BodyError>>>,
) -> Vec<Bytes> {
    let mut total = first.len();
    let mut batch = vec![first];
    while total < GATHER_BYTES {
        match body.next().now_or_never() {
            None => break,
            Some(Some(Ok(chunk))) => {
                total += chunk.len();
                batch.push(chunk);
            }
            Some(other) => {
                *held = Some(other);
                break;
            }
        }
    }
    batch
}

/// How long, and how many bytes, a sender's upload is still read and
/// dropped after its log has ended early.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

async fn linger(mut body: super::ByteStream) {
    let drain = async {
        let mut drained = 0;
        while let Some(Ok(chunk)) = body.next().await {
            drained += chunk.len();
            if drained >= LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// The bytes of one receiver. Ends cleanly only if the sender's body ended
/// cleanly; otherwise yields [`Aborted`].
pub struct ReceiverStream {
    rx: mpsc::Receiver<Frame>,
    /// Bytes still expected when the length is known.
    remaining: Option<u64>,
    /// Fired once the receiver has been handed everything.
    done: Option<oneshot::Sender<()>>,
    /// The batch being yielded, and the index of its next chunk.
    batch: Option<(Arc<[Bytes]>, usize)>,
}

impl ReceiverStream {
    /// A stream that aborts at once: for a receiver whose sender left
    /// between the rendezvous and the start.
    pub fn aborted() -> Self {
        let (_, rx) = mpsc::channel(1);
        ReceiverStream {
            rx,
            remaining: None,
            done: Some(oneshot::channel().0),
            batch: None,
        }
    }

    /// True once every byte of a stream of known length has been yielded;
    /// a transport may then finish the response without polling again.
    pub fn is_complete(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Counts bytes its transport delivered past this stream (spliced from
    /// the sender's socket): once every byte of a known length has reached
    /// the receiver, dropping the stream counts as a success, as when the
    /// bytes came through it.
    pub fn delivered_elsewhere(&mut self, bytes: u64) {
        if let Some(remaining) = self.remaining.as_mut() {
            *remaining = remaining.saturating_sub(bytes);
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl Stream for ReceiverStream {
    type Item = Result<Bytes, Aborted>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done.is_none() {
            return Poll::Ready(None);
        }
        loop {
            if let Some((batch, next)) = self.batch.take() {
                if let Some(chunk) = batch.get(next).cloned() {
                    self.batch = Some((batch, next + 1));
                    if let Some(remaining) = self.remaining.as_mut() {
                        *remaining = remaining.saturating_sub(chunk.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Frame::Data(batch))) => self.batch = Some((batch, 0)),
                Poll::Ready(Some(Frame::End)) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(None) => {
                    self.done = None;
                    return Poll::Ready(Some(Err(Aborted)));
                }
            }
        }
    }
}

impl Drop for ReceiverStream {
    fn drop(&mut self) {
        // A transport may stop polling once a known length is complete;
        // that receiver has everything, so it counts as a success.
        if self.is_complete() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(length: u64) -> (ReceiverStream, oneshot::Receiver<()>) {
        let (_, rx) = mpsc::channel(1);
        let (done_tx, done) = oneshot::channel();
        let stream = ReceiverStream {
            rx,
            remaining: Some(length),
            done: Some(done_tx),
            batch: None,
        };
        (stream, done)
    }

    /// Bytes a transport delivered past the stream (spliced) count: a
    /// receiver dropped once it has them all received the transfer; one
    /// dropped short of them did not.
    #[test]
    fn bytes_delivered_elsewhere_count_towards_the_length() {
        let (mut whole, mut done) = stream(10);
        whole.delivered_elsewhere(4);
        whole.delivered_elsewhere(6);
        assert!(whole.is_complete());
        drop(whole);
        assert!(done.try_recv().is_ok(), "a complete receiver counts");

        let (mut short, mut done) = stream(10);
        short.delivered_elsewhere(9);
        drop(short);
        assert!(done.try_recv().is_err(), "a receiver short of its length");
    }
}
