//! A small HTTP/3 client for the benchmark (bench/run.sh, figure 8).
//!
//! ```sh
//! cargo run --release --example h3_client -- send https://127.0.0.1:8443/path FILE
//! cargo run --release --example h3_client -- recv https://127.0.0.1:8443/path
//! ```
//!
//! `send` PUTs FILE (read in 256 KiB chunks on a thread of its own and
//! streamed with `send_data`, with a `Content-Length`), then reads the
//! sender's response to its end. `recv` GETs the URL and throws the body
//! away. Either prints one line on stdout:
//! `STATUS BYTES bytes SECONDS s MB/s`, where BYTES is what was uploaded or
//! downloaded and SECONDS runs from before the QUIC handshake to the end.
//! The exit status is 0 only for a complete transfer with status 200.
//!
//! Options (before the command): `--threads N` (default 1: a
//! current-thread runtime; more: a multi-thread runtime with N workers,
//! which on loopback was no faster and used more CPU), `--max-time SECONDS`
//! (default 600; the whole run is bounded by it).
//!
//! Received data reaches h3 through [`Coalesced`], which works around a
//! slowdown of h3 0.0.8's frame decoding when a receiver falls behind.
//!
//! INSECURE: the server's certificate is not checked at all (see
//! `tubes::client::h3::AcceptAny`), which is what a loopback benchmark
//! against `tubes serve --self-signed` needs. Do not reuse this for
//! anything that talks to a network you do not control.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quinn::VarInt;
use tubes::client::h3::AcceptAny;

/// Size of the chunks the file is read and sent in.
const CHUNK: usize = 256 << 10;
/// Receive window of one stream: large, so that the client never holds
/// the server back on loopback.
const STREAM_WINDOW: u32 = 8 << 20;
/// Receive (and send) window of the whole connection.
const CONNECTION_WINDOW: u32 = 32 << 20;
/// UDP socket receive and send buffers asked for.
const SOCKET_BUFFER: usize = 4 << 20;
/// A response body is handed to h3 in pieces of up to this size (see
/// [`Coalesced`]).
const COALESCE: usize = 256 << 10;

fn usage() -> ! {
    eprintln!(
        "usage: h3_client [--threads N] [--max-time SECONDS] send URL FILE\n       \
         h3_client [--threads N] [--max-time SECONDS] recv URL"
    );
    std::process::exit(2)
}

struct Args {
    threads: usize,
    max_time: Duration,
    url: http::Uri,
    file: Option<String>,
}

fn parse_args() -> Args {
    let mut threads = 1;
    let mut max_time = Duration::from_secs(600);
    let mut rest = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--threads" => {
                threads = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n >= 1)
                    .unwrap_or_else(|| usage())
            }
            "--max-time" => {
                max_time = it
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|s| *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .unwrap_or_else(|| usage())
            }
            "-h" | "--help" => usage(),
            _ => rest.push(arg),
        }
    }
    let (url, file) = match rest.as_slice() {
        [cmd, url, file] if cmd == "send" => (url, Some(file.clone())),
        [cmd, url] if cmd == "recv" => (url, None),
        _ => usage(),
    };
    let url: http::Uri = url.parse().unwrap_or_else(|_| usage());
    Args {
        threads,
        max_time,
        url,
        file,
    }
}

fn main() -> ExitCode {
    let args = parse_args();
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("h3_client: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let max_time = args.max_time;
    let result = runtime.block_on(async move {
        match tokio::time::timeout(max_time, run(args)).await {
            Ok(result) => result,
            Err(_) => bail!("timed out after {:?}", max_time),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("h3_client: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// One transfer; `Ok(true)` when it was complete with status 200.
async fn run(args: Args) -> anyhow::Result<bool> {
    if args.url.scheme_str() != Some("https") {
        bail!("the URL must be https://");
    }
    let host = args.url.host().context("the URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = args.url.port_u16().unwrap_or(443);
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("no address for {host}"))?;

    // Open the file before connecting, so that a missing file costs nothing.
    let file = match &args.file {
        Some(path) => {
            let file = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
            let len = file.metadata()?.len();
            Some((file, len))
        }
        None => None,
    };

    let start = Instant::now();
    let endpoint = endpoint(addr)?;
    let conn = endpoint
        .connect(addr, host)
        .context("connect")?
        .await
        .context("QUIC handshake")?;
    let (mut driver, mut send_request) =
        h3::client::new(Quic(h3_quinn::Connection::new(conn.clone())))
            .await
            .context("HTTP/3 setup")?;
    let driver = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });

    let path = args.url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let uri = format!(
        "https://{}{}",
        args.url.authority().context("no authority")?,
        path
    );
    let (status, bytes) = match file {
        Some((file, len)) => {
            let req = http::Request::put(&uri)
                .header(http::header::CONTENT_LENGTH, len)
                .body(())?;
            let mut stream = send_request.send_request(req).await.context("request")?;
            let sent = upload(&mut stream, file).await?;
            if sent != len {
                bail!("the file changed size: sent {sent} of {len} bytes");
            }
            stream.finish().await.context("finish the upload")?;
            let response = stream.recv_response().await.context("response")?;
            // The sender's log: read to its end, so the relay is done with us.
            while let Some(mut data) = stream.recv_data().await.context("response body")? {
                data.advance(data.remaining());
            }
            (response.status(), sent)
        }
        None => {
            let req = http::Request::get(&uri).body(())?;
            let mut stream = send_request.send_request(req).await.context("request")?;
            stream.finish().await.context("finish the request")?;
            let response = stream.recv_response().await.context("response")?;
            let mut got = 0u64;
            while let Some(mut data) = stream.recv_data().await.context("response body")? {
                got += data.remaining() as u64;
                data.advance(data.remaining());
            }
            (response.status(), got)
        }
    };
    let seconds = start.elapsed().as_secs_f64();

    drop(send_request);
    conn.close(VarInt::from_u32(0x100), b""); // H3_NO_ERROR
    driver.abort();
    // Let the CONNECTION_CLOSE go out (bounded: a lost one only makes the
    // server wait for its idle timeout).
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;

    println!(
        "{} {} bytes {:.6} s {:.1} MB/s",
        status.as_u16(),
        bytes,
        seconds,
        bytes as f64 / seconds / 1e6
    );
    Ok(status == http::StatusCode::OK)
}

/// Streams `file` into the request body; returns the bytes sent. A thread
/// reads the file ahead, so the runtime never waits for the disk.
async fn upload(
    stream: &mut h3::client::RequestStream<Coalesced<h3_quinn::BidiStream<Bytes>>, Bytes>,
    mut file: std::fs::File,
) -> anyhow::Result<u64> {
    use std::io::Read;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let reader = std::thread::spawn(move || loop {
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        // Fill the whole chunk unless the file ends.
        let result = loop {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let end = filled < CHUNK;
        let message = result.map(|()| {
            buf.truncate(filled);
            Bytes::from(buf)
        });
        let failed = message.is_err();
        if tx.blocking_send(message).is_err() || failed || end {
            return;
        }
    });
    let mut sent = 0u64;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.context("read the file")?;
        if chunk.is_empty() {
            break;
        }
        sent += chunk.len() as u64;
        stream.send_data(chunk).await.context("send data")?;
    }
    drop(rx);
    let _ = reader.join();
    Ok(sent)
}

/// A client endpoint on an ephemeral port of the right address family,
/// ALPN h3, large windows, and no certificate checks.
fn endpoint(server: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("QUIC TLS")?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW));
    tubes::transport::quic::set_mtu_discovery(&mut transport);
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let local: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(local),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .context("UDP socket")?;
    // The default receive buffer (about 200 KiB) overflows at loopback
    // rates and every lost datagram costs a congestion back-off. The kernel
    // caps these at net.core.rmem_max / wmem_max; a refusal is not fatal.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&local.into()).context("bind UDP")?;
    let mut endpoint =
        tubes::transport::quic::endpoint(socket.into(), None).context("client endpoint")?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// h3-quinn's connection, except that request streams are [`Coalesced`].
struct Quic(h3_quinn::Connection);

/// Opens [`Coalesced`] request streams.
#[derive(Clone)]
struct Opener(h3_quinn::OpenStreams);

/// A request stream whose received data reaches h3 in pieces of up to
/// [`COALESCE`] bytes rather than one piece per QUIC packet.
///
/// h3 0.0.8 keeps what it has received in a list of pieces, and decoding a
/// frame header costs time in proportion to the number of pieces listed
/// (`BufList::remaining` sums them all, once per byte read). It takes one
/// piece out per read and puts one in, so once a receiver falls behind by
/// thousands of ~1.2 KB pieces it never catches up: on loopback the client
/// then spent 50-60 s of CPU per GiB in h3's frame decoder and received at
/// 15-20 MB/s. Joining what quinn already holds into one piece keeps that
/// list short whatever the lag.
struct Coalesced<S> {
    inner: S,
    /// The end (or error) met while joining pieces, for the next call.
    end: Option<Result<(), StreamErrorIncoming>>,
}

impl<S> Coalesced<S> {
    fn new(inner: S) -> Self {
        Coalesced { inner, end: None }
    }
}

impl<S: quic::RecvStream<Buf = Bytes>> quic::RecvStream for Coalesced<S> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        if let Some(end) = self.end.take() {
            return Poll::Ready(end.map(|()| None));
        }
        let mut first: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        // Bounded: each turn adds a piece, and the loop stops at COALESCE.
        loop {
            let len = joined
                .as_ref()
                .map_or_else(|| first.as_ref().map_or(0, Bytes::len), BytesMut::len);
            if len >= COALESCE {
                break;
            }
            match self.inner.poll_data(cx) {
                Poll::Ready(Ok(Some(piece))) => match (&mut joined, &first) {
                    (Some(joined), _) => joined.extend_from_slice(&piece),
                    (None, Some(head)) => {
                        let mut buf =
                            BytesMut::with_capacity(COALESCE.max(head.len() + piece.len()));
                        buf.extend_from_slice(head);
                        buf.extend_from_slice(&piece);
                        joined = Some(buf);
                    }
                    (None, None) => first = Some(piece),
                },
                // Nothing more for now: hand over what there is (the inner
                // stream keeps its read going and wakes us for the next).
                Poll::Pending if first.is_some() => break,
                Poll::Pending => return Poll::Pending,
                Poll::Ready(end) if first.is_some() => {
                    self.end = Some(end.map(|_| ()));
                    break;
                }
                Poll::Ready(end) => return Poll::Ready(end.map(|_| None)),
            }
        }
        Poll::Ready(Ok(joined.map(BytesMut::freeze).or(first)))
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

impl<S: quic::SendStream<Bytes>> quic::SendStream<Bytes> for Coalesced<S> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.inner.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.inner.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}

impl quic::BidiStream<Bytes> for Coalesced<h3_quinn::BidiStream<Bytes>> {
    type SendStream = h3_quinn::SendStream<Bytes>;
    type RecvStream = Coalesced<h3_quinn::RecvStream>;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        let (send, recv) = self.inner.split();
        (
            send,
            Coalesced {
                inner: recv,
                end: self.end,
            },
        )
    }
}

impl quic::OpenStreams<Bytes> for Opener {
    type BidiStream = Coalesced<h3_quinn::BidiStream<Bytes>>;
    type SendStream = h3_quinn::SendStream<Bytes>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        quic::OpenStreams::<Bytes>::poll_open_bidi(&mut self.0, cx).map_ok(Coalesced::new)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        quic::OpenStreams::<Bytes>::poll_open_send(&mut self.0, cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        quic::OpenStreams::<Bytes>::close(&mut self.0, code, reason)
    }
}

impl quic::OpenStreams<Bytes> for Quic {
    type BidiStream = Coalesced<h3_quinn::BidiStream<Bytes>>;
    type SendStream = h3_quinn::SendStream<Bytes>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        quic::OpenStreams::<Bytes>::poll_open_bidi(&mut self.0, cx).map_ok(Coalesced::new)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        quic::OpenStreams::<Bytes>::poll_open_send(&mut self.0, cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        quic::OpenStreams::<Bytes>::close(&mut self.0, code, reason)
    }
}

impl quic::Connection<Bytes> for Quic {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = Opener;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        quic::Connection::<Bytes>::poll_accept_recv(&mut self.0, cx)
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        quic::Connection::<Bytes>::poll_accept_bidi(&mut self.0, cx).map_ok(Coalesced::new)
    }

    fn opener(&self) -> Self::OpenStreams {
        Opener(quic::Connection::<Bytes>::opener(&self.0))
    }
}
