//! A fan-out whose receivers are all first requests on their connections
//! shares the sender's upload with `tee(2)`
//! (src/transport/http1/upload/tee.rs): curl at both ends; n=2, 3 and 5
//! with HTTP/1.0 and 1.1 mixed; a slow receiver beside one that leaves; receivers leaving at every stage, two at once, one that
//! half-closes; the sender leaving at every stage; sender first with a
//! read-ahead; receivers that cannot take part (a second request on a
//! kept-alive connection, HTTP/2, WebSocket); tiny uploads; `Expect:
//! 100-continue`; many fan-outs at once; the server shutting down while a
//! tee runs. Raw sockets on 127.0.0.1, so every byte and every close is
//! seen. Invariants checked throughout: a receiver that got its whole
//! length got the sender's bytes; one cut short sees fewer bytes than its
//! length, then a close; and the path is free again afterwards.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Conn, Pattern, Proto, Server, LIMIT};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const ALL_RECEIVED: &str = "All receiver(s) was/were received successfully.";
const ONE_ABORTED: &str = "A receiver aborted.";

/// How a raw receiver behaves.
#[derive(Clone, Copy, Default)]
struct How {
    http10: bool,
    /// Closes its socket once it has this many body bytes.
    leave_after: Option<usize>,
    /// Before leaving, stops reading for this long (holding the others
    /// back: the slowest sets the pace).
    stall: Option<Duration>,
    /// Shuts its writing side once it has this many body bytes, and reads
    /// on.
    half_close_after: Option<usize>,
    /// Reads this many bytes at a time, with a pause after each.
    pace: Option<(usize, Duration)>,
    /// Its socket's receive buffer (set before connecting).
    rcvbuf: Option<u32>,
    /// Its GET is the second request on a kept-alive connection (the first
    /// is the health check), so hyper serves it.
    second: bool,
}

/// How a receiver's response ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// It had its whole length.
    Length,
    /// A clean close (FIN).
    Eof,
    /// A failure (a reset, most often).
    Error(std::io::ErrorKind),
    /// The receiver left (as asked).
    Left,
}

struct Got {
    head: String,
    body: Vec<u8>,
    length: Option<usize>,
    end: End,
}

impl Got {
    fn whole(&self) -> bool {
        self.length == Some(self.body.len())
    }

    /// A response cut short must look cut: fewer bytes than its length,
    /// and the connection closed (never a clean end of a short body).
    fn assert_cut(&self, what: &str, data: &[u8]) {
        assert!(
            !self.whole(),
            "{what}: whole ({} bytes) though cut",
            self.body.len()
        );
        assert!(
            self.length.is_some(),
            "{what}: no content-length: {}",
            self.head
        );
        assert!(
            matches!(self.end, End::Eof | End::Error(_) | End::Left),
            "{what}: {:?}",
            self.end
        );
        assert!(
            data.starts_with(&self.body),
            "{what}: bytes that were not sent"
        );
    }

    fn assert_whole(&self, what: &str, data: &[u8]) {
        assert!(
            self.head.starts_with("http/1.1 200") || self.head.starts_with("http/1.0 200"),
            "{what}: {}",
            self.head
        );
        assert!(
            self.whole(),
            "{what}: {} of {:?} bytes, {:?}",
            self.body.len(),
            self.length,
            self.end
        );
        assert!(self.body == data, "{what}: the bytes differ");
    }
}

/// Opens a connection, with a small receive buffer if asked.
async fn connect(addr: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    socket.connect(addr).await.expect("connect")
}

/// The length a response head declares, once the head is whole: (head
/// length, content-length).
fn parse_head(buf: &[u8]) -> Option<(usize, String, Option<usize>)> {
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
    let length = head.lines().find_map(|line| {
        line.strip_prefix("content-length: ")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    Some((at, head, length))
}

/// Makes a request the connection's first (a health check, read whole),
/// so that hyper serves what follows on it.
async fn health_check_first(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    stream
        .write_all(b"GET /-/healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    tokio::time::timeout(LIMIT, async {
        loop {
            if let Some((at, _, Some(length))) = parse_head(&buf) {
                if buf.len() >= at + length {
                    buf.drain(..at + length);
                    return;
                }
            }
            let n = stream.read_buf(&mut buf).await.expect("read");
            assert!(n > 0, "the first response closed the connection");
        }
    })
    .await
    .expect("the first response in time");
    assert!(buf.is_empty(), "nothing past the first response");
}

/// A raw HTTP/1 receiver of `path`; `progress` counts its body bytes.
async fn receive(addr: SocketAddr, path: String, how: How, progress: Arc<AtomicUsize>) -> Got {
    let mut stream = connect(addr, how.rcvbuf).await;
    let mut buf = Vec::new();
    if how.second {
        health_check_first(&mut stream).await;
    }
    let version = if how.http10 { "1.0" } else { "1.1" };
    stream
        .write_all(format!("GET {path} HTTP/{version}\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut chunk = vec![0u8; how.pace.map_or(256 << 10, |(n, _)| n)];
    let mut parsed: Option<(usize, String, Option<usize>)> = None;
    let mut half_closed = false;
    let end = tokio::time::timeout(LIMIT, async {
        loop {
            if parsed.is_none() {
                parsed = parse_head(&buf);
            }
            if let Some((at, _, length)) = &parsed {
                let got = buf.len() - at;
                progress.store(got, Ordering::SeqCst);
                if length.is_some_and(|length| got >= length) {
                    return End::Length;
                }
                if how.leave_after.is_some_and(|leave| got >= leave) {
                    if let Some(stall) = how.stall {
                        tokio::time::sleep(stall).await;
                    }
                    return End::Left;
                }
                if !half_closed && how.half_close_after.is_some_and(|at| got >= at) {
                    half_closed = true;
                    stream.shutdown().await.expect("shutdown(Write)");
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) => return End::Eof,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(error) => return End::Error(error.kind()),
            }
            if let Some((_, pause)) = how.pace {
                tokio::time::sleep(pause).await;
            }
        }
    })
    .await
    .expect("the response ends in time");
    let (at, head, length) = parsed.expect("a response head");
    Got {
        head,
        body: buf.split_off(at),
        length,
        end,
    }
}

struct Receiver {
    progress: Arc<AtomicUsize>,
    task: JoinHandle<Got>,
}

fn spawn_receiver(addr: SocketAddr, path: &str, how: How) -> Receiver {
    let progress = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(receive(addr, path.to_owned(), how, Arc::clone(&progress)));
    Receiver { progress, task }
}

impl Receiver {
    async fn got(self) -> Got {
        self.task.await.expect("receiver task")
    }
}

/// Waits (bounded by [`LIMIT`]) until `receiver` has had no new bytes for
/// 100 ms; returns how many it has.
async fn still(receiver: &Receiver, what: &str) -> usize {
    let mut last = 0;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = receiver.progress.load(Ordering::SeqCst);
        if now == last {
            return now;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        last = now;
    }
}

/// `n` receivers, spawned, waiting on the relay once this returns.
async fn waiting_receivers(server: &Server, path: &str, hows: &[How]) -> Vec<Receiver> {
    let before = server.relay.stats().waiting_receivers;
    let receivers: Vec<_> = hows
        .iter()
        .map(|&how| spawn_receiver(server.addr, path, how))
        .collect();
    let want = before + hows.len();
    server
        .wait_for("receivers", |s| s.waiting_receivers == want)
        .await;
    receivers
}

/// A sender's connection with its head written (and `first` body bytes
/// with it, in the same write).
async fn put(addr: SocketAddr, path: &str, length: usize, first: &[u8]) -> TcpStream {
    let stream = TcpStream::connect(addr).await.expect("connect");
    put_on(stream, path, length, first).await
}

/// [`put`] on a connection already open.
async fn put_on(mut stream: TcpStream, path: &str, length: usize, first: &[u8]) -> TcpStream {
    let mut head =
        format!("PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n").into_bytes();
    head.extend_from_slice(first);
    stream.write_all(&head).await.expect("write");
    stream
}

/// Sends all of `data` and reads the log to its end.
async fn send(addr: SocketAddr, path: &str, data: Bytes) -> String {
    let stream = put(addr, path, data.len(), &[]).await;
    finish(stream, data).await
}

/// Writes `rest` on a sender's connection (concurrently with reading its
/// log, as curl does) and returns the log.
async fn finish(stream: TcpStream, rest: Bytes) -> String {
    let (mut read, mut write) = stream.into_split();
    let upload = tokio::spawn(async move {
        let _ = write.write_all(&rest).await;
        write
    });
    let mut log = Vec::new();
    tokio::time::timeout(LIMIT, read.read_to_end(&mut log))
        .await
        .expect("log in time")
        .expect("log");
    drop(upload.await.expect("upload task"));
    String::from_utf8_lossy(&log).into_owned()
}

/// Waits until `pred` holds, polling (bounded by [`LIMIT`]).
async fn until(what: &str, pred: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !pred() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A receiver over h2c (it cannot share the upload's socket); its task
/// returns the whole body.
async fn h2_receiver(server: &Server, path: &str) -> JoinHandle<Bytes> {
    let mut conn = Conn::open(server, Proto::H2c).await;
    let request = conn
        .request("GET", path)
        .body(common::empty())
        .expect("request");
    let response = conn.send(request);
    tokio::spawn(async move {
        let response = response.await.expect("response");
        let body = response.into_body().collect().await.expect("body");
        drop(conn);
        body.to_bytes()
    })
}

fn hows(n: usize) -> Vec<How> {
    (0..n)
        .map(|i| How {
            http10: i % 2 == 1,
            ..How::default()
        })
        .collect()
}

/// n=2 and n=5, HTTP/1.0 and 1.1 mixed, receivers first: every receiver
/// gets every byte; the bytes count once as relayed, most spliced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_and_five_receivers_get_every_byte() {
    let server = Server::start().await;
    for n in [2usize, 5] {
        let data = Pattern::new(n as u64).bytes(6 << 20);
        let path = format!("{}?n={n}", common::path("tee-n"));
        let receivers = waiting_receivers(&server, &path, &hows(n)).await;
        let before = server.relay.totals();
        let log = send(server.addr, &path, data.clone()).await;
        assert!(log.contains(ALL_RECEIVED), "n={n}: {log}");
        for (i, receiver) in receivers.into_iter().enumerate() {
            receiver
                .got()
                .await
                .assert_whole(&format!("n={n}, receiver {i}"), &data);
        }
        let after = server.relay.totals();
        assert_eq!(after.bytes - before.bytes, data.len() as u64, "n={n}");
        assert!(
            after.spliced - before.spliced >= (3 << 20),
            "n={n}: {} spliced",
            after.spliced - before.spliced
        );
        server.wait_empty().await;
    }
    server.stop().await;
}

/// Uploads whose first bytes come in the same write as the head (so the
/// relay holds them before any receiver), many times over: the bytes are
/// counted once each, whoever (the core or the group) sends those first
/// bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_read_with_the_head_count_once() {
    let server = Server::start().await;
    let data = Pattern::new(3).bytes(300_000);
    for round in 0..30 {
        let path = format!("{}?n=3", common::path("tee-head-bytes"));
        let receivers = waiting_receivers(&server, &path, &hows(3)).await;
        let before = server.relay.totals();
        let stream = put(server.addr, &path, data.len(), &data[..200_000]).await;
        let log = finish(stream, data.slice(200_000..)).await;
        assert!(log.contains(ALL_RECEIVED), "round {round}: {log}");
        for (i, receiver) in receivers.into_iter().enumerate() {
            receiver
                .got()
                .await
                .assert_whole(&format!("round {round}, receiver {i}"), &data);
        }
        server.wait_empty().await;
        let after = server.relay.totals();
        assert_eq!(
            after.bytes - before.bytes,
            data.len() as u64,
            "round {round}: relayed bytes (spliced {})",
            after.spliced - before.spliced
        );
    }
    server.stop().await;
}

/// The sender first, with a read-ahead of 4 MiB: the relay holds a few
/// MiB (`after`, far more than the bytes read with the head) when the
/// receivers come; each gets those through the relay, then the rest
/// spliced. Every byte, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_first_with_a_large_read_ahead() {
    let config = tubes::relay::RelayConfig {
        read_ahead: 4 << 20,
        ..tubes::relay::RelayConfig::default()
    };
    let server = Server::start_with(config).await;
    let data = Pattern::new(5).bytes(12 << 20);
    let path = format!("{}?n=3", common::path("tee-ahead"));
    let mut stream = put(server.addr, &path, data.len(), &[]).await;
    stream.write_all(&data[..3 << 20]).await.expect("write");
    server
        .wait_for("the sender", |s| s.waiting_senders == 1)
        .await;
    let before = server.relay.totals();
    let receivers: Vec<_> = hows(3)
        .into_iter()
        .map(|how| spawn_receiver(server.addr, &path, how))
        .collect();
    let log = finish(stream, data.slice(3 << 20..)).await;
    assert!(log.contains(ALL_RECEIVED), "{log}");
    for (i, receiver) in receivers.into_iter().enumerate() {
        receiver
            .got()
            .await
            .assert_whole(&format!("receiver {i}"), &data);
    }
    let after = server.relay.totals();
    assert_eq!(after.bytes - before.bytes, data.len() as u64);
    assert!(
        after.spliced > before.spliced,
        "nothing spliced: the group never formed"
    );
    server.wait_empty().await;
    server.stop().await;
}

/// Uploads of 1 byte and of 0 bytes to three receivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_uploads() {
    let server = Server::start().await;
    for size in [1usize, 0, 2] {
        let data = Pattern::new(7).bytes(size);
        let path = format!("{}?n=3", common::path("tee-tiny"));
        let receivers = waiting_receivers(&server, &path, &hows(3)).await;
        let log = send(server.addr, &path, data.clone()).await;
        assert!(log.contains(ALL_RECEIVED), "{size} bytes: {log}");
        for receiver in receivers {
            receiver
                .got()
                .await
                .assert_whole(&format!("{size} bytes"), &data);
        }
        server.wait_empty().await;
    }
    server.stop().await;
}

/// An upload that waits for `100 Continue` before its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_expects_100_continue() {
    let server = Server::start().await;
    let data = Pattern::new(11).bytes(3 << 20);
    let path = format!("{}?n=3", common::path("tee-expect"));
    let receivers = waiting_receivers(&server, &path, &hows(3)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(
            format!(
                "PUT {path} HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                data.len()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let mut interim = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while !interim.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read_buf(&mut interim).await.expect("read");
            assert!(n > 0, "closed before 100 Continue");
        }
    })
    .await
    .expect("100 Continue in time");
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    let log = finish(stream, data.clone()).await;
    assert!(log.contains(ALL_RECEIVED), "{log}");
    for receiver in receivers {
        receiver.got().await.assert_whole("receiver", &data);
    }
    server.wait_empty().await;
    server.stop().await;
}

/// One receiver of three leaves at each stage: as soon as its head comes
/// (while the relay still hands it the bytes it held), at one byte, about
/// when the group takes over, mid-tee, one byte short of the end. The
/// other two get every byte; the leaver is cut; the path is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_leaving_at_every_stage() {
    let config = tubes::relay::RelayConfig {
        read_ahead: 1 << 20,
        ..tubes::relay::RelayConfig::default()
    };
    let server = Server::start_with(config).await;
    let size = 6 << 20;
    let data = Pattern::new(13).bytes(size);
    for (round, leave) in [0, 1, 65_536, 1 << 20, (1 << 20) + 1, 3 << 20, size - 1]
        .into_iter()
        .enumerate()
    {
        for sender_first in [false, true] {
            let what = format!("round {round} (leaves at {leave}), sender first {sender_first}");
            let path = format!("{}?n=3", common::path("tee-leave"));
            let mut hows = hows(3);
            hows[1].leave_after = Some(leave);
            hows[1].rcvbuf = Some(64 << 10);
            let (receivers, log) = if sender_first {
                let mut stream = put(server.addr, &path, size, &[]).await;
                stream.write_all(&data[..2 << 20]).await.expect("write");
                server
                    .wait_for("the sender", |s| s.waiting_senders == 1)
                    .await;
                let receivers: Vec<_> = hows
                    .iter()
                    .map(|&how| spawn_receiver(server.addr, &path, how))
                    .collect();
                (receivers, finish(stream, data.slice(2 << 20..)).await)
            } else {
                let receivers = waiting_receivers(&server, &path, &hows).await;
                (receivers, send(server.addr, &path, data.clone()).await)
            };
            // (Past some point the server has written every byte into the
            // leaver's socket before it leaves: it then counts as served.)
            if leave < 2 << 20 {
                assert!(log.contains(ONE_ABORTED), "{what}: {log}");
                assert!(!log.contains(ALL_RECEIVED), "{what}: {log}");
            }
            for (i, receiver) in receivers.into_iter().enumerate() {
                let got = receiver.got().await;
                if i == 1 && leave >= size - (256 << 10) && got.whole() {
                    // One read took it to the end before it could leave.
                    got.assert_whole(&format!("{what}: the leaver"), &data);
                } else if i == 1 {
                    got.assert_cut(&format!("{what}: the leaver"), &data);
                } else {
                    got.assert_whole(&format!("{what}: receiver {i}"), &data);
                }
            }
            server.wait_empty().await;
        }
    }
    server.stop().await;
}

/// Two receivers of five leave at the same byte, mid-tee; two of them on
/// HTTP/1.0. The other three get every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receivers_leaving_at_once() {
    let server = Server::start().await;
    let data = Pattern::new(17).bytes(8 << 20);
    let path = format!("{}?n=5", common::path("tee-two-leave"));
    let mut hows = hows(5);
    hows[0].leave_after = Some(2 << 20);
    hows[3].leave_after = Some(2 << 20);
    let receivers = waiting_receivers(&server, &path, &hows).await;
    let log = send(server.addr, &path, data.clone()).await;
    assert!(log.contains(ONE_ABORTED), "{log}");
    for (i, receiver) in receivers.into_iter().enumerate() {
        let got = receiver.got().await;
        if i == 0 || i == 3 {
            got.assert_cut(&format!("leaver {i}"), &data);
        } else {
            got.assert_whole(&format!("receiver {i}"), &data);
        }
    }
    server.wait_empty().await;
    server.stop().await;
}

/// Every receiver of three leaves right at its head, or at the same byte
/// mid-tee: the sender hears they all left, the path is freed, and the
/// sender's connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receiver_leaving_at_once() {
    let server = Server::start().await;
    let data = Pattern::new(19).bytes(8 << 20);
    for leave in [0usize, 1 << 20] {
        let path = format!("{}?n=3", common::path("tee-all-leave"));
        let hows: Vec<How> = hows(3)
            .into_iter()
            .map(|how| How {
                leave_after: Some(leave),
                ..how
            })
            .collect();
        let receivers = waiting_receivers(&server, &path, &hows).await;
        let log = send(server.addr, &path, data.clone()).await;
        assert!(
            log.contains("All receiver(s) was/were aborted halfway."),
            "leave at {leave}: {log}"
        );
        for receiver in receivers {
            receiver
                .got()
                .await
                .assert_cut(&format!("leave at {leave}"), &data);
        }
        server.wait_empty().await;
    }
    server.stop().await;
}

/// A receiver that half-closes mid-tee: it still reads. It either gets
/// every byte or is cut (it looks gone), never a short body that ends
/// cleanly; the others get every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_half_closes_mid_tee() {
    let server = Server::start().await;
    let data = Pattern::new(23).bytes(8 << 20);
    let path = format!("{}?n=3", common::path("tee-half"));
    let mut hows = hows(3);
    hows[2].half_close_after = Some(1 << 20);
    let receivers = waiting_receivers(&server, &path, &hows).await;
    let log = send(server.addr, &path, data.clone()).await;
    for (i, receiver) in receivers.into_iter().enumerate() {
        let got = receiver.got().await;
        if i == 2 && !got.whole() {
            got.assert_cut("the half-closed receiver", &data);
            assert!(log.contains(ONE_ABORTED), "{log}");
        } else {
            got.assert_whole(&format!("receiver {i}"), &data);
        }
    }
    server.wait_empty().await;
    server.stop().await;
}

/// The sender leaves at each stage: while waiting with part of its body
/// read ahead; mid-tee; one byte short; and right after its last byte
/// (which is a whole upload). Cut receivers see fewer bytes than the
/// length, then a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_leaving_at_every_stage() {
    let server = Server::start().await;
    let size = 6 << 20;
    let data = Pattern::new(29).bytes(size);
    // Before the transfer starts: nobody is hurt, the path is free.
    {
        let path = format!("{}?n=3", common::path("tee-sender-early"));
        let mut stream = put(server.addr, &path, size, &[]).await;
        stream.write_all(&data[..1000]).await.expect("write");
        server
            .wait_for("the sender", |s| s.waiting_senders == 1)
            .await;
        drop(stream);
        server.wait_empty().await;
    }
    for cut in [1usize, 100_000, 3 << 20, size - 1, size] {
        let path = format!("{}?n=3", common::path("tee-sender-cut"));
        let receivers = waiting_receivers(&server, &path, &hows(3)).await;
        let stream = put(server.addr, &path, size, &[]).await;
        let (_read, mut write) = stream.into_split();
        write.write_all(&data[..cut]).await.expect("write");
        if cut == size {
            // Closing with the log unread resets the connection, and a
            // reset drops what the sender's kernel still holds: the whole
            // upload must be in the server first.
            let client = write.local_addr().expect("address");
            until("the server reads the whole upload", || {
                all_read_by_server(server.addr, client)
            })
            .await;
        }
        // Gone at once, log unread (its socket closes, both ways).
        drop(write);
        drop(_read);
        for (i, receiver) in receivers.into_iter().enumerate() {
            let got = receiver.got().await;
            let what = format!("cut at {cut}, receiver {i}");
            if cut == size {
                got.assert_whole(&what, &data);
            } else {
                got.assert_cut(&what, &data);
                assert!(got.body.len() <= cut, "{what}: more than was sent");
            }
        }
        server.wait_empty().await;
    }
    server.stop().await;
}

/// A receiver whose GET is the second request on its connection (served
/// by hyper) cannot take part: no group forms, the relay carries every
/// byte to all three, nothing is spliced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_on_a_kept_alive_connection_falls_back() {
    let server = Server::start().await;
    let data = Pattern::new(31).bytes(4 << 20);
    for second in 0..3 {
        let path = format!("{}?n=3", common::path("tee-second"));
        let mut hows = hows(3);
        hows[second].second = true;
        let receivers = waiting_receivers(&server, &path, &hows).await;
        let before = server.relay.totals();
        let log = send(server.addr, &path, data.clone()).await;
        assert!(log.contains(ALL_RECEIVED), "{log}");
        for (i, receiver) in receivers.into_iter().enumerate() {
            receiver
                .got()
                .await
                .assert_whole(&format!("second is {second}: receiver {i}"), &data);
        }
        let after = server.relay.totals();
        assert_eq!(after.bytes - before.bytes, data.len() as u64);
        assert_eq!(after.spliced, before.spliced, "nothing spliced");
        server.wait_empty().await;
    }
    server.stop().await;
}

/// A WebSocket receiver (`?ws=receive`) beside two raw first requests:
/// no group, the relay carries the bytes; all three get them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_receiver_mixed_in() {
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start().await;
    let data = Pattern::new(37).bytes(3 << 20);
    let path = format!("{}?n=3", common::path("tee-ws"));
    let raw = waiting_receivers(&server, &path, &hows(2)).await;
    let url = server
        .url(&format!("{path}&ws=receive"))
        .replacen("http://", "ws://", 1);
    let (mut ws, response) = tokio::time::timeout(LIMIT, tokio_tungstenite::connect_async(&url))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(response.status().as_u16(), 101);
    let ws_task = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(LIMIT, ws.next())
                .await
                .expect("a message in time")
            {
                Some(Ok(Message::Binary(bytes))) => got.extend_from_slice(&bytes),
                Some(Ok(Message::Close(_))) | None => return got,
                Some(Ok(_)) => {}
                Some(Err(error)) => panic!("WebSocket receiver: {error}"),
            }
        }
    });
    server
        .wait_for("three receivers", |s| s.waiting_receivers == 3)
        .await;
    let before = server.relay.totals();
    let log = send(server.addr, &path, data.clone()).await;
    assert!(log.contains(ALL_RECEIVED), "{log}");
    for receiver in raw {
        receiver.got().await.assert_whole("raw receiver", &data);
    }
    assert!(
        ws_task.await.expect("ws task") == data,
        "the WebSocket receiver's bytes"
    );
    assert_eq!(server.relay.totals().spliced, before.spliced);
    server.wait_empty().await;
    server.stop().await;
}

/// An HTTP/2 receiver that leaves mid-transfer beside two raw first
/// requests: the relay carries the bytes; the raw ones get them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_receiver_that_leaves_beside_raw_ones() {
    let server = Server::start().await;
    let data = Pattern::new(41).bytes(6 << 20);
    let path = format!("{}?n=3", common::path("tee-h2-leave"));
    let raw = waiting_receivers(&server, &path, &hows(2)).await;
    let mut conn = Conn::open(&server, Proto::H2c).await;
    let request = conn
        .request("GET", &path)
        .body(common::empty())
        .expect("request");
    let response = conn.send(request);
    let h2 = tokio::spawn(async move {
        let response = response.await.expect("response");
        let mut body = response.into_body();
        let mut got = 0usize;
        while got < (1 << 20) {
            match body.frame().await {
                Some(Ok(frame)) => got += frame.into_data().map_or(0, |d| d.len()),
                _ => break,
            }
        }
        drop(body);
        drop(conn);
        got
    });
    server
        .wait_for("three receivers", |s| s.waiting_receivers == 3)
        .await;
    let log = send(server.addr, &path, data.clone()).await;
    assert!(log.contains(ONE_ABORTED), "{log}");
    for receiver in raw {
        receiver.got().await.assert_whole("raw receiver", &data);
    }
    assert!(h2.await.expect("h2 task") < data.len());
    server.wait_empty().await;
    server.stop().await;
}

/// Twenty fan-outs of three at once, mixed arrival orders, checked byte
/// for byte; the relayed bytes add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_fan_outs_at_once() {
    let server = Server::start().await;
    let before = server.relay.totals();
    let mut transfers = Vec::new();
    let mut total = 0u64;
    for t in 0..20u64 {
        let data = Pattern::new(100 + t).bytes((1 << 20) + (t as usize) * 7919);
        total += data.len() as u64;
        let path = format!("{}?n=3", common::path("tee-many"));
        let addr = server.addr;
        transfers.push(tokio::spawn(async move {
            let receivers: Vec<_> = if t % 2 == 0 {
                let receivers: Vec<_> = hows(3)
                    .into_iter()
                    .map(|how| spawn_receiver(addr, &path, how))
                    .collect();
                // No wait: sender and receivers race.
                let log = send(addr, &path, data.clone()).await;
                assert!(log.contains(ALL_RECEIVED), "transfer {t}: {log}");
                receivers
            } else {
                let sender = {
                    let (path, data) = (path.clone(), data.clone());
                    tokio::spawn(async move { send(addr, &path, data).await })
                };
                let receivers: Vec<_> = hows(3)
                    .into_iter()
                    .map(|how| spawn_receiver(addr, &path, how))
                    .collect();
                let log = sender.await.expect("sender");
                assert!(log.contains(ALL_RECEIVED), "transfer {t}: {log}");
                receivers
            };
            for (i, receiver) in receivers.into_iter().enumerate() {
                receiver
                    .got()
                    .await
                    .assert_whole(&format!("transfer {t}, receiver {i}"), &data);
            }
        }));
    }
    for transfer in transfers {
        transfer.await.expect("transfer");
    }
    server.wait_empty().await;
    let after = server.relay.totals();
    assert_eq!(after.bytes - before.bytes, total);
    assert!(after.spliced > before.spliced, "nothing spliced");
    server.stop().await;
}

/// A TCP socket's send and receive queues (bytes not acknowledged, bytes
/// not read by its owner), from /proc/net/tcp.
fn queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => String::new(),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()) {
            let (tx, rx) = fields.get(4)?.split_once(':')?;
            Some((
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            ))
        } else {
            None
        }
    })
}

/// Whether the server has read every byte its client `client` sent (none
/// left in flight, none unread).
fn all_read_by_server(server: SocketAddr, client: SocketAddr) -> bool {
    queues(server, client).is_some_and(|(_, unread)| unread == 0)
        && queues(client, server).is_some_and(|(unsent, _)| unsent == 0)
}

/// A server whose shutdown the test triggers, with a grace period.
struct Draining {
    addr: SocketAddr,
    relay: tubes::relay::Relay,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: JoinHandle<std::io::Result<()>>,
}

async fn draining(grace: Duration, read_ahead: usize) -> Draining {
    use tubes::relay::{Relay, RelayConfig};
    use tubes::server::{self, ServeConfig};
    common::show_logs();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let relay = Relay::new(RelayConfig {
        read_ahead,
        ..RelayConfig::default()
    });
    let config = ServeConfig {
        grace,
        ..ServeConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::serve(listener, relay.clone(), config, async {
        let _ = stopped.await;
    }));
    Draining {
        addr,
        relay,
        stop,
        serving,
    }
}

impl Draining {
    async fn wait_until(&self, what: &str, pred: impl Fn(&tubes::relay::Stats) -> bool) {
        let (stats, ok) = self.relay.wait_until(LIMIT, pred).await;
        assert!(ok, "never '{what}': {stats:?}");
    }

    async fn shut_down(self) -> tubes::relay::Relay {
        let _ = self.stop.send(());
        let served = tokio::time::timeout(LIMIT, self.serving)
            .await
            .expect("the server stops in time")
            .expect("server task");
        assert!(served.is_ok(), "{served:?}");
        self.relay
    }
}

/// The server shuts down (short grace) while a tee runs with a slow
/// receiver: every receiver sees a cut, never a short body that ends
/// cleanly, and once the sender is gone nothing stays registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_a_tee_runs() {
    let server = draining(Duration::from_millis(200), 64 << 10).await;
    let size = 64 << 20;
    let data = Pattern::new(43).bytes(size);
    let path = format!("{}?n=3", common::path("tee-shutdown"));
    let mut hows = hows(3);
    hows[1].pace = Some((16 << 10, Duration::from_millis(5)));
    let receivers: Vec<_> = hows
        .iter()
        .map(|&how| spawn_receiver(server.addr, &path, how))
        .collect();
    server
        .wait_until("receivers", |s| s.waiting_receivers == 3)
        .await;
    let stream = put(server.addr, &path, size, &[]).await;
    let (sender_read, mut write) = stream.into_split();
    let upload = {
        let data = data.clone();
        tokio::spawn(async move {
            let _ = write.write_all(&data).await;
            write
        })
    };
    // Mid-tee: every receiver has some, none all.
    until("every receiver has 2 MiB", || {
        receivers
            .iter()
            .all(|r| r.progress.load(Ordering::SeqCst) >= 2 << 20)
    })
    .await;
    let relay = server.shut_down().await;
    for (i, receiver) in receivers.into_iter().enumerate() {
        receiver
            .got()
            .await
            .assert_cut(&format!("receiver {i}"), &data);
    }
    upload.abort();
    drop(sender_read);
    let (stats, empty) = relay
        .wait_until(LIMIT, |s| *s == tubes::relay::Stats::default())
        .await;
    assert!(empty, "left registered: {stats:?}");
}

/// The server shuts down while two receivers of three have joined the
/// group and the third, slow, still takes the bytes the relay held
/// (sender first, 4 MiB read ahead): the two joined ones must see their
/// connection close (a cut), as the slow one does; and once the sender
/// leaves, nothing stays registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_a_member_still_takes_the_held_bytes() {
    let server = draining(Duration::from_millis(100), 16 << 20).await;
    let held = 4 << 20;
    let size = held + (4 << 20);
    let data = Pattern::new(47).bytes(size);
    let path = format!("{}?n=3", common::path("tee-shutdown-joined"));
    let mut stream = put(server.addr, &path, size, &[]).await;
    stream.write_all(&data[..held]).await.expect("write");
    server
        .wait_until("the sender", |s| s.waiting_senders == 1)
        .await;
    // The relay holds them all (read ahead) before the receivers come.
    let client = stream.local_addr().expect("address");
    until("the relay reads what was sent", || {
        all_read_by_server(server.addr, client)
    })
    .await;
    let mut hows = hows(3);
    hows[1].pace = Some((16 << 10, Duration::from_millis(50)));
    hows[1].rcvbuf = Some(16 << 10);
    let receivers: Vec<_> = hows
        .iter()
        .map(|&how| spawn_receiver(server.addr, &path, how))
        .collect();
    // The fast two stop once they have what the relay held (they then
    // wait for the slow one to join), while the slow one goes on.
    let fast = |r: &Receiver| r.progress.load(Ordering::SeqCst);
    let mut last = (0, 0);
    let mut still = 0;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = (fast(&receivers[0]), fast(&receivers[2]));
        let slow = fast(&receivers[1]);
        if now == last && now.0 == now.1 && now.0 > slow && now.0 > 0 {
            still += 1;
            if still >= 20 {
                break;
            }
        } else {
            still = 0;
        }
        last = now;
    }
    let slow = fast(&receivers[1]);
    assert!(slow < held, "the slow one already has everything held");
    let relay = server.shut_down().await;
    for (i, receiver) in receivers.into_iter().enumerate() {
        receiver
            .got()
            .await
            .assert_cut(&format!("receiver {i}"), &data);
    }
    drop(stream);
    let (stats, empty) = relay
        .wait_until(LIMIT, |s| *s == tubes::relay::Stats::default())
        .await;
    assert!(empty, "left registered: {stats:?}");
}

/// The process's open descriptors.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Fan-outs that end every way (whole, a receiver leaving, every receiver
/// leaving, the sender cut) leave no descriptor behind: no pipe, no
/// duplicate of a receiver's socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_descriptor_left_behind() {
    let server = Server::start().await;
    let data = Pattern::new(53).bytes(4 << 20);
    // One transfer first, so that whatever is opened once (the runtime's
    // own descriptors) is in the baseline.
    let path = format!("{}?n=3", common::path("tee-fds"));
    let receivers = waiting_receivers(&server, &path, &hows(3)).await;
    send(server.addr, &path, data.clone()).await;
    for receiver in receivers {
        receiver.got().await;
    }
    server.wait_empty().await;
    let baseline = open_fds();
    for round in 0..5 {
        let path = format!("{}?n=3", common::path("tee-fds"));
        // Round 4: an HTTP/2 receiver mixed in (the relay carries the
        // bytes; the offer rides in its response).
        let mut hows = hows(if round == 4 { 2 } else { 3 });
        match round {
            1 => hows[0].leave_after = Some(1 << 20),
            2 => {
                for how in &mut hows {
                    how.leave_after = Some(1 << 20);
                }
            }
            _ => {}
        }
        let receivers = waiting_receivers(&server, &path, &hows).await;
        let h2 = if round == 4 {
            let mut conn = Conn::open(&server, Proto::H2c).await;
            let request = conn
                .request("GET", &path)
                .body(common::empty())
                .expect("request");
            let response = conn.send(request);
            server
                .wait_for("three receivers", |s| s.waiting_receivers == 3)
                .await;
            Some(tokio::spawn(async move {
                let body = response.await.expect("response").into_body();
                let got = body.collect().await.map(|b| b.to_bytes().len());
                drop(conn);
                got
            }))
        } else {
            None
        };
        if round == 3 {
            let stream = put(server.addr, &path, data.len(), &[]).await;
            let (read, mut write) = stream.into_split();
            write.write_all(&data[..2 << 20]).await.expect("write");
            drop((read, write));
        } else {
            send(server.addr, &path, data.clone()).await;
        }
        for receiver in receivers {
            receiver.got().await;
        }
        if let Some(h2) = h2 {
            let got = h2.await.expect("h2 receiver");
            assert!(got.is_ok_and(|n| n == data.len()), "the h2 receiver");
        }
        server.wait_empty().await;
    }
    // Connections close shortly after their clients do.
    until("descriptors back to the baseline", || {
        open_fds() <= baseline
    })
    .await;
    server.stop().await;
}

/// The sender pauses mid-tee (every pipe empty, the driver waits for the
/// sender), then every receiver leaves, then the sender sends on: the
/// sender hears they all left, and the path is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receiver_leaving_while_the_sender_pauses() {
    let server = Server::start().await;
    let size = 8 << 20;
    let data = Pattern::new(59).bytes(size);
    let path = format!("{}?n=3", common::path("tee-pause"));
    let mut hows = hows(3);
    for how in &mut hows {
        how.leave_after = Some(1 << 20);
    }
    let receivers = waiting_receivers(&server, &path, &hows).await;
    let mut stream = put(server.addr, &path, size, &[]).await;
    stream.write_all(&data[..1 << 20]).await.expect("write");
    for receiver in receivers {
        receiver.got().await.assert_cut("receiver", &data);
    }
    let log = finish(stream, data.slice(1 << 20..)).await;
    assert!(
        log.contains("All receiver(s) was/were aborted halfway."),
        "{log}"
    );
    server.wait_empty().await;
    server.stop().await;
}

/// The sender pauses mid-tee, then leaves: every receiver is cut, with
/// only bytes that were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_leaving_while_paused_mid_tee() {
    let server = Server::start().await;
    let size = 8 << 20;
    let data = Pattern::new(61).bytes(size);
    let path = format!("{}?n=3", common::path("tee-pause-cut"));
    let receivers = waiting_receivers(&server, &path, &hows(3)).await;
    let mut stream = put(server.addr, &path, size, &[]).await;
    stream.write_all(&data[..3 << 20]).await.expect("write");
    until("every receiver has what was sent", || {
        receivers
            .iter()
            .all(|r| r.progress.load(Ordering::SeqCst) == 3 << 20)
    })
    .await;
    drop(stream);
    for (i, receiver) in receivers.into_iter().enumerate() {
        let got = receiver.got().await;
        got.assert_cut(&format!("receiver {i}"), &data);
        assert_eq!(got.body.len(), 3 << 20, "receiver {i}");
    }
    server.wait_empty().await;
    server.stop().await;
}

/// Receivers on HTTP/1.1 keep their connection after a teed response:
/// one sends its next request only after the body, one pipelines it with
/// its GET (it waits, unread, through the tee). Both get the teed body
/// whole, then an answer to the next request on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_goes_on_after_the_tee() {
    let server = Server::start().await;
    let data = Pattern::new(67).bytes(5 << 20);
    let path = format!("{}?n=3", common::path("tee-keep"));
    let next = "GET /-/healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut streams = Vec::new();
    for pipelined in [false, true] {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        if pipelined {
            request.push_str(next);
        }
        stream.write_all(request.as_bytes()).await.expect("write");
        streams.push((pipelined, stream));
    }
    let third = spawn_receiver(server.addr, &path, How::default());
    server
        .wait_for("receivers", |s| s.waiting_receivers == 3)
        .await;
    let before = server.relay.totals();
    let sender = {
        let (addr, path, data) = (server.addr, path.clone(), data.clone());
        tokio::spawn(async move { send(addr, &path, data).await })
    };
    let checks: Vec<_> = streams
        .into_iter()
        .map(|(pipelined, mut stream)| {
            let data = data.clone();
            tokio::spawn(async move {
                let what = format!("pipelined {pipelined}");
                let mut buf = Vec::new();
                let (at, head, length) = tokio::time::timeout(LIMIT, async {
                    loop {
                        if let Some((at, head, Some(length))) = parse_head(&buf) {
                            if buf.len() >= at + length {
                                return (at, head, length);
                            }
                        }
                        let n = stream.read_buf(&mut buf).await.expect("read");
                        assert!(n > 0, "{what}: closed after {} bytes", buf.len());
                    }
                })
                .await
                .expect("the body in time");
                assert!(head.starts_with("http/1.1 200"), "{what}: {head}");
                assert!(!head.contains("connection: close"), "{what}: {head}");
                assert!(buf[at..at + length] == data[..], "{what}: the bytes differ");
                let mut rest = buf.split_off(at + length);
                if !pipelined {
                    stream.write_all(next.as_bytes()).await.expect("write");
                }
                tokio::time::timeout(LIMIT, async {
                    while parse_head(&rest).is_none() {
                        let n = stream.read_buf(&mut rest).await.expect("read");
                        assert!(n > 0, "{what}: closed before the next answer");
                    }
                })
                .await
                .expect("the next answer in time");
                let (_, head, _) = parse_head(&rest).expect("head");
                assert!(head.starts_with("http/1.1 200"), "{what}: {head}");
            })
        })
        .collect();
    for check in checks {
        check.await.expect("a kept-alive receiver");
    }
    third.got().await.assert_whole("third", &data);
    let log = sender.await.expect("sender");
    assert!(log.contains(ALL_RECEIVED), "{log}");
    assert!(server.relay.totals().spliced > before.spliced, "not teed");
    server.wait_empty().await;
    server.stop().await;
}

/// A receiver stops reading mid-tee (the others wait: the slowest sets
/// the pace), then leaves: the others then go on and get every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_receiver_that_leaves_releases_the_others() {
    let server = Server::start().await;
    let data = Pattern::new(71).bytes(24 << 20);
    let path = format!("{}?n=3", common::path("tee-stall"));
    let mut hows = hows(3);
    hows[2].leave_after = Some(1 << 20);
    hows[2].stall = Some(Duration::from_millis(500));
    hows[2].rcvbuf = Some(16 << 10);
    let receivers = waiting_receivers(&server, &path, &hows).await;
    let log = send(server.addr, &path, data.clone()).await;
    assert!(log.contains(ONE_ABORTED), "{log}");
    for (i, receiver) in receivers.into_iter().enumerate() {
        let got = receiver.got().await;
        if i == 2 {
            got.assert_cut("the stalled one", &data);
        } else {
            got.assert_whole(&format!("receiver {i}"), &data);
        }
    }
    server.wait_empty().await;
    server.stop().await;
}

/// An HTTP/1.0 sender (its log comes whole at the end) to a fan-out of
/// three mixed receivers, and a POST: every byte to every receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_sender_and_a_post() {
    let server = Server::start().await;
    let data = Pattern::new(73).bytes(4 << 20);
    for (version, method) in [("1.0", "PUT"), ("1.1", "POST")] {
        let path = format!("{}?n=3", common::path("tee-http10-sender"));
        let receivers = waiting_receivers(&server, &path, &hows(3)).await;
        let before = server.relay.totals();
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(
                format!(
                    "{method} {path} HTTP/{version}\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    data.len()
                )
                .as_bytes(),
            )
            .await
            .expect("write");
        let log = finish(stream, data.clone()).await;
        assert!(log.contains(ALL_RECEIVED), "{version} {method}: {log}");
        for receiver in receivers {
            receiver
                .got()
                .await
                .assert_whole(&format!("{version} {method}"), &data);
        }
        assert!(server.relay.totals().spliced > before.spliced, "not teed");
        server.wait_empty().await;
    }
    server.stop().await;
}

/// The server shuts down with a long grace while a tee runs: the tee
/// finishes within the grace, every receiver gets every byte, the sender
/// hears so, and the server then stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_grace_lets_a_tee_finish() {
    let server = draining(Duration::from_secs(15), 64 << 10).await;
    let size = 16 << 20;
    let data = Pattern::new(79).bytes(size);
    let path = format!("{}?n=3", common::path("tee-grace"));
    let mut hows = hows(3);
    hows[0].pace = Some((64 << 10, Duration::from_millis(2)));
    let receivers: Vec<_> = hows
        .iter()
        .map(|&how| spawn_receiver(server.addr, &path, how))
        .collect();
    server
        .wait_until("receivers", |s| s.waiting_receivers == 3)
        .await;
    let sender = {
        let (addr, path, data) = (server.addr, path.clone(), data.clone());
        tokio::spawn(async move { send(addr, &path, data).await })
    };
    until("every receiver has 1 MiB", || {
        receivers
            .iter()
            .all(|r| r.progress.load(Ordering::SeqCst) >= 1 << 20)
    })
    .await;
    let stopped = tokio::spawn(server.shut_down());
    for (i, receiver) in receivers.into_iter().enumerate() {
        receiver
            .got()
            .await
            .assert_whole(&format!("receiver {i}"), &data);
    }
    let log = sender.await.expect("sender");
    assert!(log.contains(ALL_RECEIVED), "{log}");
    let relay = stopped.await.expect("shutdown");
    assert_eq!(relay.stats(), tubes::relay::Stats::default());
}

/// Twelve fan-outs at once, each with its own fault (a receiver leaving
/// early or late, two leaving, the sender cut early or late, none), both
/// arrival orders: the invariants hold for each, and the relay ends
/// empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fan_outs_with_faults() {
    let server = Server::start().await;
    let size = 3 << 20;
    let mut transfers = Vec::new();
    for t in 0..12usize {
        let data = Pattern::new(200 + t as u64).bytes(size);
        let path = format!("{}?n=3", common::path("tee-chaos"));
        let addr = server.addr;
        let mut hows = hows(3);
        let mut cut = None;
        match t % 6 {
            0 => hows[0].leave_after = Some(0),
            1 => hows[1].leave_after = Some(size / 2),
            2 => {
                hows[0].leave_after = Some(100_000);
                hows[2].leave_after = Some(100_000);
            }
            3 => cut = Some(1000),
            4 => cut = Some(size - 1000),
            _ => {}
        }
        let sender_first = t % 2 == 1;
        transfers.push(tokio::spawn(async move {
            let start = |hows: &[How]| -> Vec<Receiver> {
                hows.iter()
                    .map(|&how| spawn_receiver(addr, &path, how))
                    .collect()
            };
            let receivers_early = if sender_first {
                Vec::new()
            } else {
                start(&hows)
            };
            let stream = put(addr, &path, size, &[]).await;
            let (log, receivers) = match cut {
                Some(cut) => {
                    let (read, mut write) = stream.into_split();
                    let receivers = if sender_first {
                        start(&hows)
                    } else {
                        receivers_early
                    };
                    let _ = write.write_all(&data[..cut]).await;
                    // The bytes sent must reach the receivers first (a
                    // close with unread bytes would reset the connection):
                    // wait until a receiver has them all, or is cut.
                    let deadline = tokio::time::Instant::now() + LIMIT;
                    while receivers
                        .iter()
                        .all(|r| r.progress.load(Ordering::SeqCst) < cut && !r.task.is_finished())
                    {
                        assert!(tokio::time::Instant::now() < deadline, "{t}: stuck");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    drop((read, write));
                    (None, receivers)
                }
                None => {
                    let receivers = if sender_first {
                        start(&hows)
                    } else {
                        receivers_early
                    };
                    (Some(finish(stream, data.clone()).await), receivers)
                }
            };
            for (i, receiver) in receivers.into_iter().enumerate() {
                let got = receiver.got().await;
                let what = format!("transfer {t}, receiver {i}");
                if cut.is_some() || hows[i].leave_after.is_some() {
                    got.assert_cut(&what, &data);
                } else {
                    got.assert_whole(&what, &data);
                }
            }
            if let Some(log) = log {
                // (A receiver that left may still count as served: the
                // server may have written every byte into its socket.)
                if hows.iter().all(|how| how.leave_after.is_none()) {
                    assert!(log.contains(ALL_RECEIVED), "transfer {t}: {log}");
                }
            }
        }));
    }
    for transfer in transfers {
        transfer.await.expect("transfer");
    }
    server.wait_empty().await;
    server.stop().await;
}

/// The sender closes right after its last byte (its log unread) while a
/// slow receiver is still far behind: every receiver gets every byte and
/// a clean end, since the whole upload reached the relay. Teed (every
/// receiver a first request), the bytes are all in the receivers' sockets
/// by then. With an HTTP/2 receiver mixed in, the relay's queues still
/// hold bytes for the slow one when the sender goes; they are delivered.
/// When hyper read the upload (`second`: a kept-alive connection), the
/// reset that the close sends (the log unread) is a connection error to
/// hyper, which drops the bytes it had read ahead: then every receiver
/// still behind must be visibly cut (spec §8), never short and clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_closing_after_its_last_byte_with_a_slow_receiver() {
    let server = Server::start().await;
    let size = 8 << 20;
    let data = Pattern::new(83).bytes(size);
    for (h2, second) in [(false, false), (true, false), (true, true)] {
        let path = format!("{}?n=3", common::path("tee-close-at-end"));
        let mut hows = hows(if h2 { 2 } else { 3 });
        hows[0].pace = Some((64 << 10, Duration::from_millis(5)));
        hows[0].rcvbuf = Some(64 << 10);
        let raw = waiting_receivers(&server, &path, &hows).await;
        let h2_task = if h2 {
            let mut conn = Conn::open(&server, Proto::H2c).await;
            let request = conn
                .request("GET", &path)
                .body(common::empty())
                .expect("request");
            let response = conn.send(request);
            server
                .wait_for("three receivers", |s| s.waiting_receivers == 3)
                .await;
            Some(tokio::spawn(async move {
                let response = response.await.expect("response");
                let body = response.into_body().collect().await;
                drop(conn);
                body.map(|b| b.to_bytes())
            }))
        } else {
            None
        };
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        if second {
            health_check_first(&mut stream).await;
        }
        let mut stream = put_on(stream, &path, size, &[]).await;
        stream.write_all(&data).await.expect("write");
        // Gone once the server has read every byte (the log unread: closing
        // with unread bytes resets the connection, a reset is fine here).
        let client = stream.local_addr().expect("address");
        until("the server reads the upload", || {
            all_read_by_server(server.addr, client)
        })
        .await;
        drop(stream);
        let what = format!("h2 {h2}, second {second}");
        for (i, receiver) in raw.into_iter().enumerate() {
            let got = receiver.got().await;
            let what = format!("{what}: receiver {i}");
            if second && !got.whole() {
                got.assert_cut(&what, &data);
            } else {
                got.assert_whole(&what, &data);
            }
        }
        if let Some(task) = h2_task {
            match task.await.expect("h2 task") {
                Ok(body) => assert!(body == data, "{what}: the h2 receiver ended cleanly, short"),
                Err(error) => assert!(second, "{what}: the h2 receiver was cut: {error}"),
            }
        }
        server.wait_empty().await;
    }
    server.stop().await;
}

/// Beside an HTTP/2 receiver (no group can form), a raw receiver that
/// leaves gives up its ask (the group is spoiled for good): the relay
/// carries the bytes and the others get them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_receiver_that_leaves_beside_an_h2_one() {
    let server = Server::start().await;
    let data = Pattern::new(89).bytes(6 << 20);
    let path = format!("{}?n=3", common::path("tee-raw-leave-h2"));
    let mut hows = hows(2);
    hows[0].leave_after = Some(0);
    let raw = waiting_receivers(&server, &path, &hows).await;
    let h2 = h2_receiver(&server, &path).await;
    server
        .wait_for("three receivers", |s| s.waiting_receivers == 3)
        .await;
    let before = server.relay.totals();
    let log = send(server.addr, &path, data.clone()).await;
    assert!(log.contains(ONE_ABORTED), "{log}");
    let mut raw = raw.into_iter();
    raw.next()
        .expect("leaver")
        .got()
        .await
        .assert_cut("the leaver", &data);
    raw.next()
        .expect("stayer")
        .got()
        .await
        .assert_whole("the raw one that stays", &data);
    assert!(h2.await.expect("h2 receiver") == data);
    assert_eq!(server.relay.totals().spliced, before.spliced);
    server.wait_empty().await;
    server.stop().await;
}

/// CPU time the process has used (user and system), in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Asserts the process stays (nearly) idle for `span`: nothing spins
/// while the fan-out waits.
async fn assert_idle(what: &str, span: Duration) {
    let ticks = cpu_ticks();
    tokio::time::sleep(span).await;
    let used = cpu_ticks() - ticks;
    // 100 ticks a second; allow a fifth of one core.
    let allowed = span.as_millis() as u64 / 10 / 5;
    assert!(
        used <= allowed,
        "{what}: {used} ticks of CPU in {span:?} (a busy loop?)"
    );
}

/// Waiting costs nothing: while a tee waits for a receiver that stopped
/// reading, for a sender that paused, and while receivers that joined
/// wait for one that still takes the bytes the relay held, the process
/// stays idle (no future that is ready again and again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_costs_no_cpu() {
    let server = Server::start_with(tubes::relay::RelayConfig {
        read_ahead: 4 << 20,
        ..tubes::relay::RelayConfig::default()
    })
    .await;
    let size = 16 << 20;
    let data = Pattern::new(97).bytes(size);

    // A receiver that stops reading (mid-tee) for a while.
    let path = format!("{}?n=3", common::path("tee-idle-stall"));
    let release = Arc::new(tokio::sync::Notify::new());
    let mut stalled = connect(server.addr, Some(16 << 10)).await;
    stalled
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    server
        .wait_for("the first receiver", |s| s.waiting_receivers == 1)
        .await;
    let others = waiting_receivers(&server, &path, &hows(2)).await;
    server
        .wait_for("three receivers", |s| s.waiting_receivers == 3)
        .await;
    let sender = {
        let (addr, path, data) = (server.addr, path.clone(), data.clone());
        tokio::spawn(async move { send(addr, &path, data).await })
    };
    until("the others have 1 MiB", || {
        others
            .iter()
            .all(|r| r.progress.load(Ordering::SeqCst) >= 1 << 20)
    })
    .await;
    // Stalled: the others stop moving too (the slowest sets the pace).
    still(&others[0], "never stalled").await;
    assert_idle(
        "a tee waiting for a stalled receiver",
        Duration::from_secs(1),
    )
    .await;
    let reader = {
        let release = Arc::clone(&release);
        tokio::spawn(async move {
            release.notified().await;
            let mut all = Vec::new();
            let _ = tokio::time::timeout(LIMIT, stalled.read_to_end(&mut all)).await;
            all
        })
    };
    release.notify_one();
    assert!(sender.await.expect("sender").contains(ALL_RECEIVED));
    for receiver in others {
        receiver.got().await.assert_whole("another", &data);
    }
    let all = reader.await.expect("reader");
    assert!(all.ends_with(&data), "the stalled receiver's bytes");
    server.wait_empty().await;

    // A sender that pauses mid-tee.
    let path = format!("{}?n=3", common::path("tee-idle-pause"));
    let receivers = waiting_receivers(&server, &path, &hows(3)).await;
    let mut stream = put(server.addr, &path, size, &[]).await;
    stream.write_all(&data[..2 << 20]).await.expect("write");
    until("every receiver has what was sent", || {
        receivers
            .iter()
            .all(|r| r.progress.load(Ordering::SeqCst) == 2 << 20)
    })
    .await;
    assert_idle("a tee waiting for a paused sender", Duration::from_secs(1)).await;
    let log = finish(stream, data.slice(2 << 20..)).await;
    assert!(log.contains(ALL_RECEIVED), "{log}");
    for receiver in receivers {
        receiver.got().await.assert_whole("after a pause", &data);
    }
    server.wait_empty().await;

    // Sender first (4 MiB held): two receivers join at once, the third
    // has not read its bytes yet.
    let path = format!("{}?n=3", common::path("tee-idle-join"));
    let mut stream = put(server.addr, &path, size, &[]).await;
    stream.write_all(&data[..4 << 20]).await.expect("write");
    server
        .wait_for("the sender", |s| s.waiting_senders == 1)
        .await;
    let client = stream.local_addr().expect("address");
    until("the relay reads what was sent", || {
        all_read_by_server(server.addr, client)
    })
    .await;
    let mut late = connect(server.addr, Some(16 << 10)).await;
    late.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let joined = hows(2)
        .into_iter()
        .map(|how| spawn_receiver(server.addr, &path, how))
        .collect::<Vec<_>>();
    // The joined ones take what the relay held as far as the late one's
    // socket buffers let the relay go on (how far depends on the kernel's
    // buffer tuning), then wait for it.
    until("the joined ones have some of what the relay held", || {
        joined.iter().all(|r| r.progress.load(Ordering::SeqCst) > 0)
    })
    .await;
    let last = still(&joined[0], "never waited").await;
    assert!(
        last <= 4 << 20,
        "the joined ones got {last} bytes before the late one took any"
    );
    assert_idle(
        "receivers waiting for one that still takes the held bytes",
        Duration::from_secs(1),
    )
    .await;
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        let _ = tokio::time::timeout(LIMIT, late.read_to_end(&mut all)).await;
        all
    });
    let log = finish(stream, data.slice(4 << 20..)).await;
    assert!(log.contains(ALL_RECEIVED), "{log}");
    for receiver in joined {
        receiver.got().await.assert_whole("joined", &data);
    }
    assert!(reader.await.expect("reader").ends_with(&data));
    server.wait_empty().await;
    server.stop().await;
}

/// Sender first (the relay holds 2 MiB): a receiver that half-closes at
/// once, while it still takes the held bytes, counts as gone (as with
/// hyper) or, if it joined first, reads on; either way the others get
/// every byte and the path is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_half_closes_before_joining() {
    let server = Server::start_with(tubes::relay::RelayConfig {
        read_ahead: 4 << 20,
        ..tubes::relay::RelayConfig::default()
    })
    .await;
    let size = 8 << 20;
    let data = Pattern::new(101).bytes(size);
    for who in 0..3 {
        let path = format!("{}?n=3", common::path("tee-half-early"));
        let mut stream = put(server.addr, &path, size, &[]).await;
        stream.write_all(&data[..2 << 20]).await.expect("write");
        server
            .wait_for("the sender", |s| s.waiting_senders == 1)
            .await;
        let mut hows = hows(3);
        hows[who].half_close_after = Some(0);
        hows[who].rcvbuf = Some(16 << 10);
        let receivers: Vec<_> = hows
            .iter()
            .map(|&how| spawn_receiver(server.addr, &path, how))
            .collect();
        let log = finish(stream, data.slice(2 << 20..)).await;
        for (i, receiver) in receivers.into_iter().enumerate() {
            let got = receiver.got().await;
            let what = format!("half-closer {who}: receiver {i}");
            if i == who && !got.whole() {
                got.assert_cut(&what, &data);
                assert!(log.contains(ONE_ABORTED), "{what}: {log}");
            } else {
                got.assert_whole(&what, &data);
            }
        }
        server.wait_empty().await;
    }
    server.stop().await;
}

/// curl at both ends, as in the benchmark: three receivers get the file,
/// byte for byte (sha256), the sender's log says so, and the bytes went
/// socket to socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_receivers_of_a_curl_upload() {
    let server = Server::start().await;
    let file = std::env::temp_dir().join(format!("tubes-tee-{}.bin", std::process::id()));
    let data = Pattern::new(5).bytes(32 << 20);
    std::fs::write(&file, &data).expect("write file");
    let want = Sha256::digest(&data);
    let url = server.url(&format!("{}?n=3", common::path("tee-curl")));
    // Each receiver's output is read as it comes (a full pipe would stall
    // the fan-out: the slowest receiver sets the pace).
    let receivers: Vec<_> = (0..3)
        .map(|_| {
            let curl = tokio::process::Command::new("curl")
                .args(["-sS", "--max-time", "30", &url])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("curl must be installed: run scripts/test.sh, which installs it");
            tokio::spawn(curl.wait_with_output())
        })
        .collect();
    server
        .wait_for("receivers", |s| s.waiting_receivers == 3)
        .await;
    let before = server.relay.totals().spliced;
    let sender = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "-T"])
        .arg(&file)
        .arg(&url)
        .output()
        .await
        .expect("curl");
    let _ = std::fs::remove_file(&file);
    let log = String::from_utf8_lossy(&sender.stdout);
    assert!(sender.status.success(), "{log}");
    assert!(log.contains(ALL_RECEIVED), "{log}");
    for receiver in receivers {
        let out = receiver.await.expect("task").expect("curl");
        assert!(out.status.success());
        assert_eq!(
            Sha256::digest(&out.stdout),
            want,
            "a receiver's bytes differ"
        );
    }
    assert!(server.relay.totals().spliced - before >= (16 << 20));
    server.wait_empty().await;
    server.stop().await;
}

/// Of three receivers, one reads slowly and one leaves halfway: the other
/// two get every byte, and the sender hears that one left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_beside_one_that_leaves() {
    let server = Server::start().await;
    let data = Pattern::new(9).bytes(24 << 20);
    let path = format!("{}?n=3", common::path("tee-slow-leaves"));
    let ways = [
        How::default(),
        How {
            pace: Some((16 << 10, Duration::from_millis(2))),
            ..How::default()
        },
        How {
            leave_after: Some(3 << 20),
            ..How::default()
        },
    ];
    let receivers = waiting_receivers(&server, &path, &ways).await;
    let log = send(server.addr, &path, data.clone()).await;
    assert!(log.contains(ONE_ABORTED), "{log}");
    assert!(!log.contains(ALL_RECEIVED), "{log}");
    let mut got = Vec::new();
    for receiver in receivers {
        got.push(receiver.got().await);
    }
    got[0].assert_whole("the fast receiver", &data);
    got[1].assert_whole("the slow receiver", &data);
    got[2].assert_cut("the one that left", &data);
    server.wait_empty().await;
    server.stop().await;
}

/// With one receiver on HTTP/2 the socket is not shared (that receiver
/// could not take part): the relay carries every byte, to all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_receiver_mixed_in_gets_every_byte_through_the_relay() {
    let server = Server::start().await;
    let data = Pattern::new(23).bytes(8 << 20);
    let path = format!("{}?n=3", common::path("tee-h2-mixed"));
    let raw = waiting_receivers(&server, &path, &hows(2)).await;
    let h2 = h2_receiver(&server, &path).await;
    server
        .wait_for("three receivers", |s| s.waiting_receivers == 3)
        .await;
    let before = server.relay.totals();
    let log = send(server.addr, &path, data.clone()).await;
    assert!(log.contains(ALL_RECEIVED), "{log}");
    for receiver in raw {
        receiver.got().await.assert_whole("raw receiver", &data);
    }
    assert!(
        h2.await.expect("h2 task") == data,
        "the h2 receiver's bytes"
    );
    let after = server.relay.totals();
    assert_eq!(after.bytes - before.bytes, data.len() as u64);
    assert_eq!(after.spliced, before.spliced, "nothing spliced");
    server.wait_empty().await;
    server.stop().await;
}
