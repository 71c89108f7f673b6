//! The one test helper: starts the real server on 127.0.0.1:0 (plain,
//! TLS and HTTP/3 listeners on one relay) and gives clients for each
//! protocol over real sockets, all with the same request and response
//! types.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tubes::relay::{Relay, RelayConfig, Stats};
use tubes::server::{self, ServeConfig};
use tubes::transport::http::Handler;
use tubes::transport::http3;
use tubes::transport::tls::{Certs, Source, ALPN_H2, ALPN_H3, ALPN_HTTP11};

/// Bound for anything a test waits on.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Writes `body` on a sender's raw connection while reading its log to
/// the end, as curl does, and returns the log. The writing half stays open
/// until the log is read: a client that half-closes is taken as gone.
pub async fn upload_reading_log(
    stream: TcpStream,
    body: impl AsRef<[u8]> + Send + 'static,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut read, mut write) = stream.into_split();
    let upload = tokio::spawn(async move { write.write_all(body.as_ref()).await.map(|()| write) });
    let mut log = Vec::new();
    tokio::time::timeout(LIMIT, read.read_to_end(&mut log))
        .await
        .expect("log in time")
        .expect("log");
    drop(upload.await.expect("upload task").expect("upload"));
    String::from_utf8_lossy(&log).into_owned()
}

pub struct Server {
    /// The plain listener (HTTP/1.0, 1.1, h2c).
    pub addr: SocketAddr,
    /// The TLS listener (HTTP/1.1 and h2 by ALPN), same relay.
    pub tls_addr: SocketAddr,
    /// The HTTP/3 endpoint (QUIC over UDP), same relay and certificate.
    pub h3_addr: SocketAddr,
    pub relay: Relay,
    pub certs: Arc<Certs>,
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Where a client connects: the plain address, and the TLS one with the
/// client settings that trust the test server's certificate.
#[derive(Clone)]
pub struct Target {
    plain: SocketAddr,
    tls: Option<(
        SocketAddr,
        Arc<rustls::ClientConfig>,
        Arc<rustls::ClientConfig>,
    )>,
    h3: Option<(SocketAddr, Arc<rustls::ClientConfig>)>,
}

impl From<SocketAddr> for Target {
    fn from(plain: SocketAddr) -> Self {
        Target {
            plain,
            tls: None,
            h3: None,
        }
    }
}

impl From<&Server> for Target {
    fn from(server: &Server) -> Self {
        let client = |alpn: &[u8]| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in server.certs.chain() {
                roots.add(cert).expect("trust the test certificate");
            }
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(config)
        };
        Target {
            plain: server.addr,
            tls: Some((server.tls_addr, client(b"http/1.1"), client(b"h2"))),
            h3: Some((server.h3_addr, client(ALPN_H3))),
        }
    }
}

/// Counts panics on the runtime's worker threads, where the server's
/// tasks run; a server that panicked fails the test at [`Server::stop`].
static SERVER_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// Set while test-client code that may panic in a library runs (see
    /// [`client_side`]); the panic hook then does not count it as the
    /// server's.
    static CLIENT_CODE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs test-client code whose library can panic (h3-quinn 0.0.10 unwraps
/// in `stop_sending` while a read is in flight), catching the panic so it
/// is neither counted as the server's nor fatal to the test.
fn client_side(f: impl FnOnce()) {
    CLIENT_CODE.with(|c| c.set(true));
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CLIENT_CODE.with(|c| c.set(false));
}

fn watch_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Tokio's worker threads ("tokio-rt-worker" in recent tokio,
            // "tokio-runtime-worker" before): the server's tasks run there,
            // the test's own code does not.
            let name = std::thread::current().name().unwrap_or("").to_owned();
            let worker =
                name.starts_with("tokio-rt-worker") || name.starts_with("tokio-runtime-worker");
            if CLIENT_CODE.with(|c| c.get()) {
                return; // a test client's own library, caught there
            }
            if worker {
                SERVER_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(RelayConfig::default()).await
    }

    /// Starts the server with a relay configured as given.
    pub async fn start_with(config: RelayConfig) -> Server {
        watch_panics();
        show_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let tls_addr = tls_listener.local_addr().expect("local address");
        let certs = Certs::load(Source::SelfSigned).expect("self-signed certificate");
        let tls_config = Arc::new(certs.server_config(&[ALPN_H2, ALPN_HTTP11]));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
        let h3_addr = udp.local_addr().expect("UDP address");
        let relay = Relay::new(config);
        let (stop, stopped) = watch::channel(false);
        let until = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let plain = tokio::spawn(server::serve(
            listener,
            relay.clone(),
            ServeConfig::default(),
            until(stopped.clone()),
        ));
        let tls = tokio::spawn(server::serve_tls(
            tls_listener,
            relay.clone(),
            ServeConfig::default(),
            tls_config,
            until(stopped.clone()),
        ));
        let h3 = tokio::spawn(http3::serve(
            udp,
            Handler::new(relay.clone(), true),
            Arc::clone(&certs),
            until(stopped),
        ));
        let tasks = vec![
            tokio::spawn(async move {
                let _ = plain.await;
            }),
            tokio::spawn(async move {
                let _ = tls.await;
            }),
            tokio::spawn(async move {
                let result = h3.await.expect("HTTP/3 server task");
                assert!(result.is_ok(), "HTTP/3 server: {result:?}");
            }),
        ];
        Server {
            addr,
            tls_addr,
            h3_addr,
            relay,
            certs,
            stop: Some(stop),
            tasks,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Waits for the registry to reach a state; panics after [`LIMIT`].
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Stats) -> bool) {
        let (stats, ok) = self.relay.wait_until(LIMIT, pred).await;
        assert!(ok, "registry never reached '{what}': {stats:?}");
    }

    /// Waits until nothing is registered any more.
    pub async fn wait_empty(&self) {
        self.wait_for("empty", |s| *s == Stats::default()).await;
    }

    /// Stops the server and waits until it has closed everything.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        for task in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(LIMIT, task).await;
        }
        assert_eq!(
            SERVER_PANICS.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "a server task panicked"
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http10,
    Http11,
    H2c,
    /// HTTP/1.1 over TLS.
    Https11,
    /// HTTP/2 over TLS.
    H2,
    /// HTTP/3 over QUIC.
    H3,
}

pub type ReqBody = BoxBody<Bytes, std::io::Error>;

/// Any error of a client, whatever its protocol.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body, whatever the protocol it came over. An error is a
/// body cut short (a reset stream, a closed connection); the end is a
/// clean end.
pub type RespBody = BoxBody<Bytes, BoxError>;

/// What a request gives: its response head (with the body to read), or
/// why there is none.
pub type Reply = Result<Response<RespBody>, BoxError>;

pub fn empty() -> ReqBody {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A request body the test writes to as it goes. Sending `Err` cuts it.
pub fn streaming() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, ReqBody) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    (tx, StreamBody::new(stream).boxed())
}

type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type H3SendHalf = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type H3RecvHalf = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
    H3(H3Send),
}

/// What closes a connection when its [`Conn`] is dropped.
enum Link {
    Tcp(std::net::TcpStream),
    Quic(quinn::Connection, quinn::Endpoint),
}

/// One client connection. Dropping it closes the socket (or the QUIC
/// connection), as a client that goes away does (hyper's HTTP/2 client
/// would otherwise keep the connection open in a task of its own).
pub struct Conn {
    pub proto: Proto,
    sender: Sender,
    task: JoinHandle<()>,
    link: Link,
}

impl Drop for Conn {
    fn drop(&mut self) {
        match &self.link {
            Link::Tcp(socket) => {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
            Link::Quic(conn, _) => {
                conn.close(quinn::VarInt::from_u32(0x100), b"client gone");
            }
        }
        self.task.abort();
    }
}

async fn handshake<I>(io: TokioIo<I>, h2: bool) -> (Sender, JoinHandle<()>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        (Sender::H2(sender), task)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        (Sender::H1(sender), task)
    }
}

/// A QUIC connection and HTTP/3 on it, trusting the test certificate.
async fn open_h3(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Conn {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from((*tls).clone())
        .expect("QUIC TLS settings");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("QUIC endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connecting = endpoint.connect(addr, "localhost").expect("connect");
    let conn = tokio::time::timeout(LIMIT, connecting)
        .await
        .expect("QUIC handshake in time")
        .expect("QUIC handshake");
    let alpn = conn
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    assert_eq!(alpn.as_deref(), Some(ALPN_H3), "ALPN");
    let (mut driver, sender) = tokio::time::timeout(
        LIMIT,
        h3::client::new(h3_quinn::Connection::new(conn.clone())),
    )
    .await
    .expect("h3 setup in time")
    .expect("h3 setup");
    let task = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Conn {
        proto: Proto::H3,
        sender: Sender::H3(sender),
        task,
        link: Link::Quic(conn, endpoint),
    }
}

/// The sending half of an HTTP/3 request stream, reset if dropped before
/// the request body's end: quinn would otherwise finish it, and a request
/// abandoned halfway would look complete to the server.
struct Upload {
    stream: H3SendHalf,
    done: bool,
}

impl Upload {
    /// Sends the request body; its end finishes the stream, its error
    /// resets it. Stops when the server no longer takes the body.
    async fn pump(mut self, mut body: ReqBody) {
        loop {
            match body.frame().await {
                None => {
                    self.done = true;
                    let _ = self.stream.finish().await;
                    return;
                }
                Some(Ok(frame)) => {
                    // Trailers are not sent.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if self.stream.send_data(data).await.is_err() {
                        // The server stopped reading or the connection is
                        // gone: nothing more can be sent.
                        return;
                    }
                }
                Some(Err(_)) => return, // reset on drop
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            self.stream
                .stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
        }
    }
}

/// An HTTP/3 response body: the DATA of the request stream's receiving
/// half. A reset stream is an error, the stream's end the body's end.
/// Dropped before its end, it tells the server to stop sending.
struct Download {
    /// In a `Mutex` only to be `Sync`, as [`BoxBody`] wants; never locked
    /// (`get_mut`).
    stream: std::sync::Mutex<H3RecvHalf>,
    done: bool,
}

impl http_body::Body for Download {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use bytes::Buf;
        use std::task::Poll;
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let stream = this.stream.get_mut().unwrap_or_else(|e| e.into_inner());
        match std::task::ready!(stream.poll_recv_data(cx)) {
            Ok(Some(mut buf)) => {
                Poll::Ready(Some(Ok(Frame::data(buf.copy_to_bytes(buf.remaining())))))
            }
            Ok(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Err(error) => {
                this.done = true;
                Poll::Ready(Some(Err(Box::new(error))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        if !self.done {
            let stream = self.stream.get_mut().unwrap_or_else(|e| e.into_inner());
            client_side(|| stream.stop_sending(h3::error::Code::H3_REQUEST_CANCELLED));
        }
    }
}

/// Runs one HTTP/3 request in a task of its own (so it goes out even
/// while nobody polls its response, as hyper's requests do): opens the
/// stream, sends the head, sends the body meanwhile, and hands over the
/// response. If the response is no longer wanted before its head came,
/// both directions of the stream are cancelled.
fn send_h3(sender: &H3Send, req: Request<ReqBody>) -> oneshot::Receiver<Reply> {
    let mut sender = sender.clone();
    let (mut reply, replied) = oneshot::channel::<Reply>();
    tokio::spawn(async move {
        let (mut head, body) = req.into_parts();
        // As hyper does over HTTP/1.1 and h2: a body of known size gets
        // its Content-Length, unless it is the empty body of a method
        // that has none.
        let size = http_body::Body::size_hint(&body).exact();
        let bodyless = matches!(
            head.method,
            http::Method::GET
                | http::Method::HEAD
                | http::Method::DELETE
                | http::Method::OPTIONS
                | http::Method::CONNECT
                | http::Method::TRACE
        );
        if let Some(size) = size.filter(|&n| n > 0 || !bodyless) {
            head.headers
                .entry(http::header::CONTENT_LENGTH)
                .or_insert_with(|| size.into());
        }
        let opened = sender.send_request(Request::from_parts(head, ())).await;
        drop(sender);
        let stream = match opened {
            Ok(stream) => stream,
            Err(error) => {
                let _ = reply.send(Err(Box::new(error)));
                return;
            }
        };
        let (send, mut recv) = stream.split();
        let upload = tokio::spawn(
            Upload {
                stream: send,
                done: false,
            }
            .pump(body),
        );
        let response = tokio::select! {
            response = recv.recv_response() => response,
            () = reply.closed() => {
                upload.abort();
                client_side(|| recv.stop_sending(h3::error::Code::H3_REQUEST_CANCELLED));
                return;
            }
        };
        match response {
            Ok(response) => {
                let body = Download {
                    stream: std::sync::Mutex::new(recv),
                    done: false,
                };
                // If the response is no longer wanted, dropping it here
                // stops the stream.
                let _ = reply.send(Ok(response.map(|()| body.boxed())));
            }
            Err(error) => {
                upload.abort();
                let _ = reply.send(Err(Box::new(error)));
            }
        }
    });
    replied
}

fn boxed_response(response: Response<hyper::body::Incoming>) -> Response<RespBody> {
    response.map(|body| body.map_err(BoxError::from).boxed())
}

impl Conn {
    pub async fn open(target: impl Into<Target>, proto: Proto) -> Conn {
        let target = target.into();
        if proto == Proto::H3 {
            let (addr, tls) = target.h3.clone().expect("an HTTP/3 target: pass &server");
            return open_h3(addr, tls).await;
        }
        let tls = match proto {
            Proto::Https11 | Proto::H2 => {
                Some(target.tls.clone().expect("a TLS target: pass &server"))
            }
            _ => None,
        };
        let addr = tls.as_ref().map_or(target.plain, |(addr, _, _)| *addr);
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let std_stream = stream.into_std().expect("std socket");
        let socket = std_stream.try_clone().expect("dup socket");
        let stream = TcpStream::from_std(std_stream).expect("tokio socket");
        let (sender, task) = match tls {
            None => handshake(TokioIo::new(stream), proto == Proto::H2c).await,
            Some((_, h1, h2)) => {
                let config = if proto == Proto::H2 { h2 } else { h1 };
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .expect("TLS handshake");
                let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                let want: &[u8] = if proto == Proto::H2 {
                    b"h2"
                } else {
                    b"http/1.1"
                };
                assert_eq!(negotiated.as_deref(), Some(want), "ALPN");
                handshake(TokioIo::new(stream), proto == Proto::H2).await
            }
        };
        Conn {
            proto,
            sender,
            task,
            link: Link::Tcp(socket),
        }
    }

    /// A request builder with this connection's version and a Host.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        let builder = Request::builder().method(method);
        match self.proto {
            Proto::H2c => builder.uri(format!("http://localhost{path}")),
            Proto::H2 => builder.uri(format!("https://localhost{path}")),
            Proto::H3 => builder
                .uri(format!("https://localhost{path}"))
                .version(Version::HTTP_3),
            Proto::Https11 => builder.uri(path).header("host", "localhost"),
            Proto::Http10 => builder
                .uri(path)
                .version(Version::HTTP_10)
                .header("host", "localhost"),
            Proto::Http11 => builder.uri(path).header("host", "localhost"),
        }
    }

    /// Sends a request; resolves when the response head arrives. The
    /// request goes out even if the future is not polled; dropping the
    /// future before the head came cancels the request.
    pub fn send(
        &mut self,
        req: Request<ReqBody>,
    ) -> impl std::future::Future<Output = Reply> + Send + 'static {
        let fut: std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>> =
            match &mut self.sender {
                Sender::H1(s) => {
                    let sent = s.send_request(req);
                    Box::pin(async move { Ok(boxed_response(sent.await?)) })
                }
                Sender::H2(s) => {
                    let sent = s.send_request(req);
                    Box::pin(async move { Ok(boxed_response(sent.await?)) })
                }
                Sender::H3(s) => {
                    let replied = send_h3(s, req);
                    Box::pin(async move {
                        replied
                            .await
                            .unwrap_or_else(|_| Err("the HTTP/3 request task ended".into()))
                    })
                }
            };
        fut
    }

    /// Waits until the connection can take another request.
    pub async fn ready(&mut self) {
        match &mut self.sender {
            Sender::H1(s) => s.ready().await.expect("h1 ready"),
            Sender::H2(s) => s.ready().await.expect("h2 ready"),
            Sender::H3(_) => {}
        }
    }
}

/// Opens a connection, sends one request, waits for the response head.
pub async fn request(
    target: impl Into<Target>,
    proto: Proto,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: ReqBody,
) -> (Conn, Response<RespBody>) {
    let mut conn = Conn::open(target, proto).await;
    let mut builder = conn.request(method, path);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(body).expect("request");
    let response = tokio::time::timeout(LIMIT, conn.send(req))
        .await
        .expect("response in time")
        .expect("response");
    (conn, response)
}

/// Reads a whole body; `Err` if it was cut short.
pub async fn read_body<B>(response: Response<B>) -> Result<Bytes, BoxError>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    tokio::time::timeout(LIMIT, response.into_body().collect())
        .await
        .expect("body in time")
        .map(|c| c.to_bytes())
        .map_err(Into::into)
}

pub fn header<'a, B>(response: &'a Response<B>, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header"))
}

/// RUST_LOG=tubes=debug shows the server's logs in a failing test.
pub fn show_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A path no other test uses.
pub fn path(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("/{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Deterministic pseudo-random bytes (xorshift), so a receiver can check
/// every byte of a long stream without storing it.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }

    pub fn bytes(&mut self, n: usize) -> Bytes {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v.into()
    }
}

/// Runs a test body once per protocol (HTTP/1.0, HTTP/1.1, h2c, HTTP/1.1
/// over TLS, h2, HTTP/3), as separate tests.
#[macro_export]
macro_rules! per_protocol {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn http1_0() { super::$name(Proto::Http10).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn http1_1() { super::$name(Proto::Http11).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn h2c() { super::$name(Proto::H2c).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn https1_1() { super::$name(Proto::Https11).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn h2() { super::$name(Proto::H2).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn h3() { super::$name(Proto::H3).await }
            }
        )*
    };
}

impl From<&&Server> for Target {
    fn from(server: &&Server) -> Self {
        Target::from(*server)
    }
}
