//! HTTP/3 over QUIC (quinn and h3): each request becomes a call to the
//! same [`Handler`] as HTTP/1 and HTTP/2, so the relay cannot tell the
//! transports apart, and an HTTP/3 sender can feed an HTTP/1.1 receiver.
//!
//! Every connection runs in its own task (the handshake too), every
//! request in a task of the connection's; when a connection ends, its
//! requests' tasks are aborted, which drops what they registered.
//!
//! quinn is put under h3 by a small adapter of our own ([`Quic`]) rather
//! than by h3-quinn's, for one thing h3 does not give: a signal that the
//! client stopped reading a response (QUIC's `STOP_SENDING`, which a
//! client sends when it cancels a request). With it, a receiver that
//! waits for its sender and is cancelled leaves the relay at once, while
//! its connection stays open for other requests.
//!
//! 0-RTT is off: a replayed request could register a sender or a receiver
//! twice.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::UdpSocket;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::stream::{BoxStream, StreamExt};
use futures_util::FutureExt;
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use http::{Request, Response, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use quinn::VarInt;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::body::Body;
use super::http::Handler;
use super::tls::{Certs, ALPN_H3};

/// How long a QUIC handshake and the HTTP/3 setup may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's head once it opened
/// the request's stream.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Flow-control window of one stream (a transfer in one direction).
pub const STREAM_WINDOW: u32 = 4 << 20;
/// Flow-control window of a whole connection, and what may be in flight
/// towards one client.
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// A connection with no traffic for this long is closed...
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// ...so the server pings a client this often: a receiver may wait for
/// its sender for hours on a connection that carries nothing meanwhile.
/// A client that is gone stops answering and its connection times out.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Requests one client may have open at once on one connection.
pub const MAX_STREAMS: u32 = 256;
/// The largest request head accepted (larger ones get `431`).
pub const MAX_HEAD: u64 = 64 << 10;
/// After a response, the rest of a request body that nobody read (a GET's
/// end, what follows a multipart body's first part) is read and dropped,
/// up to this many bytes and for at most [`DRAIN_TIME`], before the
/// client is told to stop sending.
pub const DRAIN_LIMIT: usize = 64 << 10;
/// See [`DRAIN_LIMIT`].
pub const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Serves HTTP/3 on `socket` (UDP) with the relay, until `shutdown` completes.
pub async fn serve(
    socket: UdpSocket,
    handler: Handler,
    certs: Arc<Certs>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let endpoint = endpoint(socket, &certs)?;
    tracing::info!(addr = ?endpoint.local_addr().ok(), "serving HTTP/3");
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                handler.gate().closed(1);
                continue;
            }
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let span = tracing::debug_span!("h3", peer = %incoming.remote_address());
        let ip = incoming.remote_address().ip();
        let Ok(slot) = handler.gate().connect(ip) else {
            handler
                .gate()
                .metrics
                .rejected(crate::metrics::Rejection::TooManyConnections);
            incoming.refuse();
            continue;
        };
        let handler = handler.for_peer(ip, slot);
        handler.gate().opened();
        connections.spawn(connection(incoming, handler).instrument(span));
    }
    tracing::info!(open = connections.len(), "HTTP/3 shutting down");
    endpoint.close(
        VarInt::from(Code::H3_NO_ERROR.value() as u32),
        b"shutting down",
    );
    handler.gate().closed(connections.len());
    connections.shutdown().await;
    Ok(())
}

/// A QUIC endpoint on `socket` that speaks h3 with the current
/// certificate of `certs`.
fn endpoint(socket: UdpSocket, certs: &Arc<Certs>) -> io::Result<quinn::Endpoint> {
    // Resolved per handshake, so a reloaded certificate applies here too.
    // `max_early_data_size` stays 0: no 0-RTT (see the module's doc).
    let tls = certs.server_config(&[ALPN_H3]);
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    super::quic::endpoint(socket, Some(config))
}

/// Windows sized for long streams, keep-alives for waiting receivers, and
/// datagrams as large as the path carries ([`super::quic`]).
fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .keep_alive_interval(Some(KEEP_ALIVE));
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        transport.max_idle_timeout(Some(idle));
    }
    super::quic::set_mtu_discovery(&mut transport);
    transport
}

/// One connection: the handshake, then a task per request until the
/// connection ends; then the requests still running are aborted.
async fn connection(incoming: quinn::Incoming, handler: Handler) {
    let stops = Stops::default();
    let setup = async {
        let conn = incoming.await.map_err(|e| e.to_string())?;
        h3::server::builder()
            .max_field_section_size(MAX_HEAD)
            .build::<_, Bytes>(Quic::new(conn, stops.clone()))
            .await
            .map_err(|e| e.to_string())
    };
    let mut h3 = match tokio::time::timeout(HANDSHAKE_TIMEOUT, setup).await {
        Ok(Ok(h3)) => h3,
        Ok(Err(error)) => {
            tracing::debug!(%error, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("handshake timed out");
            return;
        }
    };
    let mut requests = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    requests.spawn(request(resolver, handler.clone(), stops.clone()));
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%error, "connection ended");
                    break;
                }
            },
        }
    }
    // Waiting receivers and running transfers of this connection go now:
    // their tasks own what they registered.
    requests.shutdown().await;
}

type Resolver = h3::server::RequestResolver<Quic, Bytes>;
type SendHalf = h3::server::RequestStream<SendStream, Bytes>;
type RecvHalf = h3::server::RequestStream<RecvStream, Bytes>;

/// One request: its head, the handler's answer, then the response body.
async fn request(resolver: Resolver, handler: Handler, stops: Stops) {
    let (req, stream) = match tokio::time::timeout(HEAD_TIMEOUT, resolver.resolve_request()).await {
        Ok(Ok(resolved)) => resolved,
        Ok(Err(error)) => {
            tracing::debug!(%error, "bad request stream");
            return;
        }
        Err(_) => {
            tracing::debug!("no request head in time");
            return;
        }
    };
    // Resolves when the client stops reading the response (it cancelled
    // the request) or the connection is lost.
    let stopped = stops.take(stream.send_id());
    let stopped = async move {
        match stopped {
            Some(stopped) => stopped.await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stopped);
    let (send, recv) = stream.split();
    let (mut parts, ()) = req.into_parts();
    parts.version = Version::HTTP_3;
    let (unread, mut unread_back) = oneshot::channel();
    let body = RequestBody::new(recv, &parts.headers, unread);
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    tracing::debug!(%method, path, "request");
    let reply = handler.handle(Request::from_parts(parts, body));
    // A receiver waits here for its sender: a client that gives up must
    // take it out of the relay, so the wait ends when the client stops.
    let response = tokio::select! {
        response = reply => match response {
            Ok(response) => response,
            Err(never) => match never {},
        },
        () = &mut stopped => {
            tracing::debug!(%method, path, "cancelled while waiting");
            return;
        }
    };
    respond(send, response, stopped).await;
    if let Ok(unread) = unread_back.try_recv() {
        drain(unread).await;
    }
}

/// Reads what is left of a request body that the handler dropped, then
/// stops the stream. A body dropped at once (a GET's, which the handler
/// never reads) would otherwise make quinn send `STOP_SENDING` before the
/// client's end of the request arrives, and an h3 client that sends the
/// end of its request apart from its head then fails its request.
async fn drain(mut unread: RecvHalf) {
    let read = async {
        let mut left = DRAIN_LIMIT;
        while let Ok(Some(mut buf)) = unread.recv_data().await {
            let n = buf.remaining();
            buf.advance(n);
            left = left.checked_sub(n)?;
        }
        Some(())
    };
    if !matches!(tokio::time::timeout(DRAIN_TIME, read).await, Ok(Some(()))) {
        unread.stop_sending(Code::H3_NO_ERROR);
    }
}

/// Sends the response head, then its body. A body that fails (the sender
/// was cut short) resets the stream, so the client sees an abort and not
/// a clean end; a client that goes away makes the body be dropped, which
/// tells the relay this peer left.
async fn respond(
    mut send: SendHalf,
    response: Response<Body>,
    mut stopped: Pin<&mut impl Future<Output = ()>>,
) {
    let (parts, mut body) = response.into_parts();
    if let Err(error) = send.send_response(Response::from_parts(parts, ())).await {
        tracing::debug!(%error, "client left before the response head");
        return;
    }
    // A frame met while gathering that could not join the batch.
    let mut held = None;
    loop {
        let frame = match held.take() {
            Some(frame) => frame,
            None => tokio::select! {
                frame = body.frame() => frame,
                () = &mut stopped => {
                    tracing::debug!("client stopped reading");
                    return;
                }
            },
        };
        let frame = match frame {
            Some(Ok(frame)) if frame.is_data() => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                Some(Ok(Frame::data(gather(data, &mut body, &mut held))))
            }
            other => other,
        };
        match frame {
            None => {
                if let Err(error) = send.finish().await {
                    tracing::debug!(%error, "cannot finish the response");
                }
                return;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                if let Err(error) = send.send_data(data).await {
                    tracing::debug!(%error, "client left during the response");
                    return;
                }
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "response body failed; resetting the stream");
                send.stop_stream(Code::H3_REQUEST_CANCELLED);
                return;
            }
        }
    }
}

/// Response data is handed to h3 (and quinn) in pieces of at least this
/// size when more is ready. The relay passes a sender's body on in the
/// pieces it arrived in: ~1.1 KiB from an HTTP/3 sender (one QUIC packet
/// each), 16 KiB from HTTP/2. quinn copies every write into a buffer of
/// its own and keeps one entry per write (two per h3 DATA frame: the
/// frame's header and its data) until the peer acknowledges it, and it
/// finds the bytes of each packet it sends by walking those entries from
/// the oldest: with megabytes in flight in 1 KiB pieces that walk was the
/// server's largest single cost (16% of its CPU on an h3 -> h3 stream).
const GATHER: usize = 64 << 10;

/// `first`, and if it is smaller than [`GATHER`], the data frames of
/// `body` that are ready now, copied into one buffer of up to about
/// [`GATHER`] bytes. A frame that is not data (or an end or an error) is
/// left in `held`, for the caller to take next.
fn gather(first: Bytes, body: &mut Body, held: &mut Option<Option<FrameResult>>) -> Bytes {
    if first.len() >= GATHER {
        return first;
    }
    let mut batch: Option<bytes::BytesMut> = None;
    let mut len = first.len();
    while len < GATHER {
        let Some(next) = body.frame().now_or_never() else {
            break;
        };
        let data = match next {
            Some(Ok(frame)) if frame.is_data() => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            other => {
                *held = Some(other);
                break;
            }
        };
        let buf = batch.get_or_insert_with(|| {
            let mut buf = bytes::BytesMut::with_capacity(GATHER.max(len + data.len()));
            buf.extend_from_slice(&first);
            buf
        });
        buf.extend_from_slice(&data);
        len += data.len();
    }
    match batch {
        Some(buf) => buf.freeze(),
        None => first,
    }
}

type FrameResult = Result<Frame<Bytes>, super::body::BoxError>;

/// Why a request body did not end cleanly.
#[derive(Debug, thiserror::Error)]
enum RequestBodyError {
    #[error("request stream failed: {0}")]
    Stream(#[from] h3::error::StreamError),
    #[error("request body of {received} bytes, but Content-Length said {expected}")]
    Length { expected: u64, received: u64 },
}

/// A request's body as the handler takes it: the DATA frames of the
/// request stream. A reset stream is an error, so the relay aborts the
/// receivers; so is a body whose length differs from its Content-Length
/// (RFC 9114, 4.1.2: such a request is malformed).
struct RequestBody {
    stream: Option<RecvHalf>,
    expected: Option<u64>,
    received: u64,
    /// The end or an error was seen: nothing more comes.
    done: bool,
    /// Where the stream goes if the body is dropped before its end, so
    /// the request's task can [`drain`] it after the response.
    unread: Option<oneshot::Sender<RecvHalf>>,
}

impl RequestBody {
    fn new(stream: RecvHalf, headers: &http::HeaderMap, unread: oneshot::Sender<RecvHalf>) -> Self {
        let expected = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        RequestBody {
            stream: Some(stream),
            expected,
            received: 0,
            done: false,
            unread: Some(unread),
        }
    }

    fn fail(
        &mut self,
        error: RequestBodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.as_mut().filter(|_| !this.done) else {
            return Poll::Ready(None);
        };
        match ready!(stream.poll_recv_data(cx)) {
            Ok(Some(mut buf)) => {
                let data = buf.copy_to_bytes(buf.remaining());
                this.received += data.len() as u64;
                match this.expected {
                    Some(expected) if this.received > expected => {
                        let received = this.received;
                        this.fail(RequestBodyError::Length { expected, received })
                    }
                    _ => Poll::Ready(Some(Ok(Frame::data(data)))),
                }
            }
            Ok(None) => match this.expected {
                Some(expected) if this.received != expected => {
                    let received = this.received;
                    this.fail(RequestBodyError::Length { expected, received })
                }
                _ => {
                    this.done = true;
                    Poll::Ready(None)
                }
            },
            Err(error) => this.fail(error.into()),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let (Some(stream), Some(unread)) = (self.stream.take(), self.unread.take()) {
            // If the request's task is gone, the stream is dropped here.
            let _ = unread.send(stream);
        }
    }
}

/// Resolves when the client stopped the response's stream, or the
/// connection is lost.
type Stopped = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The "stopped" signal of each open request stream of a connection, by
/// stream id: put in when the stream is accepted, taken by the request's
/// task, and removed in any case when h3 drops the stream.
#[derive(Clone, Default)]
struct Stops(Arc<Mutex<HashMap<u64, Stopped>>>);

impl Stops {
    fn insert(&self, id: u64, stopped: Stopped) {
        self.lock().insert(id, stopped);
    }

    fn take(&self, id: StreamId) -> Option<Stopped> {
        self.lock().remove(&id.into_inner())
    }

    fn remove(&self, id: u64) {
        // Dropped outside the lock.
        let _gone = self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Stopped>> {
        // Never held across an await; a panic elsewhere leaves the map
        // consistent (one insert or remove), so a poisoned lock is fine.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// quinn under h3, as h3-quinn does it, except for request streams:
/// those are our [`BidiStream`], whose "stopped" signal goes to [`Stops`].
/// Control and QPACK streams are h3-quinn's.
struct Quic {
    inner: h3_quinn::Connection,
    incoming:
        BoxStream<'static, Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>>,
    stops: Stops,
}

impl Quic {
    fn new(conn: quinn::Connection, stops: Stops) -> Self {
        let incoming = futures_util::stream::unfold(conn.clone(), |conn| async move {
            let accepted = conn.accept_bi().await;
            Some((accepted, conn))
        })
        .boxed();
        Quic {
            inner: h3_quinn::Connection::new(conn),
            incoming,
            stops,
        }
    }
}

fn connection_error(error: quinn::ConnectionError) -> ConnectionErrorIncoming {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ConnectionErrorIncoming::ApplicationClose {
                error_code: close.error_code.into_inner(),
            }
        }
        quinn::ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other)),
    }
}

fn stream_id(id: quinn::StreamId) -> Result<StreamId, ConnectionErrorIncoming> {
    StreamId::try_from(u64::from(id))
        .map_err(|e| ConnectionErrorIncoming::InternalError(e.to_string()))
}

fn no_bidi_from_server() -> StreamErrorIncoming {
    StreamErrorIncoming::Unknown("the server opens no request streams".into())
}

impl quic::Connection<Bytes> for Quic {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = Opener;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        quic::Connection::<Bytes>::poll_accept_recv(&mut self.inner, cx)
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        let Some(accepted) = ready!(self.incoming.poll_next_unpin(cx)) else {
            return Poll::Ready(Err(ConnectionErrorIncoming::InternalError(
                "the stream of incoming streams ended".into(),
            )));
        };
        let (send, recv) = accepted.map_err(connection_error)?;
        let send_id = stream_id(send.id())?;
        let recv_id = stream_id(recv.id())?;
        let stopped = send.stopped();
        self.stops.insert(
            send_id.into_inner(),
            Box::pin(async move {
                let _ = stopped.await;
            }),
        );
        Poll::Ready(Ok(BidiStream {
            send: SendStream {
                stream: send,
                id: send_id,
                writing: None,
                stops: self.stops.clone(),
            },
            recv: RecvStream {
                stream: Some(recv),
                reading: None,
                id: recv_id,
            },
        }))
    }

    fn opener(&self) -> Self::OpenStreams {
        Opener(quic::Connection::<Bytes>::opener(&self.inner))
    }
}

impl quic::OpenStreams<Bytes> for Quic {
    type BidiStream = BidiStream;
    type SendStream = h3_quinn::SendStream<Bytes>;

    fn poll_open_bidi(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        Poll::Ready(Err(no_bidi_from_server()))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        quic::OpenStreams::<Bytes>::poll_open_send(&mut self.inner, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        quic::OpenStreams::<Bytes>::close(&mut self.inner, code, reason)
    }
}

/// Opens the server's unidirectional streams (control, QPACK).
struct Opener(h3_quinn::OpenStreams);

impl quic::OpenStreams<Bytes> for Opener {
    type BidiStream = BidiStream;
    type SendStream = h3_quinn::SendStream<Bytes>;

    fn poll_open_bidi(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        Poll::Ready(Err(no_bidi_from_server()))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        self.0.poll_open_send(cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        quic::OpenStreams::<Bytes>::close(&mut self.0, code, reason)
    }
}

/// A request stream: both halves over quinn.
struct BidiStream {
    send: SendStream,
    recv: RecvStream,
}

impl quic::BidiStream<Bytes> for BidiStream {
    type SendStream = SendStream;
    type RecvStream = RecvStream;

    fn split(self) -> (SendStream, RecvStream) {
        (self.send, self.recv)
    }
}

impl quic::RecvStream for BidiStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl quic::SendStream<Bytes> for BidiStream {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

/// What a read of a request stream gives back: the stream and a chunk.
type Read = Pin<
    Box<
        dyn Future<
                Output = (
                    quinn::RecvStream,
                    Result<Option<quinn::Chunk>, quinn::ReadError>,
                ),
            > + Send,
    >,
>;

/// The receiving half of a request stream.
struct RecvStream {
    /// The stream, when no read is in flight.
    stream: Option<quinn::RecvStream>,
    /// The read in flight, which holds the stream meanwhile.
    reading: Option<Read>,
    id: StreamId,
}

fn read_error(error: quinn::ReadError) -> StreamErrorIncoming {
    match error {
        quinn::ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::ReadError::ConnectionLost(error) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(error),
        },
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

impl quic::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        if let Some(mut stream) = self.stream.take() {
            self.reading = Some(Box::pin(async move {
                let chunk = stream.read_chunk(usize::MAX, true).await;
                (stream, chunk)
            }));
        }
        let Some(reading) = self.reading.as_mut() else {
            // Only after `stop_sending`.
            return Poll::Ready(Err(StreamErrorIncoming::Unknown(
                "reading was stopped".into(),
            )));
        };
        let (stream, chunk) = ready!(reading.as_mut().poll(cx));
        self.reading = None;
        self.stream = Some(stream);
        Poll::Ready(chunk.map(|c| c.map(|c| c.bytes)).map_err(read_error))
    }

    fn stop_sending(&mut self, error_code: u64) {
        match self.stream.as_mut() {
            Some(stream) => {
                let _ = stream.stop(VarInt::from_u64(error_code).unwrap_or(VarInt::MAX));
            }
            // A read is in flight and holds the stream: dropping it stops
            // the stream (with code 0).
            None => self.reading = None,
        }
    }

    fn recv_id(&self) -> StreamId {
        self.id
    }
}

/// The sending half of a request stream (the response).
struct SendStream {
    stream: quinn::SendStream,
    id: StreamId,
    /// A frame accepted by `send_data`, written by `poll_ready`.
    writing: Option<WriteBuf<Bytes>>,
    stops: Stops,
}

fn write_error(error: quinn::WriteError) -> StreamErrorIncoming {
    match error {
        quinn::WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::WriteError::ConnectionLost(error) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(error),
        },
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

impl quic::SendStream<Bytes> for SendStream {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        if let Some(data) = self.writing.as_mut() {
            while data.has_remaining() {
                let written = ready!(Pin::new(&mut self.stream).poll_write(cx, data.chunk()))
                    .map_err(write_error)?;
                data.advance(written);
            }
        }
        self.writing = None;
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() {
            return Err(StreamErrorIncoming::Unknown(
                "a frame was sent before the last one was written".into(),
            ));
        }
        self.writing = Some(data.into());
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        Poll::Ready(
            self.stream
                .finish()
                .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e))),
        )
    }

    fn reset(&mut self, reset_code: u64) {
        let _ = self
            .stream
            .reset(VarInt::from_u64(reset_code).unwrap_or(VarInt::MAX));
    }

    fn send_id(&self) -> StreamId {
        self.id
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        // A stream whose request never got to take its signal (a bad
        // head, a timeout) must not leave it behind.
        self.stops.remove(self.id.into_inner());
    }
}
