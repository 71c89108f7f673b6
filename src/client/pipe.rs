//! The bridge between blocking file-system work (reading files, building
//! and unpacking tar archives, encrypting) and the async HTTP requests: a
//! bounded channel of chunks, so memory stays at a few chunks whatever the
//! speeds of the disk and the network.
//!
//! Encryption and decryption happen here, on the blocking thread, so they
//! run beside the network I/O rather than in its way.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use indicatif::ProgressBar;
use tokio::sync::mpsc;

use super::e2e::seal::{Opener, Sealer, RECORD_SIZE};
use super::http::error_chain;
use super::ClientError;

/// Chunks in flight between the blocking side and the request.
const DEPTH: usize = 8;

/// The sending half: a `Write` that cuts what it is given into chunks
/// (sealed records when encrypting) and hands them to the request body.
pub struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    sealer: Option<Sealer>,
    buf: BytesMut,
    progress: ProgressBar,
}

/// The body stream a [`ChunkWriter`] feeds.
pub type BodyStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the upload ended")
}

impl ChunkWriter {
    /// A writer and the stream to use as the request body.
    pub fn new(sealer: Option<Sealer>, progress: ProgressBar) -> (Self, BodyStream) {
        let (tx, rx) = mpsc::channel(DEPTH);
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let writer = Self {
            tx,
            sealer,
            buf: BytesMut::with_capacity(RECORD_SIZE),
            progress,
        };
        (writer, Box::pin(body))
    }

    fn send(&self, chunk: Bytes) -> io::Result<()> {
        self.tx.blocking_send(Ok(chunk)).map_err(|_| closed())
    }

    /// Sends bytes as they are, outside any record (the clear header).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.send(Bytes::copy_from_slice(bytes))
    }

    /// Sends one sealed record that is not counted as payload (metadata).
    pub fn send_record(&mut self, plaintext: &[u8]) -> io::Result<()> {
        match self.sealer.as_mut() {
            Some(s) => {
                let rec = s.seal(plaintext, false).map_err(io::Error::other)?;
                self.send(rec)
            }
            None => Err(io::Error::other("no encryption on this stream")),
        }
    }

    fn emit(&mut self, last: bool) -> io::Result<()> {
        let plain = self.buf.split().freeze();
        let chunk = match self.sealer.as_mut() {
            Some(s) => s.seal(&plain, last).map_err(io::Error::other)?,
            None if plain.is_empty() => return Ok(()),
            None => plain,
        };
        self.buf.reserve(RECORD_SIZE);
        self.send(chunk)
    }

    /// Reads `reader` to its end straight into chunks (no extra copy).
    pub fn fill_from(&mut self, reader: &mut impl Read) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let start = self.buf.len();
            self.buf.resize(RECORD_SIZE, 0);
            let n = match reader.read(&mut self.buf[start..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e);
                }
            };
            self.buf.truncate(start + n);
            if n == 0 && start + n < RECORD_SIZE {
                if self.buf.len() == start {
                    return Ok(total);
                }
                continue;
            }
            total += n as u64;
            self.progress.inc(n as u64);
            if self.buf.len() == RECORD_SIZE {
                self.emit(false)?;
            }
        }
    }

    /// Ends the stream cleanly: the rest of the data (and, encrypted, the
    /// final record).
    pub fn finish(mut self) -> io::Result<()> {
        self.emit(true)
    }

    /// Ends the stream as failed: the request body errors, so the relay
    /// aborts every receiver instead of completing the transfer.
    pub fn fail(self, err: &io::Error) {
        let _ = self
            .tx
            .blocking_send(Err(io::Error::new(err.kind(), err.to_string())));
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = RECORD_SIZE - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.progress.inc(n as u64);
        if self.buf.len() == RECORD_SIZE {
            self.emit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The receiving half: a `Read` over the chunks of a response, opening
/// records when the stream is encrypted. The first error is kept so the
/// caller can report it rather than the I/O error a consumer made of it.
pub struct ChunkReader {
    rx: mpsc::Receiver<Result<Bytes, ClientError>>,
    opener: Option<Opener>,
    current: Bytes,
    progress: ProgressBar,
    error: Option<ClientError>,
    done: bool,
}

/// Feeds a response body into a channel; ends by closing it (a clean
/// end) or by sending the error that cut it.
pub fn pump<S, E>(stream: S) -> mpsc::Receiver<Result<Bytes, ClientError>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.peekable());
        while let Some(item) = stream.next().await {
            let item = match item {
                // Gather what has already arrived into one piece: each hand
                // over wakes the blocking thread, and small pieces (HTTP/2
                // frames are 16 KiB) would wake it several times a record.
                Ok(first) => Ok(gather(first, &mut stream)),
                Err(e) => Err(ClientError::CutShort(error_chain(&e))),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Bytes gathered into one hand-over at most.
const GATHER: usize = 256 * 1024;

/// `first` and the chunks the stream has ready right now, up to
/// [`GATHER`] bytes; an error or the end is left for the next `next()`.
fn gather<S, E>(
    first: Bytes,
    stream: &mut std::pin::Pin<&mut futures_util::stream::Peekable<S>>,
) -> Bytes
where
    S: Stream<Item = Result<Bytes, E>>,
{
    use futures_util::FutureExt;
    let mut buf: Option<BytesMut> = None;
    loop {
        let have = buf.as_ref().map_or(first.len(), BytesMut::len);
        if have >= GATHER {
            break;
        }
        if !matches!(stream.as_mut().peek().now_or_never(), Some(Some(Ok(_)))) {
            break;
        }
        let Some(Some(Ok(next))) = stream.next().now_or_never() else {
            break;
        };
        buf.get_or_insert_with(|| {
            let mut b = BytesMut::with_capacity(GATHER.max(first.len()));
            b.extend_from_slice(&first);
            b
        })
        .extend_from_slice(&next);
    }
    buf.map_or(first, BytesMut::freeze)
}

impl ChunkReader {
    /// `leftover` holds bytes already taken from the stream (after the
    /// header and metadata), handed to the opener or returned first.
    pub fn new(
        rx: mpsc::Receiver<Result<Bytes, ClientError>>,
        mut opener: Option<Opener>,
        leftover: Bytes,
        progress: ProgressBar,
    ) -> Self {
        let current = match opener.as_mut() {
            Some(o) => {
                o.push(&leftover);
                Bytes::new()
            }
            None => leftover,
        };
        Self {
            rx,
            opener,
            current,
            progress,
            error: None,
            done: false,
        }
    }

    /// The error that ended the stream, if one did.
    pub fn take_error(&mut self) -> Option<ClientError> {
        self.error.take()
    }

    fn fail(&mut self, err: ClientError) -> io::Error {
        let io = io::Error::other(err.to_string());
        self.error.get_or_insert(err);
        self.done = true;
        io
    }

    /// Fills `self.current` with the next plaintext; false at a clean end.
    fn refill(&mut self) -> io::Result<bool> {
        while !self.done {
            if let Some(opener) = self.opener.as_mut() {
                match opener.next_record() {
                    Ok(Some(plain)) => {
                        self.current = plain;
                        if !self.current.is_empty() {
                            return Ok(true);
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(self.fail(e.into())),
                }
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => match self.opener.as_mut() {
                    Some(opener) => opener.push(&chunk),
                    None if chunk.is_empty() => {}
                    None => {
                        self.current = chunk;
                        return Ok(true);
                    }
                },
                Some(Err(e)) => return Err(self.fail(e)),
                None => {
                    if let Some(Err(e)) = self.opener.as_ref().map(Opener::end) {
                        return Err(self.fail(e.into()));
                    }
                    self.done = true;
                }
            }
        }
        Ok(false)
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.current.is_empty() && !self.refill()? {
            return Ok(0);
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        self.progress.inc(n as u64);
        Ok(n)
    }
}
