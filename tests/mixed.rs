//! Mixed pairs: a sender on one protocol, its receiver on another, for
//! every ordered pair of HTTP/1.1, h2c, HTTP/1.1 over TLS, h2 and HTTP/3,
//! sender first and receiver first. All listeners of the test server
//! share one relay; 1 MiB goes across and must arrive byte for byte.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

const SIZE: usize = 1 << 20;
const PIECE: usize = 64 << 10;

async fn transfer(from: Proto, to: Proto, sender_first: bool) {
    let server = Server::start().await;
    let path = path(&format!("mixed-{from:?}-{to:?}").to_lowercase());

    let mut receiving = Conn::open(&server, to).await;
    let mut sending = Conn::open(&server, from).await;
    let get = receiving
        .request("GET", &path)
        .body(empty())
        .expect("request");
    let (tx, upload) = streaming();
    let post = sending
        .request("POST", &path)
        .header("content-type", "application/octet-stream")
        .header("content-length", SIZE.to_string())
        .header("x-piping", "mixed")
        .body(upload)
        .expect("request");

    let (received, sent) = if sender_first {
        let sent = tokio::spawn(sending.send(post));
        server
            .wait_for("a waiting sender", |s| s.waiting_senders == 1)
            .await;
        (receiving.send(get).boxed(), sent)
    } else {
        let mut received = receiving.send(get).boxed();
        server
            .wait_for("a waiting receiver", |s| s.waiting_receivers == 1)
            .await;
        assert!(
            received.as_mut().now_or_never().is_none(),
            "a waiting receiver must not have a response"
        );
        (received, tokio::spawn(sending.send(post)))
    };

    let writer = tokio::spawn(async move {
        let mut pattern = Pattern::new(0x5eed);
        let mut hash = Sha256::new();
        for _ in 0..SIZE / PIECE {
            let piece = pattern.bytes(PIECE);
            hash.update(&piece);
            tx.send(Ok(piece)).await.expect("the sender's body is read");
        }
        hash.finalize()
    });

    let received = tokio::time::timeout(LIMIT, received)
        .await
        .expect("receiver's response in time")
        .expect("receiver's response");
    assert_eq!(received.status(), 200, "{from:?} -> {to:?}");
    assert_eq!(
        header(&received, "content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        header(&received, "content-length"),
        Some(SIZE.to_string().as_str())
    );
    assert_eq!(header(&received, "x-piping"), Some("mixed"));
    let mut body = received.into_body();
    let mut hash = Sha256::new();
    let mut len = 0;
    while let Some(frame) = tokio::time::timeout(LIMIT, body.frame())
        .await
        .expect("data in time")
    {
        let data: Bytes = frame.expect("no abort").into_data().unwrap_or_default();
        len += data.len();
        hash.update(&data);
    }
    assert_eq!(len, SIZE, "{from:?} -> {to:?}");
    let sent_hash = tokio::time::timeout(LIMIT, writer)
        .await
        .expect("writer in time")
        .expect("writer");
    assert_eq!(
        hash.finalize(),
        sent_hash,
        "sha256 of what was sent and received, {from:?} -> {to:?}"
    );

    let sent = tokio::time::timeout(LIMIT, sent)
        .await
        .expect("sender's response in time")
        .expect("task")
        .expect("sender's response");
    assert_eq!(sent.status(), 200);
    let log = read_body(sent)
        .await
        .expect("the sender's log ends cleanly");
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("[INFO] Sent successfully!\n"), "{log}");
    assert!(
        log.ends_with("[INFO] All receiver(s) was/were received successfully.\n"),
        "{log}"
    );
    server.wait_empty().await;
    drop(sending);
    drop(receiving);
    server.stop().await;
}

/// A module per ordered pair, with a test per order of arrival.
macro_rules! pairs {
    ($($name:ident: $from:ident -> $to:ident,)*) => {
        $(
            mod $name {
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sender_first() {
                    transfer(Proto::$from, Proto::$to, true).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn receiver_first() {
                    transfer(Proto::$from, Proto::$to, false).await
                }
            }
        )*
    };
}

pairs!(
    http1_1_to_h2c: Http11 -> H2c,
    http1_1_to_https1_1: Http11 -> Https11,
    http1_1_to_h2: Http11 -> H2,
    http1_1_to_h3: Http11 -> H3,
    h2c_to_http1_1: H2c -> Http11,
    h2c_to_https1_1: H2c -> Https11,
    h2c_to_h2: H2c -> H2,
    h2c_to_h3: H2c -> H3,
    https1_1_to_http1_1: Https11 -> Http11,
    https1_1_to_h2c: Https11 -> H2c,
    https1_1_to_h2: Https11 -> H2,
    https1_1_to_h3: Https11 -> H3,
    h2_to_http1_1: H2 -> Http11,
    h2_to_h2c: H2 -> H2c,
    h2_to_https1_1: H2 -> Https11,
    h2_to_h3: H2 -> H3,
    h3_to_http1_1: H3 -> Http11,
    h3_to_h2c: H3 -> H2c,
    h3_to_https1_1: H3 -> Https11,
    h3_to_h2: H3 -> H2,
);
