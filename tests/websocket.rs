//! WebSocket views of a path (`src/transport/websocket.rs`) driven by a
//! real WebSocket client (tokio-tungstenite) and, on the Piping side, by
//! real curl: a socket as the sender (`?ws=send`) or a receiver
//! (`?ws=receive`) of an ordinary transfer, two sockets joined full duplex
//! (`?ws=pair`), clean ends against aborts, fan-out with `n`, refusals
//! before the upgrade, cleanup of waiting sockets, and a pair between an
//! HTTP/2 extended CONNECT socket (RFC 8441) and an HTTP/1.1 one.
//!
//! The server runs in-process on `127.0.0.1:0` (`tests/common`). curl
//! must be installed (`scripts/test.sh` installs it); without it these
//! tests fail and say so, they never skip.
//!
//! ```sh
//! cargo test --test websocket
//! ```
//!
//! Nothing here sleeps to let something happen: a test waits for a
//! message, for a process to end or for the relay's registry to reach a
//! state, and every wait is bounded by [`WAIT`]; every loop has a bound.
//!
//! Four bugs these tests found (a stalled `?ws=send` socket, a pair that
//! deadlocked with traffic both ways, a sender's close that dropped its
//! transfer, closes left unanswered) are fixed; their tests now run.

mod common;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{Conn, Pattern, Proto, Server};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The bound of every wait (debug builds on a busy two-core machine).
const WAIT: Duration = Duration::from_secs(60);

/// Size of the binary messages a sending socket writes.
const CHUNK: usize = 64 << 10;

/// More messages than any test expects on one socket: the bound of every
/// read loop.
const MAX_MESSAGES: usize = 100_000;

/// The refusal of a WebSocket without a known `ws=` mode (the list grew
/// `?ws=room` with the signaling rooms).
const MODE_REFUSAL: &str =
    "[ERROR] A WebSocket needs ?ws=send, ?ws=receive, ?ws=pair or ?ws=room.\n";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
async fn within<T>(what: impl fmt::Display, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------

/// The `ws://` URL of `path_and_query` on the test server.
fn ws_url(server: &Server, path_and_query: &str) -> String {
    server.url(path_and_query).replacen("http://", "ws://", 1)
}

/// Opens a WebSocket; panics if the handshake fails.
async fn connect(url: &str) -> Ws {
    let (ws, response) = within(
        format_args!("the handshake with {url}"),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
    assert_eq!(response.status().as_u16(), 101, "{url}");
    ws
}

/// Opens a WebSocket that must be refused before the upgrade; returns the
/// HTTP status and whatever of the body came with the head.
async fn refused(url: &str) -> (u16, Vec<u8>) {
    match within(
        format_args!("the handshake with {url}"),
        tokio_tungstenite::connect_async(url),
    )
    .await
    {
        Ok(_) => panic!("{url}: the handshake succeeded, a refusal was expected"),
        Err(WsError::Http(response)) => (
            response.status().as_u16(),
            response.body().clone().unwrap_or_default(),
        ),
        Err(e) => panic!("{url}: expected an HTTP refusal, got {e}"),
    }
}

/// The same refusal seen by a plain HTTP client, so its body is read
/// whole (tungstenite only keeps what arrived with the head).
async fn refusal_body(server: &Server, path_and_query: &str) -> (u16, String) {
    let (_conn, response) = common::request(
        server,
        Proto::Http11,
        "GET",
        path_and_query,
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        common::empty(),
    )
    .await;
    let status = response.status().as_u16();
    let body = common::read_body(response).await.expect("refusal body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn close_frame(code: u16) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    }))
}

/// The close a socket ended with: `(code, reason)`.
fn close_of(frame: &Option<CloseFrame>) -> Option<(u16, String)> {
    frame
        .as_ref()
        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
}

/// Everything a socket read until its end.
#[derive(Debug, Default)]
struct Received {
    /// The binary messages, concatenated.
    data: Vec<u8>,
    binary_messages: usize,
    /// The text messages, one each.
    texts: Vec<String>,
    /// The close frame, if one came (`Some(None)`: a close without a code).
    close: Option<Option<CloseFrame>>,
    /// How the stream ended if not by a close: an error or its end.
    end: Option<String>,
}

impl Received {
    fn close(&self) -> Option<(u16, String)> {
        self.close.as_ref().and_then(close_of)
    }
}

/// Reads a socket (or its reading half) until a close, an error or its
/// end. Stops reading at the close: what comes after it (the end of the
/// TCP connection) is not waited for.
async fn read_all<S>(mut stream: S) -> Received
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    let mut got = Received::default();
    for _ in 0..MAX_MESSAGES {
        match within("a WebSocket message", stream.next()).await {
            Some(Ok(Message::Binary(data))) => {
                got.data.extend_from_slice(&data);
                got.binary_messages += 1;
            }
            Some(Ok(Message::Text(text))) => got.texts.push(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => {
                got.close = Some(frame);
                return got;
            }
            Some(Ok(_)) => {} // ping, pong
            Some(Err(e)) => {
                got.end = Some(format!("error: {e}"));
                return got;
            }
            None => {
                got.end = Some("end of stream".into());
                return got;
            }
        }
    }
    panic!("more than {MAX_MESSAGES} messages on one socket");
}

/// Sends `data` as binary messages of [`CHUNK`] bytes.
async fn send_chunks<S>(sink: &mut S, data: &Bytes)
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let mut at = 0;
    while at < data.len() {
        let end = (at + CHUNK).min(data.len());
        within(
            "sending a message",
            sink.send(Message::binary(data.slice(at..end))),
        )
        .await
        .expect("send a binary message");
        at = end;
    }
}

/// A sending socket: its halves, with the log read by a task of its own.
struct WsSender {
    sink: SplitSink<Ws, Message>,
    log: tokio::task::JoinHandle<Received>,
}

impl WsSender {
    async fn open(url: &str) -> WsSender {
        let (sink, stream): (SplitSink<Ws, Message>, SplitStream<Ws>) = connect(url).await.split();
        WsSender {
            sink,
            log: tokio::spawn(read_all(stream)),
        }
    }

    async fn send(&mut self, data: &Bytes) {
        send_chunks(&mut self.sink, data).await;
    }

    async fn close(&mut self, code: u16) {
        within("sending a close", self.sink.send(close_frame(code)))
            .await
            .expect("send the close");
    }

    /// What the socket read (the log) until it ended.
    async fn log(self) -> Received {
        within("the sender's log", self.log)
            .await
            .expect("log reader task")
    }
}

// ---------------------------------------------------------------------
// curl and temporary files
// ---------------------------------------------------------------------

/// A temporary folder with a random suffix, removed when dropped.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!(
            "tubes-websocket-{name}-{:016x}",
            rand::random::<u64>()
        ));
        std::fs::create_dir(&dir).expect("create the temporary folder");
        Tmp(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// curl with no proxy and a bound on its run; killed if the test fails.
fn curl(args: &[&str]) -> Command {
    let mut cmd = Command::new("curl");
    // -q first: no ~/.curlrc.
    cmd.args(["-q", "-sS", "--noproxy", "*", "--max-time", "60"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn spawn(mut cmd: Command) -> Child {
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "cannot start curl: {e}; install the `curl` package (scripts/test.sh does), \
             these tests never skip"
        ),
        Err(e) => panic!("cannot start curl: {e}"),
    }
}

/// Waits for a child to end and collects its output.
async fn finish(child: Child, what: &str) -> Output {
    within(what, child.wait_with_output())
        .await
        .unwrap_or_else(|e| panic!("wait for {what}: {e}"))
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    )
}
// ---------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------

/// A body a sending socket can hand over without waiting: at most the
/// server's queue of messages from a sending socket (4) plus its 64 KiB
/// read ahead. Bodies this small are spared the stall of BUG 1 (see the
/// module doc); the large ones show it.
const SMALL: usize = 4 * CHUNK;

// ---------------------------------------------------------------------
// 1. A WebSocket sender, a curl receiver
// ---------------------------------------------------------------------

/// A sending socket first, then a curl receiver; the socket sends `size`
/// bytes and closes with 1000.
async fn websocket_sender_to_curl(size: usize) {
    let server = Server::start().await;
    let tmp = Tmp::new("ws-to-curl");
    let path = common::path("ws-to-curl");
    let data = Pattern::new(1).bytes(size);

    let mut sender = WsSender::open(&ws_url(&server, &format!("{path}?ws=send"))).await;
    server
        .wait_for("the socket waits as a sender", |s| s.waiting_senders == 1)
        .await;
    let out = tmp.join("out.bin");
    let receiver = spawn(curl(&["-o", arg(&out), &server.url(&path)]));

    sender.send(&data).await;
    // Close once curl has joined, so the rendezvous' log lines go out
    // before the close (after it, the log is cut: BUG 3).
    server
        .wait_for("the transfer runs", |s| s.transfers == 1)
        .await;
    sender.close(1000).await;
    let received = finish(receiver, "curl receiving").await;
    assert!(received.status.success(), "{}", describe(&received));
    let got = std::fs::read(&out).expect("curl's output");
    assert_eq!(got.len(), data.len(), "bytes curl received");
    assert!(got == data[..], "curl's output differs from what was sent");

    let log = sender.log().await;
    assert_eq!(log.binary_messages, 0, "{log:?}");
    assert_eq!(
        log.texts.first().map(String::as_str),
        Some("[INFO] Waiting for 1 receiver(s)...\n"),
        "{log:?}"
    );
    assert!(
        log.texts
            .iter()
            .any(|l| l == "[INFO] Start sending to 1 receiver(s)!\n"),
        "{log:?}"
    );
    assert!(
        log.texts
            .iter()
            .all(|l| l.starts_with("[INFO] ") && l.ends_with('\n')),
        "{log:?}"
    );
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sender_to_curl_receiver() {
    websocket_sender_to_curl(5 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sender_to_curl_receiver_small() {
    websocket_sender_to_curl(SMALL).await;
}

// ---------------------------------------------------------------------
// 2. A curl sender, a WebSocket receiver
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sender_to_websocket_receiver() {
    let server = Server::start().await;
    let tmp = Tmp::new("curl-to-ws");
    let path = common::path("curl-to-ws");
    let data = Pattern::new(2).bytes(5 << 20);
    let file = tmp.join("in.bin");
    std::fs::write(&file, &data).expect("write the input file");

    let receiver = connect(&ws_url(&server, &format!("{path}?ws=receive"))).await;
    let receiving = tokio::spawn(read_all(receiver));
    server
        .wait_for("the socket waits as a receiver", |s| {
            s.waiting_receivers == 1
        })
        .await;
    let sent = finish(
        spawn(curl(&["-T", arg(&file), &server.url(&path)])),
        "curl -T",
    )
    .await;
    assert!(sent.status.success(), "{}", describe(&sent));
    let log = String::from_utf8_lossy(&sent.stdout);
    assert!(
        log.contains("[INFO] Start sending to 1 receiver(s)!\n"),
        "{log}"
    );

    let got = within("the receiving socket", receiving)
        .await
        .expect("receiver task");
    assert!(got.texts.is_empty(), "no text expected: {:?}", got.texts);
    assert_eq!(got.data.len(), data.len(), "bytes received ({:?})", got.end);
    assert!(
        got.data == data[..],
        "the socket's bytes differ from the file"
    );
    assert_eq!(got.close(), Some((1000, "end".to_owned())), "{:?}", got.end);
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// 3. A pair echoing
// ---------------------------------------------------------------------

/// Peers A and B joined on a fresh path.
async fn joined_pair(server: &Server, name: &str) -> (Ws, Ws) {
    let url = ws_url(server, &format!("{}?ws=pair", common::path(name)));
    let a = connect(&url).await;
    server
        .wait_for("one pair peer waits", |s| s.pairs_waiting == 1)
        .await;
    let b = connect(&url).await;
    server
        .wait_for("the pair is joined", |s| {
            s.pairs_joined == 1 && s.pairs_waiting == 0
        })
        .await;
    (a, b)
}

/// B echoes every message back as it comes, until it is closed; gives
/// the number echoed and the close B got (`None`: no close frame).
fn echo(b: Ws) -> tokio::task::JoinHandle<(usize, Option<Option<CloseFrame>>)> {
    tokio::spawn(async move {
        let mut b = b;
        let mut echoed = 0usize;
        for _ in 0..=MAX_MESSAGES {
            match within("a message at B", b.next()).await {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    within("B's echo", b.send(m)).await.expect("echo");
                    echoed += 1;
                }
                Some(Ok(Message::Close(frame))) => return (echoed, Some(frame)),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("B: {e}"),
                None => return (echoed, None),
            }
        }
        panic!("B: more than {MAX_MESSAGES} messages");
    })
}

async fn expect_text<S>(stream: &mut S, want: &str)
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    match within(format_args!("the echo of {want}"), stream.next()).await {
        Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), want, "echo out of order"),
        other => panic!("echo of {want}: expected text, got {other:?}"),
    }
}

async fn expect_binary<S>(stream: &mut S, want: &Bytes)
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    match within("the binary echo", stream.next()).await {
        Some(Ok(Message::Binary(data))) => assert!(data == want, "binary echo differs"),
        other => panic!("binary echo: expected binary, got {other:?}"),
    }
}

/// B's end after A left: a close 1000 "the other side left".
async fn expect_other_side_left(
    echo: tokio::task::JoinHandle<(usize, Option<Option<CloseFrame>>)>,
    sent: usize,
) {
    let (echoed, close) = within("B's end", echo).await.expect("echo task");
    assert_eq!(echoed, sent, "messages B echoed");
    let close = close.expect("B got a close frame, not a bare end of stream");
    assert_eq!(
        close_of(&close),
        Some((1000, "the other side left".to_owned()))
    );
}

const ECHOES: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_echoes_ten_thousand_pipelined_messages() {
    let server = Server::start().await;
    let (a, b) = joined_pair(&server, "pair-echo").await;
    let echo = echo(b);

    let (mut a_sink, mut a_stream) = a.split();
    let blob = Pattern::new(3).bytes(1000);
    let sent_blob = blob.clone();
    // A sends and reads at once, in two tasks.
    let sending = tokio::spawn(async move {
        for i in 0..ECHOES {
            within("A sending", a_sink.send(Message::text(format!("msg-{i}"))))
                .await
                .expect("A sends");
        }
        within("A sending binary", a_sink.send(Message::binary(sent_blob)))
            .await
            .expect("A sends binary");
        a_sink
    });
    for i in 0..ECHOES {
        expect_text(&mut a_stream, &format!("msg-{i}")).await;
    }
    expect_binary(&mut a_stream, &blob).await;
    let mut a_sink = within("A's sending task", sending)
        .await
        .expect("sending task");

    within("A's close", a_sink.send(close_frame(1000)))
        .await
        .expect("A closes");
    expect_other_side_left(echo, ECHOES + 1).await;
    drop((a_sink, a_stream));
    server.wait_empty().await;
    server.stop().await;
}

/// The same exchange one message at a time (each echo awaited before the
/// next message), which BUG 2 spares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_echoes_in_lockstep() {
    const LOCKSTEP: usize = 2_000;
    let server = Server::start().await;
    let (mut a, b) = joined_pair(&server, "pair-lockstep").await;
    let echo = echo(b);
    for i in 0..LOCKSTEP {
        let text = format!("msg-{i}");
        within("A sending", a.send(Message::text(text.clone())))
            .await
            .expect("A sends");
        expect_text(&mut a, &text).await;
    }
    let blob = Pattern::new(3).bytes(1000);
    within("A sending binary", a.send(Message::binary(blob.clone())))
        .await
        .expect("A sends binary");
    expect_binary(&mut a, &blob).await;
    // Text that is not what a binary message would look like either.
    within("A sending", a.send(Message::text("ünïcödé ✓")))
        .await
        .expect("A sends");
    expect_text(&mut a, "ünïcödé ✓").await;

    within("A's close", a.send(close_frame(1000)))
        .await
        .expect("A closes");
    expect_other_side_left(echo, LOCKSTEP + 2).await;
    drop(a);
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// 4. Aborts against clean ends
// ---------------------------------------------------------------------

/// A WebSocket receiver waiting on `path`, read by a task of its own.
async fn waiting_ws_receiver(
    server: &Server,
    path: &str,
    query: &str,
) -> tokio::task::JoinHandle<Received> {
    let before = server.relay.stats().waiting_receivers;
    let receiver = connect(&ws_url(server, &format!("{path}?{query}"))).await;
    server
        .wait_for("the socket waits as a receiver", |s| {
            s.waiting_receivers == before + 1
        })
        .await;
    tokio::spawn(read_all(receiver))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_code_4000_aborts_curl_and_websocket_receivers() {
    let server = Server::start().await;
    let data = Pattern::new(4).bytes(SMALL);

    // A curl receiver: it gets the first bytes, then a cut stream.
    let path = common::path("abort-curl");
    // -N: each byte written out as it comes, so the first ones can be
    // awaited.
    let mut receiver = spawn(curl(&["-N", &server.url(&path)]));
    server
        .wait_for("curl waits", |s| s.waiting_receivers == 1)
        .await;
    let mut sender = WsSender::open(&ws_url(&server, &format!("{path}?ws=send"))).await;
    sender.send(&data).await;
    let mut stdout = receiver.stdout.take().expect("curl's stdout");
    let mut first = vec![0u8; 1000];
    within("curl's first bytes", stdout.read_exact(&mut first))
        .await
        .expect("curl received data");
    assert!(first == data[..1000]);
    sender.close(4000).await;
    let mut rest = Vec::new();
    within("curl's output", stdout.read_to_end(&mut rest))
        .await
        .expect("read curl's output");
    let cut = finish(receiver, "curl receiving").await;
    assert!(
        matches!(cut.status.code(), Some(18) | Some(56)),
        "curl must fail with 18 or 56 on a cut stream: {}",
        describe(&cut)
    );
    assert!(1000 + rest.len() <= data.len());
    assert!(
        rest == data[1000..1000 + rest.len()],
        "curl got other bytes"
    );
    let _ = sender.log().await;
    server.wait_empty().await;

    // A WebSocket receiver on another transfer: a prefix, then 1011.
    let path = common::path("abort-ws");
    let receiving = waiting_ws_receiver(&server, &path, "ws=receive").await;
    let mut sender = WsSender::open(&ws_url(&server, &format!("{path}?ws=send"))).await;
    sender.send(&data).await;
    server
        .wait_for("the transfer runs", |s| s.transfers == 1)
        .await;
    sender.close(4000).await;
    let got = within("the receiving socket", receiving)
        .await
        .expect("receiver task");
    assert_eq!(got.close(), Some((1011, "aborted".to_owned())), "{got:?}");
    assert!(got.data.len() <= data.len());
    assert!(
        got.data == data[..got.data.len()],
        "the socket got other bytes"
    );
    let _ = sender.log().await;
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_sender_connection_aborts_websocket_receiver() {
    let server = Server::start().await;
    let path = common::path("abort-drop");
    let data = Pattern::new(5).bytes(SMALL);
    let receiving = waiting_ws_receiver(&server, &path, "ws=receive").await;
    let mut sender = connect(&ws_url(&server, &format!("{path}?ws=send"))).await;
    send_chunks(&mut sender, &data).await;
    server
        .wait_for("the transfer runs", |s| s.transfers == 1)
        .await;
    // No close frame: the TCP connection just goes.
    drop(sender);
    let got = within("the receiving socket", receiving)
        .await
        .expect("receiver task");
    assert_eq!(got.close(), Some((1011, "aborted".to_owned())), "{got:?}");
    assert!(got.data.len() <= data.len());
    assert!(
        got.data == data[..got.data.len()],
        "the socket got other bytes"
    );
    server.wait_empty().await;
    server.stop().await;
}

/// A receiving socket first, then a sending socket that sends `size`
/// bytes and closes with 1000.
async fn clean_close(size: usize) {
    let server = Server::start().await;
    let path = common::path("clean");
    let data = Pattern::new(6).bytes(size);
    let receiving = waiting_ws_receiver(&server, &path, "ws=receive").await;
    let mut sender = WsSender::open(&ws_url(&server, &format!("{path}?ws=send"))).await;
    sender.send(&data).await;
    sender.close(1000).await;
    let got = within("the receiving socket", receiving)
        .await
        .expect("receiver task");
    assert_eq!(got.close(), Some((1000, "end".to_owned())), "{:?}", got.end);
    assert_eq!(got.data.len(), data.len());
    assert!(got.data == data[..], "the socket got other bytes");
    let _ = sender.log().await;
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_1000_ends_websocket_receiver_cleanly() {
    clean_close(2 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_1000_ends_websocket_receiver_cleanly_small() {
    clean_close(SMALL).await;
}

// ---------------------------------------------------------------------
// 5. One sender, two receivers
// ---------------------------------------------------------------------

/// `?n=2`: a curl receiver and a receiving socket, then a sending socket
/// with `size` bytes.
async fn two_receivers(size: usize) {
    let server = Server::start().await;
    let tmp = Tmp::new("n2");
    let path = common::path("n2");
    let data = Pattern::new(7).bytes(size);

    let out = tmp.join("out.bin");
    let curl_receiver = spawn(curl(&[
        "-o",
        arg(&out),
        &server.url(&format!("{path}?n=2")),
    ]));
    server
        .wait_for("curl waits", |s| s.waiting_receivers == 1)
        .await;
    let ws_receiving = waiting_ws_receiver(&server, &path, "ws=receive&n=2").await;
    let mut sender = WsSender::open(&ws_url(&server, &format!("{path}?ws=send&n=2"))).await;
    sender.send(&data).await;
    sender.close(1000).await;

    let received = finish(curl_receiver, "curl receiving").await;
    assert!(received.status.success(), "{}", describe(&received));
    let by_curl = std::fs::read(&out).expect("curl's output");
    let by_ws = within("the receiving socket", ws_receiving)
        .await
        .expect("receiver task");
    assert_eq!(
        by_ws.close(),
        Some((1000, "end".to_owned())),
        "{:?}",
        by_ws.end
    );
    assert_eq!(by_curl.len(), data.len(), "bytes curl received");
    assert_eq!(by_ws.data.len(), data.len(), "bytes the socket received");
    assert!(by_curl == data[..], "curl's output differs");
    assert!(by_ws.data == data[..], "the socket's bytes differ");
    let log = sender.log().await;
    assert!(
        log.texts
            .iter()
            .any(|l| l == "[INFO] Start sending to 2 receiver(s)!\n"),
        "{log:?}"
    );
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sender_to_curl_and_websocket_receivers() {
    two_receivers(2 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sender_to_curl_and_websocket_receivers_small() {
    two_receivers(SMALL).await;
}

/// Fan-out to a receiving socket works with a curl sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sender_to_curl_and_websocket_receivers() {
    let server = Server::start().await;
    let tmp = Tmp::new("n2-curl");
    let path = common::path("n2-curl");
    let data = Pattern::new(11).bytes(5 << 20);
    let file = tmp.join("in.bin");
    std::fs::write(&file, &data).expect("write the input file");
    let url = server.url(&format!("{path}?n=2"));

    let out = tmp.join("out.bin");
    let curl_receiver = spawn(curl(&["-o", arg(&out), &url]));
    server
        .wait_for("curl waits", |s| s.waiting_receivers == 1)
        .await;
    let ws_receiving = waiting_ws_receiver(&server, &path, "ws=receive&n=2").await;
    let sent = finish(spawn(curl(&["-T", arg(&file), &url])), "curl -T").await;
    assert!(sent.status.success(), "{}", describe(&sent));

    let received = finish(curl_receiver, "curl receiving").await;
    assert!(received.status.success(), "{}", describe(&received));
    let by_curl = std::fs::read(&out).expect("curl's output");
    let by_ws = within("the receiving socket", ws_receiving)
        .await
        .expect("receiver task");
    assert_eq!(
        by_ws.close(),
        Some((1000, "end".to_owned())),
        "{:?}",
        by_ws.end
    );
    assert_eq!(by_curl.len(), data.len(), "bytes curl received");
    assert_eq!(by_ws.data.len(), data.len(), "bytes the socket received");
    assert!(by_curl == data[..], "curl's output differs");
    assert!(by_ws.data == data[..], "the socket's bytes differ");
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// 6. Refusals before the upgrade
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_http_errors_before_the_upgrade() {
    let server = Server::start().await;
    let path = common::path("refused");

    for query in ["", "?n=2", "?ws=", "?ws=bogus"] {
        let (status, body) = refused(&ws_url(&server, &format!("{path}{query}"))).await;
        assert_eq!(status, 400, "{query}");
        if !body.is_empty() {
            assert_eq!(String::from_utf8_lossy(&body), MODE_REFUSAL, "{query}");
        }
        let (status, body) = refusal_body(&server, &format!("{path}{query}")).await;
        assert_eq!((status, body.as_str()), (400, MODE_REFUSAL), "{query}");
    }

    let (status, _) = refused(&ws_url(&server, "/help?ws=pair")).await;
    assert_eq!(status, 400, "/help?ws=pair");
    let (status, body) = refusal_body(&server, "/help?ws=pair").await;
    assert_eq!(status, 400);
    assert!(body.starts_with("[ERROR] "), "{body}");
    server.wait_empty().await;

    // A third pair peer, while two are joined.
    let url = ws_url(&server, &format!("{path}?ws=pair"));
    let mut a = connect(&url).await;
    server
        .wait_for("one pair peer waits", |s| s.pairs_waiting == 1)
        .await;
    let mut b = connect(&url).await;
    server
        .wait_for("the pair is joined", |s| s.pairs_joined == 1)
        .await;
    let (status, body) = refused(&url).await;
    assert_eq!(status, 400, "a third peer");
    if !body.is_empty() {
        assert!(body.starts_with(b"[ERROR] "), "{body:?}");
    }
    // The two joined are untouched.
    within("A's message", a.send(Message::text("still here")))
        .await
        .expect("A sends");
    match within("B's message", b.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "still here"),
        other => panic!("B: expected text, got {other:?}"),
    }
    within("A's close", a.send(close_frame(1000)))
        .await
        .expect("A closes");
    let b_end = read_all(b).await;
    assert_eq!(
        b_end.close(),
        Some((1000, "the other side left".to_owned()))
    );
    drop(a);
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// 7. Waiting sockets that leave free their place
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_sockets_that_leave_are_unregistered() {
    let server = Server::start().await;

    let receiver = connect(&ws_url(
        &server,
        &format!("{}?ws=receive", common::path("r")),
    ))
    .await;
    server
        .wait_for("the receiver waits", |s| s.waiting_receivers == 1)
        .await;
    drop(receiver);
    server.wait_empty().await;

    let peer = connect(&ws_url(&server, &format!("{}?ws=pair", common::path("p")))).await;
    server
        .wait_for("the pair peer waits", |s| s.pairs_waiting == 1)
        .await;
    drop(peer);
    server.wait_empty().await;

    let path = common::path("s");
    let mut sender = connect(&ws_url(&server, &format!("{path}?ws=send"))).await;
    server
        .wait_for("the sender waits", |s| s.waiting_senders == 1)
        .await;
    // It has sent a little, as a sender waiting for its receiver may.
    send_chunks(&mut sender, &Pattern::new(8).bytes(1000)).await;
    drop(sender);
    server.wait_empty().await;

    // The path is free again: a fresh transfer on it works.
    let receiving = waiting_ws_receiver(&server, &path, "ws=receive").await;
    let mut sender = WsSender::open(&ws_url(&server, &format!("{path}?ws=send"))).await;
    sender.send(&Bytes::from_static(b"again")).await;
    sender.close(1000).await;
    let got = within("the receiving socket", receiving)
        .await
        .expect("receiver task");
    assert_eq!(got.data, b"again");
    assert_eq!(got.close(), Some((1000, "end".to_owned())));
    let _ = sender.log().await;
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// 8. HTTP/2 extended CONNECT (RFC 8441)
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_between_http2_and_http1_sockets() {
    let server = Server::start().await;
    let path = common::path("h2-pair");

    let mut conn = Conn::open(&server, Proto::H2c).await;
    // One ordinary request first, so the server's SETTINGS (with
    // SETTINGS_ENABLE_CONNECT_PROTOCOL) have arrived before the CONNECT.
    let version = conn
        .request("GET", "/version")
        .body(common::empty())
        .expect("request");
    let response = within("GET /version", conn.send(version))
        .await
        .expect("GET /version");
    assert_eq!(response.status().as_u16(), 200);
    common::read_body(response).await.expect("version body");

    let mut connect_req = conn
        .request("CONNECT", &format!("{path}?ws=pair"))
        .header("sec-websocket-version", "13")
        .body(common::empty())
        .expect("request");
    connect_req
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let response = within("the extended CONNECT", conn.send(connect_req))
        .await
        .expect("extended CONNECT");
    assert_eq!(response.status().as_u16(), 200, "extended CONNECT");
    let upgraded = within("the h2 upgrade", hyper::upgrade::on(response))
        .await
        .expect("upgraded h2 stream");
    let mut h2 = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    server
        .wait_for("the h2 peer waits", |s| s.pairs_waiting == 1)
        .await;

    let mut h1 = connect(&ws_url(&server, &format!("{path}?ws=pair"))).await;
    server
        .wait_for("the pair is joined", |s| s.pairs_joined == 1)
        .await;

    within("h2 sends", h2.send(Message::text("from h2")))
        .await
        .expect("h2 sends");
    match within("h1 receives", h1.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "from h2"),
        other => panic!("h1: expected text, got {other:?}"),
    }
    let blob = Pattern::new(9).bytes(100_000);
    within("h1 sends", h1.send(Message::binary(blob.clone())))
        .await
        .expect("h1 sends");
    match within("h2 receives", h2.next()).await {
        Some(Ok(Message::Binary(data))) => assert!(data == blob, "binary over h2 differs"),
        other => panic!("h2: expected binary, got {other:?}"),
    }

    within("h1's close", h1.send(close_frame(1000)))
        .await
        .expect("h1 closes");
    let h2_end = read_all(h2).await;
    assert_eq!(
        h2_end.close(),
        Some((1000, "the other side left".to_owned())),
        "{:?}",
        h2_end.end
    );
    drop(h1);
    drop(conn);
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// 9. The closing handshake
// ---------------------------------------------------------------------

/// A sending socket that closes with 1000 gets the server's close in
/// reply, and its transfer completes. Log lines cannot follow the close
/// (RFC 6455: nothing is sent after a close is answered), so the log it
/// saw is a prefix of the whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sender_close_is_answered_and_its_transfer_completes() {
    let server = Server::start().await;
    let path = common::path("whole-log");
    let data = Pattern::new(10).bytes(1000);
    let mut sender = WsSender::open(&ws_url(&server, &format!("{path}?ws=send"))).await;
    server
        .wait_for("the socket waits as a sender", |s| s.waiting_senders == 1)
        .await;
    let receiver = connect(&ws_url(&server, &format!("{path}?ws=receive"))).await;
    let receiving = tokio::spawn(read_all(receiver));
    server
        .wait_for("the transfer runs", |s| s.transfers == 1)
        .await;
    sender.send(&data).await;
    sender.close(1000).await;
    let got = within("the receiving socket", receiving)
        .await
        .expect("receiver task");
    assert_eq!(got.close(), Some((1000, "end".to_owned())), "{:?}", got.end);
    assert!(got.data == data[..]);
    let log = sender.log().await;
    let whole = [
        "[INFO] Waiting for 1 receiver(s)...\n",
        "[INFO] A receiver was connected.\n",
        "[INFO] Start sending to 1 receiver(s)!\n",
        "[INFO] Sent successfully!\n",
        "[INFO] All receiver(s) was/were received successfully.\n",
    ];
    assert!(
        !log.texts.is_empty()
            && log.texts.len() <= whole.len()
            && log.texts.iter().zip(whole).all(|(a, b)| a == b),
        "{log:?}"
    );
    assert!(log.close.is_some(), "no close reply: {:?}", log.end);
    server.wait_empty().await;
    server.stop().await;
}

/// RFC 6455 5.5.1: a close is answered with a close, by a receiving
/// socket and by a pair peer alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_with_a_close() {
    let server = Server::start().await;

    // A receiver that gives up waiting.
    let path = common::path("close-reply-r");
    let mut receiver = connect(&ws_url(&server, &format!("{path}?ws=receive"))).await;
    server
        .wait_for("the receiver waits", |s| s.waiting_receivers == 1)
        .await;
    within("the receiver's close", receiver.send(close_frame(1000)))
        .await
        .expect("close");
    let end = read_all(receiver).await;
    assert_eq!(end.close(), Some((1000, String::new())), "{:?}", end.end);
    server.wait_empty().await;

    // A joined pair peer that leaves.
    let (mut a, b) = joined_pair(&server, "close-reply-p").await;
    let b_end = tokio::spawn(read_all(b));
    within("A's close", a.send(close_frame(1000)))
        .await
        .expect("close");
    let a_end = read_all(a).await;
    assert_eq!(
        a_end.close(),
        Some((1000, String::new())),
        "{:?}",
        a_end.end
    );
    let b_end = within("B's end", b_end).await.expect("B's task");
    assert_eq!(
        b_end.close(),
        Some((1000, "the other side left".to_owned()))
    );
    server.wait_empty().await;
    server.stop().await;
}
