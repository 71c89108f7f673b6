//! A fan-out (`?n=`) whose receivers are all first requests on their
//! connections shares the sender's upload with `tee(2)`: the bytes go from
//! the sender's socket into one pipe, are duplicated into each other
//! receiver's pipe and spliced to each receiver's socket
//! (src/transport/http1/upload/tee.rs). These tests check what receivers
//! and the sender see over real sockets: every byte to every receiver, in
//! both arrival orders and with HTTP/1.0 beside 1.1; a receiver that
//! leaves, a slow one, a sender cut short, every receiver leaving; curl
//! at both ends; and a receiver of another transport, with which the
//! relay carries the bytes itself.

mod common;

use std::time::Duration;

use common::{Conn, Proto, Server, LIMIT};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a raw receiver reads its response.
#[derive(Clone, Copy, Default)]
struct Reading {
    http10: bool,
    /// Leaves (closes) once it has this many body bytes.
    leave_after: Option<usize>,
    /// Reads 16 KiB at a time with a pause between reads.
    slow: bool,
}

/// What a raw receiver got: its head (lower case) and body bytes, and
/// whether the body was as long as its `content-length`.
struct Got {
    head: String,
    body: Vec<u8>,
    whole: bool,
}

/// A receiver speaking raw HTTP/1 (a first request on its connection).
async fn receive(addr: std::net::SocketAddr, path: String, how: Reading) -> Got {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let version = if how.http10 { "1.0" } else { "1.1" };
    stream
        .write_all(format!("GET {path} HTTP/{version}\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut all = Vec::new();
    let mut chunk = vec![0u8; if how.slow { 16 << 10 } else { 256 << 10 }];
    let mut length = None;
    let mut head_end = None;
    tokio::time::timeout(LIMIT, async {
        loop {
            if head_end.is_none() {
                if let Some(at) = all.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&all[..at]).to_ascii_lowercase();
                    length = head.lines().find_map(|line| {
                        line.strip_prefix("content-length: ")
                            .and_then(|v| v.trim().parse::<usize>().ok())
                    });
                    head_end = Some(at + 4);
                }
            }
            if let Some(at) = head_end {
                let got = all.len() - at;
                if length.is_some_and(|length| got >= length) {
                    break;
                }
                if how.leave_after.is_some_and(|leave| got >= leave) {
                    break;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
            if how.slow {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    })
    .await
    .expect("the response in time");
    let at = head_end.expect("a response head");
    let body = all.split_off(at);
    Got {
        head: String::from_utf8_lossy(&all).to_ascii_lowercase(),
        whole: length == Some(body.len()),
        body,
    }
}

/// Sends `data` (or its first `cut_after` bytes, then leaves) as a raw
/// HTTP/1.1 upload with a length; returns the sender's log.
async fn send(
    addr: std::net::SocketAddr,
    path: &str,
    data: &[u8],
    cut_after: Option<usize>,
) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    write.write_all(head.as_bytes()).await.expect("write");
    let part = cut_after.map_or(data, |at| &data[..at]);
    let body = part.to_vec();
    // The writing half stays open until the log has been read: a client
    // that half-closes is taken as gone (as with hyper).
    let upload = tokio::spawn(async move { write.write_all(&body).await.map(|()| write) });
    if cut_after.is_some() {
        drop(upload.await.expect("task"));
        return String::new();
    }
    let mut log = Vec::new();
    tokio::time::timeout(LIMIT, read.read_to_end(&mut log))
        .await
        .expect("log in time")
        .expect("log");
    drop(upload.await.expect("task"));
    String::from_utf8_lossy(&log).into_owned()
}

/// Starts one raw receiver per way of reading on `path`, and waits until
/// all of them are registered.
async fn receivers_waiting(
    server: &Server,
    path: &str,
    ways: &[Reading],
) -> Vec<tokio::task::JoinHandle<Got>> {
    let receivers = ways
        .iter()
        .map(|&how| tokio::spawn(receive(server.addr, path.to_string(), how)))
        .collect();
    let count = ways.len();
    server
        .wait_for("receivers", |s| s.waiting_receivers == count)
        .await;
    receivers
}

const ALL_RECEIVED: &str = "All receiver(s) was/were received successfully.";

/// Three receivers (one of them HTTP/1.0) get every byte, in both arrival
/// orders; the bytes are counted once as relayed, and most as spliced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_first_request_receivers_get_every_byte() {
    let server = Server::start().await;
    let data = common::Pattern::new(3).bytes(16 << 20);
    for (round, receivers_first) in [(0, true), (1, false)] {
        let path = format!("/tee-{round}?n=3");
        let before = server.relay.totals();
        let start_receivers = || {
            (0..3)
                .map(|i| {
                    let how = Reading {
                        http10: i == 2,
                        ..Reading::default()
                    };
                    tokio::spawn(receive(server.addr, path.clone(), how))
                })
                .collect::<Vec<_>>()
        };
        let (receivers, log) = if receivers_first {
            let receivers = start_receivers();
            server
                .wait_for("receivers", |s| s.waiting_receivers == 3)
                .await;
            (receivers, send(server.addr, &path, &data, None).await)
        } else {
            let sender = {
                let (addr, path, data) = (server.addr, path.clone(), data.clone());
                tokio::spawn(async move { send(addr, &path, &data, None).await })
            };
            server.wait_for("sender", |s| s.waiting_senders == 1).await;
            let receivers = start_receivers();
            (receivers, sender.await.expect("sender"))
        };
        assert!(log.contains(ALL_RECEIVED), "round {round}: {log}");
        for (i, receiver) in receivers.into_iter().enumerate() {
            let got = receiver.await.expect("receiver");
            assert!(
                got.head
                    .contains(&format!("content-length: {}", data.len())),
                "{}",
                got.head
            );
            assert!(
                got.whole,
                "round {round}, receiver {i}: {} bytes",
                got.body.len()
            );
            assert!(
                got.body == data,
                "round {round}, receiver {i}: the body differs"
            );
        }
        let after = server.relay.totals();
        assert_eq!(
            after.bytes - before.bytes,
            data.len() as u64,
            "relayed once"
        );
        let spliced = after.spliced - before.spliced;
        assert!(
            spliced >= data.len() as u64 / 2,
            "round {round}: only {spliced} bytes spliced"
        );
    }
    server.wait_empty().await;
    server.stop().await;
}

/// curl at both ends, as in the benchmark: three receivers get the file,
/// byte for byte (sha256), and the sender's log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_receivers_of_a_curl_upload() {
    let server = Server::start().await;
    let file = std::env::temp_dir().join(format!("tubes-tee-{}.bin", std::process::id()));
    let data = common::Pattern::new(5).bytes(32 << 20);
    std::fs::write(&file, &data).expect("write file");
    let want = Sha256::digest(&data);
    let url = server.url("/tee-curl?n=3");
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
    let _ = std::fs::remove_file(&file);
    server.wait_empty().await;
    server.stop().await;
}

/// One receiver of three leaves halfway, another reads slowly: the other
/// two get every byte, and the sender hears that one left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_leaves_halfway_leaves_the_others_whole() {
    let server = Server::start().await;
    let data = common::Pattern::new(9).bytes(24 << 20);
    let path = "/tee-leaves?n=3".to_string();
    let ways = [
        Reading::default(),
        Reading {
            slow: true,
            ..Reading::default()
        },
        Reading {
            leave_after: Some(3 << 20),
            ..Reading::default()
        },
    ];
    let receivers = receivers_waiting(&server, &path, &ways).await;
    let log = send(server.addr, &path, &data, None).await;
    assert!(log.contains("A receiver aborted."), "{log}");
    assert!(!log.contains(ALL_RECEIVED), "{log}");
    let mut got: Vec<Got> = Vec::new();
    for receiver in receivers {
        got.push(receiver.await.expect("receiver"));
    }
    assert!(got[0].whole && got[0].body == data, "the fast receiver");
    assert!(got[1].whole && got[1].body == data, "the slow receiver");
    assert!(!got[2].whole, "the one that left");
    assert!(
        data.starts_with(&got[2].body),
        "what the leaver got is the upload's start"
    );
    server.wait_empty().await;
    server.stop().await;
}

/// A sender cut short while its upload is shared cuts every receiver:
/// each gets fewer bytes than the length, only bytes that were sent, then
/// the connection closes. The path is free at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_cut_halfway_cuts_every_receiver() {
    let server = Server::start().await;
    let data = common::Pattern::new(13).bytes(10 << 20);
    let path = "/tee-cut?n=3".to_string();
    let receivers = receivers_waiting(&server, &path, &[Reading::default(); 3]).await;
    send(server.addr, &path, &data, Some(3 << 20)).await;
    for receiver in receivers {
        let got = receiver.await.expect("receiver");
        assert!(!got.whole, "a receiver got {} bytes", got.body.len());
        assert!(got.body.len() <= 3 << 20);
        assert!(data.starts_with(&got.body), "only bytes that were sent");
    }
    server.wait_empty().await;
    server.stop().await;
}

/// Every receiver leaves halfway: the sender's log says so, and the path
/// is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receiver_leaving_frees_the_path() {
    let server = Server::start().await;
    let data = common::Pattern::new(17).bytes(24 << 20);
    let path = "/tee-all-leave?n=3".to_string();
    let ways: Vec<Reading> = (0..3)
        .map(|i| Reading {
            leave_after: Some((1 + i) << 20),
            ..Reading::default()
        })
        .collect();
    let receivers = receivers_waiting(&server, &path, &ways).await;
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(
            format!(
                "PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                data.len()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    // The upload stops being read once nobody takes it: the log comes
    // while it is still being written.
    let upload = {
        let data = data.clone();
        tokio::spawn(async move {
            let _ = write.write_all(&data).await;
            write
        })
    };
    for receiver in receivers {
        assert!(!receiver.await.expect("receiver").whole);
    }
    let mut log = Vec::new();
    let _ = tokio::time::timeout(LIMIT, read.read_to_end(&mut log))
        .await
        .expect("log in time");
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains("All receiver(s) was/were aborted halfway."),
        "{log}"
    );
    upload.abort();
    server.wait_empty().await;
    // The path is free: a new transfer on it goes through.
    let small = common::Pattern::new(19).bytes(100_000);
    let receivers = receivers_waiting(&server, &path, &[Reading::default(); 3]).await;
    let log = send(server.addr, &path, &small, None).await;
    assert!(log.contains(ALL_RECEIVED), "{log}");
    for receiver in receivers {
        let got = receiver.await.expect("receiver");
        assert!(got.whole && got.body == small);
    }
    server.wait_empty().await;
    server.stop().await;
}

/// With one receiver on HTTP/2, the socket is not shared (that receiver
/// could not take part): the relay carries every byte, to all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_of_another_transport_gets_the_bytes_through_the_relay() {
    let server = Server::start().await;
    let data = common::Pattern::new(23).bytes(8 << 20);
    let path = "/tee-mixed?n=3".to_string();
    let raw: Vec<_> = (0..2)
        .map(|_| tokio::spawn(receive(server.addr, path.clone(), Reading::default())))
        .collect();
    let h2 = {
        let mut conn = Conn::open(&server, Proto::H2c).await;
        let request = conn
            .request("GET", &path)
            .body(common::empty())
            .expect("request");
        let response = conn.send(request);
        tokio::spawn(async move {
            let response = response.await.expect("response");
            let body = response.into_body().collect().await.expect("body");
            drop(conn);
            body.to_bytes()
        })
    };
    server
        .wait_for("receivers", |s| s.waiting_receivers == 3)
        .await;
    let before = server.relay.totals();
    let log = send(server.addr, &path, &data, None).await;
    assert!(log.contains(ALL_RECEIVED), "{log}");
    for receiver in raw {
        let got = receiver.await.expect("receiver");
        assert!(got.whole && got.body == data);
    }
    assert!(h2.await.expect("h2 receiver") == data);
    let after = server.relay.totals();
    assert_eq!(after.bytes - before.bytes, data.len() as u64);
    assert_eq!(after.spliced, before.spliced, "nothing spliced");
    server.wait_empty().await;
    server.stop().await;
}
