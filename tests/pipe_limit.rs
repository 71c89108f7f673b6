//! Spliced transfers take a pipe (two descriptors) each, at most a quarter
//! of the process's open-files limit; past it, transfers go through the
//! relay's queues, whole. A test binary of its own: it lowers its
//! process's limit before the server makes its first pipe (the budget is
//! read once).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Transfers at once: more than the pipes the lowered limit allows.
const TRANSFERS: usize = 60;
/// The lowered soft limit: 400 descriptors. The test's own connections
/// (two per transfer), the server's (two more) and the pipes (two each)
/// need 340.
const OPEN_FILES: u64 = 400;
/// Pipes that limit allows: an eighth of it.
const PIPES: usize = OPEN_FILES as usize / 8;
/// Body bytes each sender sends first, before any sends the rest.
const FIRST: usize = 64 << 10;

/// A receiver: its GET, then its body, whole. Counts in `head_in` once
/// its head is in, and in `first_in` once it has the first [`FIRST`]
/// bytes of its body.
async fn receive(
    addr: std::net::SocketAddr,
    path: String,
    head_in: Arc<AtomicUsize>,
    first_in: Arc<AtomicUsize>,
) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let get = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(get.as_bytes()).await.expect("GET");
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut head_end = None;
    let mut counted_first = false;
    loop {
        let n = stream.read(&mut chunk).await.expect("read");
        buf.extend_from_slice(&chunk[..n]);
        if head_end.is_none() {
            head_end = buf
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|at| at + 4);
            if head_end.is_some() {
                head_in.fetch_add(1, Ordering::SeqCst);
            }
        }
        if !counted_first && head_end.is_some_and(|at| buf.len() - at >= FIRST) {
            counted_first = true;
            first_in.fetch_add(1, Ordering::SeqCst);
        }
        if n == 0 {
            return buf;
        }
    }
}

/// Waits (bounded) until all [`TRANSFERS`] counted in `count`.
async fn until(count: &AtomicUsize, what: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while count.load(Ordering::SeqCst) < TRANSFERS {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_past_the_pipe_budget_go_through_the_relay_whole() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(OPEN_FILES),
            maximum: limit.maximum,
        },
    )
    .expect("lower the open-files limit");
    let server = Server::start().await;
    let size = 1 << 20;
    let data = Pattern::new(7).bytes(size);
    let heads = Arc::new(AtomicUsize::new(0));
    let firsts = Arc::new(AtomicUsize::new(0));
    let receivers: Vec<_> = (0..TRANSFERS)
        .map(|i| {
            let (path, heads, firsts) = (
                format!("/pipes-{i}"),
                Arc::clone(&heads),
                Arc::clone(&firsts),
            );
            tokio::spawn(receive(server.addr, path, heads, firsts))
        })
        .collect();
    server
        .wait_for("every receiver", |s| s.waiting_receivers == TRANSFERS)
        .await;
    // Every sender's head, no body yet: every transfer starts, and its
    // receiver waits for the body, without a pipe yet.
    let mut senders = Vec::new();
    for i in 0..TRANSFERS {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let head = format!("PUT /pipes-{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("head");
        senders.push(stream);
    }
    until(&heads, "every response started").await;
    let before = server.relay.totals();
    // The first bytes of every body: each transfer makes its pipe, or
    // cannot and leaves its bytes to the relay, and none ends, so all the
    // pipes made are held at once.
    for stream in &mut senders {
        stream.write_all(&data[..FIRST]).await.expect("first bytes");
    }
    until(&firsts, "every receiver has the first bytes").await;
    let mut tasks = Vec::new();
    for stream in senders {
        tasks.push(tokio::spawn(upload_reading_log(
            stream,
            data.slice(FIRST..),
        )));
    }
    let want = Sha256::digest(&data);
    for (i, receiver) in receivers.into_iter().enumerate() {
        let got = tokio::time::timeout(LIMIT, receiver)
            .await
            .expect("receiver in time")
            .expect("receiver");
        let at = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        let head = String::from_utf8_lossy(&got[..at]);
        assert!(head.starts_with("HTTP/1.1 200"), "receiver {i}: {head}");
        assert_eq!(got.len() - at, size, "receiver {i}");
        assert!(
            Sha256::digest(&got[at..]) == want,
            "receiver {i}: the bytes differ"
        );
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let log = task.await.expect("sender");
        assert!(
            log.contains("All receiver(s) was/were received successfully."),
            "sender {i}: {log}"
        );
    }
    let after = server.relay.totals();
    let total = (TRANSFERS * size) as u64;
    assert_eq!(after.bytes - before.bytes, total, "every byte counted once");
    assert_eq!(
        after.spliced - before.spliced,
        (PIPES * size) as u64,
        "as many transfers spliced as there were pipes, the others through the relay"
    );
    server.wait_empty().await;
    server.stop().await;
}
