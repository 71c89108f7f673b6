//! The one test helper: starts the real server on 127.0.0.1:0 and gives
//! clients for each protocol over real sockets.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tubes::relay::{Relay, RelayConfig, Stats};
use tubes::server::{self, ServeConfig};
use tubes::transport::tls::{Certs, Source, ALPN_H2, ALPN_HTTP11};

/// Bound for anything a test waits on.
pub const LIMIT: Duration = Duration::from_secs(20);

pub struct Server {
    /// The plain listener (HTTP/1.0, 1.1, h2c).
    pub addr: SocketAddr,
    /// The TLS listener (HTTP/1.1 and h2 by ALPN), same relay.
    pub tls_addr: SocketAddr,
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
}

impl From<SocketAddr> for Target {
    fn from(plain: SocketAddr) -> Self {
        Target { plain, tls: None }
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
        }
    }
}

/// Counts panics on the runtime's worker threads, where the server's
/// tasks run; a server that panicked fails the test at [`Server::stop`].
static SERVER_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn watch_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                SERVER_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

impl Server {
    pub async fn start() -> Server {
        watch_panics();
        // RUST_LOG=tubes=debug shows the server's logs in a failing test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
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
        let relay = Relay::new(RelayConfig::default());
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
            until(stopped),
        ));
        let tasks = vec![
            tokio::spawn(async move {
                let _ = plain.await;
            }),
            tokio::spawn(async move {
                let _ = tls.await;
            }),
        ];
        Server {
            addr,
            tls_addr,
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
}

pub type ReqBody = BoxBody<Bytes, std::io::Error>;

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

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

/// One client connection. Dropping it closes the socket, as a client
/// that goes away does (hyper's HTTP/2 client would otherwise keep the
/// connection open in a task of its own).
pub struct Conn {
    pub proto: Proto,
    sender: Sender,
    task: JoinHandle<()>,
    socket: std::net::TcpStream,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
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

impl Conn {
    pub async fn open(target: impl Into<Target>, proto: Proto) -> Conn {
        let target = target.into();
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
            socket,
        }
    }

    /// A request builder with this connection's version and a Host.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        let builder = Request::builder().method(method);
        match self.proto {
            Proto::H2c => builder.uri(format!("http://localhost{path}")),
            Proto::H2 => builder.uri(format!("https://localhost{path}")),
            Proto::Https11 => builder.uri(path).header("host", "localhost"),
            Proto::Http10 => builder
                .uri(path)
                .version(Version::HTTP_10)
                .header("host", "localhost"),
            Proto::Http11 => builder.uri(path).header("host", "localhost"),
        }
    }

    /// Sends a request; resolves when the response head arrives.
    pub fn send(
        &mut self,
        req: Request<ReqBody>,
    ) -> impl std::future::Future<Output = hyper::Result<Response<Incoming>>> + Send + 'static {
        let fut: std::pin::Pin<
            Box<dyn std::future::Future<Output = hyper::Result<Response<Incoming>>> + Send>,
        > = match &mut self.sender {
            Sender::H1(s) => Box::pin(s.send_request(req)),
            Sender::H2(s) => Box::pin(s.send_request(req)),
        };
        fut
    }

    /// Waits until the connection can take another request.
    pub async fn ready(&mut self) {
        match &mut self.sender {
            Sender::H1(s) => s.ready().await.expect("h1 ready"),
            Sender::H2(s) => s.ready().await.expect("h2 ready"),
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
) -> (Conn, Response<Incoming>) {
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
pub async fn read_body(response: Response<Incoming>) -> Result<Bytes, hyper::Error> {
    tokio::time::timeout(LIMIT, response.into_body().collect())
        .await
        .expect("body in time")
        .map(|c| c.to_bytes())
}

pub fn header<'a>(response: &'a Response<Incoming>, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header"))
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

/// Runs a test body once per protocol, as separate tests.
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
            }
        )*
    };
}

impl From<&&Server> for Target {
    fn from(server: &&Server) -> Self {
        Target::from(*server)
    }
}
