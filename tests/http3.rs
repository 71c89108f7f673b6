//! HTTP/3: transfers over QUIC, and between HTTP/3 and HTTP/1.1 peers of
//! one relay. The plain server and the HTTP/3 server run in-process on
//! port 0 and share one `Relay`; the HTTP/3 client is h3 over quinn,
//! trusting the server's self-signed certificate.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use common::*;
use h3::error::Code;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tubes::relay::Stats;
use tubes::transport::http::Handler;
use tubes::transport::tls::{Certs, Source, ALPN_H3};

/// The plain server, and the HTTP/3 server on the same relay.
struct Servers {
    plain: Server,
    h3_addr: SocketAddr,
    certs: Arc<Certs>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Servers {
    async fn start() -> Servers {
        let plain = Server::start().await;
        let certs = Certs::load(Source::SelfSigned).expect("self-signed certificate");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
        let h3_addr = socket.local_addr().expect("UDP address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tubes::transport::http3::serve(
            socket,
            Handler::new(plain.relay.clone(), true),
            Arc::clone(&certs),
            async move {
                let _ = stopped.await;
            },
        ));
        Servers {
            plain,
            h3_addr,
            certs,
            stop,
            task,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(self.h3_addr, &self.certs).await
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&Stats) -> bool) {
        self.plain.wait_for(what, pred).await
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("HTTP/3 server stops in time")
            .expect("HTTP/3 server task");
        assert!(result.is_ok(), "HTTP/3 server: {result:?}");
        self.plain.stop().await;
    }
}

type Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// One HTTP/3 connection.
struct Client {
    conn: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: JoinHandle<()>,
    _endpoint: quinn::Endpoint,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Client {
    async fn connect(addr: SocketAddr, certs: &Certs) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs.chain() {
            roots.add(cert).expect("trust the server's certificate");
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN_H3.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let connecting = endpoint.connect(addr, "localhost").expect("connect");
        let conn = tokio::time::timeout(LIMIT, connecting)
            .await
            .expect("handshake in time")
            .expect("handshake");
        let (mut driver, send) = tokio::time::timeout(
            LIMIT,
            h3::client::new(h3_quinn::Connection::new(conn.clone())),
        )
        .await
        .expect("h3 setup in time")
        .expect("h3 setup");
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Client {
            conn,
            send,
            driver,
            _endpoint: endpoint,
        }
    }

    /// Sends a request head (the body is up to the caller).
    async fn open(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Stream {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(()).expect("request");
        tokio::time::timeout(LIMIT, self.send.send_request(req))
            .await
            .expect("request sent in time")
            .expect("request sent")
    }

    /// A GET: its head is sent and its (empty) body finished.
    async fn get(&mut self, path: &str) -> Stream {
        let mut stream = self.open("GET", path, &[]).await;
        finish(&mut stream).await;
        stream
    }

    /// A whole POST; returns the stream to read the sender's log from.
    async fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Stream {
        let mut stream = self.open("POST", path, headers).await;
        send(&mut stream, Bytes::copy_from_slice(body)).await;
        finish(&mut stream).await;
        stream
    }
}

async fn send(stream: &mut Stream, data: Bytes) {
    tokio::time::timeout(LIMIT, stream.send_data(data))
        .await
        .expect("data sent in time")
        .expect("data sent");
}

async fn finish(stream: &mut Stream) {
    tokio::time::timeout(LIMIT, stream.finish())
        .await
        .expect("finished in time")
        .expect("finish");
}

async fn response(stream: &mut Stream) -> http::Response<()> {
    tokio::time::timeout(LIMIT, stream.recv_response())
        .await
        .expect("response in time")
        .expect("response")
}

/// The next chunk of a response body; `Ok(None)` at a clean end.
async fn chunk(stream: &mut Stream) -> Result<Option<Bytes>, h3::error::StreamError> {
    let next = tokio::time::timeout(LIMIT, stream.recv_data())
        .await
        .expect("data in time")?;
    Ok(next.map(|mut buf| buf.copy_to_bytes(buf.remaining())))
}

/// A whole response body; `Err` if it was cut short.
async fn body(stream: &mut Stream) -> Result<Vec<u8>, h3::error::StreamError> {
    let mut out = Vec::new();
    while let Some(data) = chunk(stream).await? {
        out.extend_from_slice(&data);
    }
    Ok(out)
}

fn header<'a>(response: &'a http::Response<()>, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header"))
}

/// What every receiver of a `text/plain` "hello" with one X-Piping gets.
fn check_receiver_headers(response: &http::Response<()>) {
    assert_eq!(response.status(), 200);
    assert_eq!(header(response, "content-type"), Some("text/plain"));
    assert_eq!(header(response, "content-length"), Some("5"));
    assert_eq!(header(response, "x-robots-tag"), Some("none"));
    assert_eq!(header(response, "x-piping"), Some("meta data"));
    assert_eq!(header(response, "access-control-allow-origin"), Some("*"));
    assert_eq!(
        header(response, "access-control-expose-headers"),
        Some("X-Piping")
    );
}

const SENDER_HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/plain"),
    ("content-length", "5"),
    ("x-piping", "meta data"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_first() {
    let servers = Servers::start().await;
    let mut client = servers.client().await;
    let path = path("h3-sender-first");
    let mut sender = client.post(&path, SENDER_HEADERS, b"hello").await;
    let head = response(&mut sender).await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-type"), Some("text/plain"));
    servers
        .wait_for("a waiting sender", |s| s.waiting_senders == 1)
        .await;

    let mut receiver = client.get(&path).await;
    let head = response(&mut receiver).await;
    check_receiver_headers(&head);
    assert_eq!(body(&mut receiver).await.expect("clean end"), b"hello");

    let log = String::from_utf8(body(&mut sender).await.expect("log ends cleanly")).expect("utf-8");
    assert!(
        log.contains("[INFO] Waiting for 1 receiver(s)...\n"),
        "{log}"
    );
    assert!(log.contains("[INFO] Sent successfully!\n"), "{log}");
    servers.plain.wait_empty().await;
    servers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_first() {
    let servers = Servers::start().await;
    let mut client = servers.client().await;
    let path = path("h3-receiver-first");
    let mut receiver = client.get(&path).await;
    servers
        .wait_for("a waiting receiver", |s| s.waiting_receivers == 1)
        .await;

    // Another connection for the sender: requests of one client may come
    // on separate connections too.
    let mut other = servers.client().await;
    let mut sender = other.post(&path, SENDER_HEADERS, b"hello").await;
    let head = response(&mut receiver).await;
    check_receiver_headers(&head);
    assert_eq!(body(&mut receiver).await.expect("clean end"), b"hello");
    assert_eq!(response(&mut sender).await.status(), 200);
    let log = String::from_utf8(body(&mut sender).await.expect("log")).expect("utf-8");
    assert!(log.contains("[INFO] Sent successfully!\n"), "{log}");
    servers.plain.wait_empty().await;
    servers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mebibytes_arrive_intact() {
    const SIZE: usize = 4 << 20;
    const PIECE: usize = 64 << 10;
    let servers = Servers::start().await;
    let mut receiving = servers.client().await;
    let mut sending = servers.client().await;
    let path = path("h3-large");

    let mut receiver = receiving.get(&path).await;
    servers
        .wait_for("a waiting receiver", |s| s.waiting_receivers == 1)
        .await;
    let mut sender = sending
        .open("POST", &path, &[("content-length", &SIZE.to_string())])
        .await;
    let upload = tokio::spawn(async move {
        let mut pattern = Pattern::new(7);
        let mut hash = Sha256::new();
        for _ in 0..SIZE / PIECE {
            let piece = pattern.bytes(PIECE);
            hash.update(&piece);
            send(&mut sender, piece).await;
        }
        finish(&mut sender).await;
        assert_eq!(response(&mut sender).await.status(), 200);
        let log = String::from_utf8(body(&mut sender).await.expect("log")).expect("utf-8");
        assert!(log.contains("[INFO] Sent successfully!\n"), "{log}");
        hash.finalize()
    });

    let head = response(&mut receiver).await;
    assert_eq!(
        header(&head, "content-length"),
        Some(SIZE.to_string().as_str())
    );
    let mut hash = Sha256::new();
    let mut received = 0;
    while let Some(data) = chunk(&mut receiver).await.expect("no error") {
        received += data.len();
        hash.update(&data);
    }
    assert_eq!(received, SIZE);
    let sent = tokio::time::timeout(LIMIT, upload)
        .await
        .expect("upload in time")
        .expect("upload");
    assert_eq!(
        hash.finalize(),
        sent,
        "sha256 of what was sent and received"
    );
    servers.plain.wait_empty().await;
    servers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_sender_to_http11_receiver() {
    let servers = Servers::start().await;
    let path = path("h3-to-h1");
    let receiving = {
        let addr = servers.plain.addr;
        let path = path.clone();
        tokio::spawn(async move { request(addr, Proto::Http11, "GET", &path, &[], empty()).await })
    };
    servers
        .wait_for("a waiting receiver", |s| s.waiting_receivers == 1)
        .await;
    let mut client = servers.client().await;
    let mut sender = client.post(&path, SENDER_HEADERS, b"hello").await;
    let (_conn, received) = tokio::time::timeout(LIMIT, receiving)
        .await
        .expect("receiver in time")
        .expect("receiver task");
    assert_eq!(received.status(), 200);
    assert_eq!(
        common::header(&received, "content-type"),
        Some("text/plain")
    );
    assert_eq!(common::header(&received, "content-length"), Some("5"));
    assert_eq!(common::header(&received, "x-robots-tag"), Some("none"));
    assert_eq!(common::header(&received, "x-piping"), Some("meta data"));
    assert_eq!(received.version(), http::Version::HTTP_11);
    assert_eq!(read_body(received).await.expect("clean end"), "hello");
    assert_eq!(response(&mut sender).await.status(), 200);
    body(&mut sender).await.expect("log");
    servers.plain.wait_empty().await;
    servers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_sender_to_h3_receiver() {
    let servers = Servers::start().await;
    let path = path("h1-to-h3");
    let mut client = servers.client().await;
    let mut receiver = client.get(&path).await;
    servers
        .wait_for("a waiting receiver", |s| s.waiting_receivers == 1)
        .await;
    let (_conn, sent) = request(
        servers.plain.addr,
        Proto::Http11,
        "POST",
        &path,
        SENDER_HEADERS,
        full("hello"),
    )
    .await;
    assert_eq!(sent.status(), 200);
    let head = response(&mut receiver).await;
    check_receiver_headers(&head);
    assert_eq!(body(&mut receiver).await.expect("clean end"), b"hello");
    let log = read_body(sent).await.expect("log");
    assert!(
        String::from_utf8_lossy(&log).contains("[INFO] Sent successfully!\n"),
        "{log:?}"
    );
    servers.plain.wait_empty().await;
    servers.stop().await;
}

/// Each byte reaches the receiver before the next is sent: nothing on
/// the way (either adapter, QUIC) holds data back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_byte_by_byte() {
    let servers = Servers::start().await;
    let mut client = servers.client().await;
    let path = path("h3-bytes");
    let mut receiver = client.get(&path).await;
    servers
        .wait_for("a waiting receiver", |s| s.waiting_receivers == 1)
        .await;
    let mut sender = client.open("POST", &path, &[]).await;
    let mut waited_head = false;
    for i in 0..64u8 {
        send(&mut sender, Bytes::copy_from_slice(&[i])).await;
        if !waited_head {
            assert_eq!(response(&mut receiver).await.status(), 200);
            waited_head = true;
        }
        let data = chunk(&mut receiver)
            .await
            .expect("no error")
            .expect("a byte, not the end");
        assert_eq!(&data[..], &[i], "byte {i}");
    }
    finish(&mut sender).await;
    assert_eq!(chunk(&mut receiver).await.expect("clean end"), None);
    servers.plain.wait_empty().await;
    servers.stop().await;
}

/// An HTTP/3 sender that resets its stream mid-body: the HTTP/1.1
/// receiver sees an error, not a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_h3_sender_aborts_the_receiver() {
    let servers = Servers::start().await;
    let path = path("h3-cut");
    let receiving = {
        let addr = servers.plain.addr;
        let path = path.clone();
        tokio::spawn(async move { request(addr, Proto::Http11, "GET", &path, &[], empty()).await })
    };
    servers
        .wait_for("a waiting receiver", |s| s.waiting_receivers == 1)
        .await;
    let mut client = servers.client().await;
    let mut sender = client.open("POST", &path, &[]).await;
    send(&mut sender, Bytes::from_static(b"part of it")).await;
    let (_conn, received) = tokio::time::timeout(LIMIT, receiving)
        .await
        .expect("receiver in time")
        .expect("receiver task");
    assert_eq!(received.status(), 200);
    let mut received = received.into_body();
    let first = tokio::time::timeout(LIMIT, http_body_util::BodyExt::frame(&mut received))
        .await
        .expect("first bytes in time")
        .expect("a frame")
        .expect("no error yet");
    assert_eq!(first.into_data().expect("data"), "part of it");
    sender.stop_stream(Code::H3_REQUEST_CANCELLED);
    let rest = tokio::time::timeout(LIMIT, http_body_util::BodyExt::collect(received))
        .await
        .expect("the end in time");
    assert!(rest.is_err(), "a cut transfer must not end cleanly");
    servers.plain.wait_empty().await;
    servers.stop().await;
}

/// An HTTP/1.1 sender cut short: the HTTP/3 receiver's stream is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_http11_sender_resets_the_h3_receiver() {
    let servers = Servers::start().await;
    let path = path("h1-cut");
    let mut client = servers.client().await;
    let mut receiver = client.get(&path).await;
    servers
        .wait_for("a waiting receiver", |s| s.waiting_receivers == 1)
        .await;
    let (tx, upload) = streaming();
    let (conn, sent) = request(
        servers.plain.addr,
        Proto::Http11,
        "POST",
        &path,
        &[],
        upload,
    )
    .await;
    assert_eq!(sent.status(), 200);
    tx.send(Ok(Bytes::from_static(b"part of it")))
        .await
        .expect("body chunk");
    assert_eq!(response(&mut receiver).await.status(), 200);
    assert_eq!(
        chunk(&mut receiver).await.expect("no error yet").as_deref(),
        Some(&b"part of it"[..])
    );
    // Cut the sender: its body fails and its connection closes.
    let _ = tx.send(Err(std::io::Error::other("cut"))).await;
    drop(conn);
    let rest = body(&mut receiver).await;
    assert!(
        rest.is_err(),
        "a cut transfer must not end cleanly: {rest:?}"
    );
    servers.plain.wait_empty().await;
    servers.stop().await;
}

/// A receiver that waits and then cancels (its connection stays open)
/// frees the path at once, and the path works again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiting_receiver_frees_the_path() {
    let servers = Servers::start().await;
    let mut client = servers.client().await;
    let path = path("h3-cancel");
    let receiver = client.get(&path).await;
    servers
        .wait_for("a waiting receiver", |s| s.waiting_receivers == 1)
        .await;
    // Dropping a request stream is how an h3 client cancels: it stops
    // reading the response (STOP_SENDING).
    drop(receiver);
    servers.plain.wait_empty().await;

    // The same connection goes on and the path is free.
    let mut receiver = client.get(&path).await;
    servers
        .wait_for("a new waiting receiver", |s| s.waiting_receivers == 1)
        .await;
    let mut sender = client.post(&path, SENDER_HEADERS, b"hello").await;
    check_receiver_headers(&response(&mut receiver).await);
    assert_eq!(body(&mut receiver).await.expect("clean end"), b"hello");
    body(&mut sender).await.expect("log");
    servers.plain.wait_empty().await;
    servers.stop().await;
}

/// A waiting sender that resets its stream leaves the relay, and its
/// connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiting_sender_frees_the_path() {
    let servers = Servers::start().await;
    let mut client = servers.client().await;
    let path = path("h3-cancel-sender");
    let mut sender = client.open("POST", &path, &[]).await;
    send(&mut sender, Bytes::from_static(b"some")).await;
    assert_eq!(response(&mut sender).await.status(), 200);
    servers
        .wait_for("a waiting sender", |s| s.waiting_senders == 1)
        .await;
    sender.stop_stream(Code::H3_REQUEST_CANCELLED);
    sender.stop_sending(Code::H3_REQUEST_CANCELLED);
    servers.plain.wait_empty().await;

    let mut receiver = client.get(&path).await;
    let mut sender = client.post(&path, SENDER_HEADERS, b"hello").await;
    check_receiver_headers(&response(&mut receiver).await);
    assert_eq!(body(&mut receiver).await.expect("clean end"), b"hello");
    assert_eq!(response(&mut sender).await.status(), 200);
    body(&mut sender).await.expect("log");
    servers.plain.wait_empty().await;
    servers.stop().await;
}

/// A connection that closes takes its waiting requests with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connection_frees_its_waiting_peers() {
    let servers = Servers::start().await;
    let mut client = servers.client().await;
    let _receiver = client.get(&path("h3-close-r")).await;
    let _sender = client.open("POST", &path("h3-close-s"), &[]).await;
    servers
        .wait_for("a waiting receiver and sender", |s| {
            s.waiting_receivers == 1 && s.waiting_senders == 1
        })
        .await;
    client.conn.close(quinn::VarInt::from_u32(0x100), b"bye");
    servers.plain.wait_empty().await;
    servers.stop().await;
}

/// A body shorter than its Content-Length is not a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_body_is_an_error() {
    let servers = Servers::start().await;
    let mut client = servers.client().await;
    let path = path("h3-short");
    let mut receiver = client.get(&path).await;
    servers
        .wait_for("a waiting receiver", |s| s.waiting_receivers == 1)
        .await;
    let _sender = client
        .post(&path, &[("content-length", "10")], b"hello")
        .await;
    // The reset may overtake the response head: an error either way.
    let received = match tokio::time::timeout(LIMIT, receiver.recv_response())
        .await
        .expect("response in time")
    {
        Ok(head) => {
            assert_eq!(head.status(), 200);
            body(&mut receiver).await.map(|_| ())
        }
        Err(error) => Err(error),
    };
    assert!(received.is_err(), "5 of 10 bytes must not end cleanly");
    servers.plain.wait_empty().await;
    servers.stop().await;
}

/// Pages and errors come over HTTP/3 as over HTTP/1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_refusals() {
    let servers = Servers::start().await;
    let mut client = servers.client().await;
    let mut version = client.get("/version").await;
    assert_eq!(response(&mut version).await.status(), 200);
    assert_eq!(
        body(&mut version).await.expect("body"),
        format!("{}\n", env!("CARGO_PKG_VERSION")).as_bytes()
    );
    let mut help = client.get("/help").await;
    assert_eq!(response(&mut help).await.status(), 200);
    let text = String::from_utf8(body(&mut help).await.expect("body")).expect("utf-8");
    assert!(text.contains("https://localhost"), "{text}");
    let mut refused = client.post("/", &[], b"x").await;
    assert_eq!(response(&mut refused).await.status(), 400);
    // A client may end its request after the response came: the server
    // must not have told it to stop sending meanwhile (h3 writes a frame
    // at the end of a connection's first request, which would fail).
    let mut fresh = servers.client().await;
    let mut late = fresh.open("GET", "/version", &[]).await;
    assert_eq!(response(&mut late).await.status(), 200);
    body(&mut late).await.expect("body");
    finish(&mut late).await;
    let mut head = client.open("HEAD", "/version", &[]).await;
    finish(&mut head).await;
    assert_eq!(response(&mut head).await.status(), 200);
    assert_eq!(body(&mut head).await.expect("empty"), b"");
    servers.stop().await;
}
