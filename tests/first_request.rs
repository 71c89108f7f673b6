//! The first request of a cleartext connection is read and answered
//! without hyper when it is a plain GET (src/transport/http1.rs); the rest
//! of the connection goes to hyper. These tests speak raw HTTP over real
//! sockets to check the seams: a connection kept alive after the first
//! answer, requests sent while the first waits, heads that come in pieces
//! or are larger than the first buffer, and HTTP/2's preface in pieces.

mod common;

use std::time::Duration;

use common::{upload_reading_log, Server, LIMIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one response (head and a `content-length` or chunked body) off
/// `stream`, keeping what follows in `rest`. Returns the head and body.
async fn read_response(stream: &mut TcpStream, rest: &mut Vec<u8>) -> (String, Vec<u8>) {
    tokio::time::timeout(LIMIT, async {
        let head_end = loop {
            if let Some(at) = find(rest, b"\r\n\r\n") {
                break at + 4;
            }
            fill(stream, rest).await;
        };
        let head = String::from_utf8_lossy(&rest[..head_end]).to_ascii_lowercase();
        rest.drain(..head_end);
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .map(|v| v.trim().parse::<usize>().expect("length"));
        let mut body = Vec::new();
        if let Some(length) = length {
            while rest.len() < length {
                fill(stream, rest).await;
            }
            body.extend(rest.drain(..length));
        } else {
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            loop {
                let line_end = loop {
                    if let Some(at) = find(rest, b"\r\n") {
                        break at;
                    }
                    fill(stream, rest).await;
                };
                let size = usize::from_str_radix(
                    std::str::from_utf8(&rest[..line_end]).expect("size line"),
                    16,
                )
                .expect("hex size");
                rest.drain(..line_end + 2);
                while rest.len() < size + 2 {
                    fill(stream, rest).await;
                }
                body.extend(rest.drain(..size));
                rest.drain(..2);
                if size == 0 {
                    break;
                }
            }
        }
        (head, body)
    })
    .await
    .expect("a response in time")
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await.expect("read");
    assert!(
        n > 0,
        "closed early; have {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A GET answered first (without hyper), then more requests on the same
/// connection, answered by hyper: a page, a send and a preflight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_goes_on_after_its_first_get() {
    let server = Server::start().await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    s.write_all(b"GET /-/healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let (head, body) = read_response(&mut s, &mut rest).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("\"status\":\"ok\""));

    // A receiver waits on another connection; this one sends to it.
    let addr = server.addr;
    let receiver = tokio::spawn(async move {
        let mut r = TcpStream::connect(addr).await.expect("connect");
        r.write_all(b"GET /kept HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let mut rest = Vec::new();
        read_response(&mut r, &mut rest).await
    });
    server
        .wait_for("receiver", |s| s.waiting_receivers == 1)
        .await;
    s.write_all(b"PUT /kept HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("write");
    let (head, log) = read_response(&mut s, &mut rest).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(String::from_utf8_lossy(&log).ends_with("successfully.\n"));
    let (head, body) = receiver.await.expect("receiver");
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(body, b"hello");

    s.write_all(b"OPTIONS /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_response(&mut s, &mut rest).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("access-control-allow-methods"), "{head}");
    server.wait_empty().await;
    server.stop().await;
}

/// Requests sent behind a waiting GET (pipelined) are kept and answered,
/// in order, once the first is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sent_while_the_first_waits_are_answered_after_it() {
    let server = Server::start().await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"GET /piped HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    server
        .wait_for("receiver", |s| s.waiting_receivers == 1)
        .await;
    s.write_all(b"GET /-/healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /help HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut sender = TcpStream::connect(server.addr).await.expect("connect");
    sender
        .write_all(b"PUT /piped HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let (head, body) = read_response(&mut s, &mut rest).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(body, b"abc");
    let (head, body) = read_response(&mut s, &mut rest).await;
    assert!(head.contains("application/json"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("\"status\""));
    let (head, body) = read_response(&mut s, &mut rest).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(String::from_utf8_lossy(&body).starts_with("Help for Tubes"));
    server.wait_empty().await;
    server.stop().await;
}

/// A head that arrives a few bytes at a time is read whole; one that
/// outgrows the first buffer, and one larger than what is read without
/// hyper, are served too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_in_pieces_and_large_heads_are_served() {
    let server = Server::start().await;
    let head = b"GET /-/healthz HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\r\n";
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    for piece in head.chunks(3) {
        s.write_all(piece).await.expect("write");
        // Spread the pieces over separate segments.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut rest = Vec::new();
    let (got, _) = read_response(&mut s, &mut rest).await;
    assert!(got.starts_with("http/1.1 200 ok\r\n"), "{got}");

    for size in [3_000, 12_000] {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        let request = format!(
            "GET /-/healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "b".repeat(size)
        );
        s.write_all(request.as_bytes()).await.expect("write");
        let mut rest = Vec::new();
        let (got, body) = read_response(&mut s, &mut rest).await;
        assert!(got.starts_with("http/1.1 200 ok\r\n"), "{size}: {got}");
        assert!(String::from_utf8_lossy(&body).contains("\"status\""));
    }
    server.stop().await;
}

/// HTTP/2's preface split over two writes is still HTTP/2: the server
/// answers with its SETTINGS frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_in_pieces_is_http2() {
    let server = Server::start().await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    s.write_all(&preface[..7]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.write_all(&preface[7..]).await.expect("write");
    // An empty SETTINGS frame of ours.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("write");
    let mut frame = [0u8; 9];
    tokio::time::timeout(LIMIT, s.read_exact(&mut frame))
        .await
        .expect("in time")
        .expect("a frame");
    assert_eq!(frame[3], 4, "the first frame is SETTINGS: {frame:?}");
    server.stop().await;
}

/// A receiver that leaves while it waits frees its path at once, and a
/// receiver cut off mid-stream does not disturb the sender's other
/// receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_receiver_that_leaves_frees_its_path() {
    let server = Server::start().await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"GET /leaving HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    server
        .wait_for("receiver", |s| s.waiting_receivers == 1)
        .await;
    drop(s);
    server.wait_empty().await;
    server.stop().await;
}

/// An upload with a length to a receiver that are both first requests:
/// the bytes go socket to socket (spliced), arrive whole and in order,
/// are counted as relayed, and the sender's log says all went well; in
/// both arrival orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_to_a_first_request_receiver_arrives_whole() {
    let server = Server::start().await;
    let data = common::Pattern::new(7).bytes(24 << 20);
    for (round, receiver_first) in [(0, true), (1, false)] {
        let path = format!("/spliced-{round}");
        let addr = server.addr;
        let get = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        let receive = async move {
            let mut r = TcpStream::connect(addr).await.expect("connect");
            r.write_all(get.as_bytes()).await.expect("write");
            let mut rest = Vec::new();
            read_response(&mut r, &mut rest).await
        };
        let before = server.relay.totals();
        let receiver = if receiver_first {
            let receiver = tokio::spawn(receive);
            server
                .wait_for("receiver", |s| s.waiting_receivers == 1)
                .await;
            receiver
        } else {
            // The sender waits first; the receiver comes once it is in.
            tokio::spawn(receive)
        };
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            data.len()
        );
        s.write_all(head.as_bytes()).await.expect("write");
        let log = upload_reading_log(s, data.clone()).await;
        assert!(
            log.contains("All receiver(s) was/were received successfully."),
            "{log}"
        );
        let (head, body) = tokio::time::timeout(LIMIT, receiver)
            .await
            .expect("in time")
            .expect("task");
        assert!(
            head.contains(&format!("content-length: {}", data.len())),
            "{head}"
        );
        assert!(body == data, "round {round}: the body differs");
        let after = server.relay.totals();
        assert_eq!(
            after.bytes - before.bytes,
            data.len() as u64,
            "bytes counted as relayed"
        );
        assert!(
            after.spliced - before.spliced >= data.len() as u64 / 2,
            "round {round}: most bytes spliced"
        );
    }
    server.wait_empty().await;
    server.stop().await;
}

/// An upload cut short while it is spliced cuts its receiver: fewer bytes
/// than its length, then the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_while_spliced_cuts_the_receiver() {
    let server = Server::start().await;
    let addr = server.addr;
    let receiver = tokio::spawn(async move {
        let mut r = TcpStream::connect(addr).await.expect("connect");
        r.write_all(b"GET /cut-splice HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let mut all = Vec::new();
        let _ = tokio::time::timeout(LIMIT, r.read_to_end(&mut all))
            .await
            .expect("closed in time");
        all
    });
    server
        .wait_for("receiver", |s| s.waiting_receivers == 1)
        .await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"PUT /cut-splice HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
        .await
        .expect("write");
    s.write_all(&vec![b'x'; 3_000_000]).await.expect("write");
    drop(s);
    let all = receiver.await.expect("task");
    let at = find(&all, b"\r\n\r\n").expect("a head") + 4;
    let body = &all[at..];
    assert!(body.len() < 10_000_000, "the receiver got it all?");
    assert!(body.iter().all(|&b| b == b'x'), "only the bytes sent");
    server.wait_empty().await;
    server.stop().await;
}

/// A receiver that closes as soon as it has every byte of a spliced
/// upload (as curl does) counts as having received it: the sender's log
/// says so, not that a receiver aborted. Senders first, as `tubes send`
/// before `curl` (their read-ahead goes through the relay, the rest is
/// spliced), and receivers first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_closes_once_it_has_a_spliced_upload_received_it() {
    let server = Server::start().await;
    let data = common::Pattern::new(11).bytes(100_000);
    for round in 0..20 {
        let sender_first = round % 2 == 0;
        let path = format!("/closes-{round}");
        let addr = server.addr;
        let get = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        let length = data.len();
        let mut receive = Some(async move {
            let mut r = TcpStream::connect(addr).await.expect("connect");
            r.write_all(get.as_bytes()).await.expect("write");
            let mut got = Vec::new();
            loop {
                if let Some(at) = find(&got, b"\r\n\r\n") {
                    if got.len() - (at + 4) >= length {
                        break;
                    }
                }
                fill(&mut r, &mut got).await;
            }
            // Closed at once, before anything else can come.
        });
        let receiver = if sender_first {
            None
        } else {
            let receiver = tokio::spawn(receive.take().expect("once"));
            server
                .wait_for("receiver", |s| s.waiting_receivers == 1)
                .await;
            Some(receiver)
        };
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            data.len()
        );
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(&data).await.expect("upload");
        let receiver = match receiver {
            Some(receiver) => receiver,
            None => {
                server.wait_for("sender", |s| s.waiting_senders == 1).await;
                tokio::spawn(receive.take().expect("once"))
            }
        };
        let mut log = Vec::new();
        tokio::time::timeout(LIMIT, s.read_to_end(&mut log))
            .await
            .expect("log in time")
            .expect("log");
        receiver.await.expect("receiver");
        let log = String::from_utf8_lossy(&log).into_owned();
        assert!(
            log.contains("All receiver(s) was/were received successfully."),
            "round {round}: {log}"
        );
    }
    server.wait_empty().await;
    server.stop().await;
}

/// An upload whose first bytes come in the same write as its head, to a
/// waiting receiver: every byte arrives, and each is counted once as
/// relayed, whichever side sends the bytes read with the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_with_the_head_are_counted_once() {
    let server = Server::start().await;
    let data = common::Pattern::new(29).bytes(3 << 20);
    for round in 0..10 {
        let path = format!("/with-head-{round}");
        let addr = server.addr;
        let get = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        let receiver = tokio::spawn(async move {
            let mut r = TcpStream::connect(addr).await.expect("connect");
            r.write_all(get.as_bytes()).await.expect("write");
            let mut rest = Vec::new();
            read_response(&mut r, &mut rest).await
        });
        server
            .wait_for("receiver", |s| s.waiting_receivers == 1)
            .await;
        let before = server.relay.totals().bytes;
        let mut request = format!(
            "PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            data.len()
        )
        .into_bytes();
        request.extend_from_slice(&data);
        let s = TcpStream::connect(server.addr).await.expect("connect");
        let log = upload_reading_log(s, request).await;
        let (_, body) = receiver.await.expect("receiver");
        assert!(body == data, "round {round}: the body differs");
        assert!(
            log.contains("All receiver(s) was/were received successfully."),
            "round {round}: {log}"
        );
        assert_eq!(
            server.relay.totals().bytes - before,
            data.len() as u64,
            "round {round}: bytes counted as relayed"
        );
    }
    server.wait_empty().await;
    server.stop().await;
}
