//! Fault tests: peers that leave at every stage, senders cut short, slow
//! and hostile clients. Each is a test of its own; each ends by checking
//! that the registry is empty and that no server task panicked.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts a `curl` receiver; its output goes to a pipe we read whole.
fn curl(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("curl must be installed: run scripts/test.sh, which installs it")
}

async fn waiting_sender_leaves(proto: Proto) {
    let server = Server::start().await;
    let path = path("sender-leaves");
    // A streaming sender that has sent a little and not ended.
    let (tx, body) = streaming();
    let mut sender = Conn::open(&server, proto).await;
    let mut req = sender.request("POST", &path);
    if proto == Proto::Http10 {
        req = req.header("content-length", "1000");
    }
    let pending = sender.send(req.body(body).expect("req"));
    tx.send(Ok(Bytes::from_static(b"partial")))
        .await
        .expect("send");
    server
        .wait_for("sender waiting", |s| s.waiting_senders == 1)
        .await;
    drop(pending);
    drop(sender);
    server.wait_empty().await;
    // The path is free at once: a new pair transfers on it.
    let mut again = Conn::open(&server, proto).await;
    let req = again
        .request("POST", &path)
        .body(full("fresh"))
        .expect("req");
    let _again = tokio::spawn(again.send(req));
    let (_r, received) = request(&server, proto, "GET", &path, &[], empty()).await;
    assert_eq!(read_body(received).await.expect("body"), "fresh");
    server.stop().await;
}

async fn waiting_receiver_leaves(proto: Proto) {
    let server = Server::start().await;
    let path = path("receiver-leaves");
    for _ in 0..2 {
        let mut receiver = Conn::open(&server, proto).await;
        let req = receiver.request("GET", &path).body(empty()).expect("req");
        let pending = receiver.send(req);
        server
            .wait_for("receiver waiting", |s| s.waiting_receivers == 1)
            .await;
        drop(pending);
        drop(receiver);
        server.wait_empty().await;
    }
    // With n=2, one of two waiting receivers leaves; a new one takes its
    // place and both get the stream.
    let n2 = format!("{path}?n=2");
    let mut first = Conn::open(&server, proto).await;
    let first_rx = first.send(first.request("GET", &n2).body(empty()).expect("req"));
    let mut leaver = Conn::open(&server, proto).await;
    let leaver_rx = leaver.send(leaver.request("GET", &n2).body(empty()).expect("req"));
    server
        .wait_for("two waiting", |s| s.waiting_receivers == 2)
        .await;
    drop(leaver_rx);
    drop(leaver);
    server
        .wait_for("one left", |s| s.waiting_receivers == 1)
        .await;
    let mut second = Conn::open(&server, proto).await;
    let second_rx = second.send(second.request("GET", &n2).body(empty()).expect("req"));
    server
        .wait_for("two waiting again", |s| s.waiting_receivers == 2)
        .await;
    let mut sender = Conn::open(&server, proto).await;
    let _sent =
        tokio::spawn(sender.send(sender.request("POST", &n2).body(full("both")).expect("req")));
    for rx in [first_rx, second_rx] {
        let response = tokio::time::timeout(LIMIT, rx)
            .await
            .expect("in time")
            .expect("response");
        assert_eq!(read_body(response).await.expect("body"), "both");
    }
    server.wait_empty().await;
    server.stop().await;
}

per_protocol!(waiting_sender_leaves, waiting_receiver_leaves);

/// The sender is cut mid-stream: every receiver sees a cut response, both
/// a hyper client and curl, never a clean end.
async fn sender_cut(proto: Proto, declared_length: bool) {
    let server = Server::start().await;
    let path = path("cut");
    let url = server.url(&format!("{path}?n=2"));
    let curl_rx = curl(&[&url]);
    server
        .wait_for("curl waiting", |s| s.waiting_receivers == 1)
        .await;
    let _receiver_conn = {
        let mut conn = Conn::open(&server, proto).await;
        let pending = conn.send(
            conn.request("GET", &format!("{path}?n=2"))
                .body(empty())
                .expect("req"),
        );
        server
            .wait_for("both waiting", |s| s.waiting_receivers == 2)
            .await;
        let (tx, body) = streaming();
        let mut sender = Conn::open(&server, proto).await;
        let mut req = sender.request("POST", &format!("{path}?n=2"));
        if declared_length {
            req = req.header("content-length", "1000000");
        }
        let _sent = sender.send(req.body(body).expect("req"));
        let response = tokio::time::timeout(LIMIT, pending)
            .await
            .expect("in time")
            .expect("response");
        if declared_length {
            assert_eq!(header(&response, "content-length"), Some("1000000"));
        }
        tx.send(Ok(Bytes::from(vec![7u8; 50_000])))
            .await
            .expect("send");
        let mut body = response.into_body();
        let first = tokio::time::timeout(LIMIT, body.frame())
            .await
            .expect("first bytes in time");
        assert!(first.is_some());
        // Cut the sender: its body fails and its connection closes.
        let _ = tx.send(Err(std::io::Error::other("cut"))).await;
        drop(sender);
        let rest = tokio::time::timeout(LIMIT, body.collect())
            .await
            .expect("end in time");
        assert!(rest.is_err(), "a cut stream must not end cleanly");
        conn
    };
    let output = tokio::time::timeout(LIMIT, curl_rx.wait_with_output())
        .await
        .expect("curl in time")
        .expect("curl ran");
    assert!(
        !output.status.success(),
        "curl must report the cut stream, got success with {} bytes",
        output.stdout.len()
    );
    assert!(output.stdout.len() < 1_000_000);
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_cut_chunked_http1_1() {
    sender_cut(Proto::Http11, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_cut_with_content_length_http1_1() {
    sender_cut(Proto::Http11, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_cut_chunked_h2c() {
    sender_cut(Proto::H2c, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_cut_with_content_length_h2c() {
    sender_cut(Proto::H2c, true).await;
}

/// One receiver of `n` leaves mid-stream; the others get every byte.
async fn one_receiver_leaves(proto: Proto, n: usize) {
    let server = Server::start().await;
    let path = format!("{}?n={n}", path("leaves"));
    let total = 8 << 20;
    let data = Pattern::new(n as u64).bytes(total);
    let expected = Sha256::digest(&data);
    let mut conns = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..n {
        let mut conn = Conn::open(&server, proto).await;
        pending.push(conn.send(conn.request("GET", &path).body(empty()).expect("req")));
        conns.push(conn);
    }
    server
        .wait_for("receivers waiting", |s| s.waiting_receivers == n)
        .await;
    let (tx, body) = streaming();
    let mut sender = Conn::open(&server, proto).await;
    let sent = tokio::spawn(sender.send(sender.request("POST", &path).body(body).expect("req")));
    let writer = tokio::spawn(async move {
        for piece in data.chunks(64 * 1024) {
            if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                return;
            }
        }
    });
    let mut responses = Vec::new();
    for p in pending {
        responses.push(
            tokio::time::timeout(LIMIT, p)
                .await
                .expect("in time")
                .expect("response"),
        );
    }
    // The first receiver reads a little, then leaves.
    let leaver = responses.remove(0);
    let leaver_conn = conns.remove(0);
    let mut leaver_body = leaver.into_body();
    let _ = tokio::time::timeout(LIMIT, leaver_body.frame())
        .await
        .expect("frame");
    drop(leaver_body);
    drop(leaver_conn);
    let mut readers = Vec::new();
    for response in responses {
        readers.push(tokio::spawn(async move {
            let mut hasher = Sha256::new();
            let mut body = response.into_body();
            let mut len = 0;
            while let Some(frame) = tokio::time::timeout(LIMIT, body.frame())
                .await
                .expect("data in time")
            {
                let data = frame.expect("no abort").into_data().unwrap_or_default();
                len += data.len();
                hasher.update(&data);
            }
            (len, hasher.finalize())
        }));
    }
    for reader in readers {
        let (len, digest) = reader.await.expect("reader");
        assert_eq!(len, total);
        assert_eq!(digest, expected, "sha256 of a remaining receiver");
    }
    writer.await.expect("writer");
    let response = tokio::time::timeout(LIMIT, sent)
        .await
        .expect("in time")
        .expect("task")
        .expect("sender");
    let log = String::from_utf8_lossy(&read_body(response).await.expect("log")).into_owned();
    assert!(log.contains("[INFO] A receiver aborted.\n"), "{log}");
    assert!(
        !log.contains("All receiver(s) was/were aborted halfway."),
        "{log}"
    );
    drop(sender);
    drop(conns);
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_receivers_leaves_http1_1() {
    one_receiver_leaves(Proto::Http11, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_receivers_leaves_http1_1() {
    one_receiver_leaves(Proto::Http11, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_receivers_leaves_h2c() {
    one_receiver_leaves(Proto::H2c, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_receivers_leaves_h2c() {
    one_receiver_leaves(Proto::H2c, 3).await;
}

/// All receivers leave: the sender is told and its request is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_receivers_leave() {
    let server = Server::start().await;
    let path = format!("{}?n=2", path("all-leave"));
    let mut conns = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..2 {
        let mut conn = Conn::open(server.addr, Proto::Http11).await;
        pending.push(conn.send(conn.request("GET", &path).body(empty()).expect("req")));
        conns.push(conn);
    }
    server
        .wait_for("waiting", |s| s.waiting_receivers == 2)
        .await;
    let (tx, body) = streaming();
    let mut sender = Conn::open(server.addr, Proto::Http11).await;
    let sent = tokio::spawn(sender.send(sender.request("POST", &path).body(body).expect("req")));
    tx.send(Ok(Bytes::from_static(b"hello")))
        .await
        .expect("send");
    for p in pending {
        let response = tokio::time::timeout(LIMIT, p)
            .await
            .expect("in time")
            .expect("response");
        drop(response);
    }
    // The log is read from before the receivers leave: the client drops
    // what it has not read once the server closes the upload it writes.
    let response = tokio::time::timeout(LIMIT, sent)
        .await
        .expect("in time")
        .expect("task")
        .expect("sender");
    let log = tokio::spawn(read_body(response));
    drop(conns);
    // Keep writing: the relay notices the receivers gone on its next write.
    let writer = tokio::spawn(async move {
        for _ in 0..10_000 {
            if tx.send(Ok(Bytes::from(vec![1u8; 1024]))).await.is_err() {
                return true;
            }
        }
        false
    });
    let log = tokio::time::timeout(LIMIT, log)
        .await
        .expect("in time")
        .expect("task");
    let log = String::from_utf8_lossy(&log.expect("log")).into_owned();
    assert!(
        log.ends_with("[INFO] All receiver(s) was/were aborted halfway.\n"),
        "{log}"
    );
    assert!(tokio::time::timeout(LIMIT, writer)
        .await
        .expect("writer ends")
        .expect("task"));
    server.wait_empty().await;
    server.stop().await;
}

/// 10,000 distinct paths opened and abandoned leave the registry empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_abandoned_paths_leave_nothing() {
    let server = Server::start().await;
    let batches = 50;
    let per_batch = 100; // receivers; as many senders
    for batch in 0..batches {
        let mut conn = Conn::open(server.addr, Proto::H2c).await;
        let mut pending = Vec::new();
        let mut bodies = Vec::new();
        for i in 0..per_batch {
            conn.ready().await;
            pending.push(
                conn.send(
                    conn.request("GET", &format!("/abandon-r-{batch}-{i}"))
                        .body(empty())
                        .expect("req"),
                ),
            );
            let (tx, body) = streaming();
            bodies.push(tx);
            conn.ready().await;
            pending.push(
                conn.send(
                    conn.request("POST", &format!("/abandon-s-{batch}-{i}"))
                        .body(body)
                        .expect("req"),
                ),
            );
        }
        let driver = tokio::spawn(futures_util::future::join_all(pending));
        server
            .wait_for("a batch waiting", |s| {
                s.waiting_receivers == per_batch && s.waiting_senders == per_batch
            })
            .await;
        driver.abort();
        drop(bodies);
        drop(conn);
        server.wait_empty().await;
    }
    assert_eq!(server.relay.stats().paths, 0);
    server.stop().await;
}

/// A multipart upload trickling one byte a second holds nobody else up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_multipart_does_not_delay_others() {
    let server = Server::start().await;
    let addr = server.addr;
    let trickler = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            b"POST /trickle HTTP/1.1\r\nHost: x\r\n\
              Content-Type: multipart/form-data; boundary=XX\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .expect("head");
        let part = b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nslow";
        for b in part {
            let chunk = format!("1\r\n{}\r\n", *b as char);
            if s.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let started = std::time::Instant::now();
    let mut pairs = Vec::new();
    for i in 0..50 {
        pairs.push(tokio::spawn(async move {
            let path = format!("/busy-{i}");
            let (_s, sender) = request(addr, Proto::Http11, "POST", &path, &[], full("x")).await;
            assert_eq!(sender.status(), 200);
            let (_r, received) = request(addr, Proto::Http11, "GET", &path, &[], empty()).await;
            assert_eq!(read_body(received).await.expect("body"), "x");
        }));
    }
    for pair in pairs {
        pair.await.expect("pair");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "100 requests took {took:?} beside a trickling upload"
    );
    assert!(
        !trickler.is_finished(),
        "the trickler must still be trickling"
    );
    trickler.abort();
    server.stop().await;
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_host_is_served() {
    let server = Server::start().await;
    let answer = raw_exchange(
        server.addr,
        "GET /help HTTP/1.1\r\nHost: tübes.例え\r\nConnection: close\r\n\r\n".as_bytes(),
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("curl"), "{text}");
    // The server goes on serving everyone else.
    let (_c, version) = request(server.addr, Proto::Http11, "GET", "/version", &[], empty()).await;
    assert_eq!(version.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_without_boundary_is_refused_at_once() {
    let server = Server::start().await;
    for proto in [Proto::Http11, Proto::H2c] {
        // The body never ends: a 400 must come without reading it.
        let (tx, body) = streaming();
        let (_c, response) = request(
            &server,
            proto,
            "POST",
            "/no-boundary",
            &[("content-type", "multipart/form-data")],
            body,
        )
        .await;
        assert_eq!(response.status(), 400);
        let text = read_body(response).await.expect("body");
        assert!(text.starts_with(b"[ERROR] "), "{text:?}");
        drop(tx);
    }
    server.wait_empty().await;
    server.stop().await;
}

/// Garbage and hostile request lines get an error or a closed connection,
/// and the server serves the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_do_not_hurt() {
    let server = Server::start().await;
    let cases: &[&[u8]] = &[
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET /%%%%%%%%?n=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /x?n=%FF%FE HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /x?n=99999999999999999999999 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /x?n=-5 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot-multi",
        b"BREW /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ];
    for (i, case) in cases.iter().enumerate() {
        eprintln!("case {i}");
        let answer = raw_exchange(server.addr, case).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4") || text.starts_with("HTTP/1.1 200"),
            "{text}"
        );
    }
    let (_c, version) = request(server.addr, Proto::Http11, "GET", "/version", &[], empty()).await;
    assert_eq!(version.status(), 200);
    server.stop().await;
}

/// The same faults over TLS and HTTP/3. (A cut sender with an h3
/// receiver is covered in tests/http3.rs; here the h3 test client's
/// library, h3-quinn 0.0.10, can panic in `stop_sending` when a body is
/// dropped while a read is in flight, a client-side bug.)
mod secure {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sender_cut_chunked_h2() {
        sender_cut(Proto::H2, false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sender_cut_with_content_length_https1_1() {
        sender_cut(Proto::Https11, true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_of_three_receivers_leaves_h2() {
        one_receiver_leaves(Proto::H2, 3).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_of_two_receivers_leaves_h3() {
        one_receiver_leaves(Proto::H3, 2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_of_three_receivers_leaves_h3() {
        one_receiver_leaves(Proto::H3, 3).await;
    }
}

/// An HTTP/1.1 sender that leaves while waiting, after sending more than
/// the relay reads ahead: nothing reads its connection any more, so only
/// the waiting line the relay writes again every few seconds finds it
/// gone. The path is then free (spec section 8), within two of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_sender_past_its_read_ahead_that_leaves_frees_the_path() {
    let server = Server::start().await;
    let path = path("big-sender-leaves");
    let mut sender = TcpStream::connect(server.addr).await.expect("connect");
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    sender.write_all(head.as_bytes()).await.expect("head");
    // Half of the body: far more than the 64 KiB read ahead.
    sender
        .write_all(&Pattern::new(7).bytes(512 << 10))
        .await
        .expect("body");
    server
        .wait_for("sender waiting", |s| s.waiting_senders == 1)
        .await;
    drop(sender);
    // Found gone by the second waiting line at the latest (5 s apart).
    server.wait_empty().await;
    let mut again = Conn::open(&server, Proto::Http11).await;
    let req = again
        .request("POST", &path)
        .body(full("fresh"))
        .expect("req");
    let _again = tokio::spawn(again.send(req));
    let (_r, received) = request(&server, Proto::Http11, "GET", &path, &[], empty()).await;
    assert_eq!(read_body(received).await.expect("body"), "fresh");
    server.stop().await;
}
