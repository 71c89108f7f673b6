//! The first request of a cleartext connection, read and answered here;
//! whatever follows on the connection goes to hyper.
//!
//! Why not hyper from the first byte: a receiver that waits for its sender
//! is a connection with one pending GET, and there may be tens of
//! thousands of them. hyper keeps an 8 KiB read buffer per connection (its
//! floor), whose first page the request head touches, so each waiting
//! receiver cost 4 KiB more than the receiver itself. Here the head is
//! read into a small buffer, parsed with `httparse` (what hyper uses), and
//! the buffer is gone before the request waits.
//!
//! Taken here: a first request that is a plain `GET` over HTTP/1.0 or
//! HTTP/1.1, with no body, no `Expect` and no `Upgrade`. Everything else
//! (HTTP/2's preface, other methods, WebSocket upgrades, heads that are
//! malformed or larger than [`MAX_HEAD`]) goes to hyper with the bytes
//! read so far put back in front ([`Rewind`]), so hyper answers it exactly
//! as it would have. The response is written the way hyper writes it:
//! same status line, headers, framing (`content-length`, chunked, or until
//! close for HTTP/1.0), `connection: close` and `date`, and a body cut
//! short ends the connection without a clean end: with no last chunk, or
//! short of its `content-length`, or (a body delimited by the close, which
//! hyper ended with a FIN as if whole) with a reset.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::body::Body;
use super::http::Handler;

mod upload;

/// The first bytes of every cleartext HTTP/2 connection (prior knowledge).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The head buffer's first size: a typical request head fits.
const FIRST_READ: usize = 1024;

/// Heads larger than this go to hyper (which applies `max_header_bytes`).
pub const MAX_HEAD: usize = 8192;

/// Headers parsed here; a request with more goes to hyper.
const MAX_HEADERS: usize = 48;

/// Bytes a client may send ahead (a pipelined request) while its first
/// request waits; beyond this the connection is not read until the
/// response is written.
const MAX_AHEAD: usize = 64 * 1024;

/// What became of a connection after its first request.
pub enum Outcome {
    /// An HTTP/2 connection (prior knowledge), its first bytes put back.
    Http2(Rewind),
    /// hyper serves the connection from here, the bytes read but not
    /// used put back: a request not taken here, or what follows a request
    /// answered here on a connection kept alive.
    Http1(Rewind),
    /// The connection is over.
    Closed,
}

/// Reads the connection's first request head within `head_timeout` and,
/// if it is one taken here, answers it.
pub async fn serve_first(
    stream: TcpStream,
    handler: &Handler,
    head_timeout: Duration,
    max_head: usize,
) -> Outcome {
    // Boxed, like writing below: reading the head needs a timer and a
    // buffer, and none of it while the request waits.
    let (reply, ahead, keep_alive) =
        match Box::pin(read_first(&stream, head_timeout, max_head)).await {
            First::Closed => return Outcome::Closed,
            First::Http2(read) => return Outcome::Http2(Rewind::batched(stream, read)),
            First::NotTaken(read) => return Outcome::Http1(Rewind::new(stream, read)),
            First::Taken(
                Taken {
                    parts,
                    upload: None,
                },
                ahead,
            ) => {
                let keep_alive = parts.version == Version::HTTP_11 && !asks_close(&parts.headers);
                // What waits from here on is the reply, the connection and
                // the bytes read ahead: the request and its head buffer
                // are gone.
                let request = Request::from_parts(*parts, http_body_util::Empty::<Bytes>::new());
                (handler.handle(request), ahead, keep_alive)
            }
            First::Taken(
                Taken {
                    parts,
                    upload: Some(upload),
                },
                ahead,
            ) => {
                // Boxed: only senders need it.
                return Box::pin(upload::serve(stream, handler, *parts, upload, ahead)).await;
            }
        };
    answer(stream, reply, ahead, keep_alive).await
}

async fn answer(
    mut stream: TcpStream,
    reply: super::http::Reply,
    mut ahead: BytesMut,
    keep_alive: bool,
) -> Outcome {
    let Some(response) = respond_or_hang_up(&stream, reply, &mut ahead).await else {
        tracing::debug!("client left before its response");
        return Outcome::Closed;
    };
    // Boxed: writing needs more state than waiting, and only a
    // connection whose response is ready needs it.
    match Box::pin(write_response(
        &mut stream,
        response,
        keep_alive,
        Some(&mut ahead),
    ))
    .await
    {
        Ok(true) => Outcome::Http1(Rewind::new(stream, ahead.freeze())),
        Ok(false) => {
            let _ = stream.shutdown().await;
            Outcome::Closed
        }
        Err(error) => {
            // Dropped without a clean end: the client sees a cut response.
            tracing::debug!(%error, "response cut short");
            Outcome::Closed
        }
    }
}

/// The connection's first bytes, read.
enum First {
    Closed,
    /// HTTP/2's preface, and the bytes read.
    Http2(Bytes),
    /// A request for hyper, and the bytes read.
    NotTaken(Bytes),
    /// A request taken here, and the bytes after its head.
    Taken(Taken, BytesMut),
}

/// A request head taken here.
struct Taken {
    /// Boxed: kept small, what holds it stays small while the request
    /// waits (an `async fn` keeps a value's room across an `.await` in the
    /// scope it was moved from).
    parts: Box<http::request::Parts>,
    /// An upload's length and whether it waits for `100 Continue`.
    upload: Option<(u64, bool)>,
}

async fn read_first(stream: &TcpStream, head_timeout: Duration, max_head: usize) -> First {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    let head = match tokio::time::timeout(head_timeout, read_head(stream, &mut buf, max_head)).await
    {
        Ok(Ok(head)) => head,
        Ok(Err(error)) => {
            tracing::debug!(%error, "connection failed before its first request");
            return First::Closed;
        }
        Err(_) => {
            tracing::debug!("no request head in time");
            return First::Closed;
        }
    };
    match head {
        Head::Closed => First::Closed,
        Head::Http2 => First::Http2(buf.freeze()),
        Head::NotTaken => First::NotTaken(buf.freeze()),
        Head::Taken(taken, length) => {
            // Keep what came after the head (rarely anything), not the
            // buffer.
            let mut ahead = BytesMut::new();
            if buf.len() > length {
                ahead.extend_from_slice(&buf[length..]);
            }
            First::Taken(taken, ahead)
        }
    }
}

/// The response, or `None` if the client left first. While the response
/// is pending the connection is watched: a client that leaves cancels its
/// request (a waiting receiver frees its path at once).
async fn respond_or_hang_up(
    stream: &TcpStream,
    reply: super::http::Reply,
    ahead: &mut BytesMut,
) -> Option<Response<Body>> {
    tokio::select! {
        biased;
        result = reply => match result {
            Ok(response) => Some(response),
            Err(never) => match never {},
        },
        () = hang_up(stream, ahead) => None,
    }
}

/// What the first bytes of a connection are.
enum Head {
    /// The client closed before a whole head.
    Closed,
    /// The HTTP/2 preface.
    Http2,
    /// A request for hyper (see the module's doc).
    NotTaken,
    /// A request taken here, and the length of its head.
    Taken(Taken, usize),
}

async fn read_head(stream: &TcpStream, buf: &mut BytesMut, max_head: usize) -> io::Result<Head> {
    loop {
        if !buf.is_empty() {
            let preface = buf.len().min(H2_PREFACE.len());
            if buf[..preface] == H2_PREFACE[..preface] {
                if preface == H2_PREFACE.len() {
                    return Ok(Head::Http2);
                }
            } else {
                match parse(buf) {
                    Parsed::Partial if buf.len() < max_head => {}
                    Parsed::Partial | Parsed::NotTaken => return Ok(Head::NotTaken),
                    Parsed::Taken(taken, length) => return Ok(Head::Taken(taken, length)),
                }
            }
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        stream.readable().await?;
        match stream.try_read_buf(buf) {
            Ok(0) => {
                return Ok(if buf.is_empty() {
                    Head::Closed
                } else {
                    Head::NotTaken
                })
            }
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
}

enum Parsed {
    Partial,
    NotTaken,
    Taken(Taken, usize),
}

/// Parses a request head; only a request this module takes is kept.
fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let length = match head.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotTaken,
    };
    match request_of(&head) {
        Some(taken) => Parsed::Taken(taken, length),
        None => Parsed::NotTaken,
    }
}

/// A plain GET, or a PUT or POST with one `Content-Length` (an upload
/// to relay), over HTTP/1.0 or 1.1; nothing else.
fn request_of(head: &httparse::Request<'_, '_>) -> Option<Taken> {
    let method = match head.method? {
        "GET" => Method::GET,
        "PUT" => Method::PUT,
        "POST" => Method::POST,
        _ => return None,
    };
    let version = match head.version? {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => return None,
    };
    let uri: Uri = head.path?.parse().ok()?;
    let mut map = HeaderMap::with_capacity(head.headers.len());
    let mut length: Option<u64> = None;
    let mut expect = false;
    for header in head.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(header.value).ok()?;
        match name.as_str() {
            "upgrade" | "transfer-encoding" => return None,
            "expect" if value.as_bytes().eq_ignore_ascii_case(b"100-continue") => expect = true,
            "expect" => return None,
            "content-length" => {
                let digits = value.as_bytes();
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                let parsed = std::str::from_utf8(digits).ok()?.parse().ok()?;
                if length.replace(parsed).is_some() {
                    return None;
                }
            }
            _ => {}
        }
        map.append(name, value);
    }
    let upload = match (&method, length) {
        (&Method::GET, None | Some(0)) if !expect => None,
        (&Method::PUT | &Method::POST, Some(length)) => Some((length, expect)),
        _ => return None,
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = map;
    Some(Taken {
        parts: Box::new(parts),
        upload,
    })
}

/// Whether `Connection` lists `close`.
fn asks_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// Completes when the client closes the connection (or it fails). Bytes it
/// sends meanwhile are kept in `ahead`, up to [`MAX_AHEAD`].
async fn hang_up(stream: &TcpStream, ahead: &mut BytesMut) {
    loop {
        if ahead.len() >= MAX_AHEAD {
            return std::future::pending().await;
        }
        if stream.readable().await.is_err() {
            return;
        }
        ahead.reserve(FIRST_READ);
        match stream.try_read_buf(ahead) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// How a response body is delimited.
#[derive(Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 without a length).
    Close,
}

/// Writes the response; `Ok(true)` if the connection may carry another
/// request. An error (the body cut short, the client gone) means the
/// connection must be dropped as it is. With `ahead`, the connection is
/// watched while the body is quiet, as in [`respond_or_hang_up`], bytes
/// sent ahead kept there (not for an upload's connection, whose reading
/// side is the upload's).
async fn write_response<C: Connection>(
    stream: &mut C,
    response: Response<Body>,
    keep_alive: bool,
    mut ahead: Option<&mut BytesMut>,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    // A sender on this path offers its socket: its bytes are then spliced
    // from socket to socket (see `upload`), past the relay's queue.
    let mut splice = parts
        .extensions
        .get::<crate::relay::Offer>()
        .and_then(|offer| upload::claim(offer, stream.tcp()));
    let http10 = parts.version == Version::HTTP_10;
    let mut keep_alive = keep_alive && !http10 && !asks_close(&parts.headers);
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        header_line(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    // Statuses that never have a body get no framing headers (as hyper).
    let bodiless = parts.status.is_informational()
        || parts.status == http::StatusCode::NO_CONTENT
        || parts.status == http::StatusCode::NOT_MODIFIED;
    let framing = match (declared, http_body::Body::size_hint(&body).exact()) {
        _ if bodiless => Framing::Length(0),
        (Some(length), _) => Framing::Length(length),
        (None, Some(length)) => {
            header_line(&mut head, b"content-length", length.to_string().as_bytes());
            Framing::Length(length)
        }
        (None, None) if http10 => {
            keep_alive = false;
            Framing::Close
        }
        (None, None) => {
            header_line(&mut head, TRANSFER_ENCODING.as_str().as_bytes(), b"chunked");
            Framing::Chunked
        }
    };
    if !keep_alive && !http10 && !parts.headers.contains_key(CONNECTION) {
        header_line(&mut head, b"connection", b"close");
    }
    if !parts.headers.contains_key(DATE) {
        // (A proxied host's own date stays the only one, as with hyper.)
        header_line(
            &mut head,
            b"date",
            httpdate::fmt_http_date(SystemTime::now()).as_bytes(),
        );
    }
    head.extend_from_slice(b"\r\n");

    // Pieces are gathered while the body has more ready at once, and go
    // out together (one `writev`): the head with the first piece, a
    // batch of the relay's chunks in one call, and the head alone when
    // the body is not ready yet (a waiting stream still gets its head).
    let mut out = Pieces::default();
    out.push(Bytes::from(head));
    let mut sent: u64 = 0;
    if !matches!(framing, Framing::Length(_)) {
        splice = None;
    }
    loop {
        if splice.as_mut().is_some_and(|claim| claim.ready(sent)) {
            if let Some(claim) = splice.take() {
                out.write_to(stream).await?;
                let spliced = claim.run(stream.tcp()).await?;
                // The receiver has these bytes; its stream must know, or a
                // client that closes once it has them all (before the
                // relay's end comes) would count as gone halfway.
                body.delivered_elsewhere(spliced);
                sent += spliced;
            }
        }
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                out.write_to(stream).await?;
                // A fan-out's receiver waits for its group too: once it
                // forms, the body's next bytes come by the group's splice.
                let changed = async {
                    match splice.as_ref() {
                        Some(claim) => claim.changed().await,
                        None => std::future::pending().await,
                    }
                };
                match ahead.as_deref_mut() {
                    // A client that leaves while nothing comes (a quiet
                    // stream, a room's events) ends its response now, as
                    // with hyper, not at a write seconds or hours later.
                    Some(ahead) => tokio::select! {
                        biased;
                        frame = body.frame() => frame,
                        () = changed => continue,
                        () = hang_up(stream.tcp(), ahead) => {
                            return Err(io::Error::other("client left during the response"));
                        }
                    },
                    None => tokio::select! {
                        biased;
                        frame = body.frame() => frame,
                        () = changed => continue,
                    },
                }
            }
        };
        match frame {
            Some(Ok(frame)) => {
                // Trailers (not data): HTTP/1 here sends none.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                sent += data.len() as u64;
                match framing {
                    Framing::Length(length) if sent > length => {
                        return Err(io::Error::other("body longer than its content-length"));
                    }
                    Framing::Length(_) | Framing::Close => out.push(data),
                    Framing::Chunked => {
                        out.push(Bytes::from(format!("{:X}\r\n", data.len())));
                        out.push(data);
                        out.push(Bytes::from_static(b"\r\n"));
                    }
                }
                if out.remaining() >= GATHER_BYTES || out.parts.len() >= GATHER_PARTS {
                    out.write_to(stream).await?;
                }
            }
            Some(Err(error)) => {
                // What came before the cut is delivered, then the cut.
                out.write_to(stream).await?;
                if let Framing::Close = framing {
                    // A body delimited by the close: a FIN would end it as
                    // if whole. Only a reset tells the client it was cut.
                    reset_on_close(stream.tcp());
                }
                return Err(io::Error::other(error));
            }
            None => {
                match framing {
                    Framing::Length(length) if sent != length => {
                        out.write_to(stream).await?;
                        return Err(io::Error::other("body shorter than its content-length"));
                    }
                    Framing::Length(_) | Framing::Close => {}
                    Framing::Chunked => out.push(Bytes::from_static(b"0\r\n\r\n")),
                }
                out.write_to(stream).await?;
                return Ok(keep_alive);
            }
        }
    }
}

/// Bytes gathered before a write (see `write_response`).
const GATHER_BYTES: usize = 256 * 1024;
/// Pieces gathered before a write: tokio's `writev` takes up to 64.
const GATHER_PARTS: usize = 60;

/// Pieces of a response waiting to be written with one `writev`.
#[derive(Default)]
struct Pieces {
    parts: std::collections::VecDeque<Bytes>,
    len: usize,
}

impl Pieces {
    fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.len += piece.len();
            self.parts.push_back(piece);
        }
    }

    async fn write_to<W: AsyncWrite + Unpin>(&mut self, stream: &mut W) -> io::Result<()> {
        if self.len > 0 {
            stream.write_all_buf(self).await?;
        }
        Ok(())
    }
}

impl Buf for Pieces {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |piece| piece.as_ref())
    }

    fn advance(&mut self, mut count: usize) {
        self.len -= count.min(self.len);
        while count > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if count < front.len() {
                front.advance(count);
                return;
            }
            count -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, slices: &mut [io::IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (slice, piece) in slices.iter_mut().zip(self.parts.iter()) {
            *slice = io::IoSlice::new(piece);
            filled += 1;
        }
        filled
    }
}

/// Makes closing `stream` send a reset (RST) instead of a clean end (FIN).
fn reset_on_close(stream: &TcpStream) {
    if let Err(error) = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(%error, "cannot make the close a reset");
    }
}

fn header_line(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Where a response is written: a connection, or the writing half of
/// one; either way a TCP socket underneath (to splice into).
trait Connection: AsyncWrite + Unpin + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Connection for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Connection for tokio::net::tcp::OwnedWriteHalf {
    fn tcp(&self) -> &TcpStream {
        self.as_ref()
    }
}

/// A connection with bytes already read from it put back in front.
pub struct Rewind {
    before: Bytes,
    stream: TcpStream,
    /// Small reads are served from reads of [`READ_BATCH`] (HTTP/2).
    batched: bool,
}

/// What a batched [`Rewind`] reads at a time. The HTTP/2 codec asks for
/// 8 KiB at a time: an h2c upload of 1 GiB took 131,000 `recvfrom`
/// calls. A batch costs a copy out of it, far less than the calls it
/// saves; it is allocated for each read and gone once consumed, so an
/// idle connection holds none.
const READ_BATCH: usize = 128 * 1024;

impl Rewind {
    fn new(stream: TcpStream, before: Bytes) -> Self {
        Rewind {
            before,
            stream,
            batched: false,
        }
    }

    /// For HTTP/2: small reads come out of larger ones.
    fn batched(stream: TcpStream, before: Bytes) -> Self {
        Rewind {
            before,
            stream,
            batched: true,
        }
    }

    /// Reads up to [`READ_BATCH`] from the socket into `before`.
    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut batch = BytesMut::with_capacity(READ_BATCH);
        loop {
            match self.stream.try_read_buf(&mut batch) {
                Ok(_) => {
                    self.before = batch.freeze();
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    std::task::ready!(self.stream.poll_read_ready(cx))?;
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.before.is_empty() {
            if !this.batched || buf.remaining() >= READ_BATCH {
                return Pin::new(&mut this.stream).poll_read(cx, buf);
            }
            std::task::ready!(this.poll_batch(cx))?;
            // Empty: the end of the stream.
        }
        let n = this.before.len().min(buf.remaining());
        buf.put_slice(&this.before[..n]);
        this.before.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of a new loopback connection: (client, server).
    async fn loopback_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    /// A batched connection serves small reads from larger ones, in order,
    /// the bytes put back first, then the end.
    #[tokio::test]
    async fn a_batched_rewind_reads_in_order_to_the_end() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = loopback_pair().await;
        let data: Vec<u8> = (0..3 * READ_BATCH + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("shutdown");
        });
        let mut rewind = Rewind::batched(server, Bytes::from_static(b"PRI"));
        let mut got = Vec::new();
        let mut chunk = [0u8; 8 * 1024];
        loop {
            let n = rewind.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        writer.await.expect("writer");
        assert_eq!(&got[..3], b"PRI");
        assert!(
            got[3..] == data[..],
            "{} bytes after the prefix",
            got.len() - 3
        );
    }

    fn taken(head: &str) -> Option<Taken> {
        match parse(head.as_bytes()) {
            Parsed::Taken(taken, length) => {
                assert_eq!(length, head.len());
                Some(taken)
            }
            Parsed::Partial => panic!("partial: {head:?}"),
            Parsed::NotTaken => None,
        }
    }

    #[test]
    fn plain_gets_are_taken() {
        let get =
            taken("GET /a?n=2 HTTP/1.1\r\nHost: h\r\nX-Two: 1\r\nX-Two: 2\r\n\r\n").expect("taken");
        assert_eq!(get.parts.uri.path(), "/a");
        assert_eq!(get.parts.uri.query(), Some("n=2"));
        assert_eq!(get.parts.version, Version::HTTP_11);
        assert_eq!(get.parts.headers.get_all("x-two").iter().count(), 2);
        assert!(get.upload.is_none());
        let get = taken("GET / HTTP/1.0\n\n").expect("bare LF");
        assert_eq!(get.parts.version, Version::HTTP_10);
        assert!(taken("GET /z HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_some());
        let absolute = taken("GET http://h:1/p HTTP/1.1\r\n\r\n").expect("absolute form");
        assert_eq!(absolute.parts.uri.path(), "/p");
    }

    #[test]
    fn uploads_with_a_length_are_taken() {
        let put = taken("PUT /a HTTP/1.1\r\nContent-Length: 12\r\n\r\n").expect("PUT");
        assert_eq!(put.parts.method, Method::PUT);
        assert_eq!(put.upload, Some((12, false)));
        let post = taken("POST /a HTTP/1.0\r\nContent-Length: 0\r\nExpect: 100-Continue\r\n\r\n")
            .expect("POST");
        assert_eq!(post.upload, Some((0, true)));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for head in [
            "POST /a HTTP/1.1\r\n\r\n",
            "PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PUT /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "PUT /a HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "PUT /a HTTP/1.1\r\nContent-Length: 1\r\nExpect: other\r\n\r\n",
            "HEAD /a HTTP/1.1\r\n\r\n",
            "OPTIONS /a HTTP/1.1\r\n\r\n",
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            "GET /a HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET /a\x01 HTTP/1.1\r\n\r\n",
        ] {
            assert!(taken(head).is_none(), "{head:?} was taken");
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert!(taken(&format!("GET /a HTTP/1.1\r\n{many}\r\n")).is_none());
    }

    #[test]
    fn heads_in_progress_are_partial() {
        for head in ["G", "GET /a HTTP/1.1\r\n", "GET /a HTTP/1.1\r\nHost: h\r\n"] {
            assert!(
                matches!(parse(head.as_bytes()), Parsed::Partial),
                "{head:?}"
            );
        }
    }

    #[test]
    fn pieces_advance_across_their_parts() {
        let mut pieces = Pieces::default();
        for part in ["ab", "", "cde", "f"] {
            pieces.push(Bytes::from(part));
        }
        assert_eq!(pieces.remaining(), 6);
        assert_eq!(pieces.parts.len(), 3, "empty parts are not kept");
        let mut slices = [io::IoSlice::new(&[]); 2];
        assert_eq!(pieces.chunks_vectored(&mut slices), 2);
        assert_eq!(&*slices[1], b"cde");
        pieces.advance(3);
        assert_eq!(pieces.chunk(), b"de");
        assert_eq!(pieces.remaining(), 3);
        pieces.advance(3);
        assert_eq!(pieces.remaining(), 0);
        assert!(pieces.chunk().is_empty());
    }

    /// A `Date` the response has already (a named host's, through the
    /// proxy) is the only one, as hyper wrote it.
    #[tokio::test]
    async fn a_date_the_response_has_is_not_doubled() {
        use tokio::io::AsyncReadExt;
        let (mut client, mut server) = loopback_pair().await;
        for date in [Some("Thu, 01 Jan 1970 00:00:00 GMT"), None] {
            let mut response = Response::new(Body::full("hi"));
            if let Some(date) = date {
                response
                    .headers_mut()
                    .insert(http::header::DATE, HeaderValue::from_static(date));
            }
            let mut ahead = BytesMut::new();
            let kept = write_response(&mut server, response, true, Some(&mut ahead))
                .await
                .expect("written");
            assert!(kept);
            let mut out = vec![0; 4096];
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\nhi") {
                let n = client.read(&mut out).await.expect("read");
                assert!(n > 0, "closed");
                got.extend_from_slice(&out[..n]);
            }
            let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
            assert_eq!(text.matches("\r\ndate: ").count(), 1, "{text}");
            if let Some(date) = date {
                assert!(text.contains(&format!("date: {}", date.to_ascii_lowercase())));
            }
        }
    }

    #[test]
    fn close_is_found_among_connection_tokens() {
        let mut headers = HeaderMap::new();
        assert!(!asks_close(&headers));
        headers.append(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!asks_close(&headers));
        headers.append(CONNECTION, HeaderValue::from_static("TE, Close"));
        assert!(asks_close(&headers));
    }
}
