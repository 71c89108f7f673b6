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
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tubes::relay::{Relay, RelayConfig, Stats};
use tubes::server::{self, ServeConfig};

/// Bound for anything a test waits on.
pub const LIMIT: Duration = Duration::from_secs(20);

pub struct Server {
    pub addr: SocketAddr,
    pub relay: Relay,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
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
        let relay = Relay::new(RelayConfig::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            listener,
            relay.clone(),
            ServeConfig::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        let task = tokio::spawn(async move {
            let _ = task.await;
        });
        Server {
            addr,
            relay,
            stop: Some(stop),
            task: Some(task),
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
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
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

impl Conn {
    pub async fn open(addr: SocketAddr, proto: Proto) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let std_stream = stream.into_std().expect("std socket");
        let socket = std_stream.try_clone().expect("dup socket");
        let stream = TcpStream::from_std(std_stream).expect("tokio socket");
        let io = TokioIo::new(stream);
        match proto {
            Proto::Http10 | Proto::Http11 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .expect("h1 handshake");
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                Conn {
                    proto,
                    sender: Sender::H1(sender),
                    task,
                    socket,
                }
            }
            Proto::H2c => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .expect("h2 handshake");
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                Conn {
                    proto,
                    sender: Sender::H2(sender),
                    task,
                    socket,
                }
            }
        }
    }

    /// A request builder with this connection's version and a Host.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        let builder = Request::builder().method(method);
        match self.proto {
            Proto::H2c => builder.uri(format!("http://localhost{path}")),
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
    addr: SocketAddr,
    proto: Proto,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: ReqBody,
) -> (Conn, Response<Incoming>) {
    let mut conn = Conn::open(addr, proto).await;
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
            }
        )*
    };
}
