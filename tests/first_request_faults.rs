//! Faults at the first request of a cleartext connection, the one read and
//! answered without hyper when it is a plain GET (src/transport/http1.rs):
//! senders cut mid-stream, receivers that stop reading, half-close, leave
//! during a transfer or ask to close, connections kept alive into hyper,
//! read-ahead past its bound, unusual heads, and the server draining. Raw
//! sockets (to see the framing byte by byte) and curl (what users run).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{path, Pattern, Server, LIMIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Bound for what should happen at once.
const SOON: Duration = Duration::from_secs(5);

/// A GET on a new connection; `extra` is more header lines.
async fn get(server: &Server, target: &str, version: &str, extra: &str) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let head = format!("GET {target} HTTP/{version}\r\nHost: t\r\n{extra}\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    s
}

/// A sender's request head on a new connection: `Content-Length` when
/// `length` is given, else chunked.
/// An HTTP/1.1 GET of `target` (with `extra` header lines), once the
/// relay has it as a waiting receiver.
async fn waiting_get(server: &Server, target: &str, extra: &str) -> TcpStream {
    let receiver = get(server, target, "1.1", extra).await;
    server
        .wait_for("receiver", |s| s.waiting_receivers == 1)
        .await;
    receiver
}

async fn put(server: &Server, target: &str, length: Option<usize>) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let framing = match length {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_owned(),
    };
    let head = format!("PUT {target} HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    s
}

/// Writes `data` as the sender's body (one chunk when chunked).
async fn send(s: &mut TcpStream, data: &[u8], chunked: bool) {
    if chunked {
        s.write_all(format!("{:X}\r\n", data.len()).as_bytes())
            .await
            .expect("write");
        s.write_all(data).await.expect("write");
        s.write_all(b"\r\n").await.expect("write");
    } else {
        s.write_all(data).await.expect("write");
    }
}

/// Ends a chunked sender's body cleanly.
async fn end_chunked(s: &mut TcpStream) {
    s.write_all(b"0\r\n\r\n").await.expect("write");
}

/// How reading a connection to its end finished.
#[derive(Debug, PartialEq)]
enum End {
    /// A clean close (FIN).
    Eof,
    /// A failure (a reset, most often).
    Error(std::io::ErrorKind),
}

/// Reads until the connection ends, within [`LIMIT`].
async fn read_to_end(s: &mut TcpStream, buf: &mut Vec<u8>) -> End {
    tokio::time::timeout(LIMIT, async {
        loop {
            match s.read_buf(buf).await {
                Ok(0) => return End::Eof,
                Ok(_) => {}
                Err(error) => return End::Error(error.kind()),
            }
        }
    })
    .await
    .expect("the connection ends in time")
}

/// Reads until `done` holds for what was read, within [`LIMIT`].
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    tokio::time::timeout(LIMIT, async {
        while !done(buf) {
            let n = s.read_buf(buf).await.expect("read");
            assert!(
                n > 0,
                "closed early; have {:?}",
                String::from_utf8_lossy(buf)
            );
        }
    })
    .await
    .expect("read in time");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The head (lower case) and what follows it, once the head is whole.
fn split(buf: &[u8]) -> Option<(String, &[u8])> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    Some((
        String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase(),
        &buf[end..],
    ))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

/// A chunked body decoded as far as it goes: the data, and whether the
/// terminating chunk came.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    loop {
        let Some(line) = find(raw, b"\r\n") else {
            return (data, false);
        };
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).expect("size"), 16)
            .expect("hex size");
        if size == 0 {
            return (data, raw[line..].starts_with(b"\r\n\r\n"));
        }
        let chunk = &raw[line + 2..];
        if chunk.len() < size {
            data.extend_from_slice(chunk);
            return (data, false);
        }
        data.extend_from_slice(&chunk[..size]);
        raw = chunk.get(size + 2..).unwrap_or_default();
    }
}

/// The body data of a response read so far (decoded when chunked, up to
/// its `Content-Length` when it has one).
fn body_of(buf: &[u8]) -> Vec<u8> {
    match split(buf) {
        None => Vec::new(),
        Some((head, rest)) if header(&head, "transfer-encoding") == Some("chunked") => {
            dechunk(rest).0
        }
        Some((head, rest)) => match header(&head, "content-length") {
            Some(length) => {
                let length: usize = length.parse().expect("length");
                rest[..length.min(rest.len())].to_vec()
            }
            None => rest.to_vec(),
        },
    }
}

/// Whether a whole response (by its `Content-Length` or chunked end) is
/// in `buf`.
fn whole_response(buf: &[u8]) -> bool {
    let Some((head, rest)) = split(buf) else {
        return false;
    };
    match header(&head, "content-length") {
        Some(length) => rest.len() >= length.parse::<usize>().expect("length"),
        None => dechunk(rest).1,
    }
}

/// Header lines that make `n` with `Host`: 49 is more than are read
/// without hyper, so such a request is hyper's (the reference).
fn many_headers(n: usize) -> String {
    (1..n).map(|i| format!("X-H{i}: v{i}\r\n")).collect()
}

/// Starts a `curl` receiver; its output goes to a pipe.
fn curl(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "15"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("curl must be installed")
}

/// Waits until `counter` stops moving (no change for 300 ms), within
/// [`LIMIT`]; returns its value then.
async fn stalled(counter: &AtomicUsize) -> usize {
    tokio::time::timeout(LIMIT, async {
        loop {
            let before = counter.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after = counter.load(Ordering::SeqCst);
            if after == before {
                return after;
            }
        }
    })
    .await
    .expect("progress stops in time")
}

/// A connection with small socket buffers, so that what the kernel holds
/// does not hide whether the server reads or writes.
async fn small_buffers(server: &Server) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(64 * 1024).expect("sndbuf");
    socket.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
    socket.connect(server.addr).await.expect("connect")
}

/// The sender is cut mid-stream: an HTTP/1.1 and an HTTP/1.0 receiver
/// (raw sockets and curl) all see a cut response, with what was sent
/// before the cut; none sees a clean end.
async fn sender_cut(declared: bool) {
    let server = Server::start().await;
    let target = format!("{}?n=4", path("cut"));
    let total = 1_000_000;
    let data = Pattern::new(1).bytes(50_000);
    let curl11 = curl(&[&server.url(&target)]);
    let curl10 = curl(&["--http1.0", &server.url(&target)]);
    server
        .wait_for("two curls", |s| s.waiting_receivers == 2)
        .await;
    let mut raw11 = get(&server, &target, "1.1", "").await;
    let mut raw10 = get(&server, &target, "1.0", "").await;
    server
        .wait_for("four receivers", |s| s.waiting_receivers == 4)
        .await;
    let mut sender = put(&server, &target, declared.then_some(total)).await;
    send(&mut sender, &data, !declared).await;
    let (mut got11, mut got10) = (Vec::new(), Vec::new());
    for (s, buf) in [(&mut raw11, &mut got11), (&mut raw10, &mut got10)] {
        read_until(s, buf, |b| body_of(b).len() >= data.len()).await;
    }
    // The cut: the sender's connection closes mid-body.
    drop(sender);

    // Either end (FIN or reset) is a cut here: the framing says so.
    read_to_end(&mut raw11, &mut got11).await;
    let (head, rest) = split(&got11).expect("head");
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    if declared {
        assert_eq!(header(&head, "content-length"), Some("1000000"), "{head}");
        assert_eq!(rest, &data[..], "HTTP/1.1: what was sent, then the cut");
    } else {
        assert_eq!(
            header(&head, "transfer-encoding"),
            Some("chunked"),
            "{head}"
        );
        let (body, ended) = dechunk(rest);
        assert!(!ended, "HTTP/1.1: a cut chunked response has no last chunk");
        assert_eq!(body, data, "HTTP/1.1: what was sent, then the cut");
    }

    let end10 = read_to_end(&mut raw10, &mut got10).await;
    let (head, rest) = split(&got10).expect("head");
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert_eq!(rest, &data[..], "HTTP/1.0: what was sent, then the cut");
    assert_eq!(header(&head, "transfer-encoding"), None, "{head}");
    if declared {
        assert_eq!(header(&head, "content-length"), Some("1000000"), "{head}");
    } else {
        // Delimited by the close: only a reset tells a cut from the end.
        assert_eq!(header(&head, "content-length"), None, "{head}");
        assert_ne!(
            end10,
            End::Eof,
            "HTTP/1.0: a cut close-delimited body must not end cleanly"
        );
    }

    for (name, child) in [("HTTP/1.1", curl11), ("HTTP/1.0", curl10)] {
        let output = tokio::time::timeout(LIMIT, child.wait_with_output())
            .await
            .expect("curl in time")
            .expect("curl ran");
        assert!(
            !output.status.success(),
            "curl {name} must report the cut; it exited 0 with {} bytes",
            output.stdout.len()
        );
        assert_eq!(output.stdout, data, "curl {name}: what was sent");
    }
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_with_content_length_cut_mid_stream_is_a_cut_for_every_receiver() {
    sender_cut(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_sender_cut_mid_stream_is_a_cut_for_every_receiver() {
    sender_cut(false).await;
}

/// A receiver that stops reading holds the sender back (its upload is not
/// read ahead without bound); when it reads again, every byte comes, in
/// order, and the transfer ends cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_reading_paces_the_sender_and_loses_nothing() {
    let server = Server::start().await;
    let target = path("slow");
    let total: usize = 64 << 20;
    let data = Pattern::new(2).bytes(total);
    let mut receiver = small_buffers(&server).await;
    receiver
        .write_all(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .expect("write");
    server
        .wait_for("receiver", |s| s.waiting_receivers == 1)
        .await;
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = {
        let mut sender = small_buffers(&server).await;
        let head = format!("PUT {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n");
        sender.write_all(head.as_bytes()).await.expect("write");
        let (data, sent) = (data.clone(), Arc::clone(&sent));
        tokio::spawn(async move {
            for piece in data.chunks(256 * 1024) {
                sender.write_all(piece).await.expect("write");
                sent.fetch_add(piece.len(), Ordering::SeqCst);
            }
            // The sender's log, to its end (the connection stays open).
            let mut log = Vec::new();
            read_until(&mut sender, &mut log, whole_response).await;
            String::from_utf8_lossy(&body_of(&log)).into_owned()
        })
    };
    let mut got = Vec::with_capacity(total + 1024);
    read_until(&mut receiver, &mut got, |b| body_of(b).len() >= 1 << 20).await;
    let read = got.len();
    let held = stalled(&sent).await;
    assert!(
        held < total,
        "the sender was not held back by a receiver that stopped reading"
    );
    assert!(
        held - read < 48 << 20,
        "{} MiB in flight for a receiver that does not read",
        (held - read) >> 20
    );
    read_until(&mut receiver, &mut got, whole_response).await;
    let (head, body) = split(&got).expect("head");
    assert_eq!(header(&head, "content-length"), Some(&*total.to_string()));
    assert!(body == &data[..], "the bytes differ");
    let log = tokio::time::timeout(LIMIT, writer)
        .await
        .expect("sender in time")
        .expect("sender");
    assert!(log.contains("received successfully"), "{log}");
    server.wait_empty().await;
    server.stop().await;
}

/// A waiting receiver that shuts down its write side (sends FIN after
/// its GET) is taken as gone, as hyper did (its default: no half-close):
/// the request is cancelled, the path freed, the connection closed
/// without a response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_receiver_that_half_closes_is_cancelled() {
    let server = Server::start().await;
    let target = path("half");
    let mut receiver = waiting_get(&server, &target, "").await;
    receiver.shutdown().await.expect("shutdown(Write)");
    let (stats, freed) = server.relay.wait_until(SOON, |s| s.paths == 0).await;
    assert!(
        freed,
        "a half-closed waiting receiver kept its path: {stats:?}"
    );
    let mut got = Vec::new();
    assert_eq!(read_to_end(&mut receiver, &mut got).await, End::Eof);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    // The path takes a new pair at once.
    let mut again = waiting_get(&server, &target, "").await;
    let mut sender = put(&server, &target, Some(2)).await;
    send(&mut sender, b"ok", false).await;
    let mut got = Vec::new();
    read_until(&mut again, &mut got, whole_response).await;
    assert_eq!(body_of(&got), b"ok");
    server.wait_empty().await;
    server.stop().await;
}

/// A waiting receiver that sends a pipelined request and then shuts down
/// its write side is cancelled all the same: its path is freed. (hyper
/// stopped watching a connection once it had read bytes ahead, so there
/// such a receiver kept its path until a sender came.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_receiver_that_pipelines_then_half_closes_is_cancelled() {
    let server = Server::start().await;
    let target = path("piped-half");
    let mut receiver = waiting_get(&server, &target, "").await;
    receiver
        .write_all(b"GET /-/healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    receiver.shutdown().await.expect("shutdown(Write)");
    let (stats, freed) = server.relay.wait_until(SOON, |s| s.paths == 0).await;
    assert!(freed, "kept its path: {stats:?}");
    let mut got = Vec::new();
    assert_eq!(read_to_end(&mut receiver, &mut got).await, End::Eof);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    server.wait_empty().await;
    server.stop().await;
}

/// A receiver that leaves mid-transfer, while the sender sends little:
/// seen gone at the sender's next writes (nothing reads a receiver's
/// connection during its response, with hyper as without), the transfer
/// ends, the sender is told and the path is freed.
async fn receiver_leaves_mid_transfer(via_hyper: bool) {
    let server = Server::start().await;
    let target = path("leaves");
    let extra = if via_hyper {
        many_headers(49)
    } else {
        String::new()
    };
    let mut receiver = waiting_get(&server, &target, &extra).await;
    let mut sender = put(&server, &target, None).await;
    send(&mut sender, b"hello", true).await;
    let mut got = Vec::new();
    read_until(&mut receiver, &mut got, |b| body_of(b) == b"hello").await;
    drop(receiver);
    // A sender that sends a little now and then.
    let freed = tokio::time::timeout(SOON, async {
        loop {
            send(&mut sender, b".", true).await;
            let (_, freed) = server
                .relay
                .wait_until(Duration::from_millis(100), |s| s.paths == 0)
                .await;
            if freed {
                break;
            }
        }
    })
    .await;
    assert!(freed.is_ok(), "a receiver gone mid-transfer kept its path");
    let mut log = Vec::new();
    read_until(&mut sender, &mut log, whole_response).await;
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("aborted"), "the sender is told: {log}");
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_leaves_mid_transfer_frees_the_path() {
    receiver_leaves_mid_transfer(false).await;
}

/// The reference: the same on a request that hyper serves (it has more
/// headers than are read without hyper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_leaves_mid_transfer_served_by_hyper_frees_the_path() {
    receiver_leaves_mid_transfer(true).await;
}

/// A receiver that shuts down its write side once its response has
/// started, while the sender is quiet, is taken as gone, as hyper (its
/// default: no half-close) took it: its response is cut, the sender is
/// told, and bytes sent after do not reach it.
async fn receiver_half_closes_mid_transfer(via_hyper: bool) {
    let server = Server::start().await;
    let target = path("half-mid");
    let extra = if via_hyper {
        many_headers(49)
    } else {
        String::new()
    };
    let mut receiver = waiting_get(&server, &target, &extra).await;
    let mut sender = put(&server, &target, None).await;
    send(&mut sender, b"hello", true).await;
    let mut got = Vec::new();
    read_until(&mut receiver, &mut got, |b| body_of(b) == b"hello").await;
    receiver.shutdown().await.expect("shutdown(Write)");
    // The response ends (cut) before the sender sends anything more.
    read_to_end(&mut receiver, &mut got).await;
    let (_, rest) = split(&got).expect("head");
    let (body, ended) = dechunk(rest);
    assert!(!ended, "a half-closed receiver's response is cut");
    assert_eq!(body, b"hello");
    send(&mut sender, b"world", true).await;
    end_chunked(&mut sender).await;
    let mut log = Vec::new();
    read_until(&mut sender, &mut log, whole_response).await;
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("aborted"), "the sender is told: {log}");
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_half_closes_mid_transfer_is_cut() {
    receiver_half_closes_mid_transfer(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_half_closes_mid_transfer_served_by_hyper_is_cut() {
    receiver_half_closes_mid_transfer(true).await;
}

/// `Connection: close` (HTTP/1.1) and HTTP/1.0: the whole body, then the
/// server closes the connection cleanly; for each sender framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_that_ask_to_close_get_the_whole_body_then_a_clean_close() {
    let server = Server::start().await;
    let data = Pattern::new(3).bytes(100_000);
    for (version, extra) in [
        ("1.1", "Connection: close\r\n"),
        ("1.1", "Connection: keep-alive, Close\r\n"),
        ("1.0", ""),
        ("1.0", "Connection: close\r\n"),
    ] {
        for declared in [true, false] {
            let what = format!("HTTP/{version} {extra:?}, declared length {declared}");
            let target = path("close");
            let mut receiver = get(&server, &target, version, extra).await;
            server
                .wait_for("receiver", |s| s.waiting_receivers == 1)
                .await;
            let mut sender = put(&server, &target, declared.then_some(data.len())).await;
            send(&mut sender, &data, !declared).await;
            if !declared {
                end_chunked(&mut sender).await;
            }
            let mut got = Vec::new();
            let end = read_to_end(&mut receiver, &mut got).await;
            assert_eq!(end, End::Eof, "{what}: a clean close");
            let (head, rest) = split(&got).expect("head");
            assert!(
                head.starts_with(&format!("http/{version} 200 ok\r\n")),
                "{what}: {head}"
            );
            if version == "1.1" {
                assert_eq!(header(&head, "connection"), Some("close"), "{what}: {head}");
            }
            let body = match (declared, version) {
                (false, "1.1") => {
                    let (body, ended) = dechunk(rest);
                    assert!(ended, "{what}: the last chunk");
                    body
                }
                (false, _) => {
                    assert_eq!(header(&head, "content-length"), None, "{what}: {head}");
                    rest.to_vec()
                }
                (true, _) => {
                    assert_eq!(header(&head, "content-length"), Some("100000"), "{what}");
                    rest.to_vec()
                }
            };
            assert!(body == data, "{what}: the bytes differ");
            server.wait_empty().await;
        }
    }
    server.stop().await;
}

/// After a receiver's whole response, its kept-alive connection carries a
/// second receiver (now served by hyper) on a new path, and a third; with
/// senders of either framing in either order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_receiver_connection_receives_again() {
    let server = Server::start().await;
    for order in [[true, false, true], [false, true, false]] {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        let mut got = Vec::new();
        for (i, declared) in order.into_iter().enumerate() {
            let what = format!("request {i} of {order:?}");
            let target = path("again");
            let data = Pattern::new(10 + i as u64).bytes(70_000 + i);
            s.write_all(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                .await
                .expect("write");
            server
                .wait_for("receiver", |s| s.waiting_receivers == 1)
                .await;
            let mut sender = put(&server, &target, declared.then_some(data.len())).await;
            send(&mut sender, &data, !declared).await;
            if !declared {
                end_chunked(&mut sender).await;
            }
            read_until(&mut s, &mut got, whole_response).await;
            let (head, _) = split(&got).expect("head");
            assert!(head.starts_with("http/1.1 200 ok\r\n"), "{what}: {head}");
            assert_eq!(header(&head, "connection"), None, "{what}: {head}");
            assert!(body_of(&got) == data, "{what}: the bytes differ");
            got.clear();
            server.wait_empty().await;
        }
    }
    server.stop().await;
}

/// A client that sends far more than the read-ahead bound (a pipelined
/// upload) while its first GET waits: the server stops reading it (the
/// client's writes stall), then answers the GET, and hyper takes the rest
/// with not a byte lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_upload_past_the_read_ahead_bound_waits_and_is_whole() {
    let server = Server::start().await;
    let first = path("first");
    let second = path("second");
    let total: usize = 16 << 20;
    let data = Pattern::new(4).bytes(total);
    let s = small_buffers(&server).await;
    let (mut read, mut write) = s.into_split();
    write
        .write_all(format!("GET {first} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .expect("write");
    server
        .wait_for("first receiver", |s| s.waiting_receivers == 1)
        .await;
    let mut receiver = get(&server, &second, "1.1", "").await;
    server
        .wait_for("second receiver", |s| s.waiting_receivers == 2)
        .await;
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (data, written) = (data.clone(), Arc::clone(&written));
        tokio::spawn(async move {
            let head =
                format!("PUT {second} HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n");
            write.write_all(head.as_bytes()).await.expect("write");
            for piece in data.chunks(64 * 1024) {
                write.write_all(piece).await.expect("write");
                written.fetch_add(piece.len(), Ordering::SeqCst);
            }
            write
        })
    };
    let held = stalled(&written).await;
    assert!(
        held < total,
        "the server read all {} MiB sent ahead of a waiting GET",
        total >> 20
    );
    let mut sender = put(&server, &first, Some(3)).await;
    send(&mut sender, b"abc", false).await;
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while !whole_response(&got) {
            let n = read.read_buf(&mut got).await.expect("read");
            assert!(n > 0, "closed early");
        }
    })
    .await
    .expect("the first response in time");
    assert_eq!(body_of(&got), b"abc");
    let mut received = Vec::with_capacity(total + 1024);
    read_until(&mut receiver, &mut received, whole_response).await;
    assert!(
        body_of(&received) == data,
        "the pipelined upload's bytes differ"
    );
    let _write = tokio::time::timeout(LIMIT, writer)
        .await
        .expect("writer in time")
        .expect("writer");
    server.wait_empty().await;
    server.stop().await;
}

/// Heads a client may send: each GET is answered, and the connection goes
/// on (a health check after it), so its head was read to its exact end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_heads_are_received_and_the_connection_goes_on() {
    let server = Server::start().await;
    let headers = |n: usize| many_headers(n).into_bytes();
    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        (
            "Content-Length: 0",
            false,
            b"Content-Length: 0\r\n".to_vec(),
        ),
        (
            "Content-Length: 0 twice",
            false,
            b"Content-Length: 0\r\nContent-Length: 0\r\n".to_vec(),
        ),
        ("absolute form", true, Vec::new()),
        ("obs-text", false, b"X-Name: caf\xe9 \xff\r\n".to_vec()),
        (
            "duplicate headers",
            false,
            b"Accept: a\r\nAccept: b\r\nX-D: 1\r\nX-D: 1\r\nHost: u\r\n".to_vec(),
        ),
        ("48 headers", false, headers(48)),
        ("49 headers", false, headers(49)),
    ];
    for (what, absolute, extra) in cases {
        let target = path("head");
        let uri = if absolute {
            format!("http://{}{target}", server.addr)
        } else {
            target.clone()
        };
        let mut head = format!("GET {uri} HTTP/1.1\r\nHost: t\r\n").into_bytes();
        head.extend_from_slice(&extra);
        head.extend_from_slice(b"\r\n");
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        s.write_all(&head).await.expect("write");
        server
            .wait_for("receiver", |s| s.waiting_receivers == 1)
            .await;
        let mut sender = put(&server, &target, Some(what.len())).await;
        send(&mut sender, what.as_bytes(), false).await;
        let mut got = Vec::new();
        read_until(&mut s, &mut got, whole_response).await;
        let (head, _) = split(&got).expect("head");
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{what}: {head}");
        assert_eq!(body_of(&got), what.as_bytes(), "{what}");
        got.clear();
        s.write_all(b"GET /-/healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        read_until(&mut s, &mut got, whole_response).await;
        assert!(
            String::from_utf8_lossy(&body_of(&got)).contains("\"status\":\"ok\""),
            "{what}: {:?}",
            String::from_utf8_lossy(&got)
        );
        server.wait_empty().await;
    }
    server.stop().await;
}

/// The server drains (as `tubes serve` does on SIGTERM: draining set,
/// waiting peers turned away, the listener stopped, with a grace period):
/// receivers waiting on this path get a 503 and, over HTTP/1.1,
/// `connection: close`; then the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_turns_waiting_receivers_away_and_closes() {
    use tubes::policy::Gate;
    use tubes::relay::{Relay, RelayConfig};
    use tubes::server::{self, ServeConfig};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let relay = Relay::new(RelayConfig::default());
    let gate = Arc::new(Gate::default());
    let config = ServeConfig {
        grace: Duration::from_secs(3),
        gate: Arc::clone(&gate),
        ..ServeConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::serve(listener, relay.clone(), config, async {
        let _ = stopped.await;
    }));
    let mut receivers = Vec::new();
    for version in ["1.1", "1.0"] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let head = format!("GET {} HTTP/{version}\r\nHost: t\r\n\r\n", path("drain"));
        s.write_all(head.as_bytes()).await.expect("write");
        receivers.push((version, s));
    }
    let (stats, ok) = relay.wait_until(LIMIT, |s| s.waiting_receivers == 2).await;
    assert!(ok, "{stats:?}");
    gate.metrics.set_draining();
    assert_eq!(relay.turn_away_waiting(), 2);
    let _ = stop.send(());
    for (version, mut s) in receivers {
        let mut got = Vec::new();
        let end = read_to_end(&mut s, &mut got).await;
        let (head, body) = split(&got).expect("head");
        assert!(head.starts_with(&format!("http/{version} 503 ")), "{head}");
        if version == "1.1" {
            assert_eq!(header(&head, "connection"), Some("close"), "{head}");
        }
        assert_eq!(body, b"[ERROR] The server is shutting down; try again.\n");
        assert_eq!(end, End::Eof, "HTTP/{version}: closed cleanly");
    }
    let served = tokio::time::timeout(LIMIT, serving)
        .await
        .expect("the server stops in time")
        .expect("server task");
    assert!(served.is_ok(), "{served:?}");
}

/// A member of a room over Server-Sent Events (a GET that never ends and
/// is mostly quiet) that leaves is seen gone at once: the room loses it
/// then, not at the next heartbeat 15 s later.
async fn room_member_leaves(via_hyper: bool) {
    let server = Server::start().await;
    let target = format!("{}?room", path("room"));
    let mut extra = "Accept: text/event-stream\r\n".to_owned();
    if via_hyper {
        extra.push_str(&many_headers(48));
    }
    let mut member = get(&server, &target, "1.1", &extra).await;
    let mut got = Vec::new();
    read_until(&mut member, &mut got, |b| !body_of(b).is_empty()).await;
    let (head, _) = split(&got).expect("head");
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    server.wait_for("a member", |s| s.room_members == 1).await;
    drop(member);
    let (stats, gone) = server.relay.wait_until(SOON, |s| s.room_members == 0).await;
    assert!(gone, "a member that left is still in the room: {stats:?}");
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_member_that_leaves_is_gone_at_once() {
    room_member_leaves(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_member_that_leaves_served_by_hyper_is_gone_at_once() {
    room_member_leaves(true).await;
}
