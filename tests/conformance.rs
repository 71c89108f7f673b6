//! The ten conformance checks of the Piping spec (section 10), each run
//! over HTTP/1.0, HTTP/1.1 and cleartext HTTP/2 against a fresh server.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::FutureExt;
use http_body_util::BodyExt;

per_protocol!(
    post_first,
    get_first,
    put,
    post_cancel_post,
    get_cancel_get,
    service_worker_registration_rejection,
    post_first_byte_by_byte_streaming,
    multipart_form_data,
    simultaneous_request,
    long_transfer,
);

/// A sender first, then a receiver; the path is free again afterwards.
async fn sender_first(proto: Proto, method: &str) {
    let server = Server::start().await;
    let path = path("first");
    for round in 0..2 {
        let mut sender = Conn::open(&server, proto).await;
        let req = sender
            .request(method, &path)
            .header("content-type", "text/plain")
            .body(full("my message"))
            .expect("request");
        let sent = tokio::spawn(sender.send(req));
        if proto == Proto::Http10 {
            // An HTTP/1.0 sender gets its log in one piece at the end, so
            // its headers cannot come first; wait for its registration.
            server
                .wait_for("sender waiting", |s| s.waiting_senders == 1)
                .await;
        }
        let mut sent = Some(sent);
        let mut early = None;
        if proto != Proto::Http10 {
            let response = tokio::time::timeout(LIMIT, sent.take().expect("pending"))
                .await
                .expect("sender headers in time")
                .expect("task")
                .expect("sender response");
            assert_eq!(response.status(), 200, "round {round}");
            assert_eq!(header(&response, "content-type"), Some("text/plain"));
            early = Some(response);
        }
        let (_c, second) = request(&server, proto, method, &path, &[], full("x")).await;
        assert!(
            second.status().is_client_error(),
            "second sender: {second:?}"
        );

        let (_r, received) = request(&server, proto, "GET", &path, &[], empty()).await;
        assert_eq!(received.status(), 200);
        assert_eq!(header(&received, "content-type"), Some("text/plain"));
        assert_eq!(header(&received, "x-robots-tag"), Some("none"));
        assert_eq!(header(&received, "access-control-allow-origin"), Some("*"));
        assert_eq!(read_body(received).await.expect("body"), "my message");

        let sender_response = match (early, sent) {
            (Some(response), _) => response,
            (None, Some(sent)) => tokio::time::timeout(LIMIT, sent)
                .await
                .expect("sender done")
                .expect("task")
                .expect("sender response"),
            (None, None) => unreachable!("one of them is set"),
        };
        let log = read_body(sender_response).await.expect("sender log");
        let log = String::from_utf8_lossy(&log);
        assert!(
            log.starts_with("[INFO] Waiting for 1 receiver(s)...\n"),
            "{log}"
        );
        assert!(
            log.ends_with("[INFO] All receiver(s) was/were received successfully.\n"),
            "{log}"
        );
        server.wait_empty().await;
    }
    server.stop().await;
}

async fn post_first(proto: Proto) {
    sender_first(proto, "POST").await;
}

async fn put(proto: Proto) {
    sender_first(proto, "PUT").await;
}

async fn get_first(proto: Proto) {
    let server = Server::start().await;
    let path = path("get-first");
    for _ in 0..2 {
        let mut receiver = Conn::open(&server, proto).await;
        let req = receiver.request("GET", &path).body(empty()).expect("req");
        let mut received = Box::pin(receiver.send(req));
        server
            .wait_for("receiver waiting", |s| s.waiting_receivers == 1)
            .await;
        assert!(
            received.as_mut().now_or_never().is_none(),
            "a waiting receiver must not have a response"
        );
        let (_s, sender) = request(
            &server,
            proto,
            "POST",
            &path,
            &[("content-type", "text/plain")],
            full("my message"),
        )
        .await;
        assert_eq!(sender.status(), 200);
        let received = tokio::time::timeout(LIMIT, received)
            .await
            .expect("in time")
            .expect("response");
        assert_eq!(received.status(), 200);
        assert_eq!(header(&received, "content-type"), Some("text/plain"));
        assert_eq!(header(&received, "x-robots-tag"), Some("none"));
        assert_eq!(read_body(received).await.expect("body"), "my message");
        let log = read_body(sender).await.expect("log");
        assert_eq!(
            String::from_utf8_lossy(&log),
            "[INFO] Waiting for 1 receiver(s)...\n\
             [INFO] 1 receiver(s) has/have been connected.\n\
             [INFO] Start sending to 1 receiver(s)!\n\
             [INFO] Sent successfully!\n\
             [INFO] All receiver(s) was/were received successfully.\n"
        );
        server.wait_empty().await;
    }
    server.stop().await;
}

async fn post_cancel_post(proto: Proto) {
    let server = Server::start().await;
    let path = path("cancel");
    let mut sender = Conn::open(&server, proto).await;
    let req = sender
        .request("POST", &path)
        .header("content-length", "10")
        .body(full("my message"))
        .expect("req");
    let pending = sender.send(req);
    server
        .wait_for("sender waiting", |s| s.waiting_senders == 1)
        .await;
    if proto != Proto::Http10 {
        let response = tokio::time::timeout(LIMIT, pending)
            .await
            .expect("headers in time")
            .expect("response");
        assert_eq!(response.status(), 200);
    }
    drop(sender);
    server.wait_empty().await;
    let mut again = Conn::open(&server, proto).await;
    let req = again
        .request("POST", &path)
        .body(full("again"))
        .expect("req");
    let again_response = tokio::spawn(again.send(req));
    server
        .wait_for("new sender waiting", |s| s.waiting_senders == 1)
        .await;
    let (_r, received) = request(&server, proto, "GET", &path, &[], empty()).await;
    assert_eq!(read_body(received).await.expect("body"), "again");
    let again_response = tokio::time::timeout(LIMIT, again_response)
        .await
        .expect("in time")
        .expect("task")
        .expect("response");
    assert_eq!(again_response.status(), 200);
    server.stop().await;
}

async fn get_cancel_get(proto: Proto) {
    let server = Server::start().await;
    let path = path("cancel");
    let mut receiver = Conn::open(&server, proto).await;
    let req = receiver.request("GET", &path).body(empty()).expect("req");
    let mut pending = Box::pin(receiver.send(req));
    server
        .wait_for("receiver waiting", |s| s.waiting_receivers == 1)
        .await;
    assert!(pending.as_mut().now_or_never().is_none());
    drop(pending);
    drop(receiver);
    server.wait_empty().await;

    let mut receiver = Conn::open(&server, proto).await;
    let req = receiver.request("GET", &path).body(empty()).expect("req");
    let received = receiver.send(req);
    server
        .wait_for("receiver waiting", |s| s.waiting_receivers == 1)
        .await;
    let (_s, sender) = request(&server, proto, "POST", &path, &[], full("hello")).await;
    assert_eq!(sender.status(), 200);
    let received = tokio::time::timeout(LIMIT, received)
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(read_body(received).await.expect("body"), "hello");
    server.stop().await;
}

async fn service_worker_registration_rejection(proto: Proto) {
    let server = Server::start().await;
    let started = std::time::Instant::now();
    let (_c, response) = request(
        &server,
        proto,
        "GET",
        "/sw.js",
        &[("service-worker", "script")],
        empty(),
    )
    .await;
    assert!(response.status().is_client_error());
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(
        read_body(response).await.expect("body"),
        "[ERROR] Service Worker registration is rejected.\n"
    );
    server.wait_empty().await;
    server.stop().await;
}

async fn post_first_byte_by_byte_streaming(proto: Proto) {
    let server = Server::start().await;
    let path = path("bytes");
    let (tx, body) = streaming();
    let mut sender = Conn::open(&server, proto).await;
    let mut req = sender.request("POST", &path);
    if proto == Proto::Http10 {
        req = req.header("content-length", "256");
    }
    let pending = tokio::spawn(sender.send(req.body(body).expect("req")));
    server
        .wait_for("sender waiting", |s| s.waiting_senders == 1)
        .await;
    let (_r, received) = request(&server, proto, "GET", &path, &[], empty()).await;
    let mut body = received.into_body();
    for i in 0..=255u8 {
        tx.send(Ok(Bytes::from(vec![i]))).await.expect("send byte");
        let frame = tokio::time::timeout(LIMIT, body.frame())
            .await
            .expect("byte in time")
            .expect("a frame")
            .expect("no error");
        let data = frame.into_data().expect("data frame");
        assert_eq!(&data[..], &[i], "byte {i} must arrive before the next");
    }
    drop(tx);
    let rest = tokio::time::timeout(LIMIT, body.collect())
        .await
        .expect("end in time")
        .expect("clean end");
    assert!(rest.to_bytes().is_empty());
    let response = tokio::time::timeout(LIMIT, pending)
        .await
        .expect("sender in time")
        .expect("task")
        .expect("sender");
    let log = read_body(response).await.expect("log");
    assert!(String::from_utf8_lossy(&log).contains("Sent successfully!"));
    drop(sender);
    server.stop().await;
}

async fn multipart_form_data(proto: Proto) {
    let server = Server::start().await;
    let path = path("multipart");
    let data = Pattern::new(8).bytes(8 << 20);
    let boundary = "----tubes-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::with_capacity(data.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"input_data\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let length = body.len().to_string();
    let mut sender = Conn::open(&server, proto).await;
    let req = sender
        .request("POST", &path)
        .header("content-type", &content_type)
        .header("content-length", &length)
        .body(full(body))
        .expect("req");
    let pending = tokio::spawn(sender.send(req));
    server
        .wait_for("sender waiting", |s| s.waiting_senders == 1)
        .await;
    let (_r, received) = request(&server, proto, "GET", &path, &[], empty()).await;
    assert_eq!(received.status(), 200);
    assert_eq!(
        header(&received, "content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        header(&received, "content-disposition"),
        Some("form-data; name=\"input_data\"")
    );
    assert_eq!(header(&received, "content-length"), None);
    let got = read_body(received).await.expect("body");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the bytes must be exactly the part's");
    let sender_response = tokio::time::timeout(LIMIT, pending)
        .await
        .expect("in time")
        .expect("task")
        .expect("sender");
    assert_eq!(sender_response.status(), 200);
    drop(sender);
    server.stop().await;
}

async fn simultaneous_request(proto: Proto) {
    let server = Server::start().await;
    for i in 0..10 {
        let path = path("simultaneous");
        let message = format!("message {i}");
        // Over h2c and HTTP/3 both share one connection, as two streams;
        // HTTP/1 needs a connection each.
        let mut a = Conn::open(&server, proto).await;
        let mut b = if matches!(proto, Proto::H2c | Proto::H3) {
            None
        } else {
            Some(Conn::open(&server, proto).await)
        };
        let get = a.send(a.request("GET", &path).body(empty()).expect("req"));
        let post_req = a
            .request("POST", &path)
            .body(full(message.clone()))
            .expect("req");
        let post = match b.as_mut() {
            Some(b) => b.send(post_req),
            None => {
                a.ready().await;
                a.send(post_req)
            }
        };
        let (get, post) = tokio::time::timeout(LIMIT, async { tokio::join!(get, post) })
            .await
            .expect("both answered in time");
        let got = read_body(get.expect("get")).await.expect("body");
        assert_eq!(got, message.as_bytes());
        let log = read_body(post.expect("post")).await.expect("log");
        assert!(String::from_utf8_lossy(&log).contains("Sent successfully!"));
    }
    server.wait_empty().await;
    server.stop().await;
}

async fn long_transfer(proto: Proto) {
    let server = Server::start().await;
    let path = path("long");
    let chunks = 200usize;
    let chunk = 16 * 1024;
    let (tx, body) = streaming();
    let mut sender = Conn::open(&server, proto).await;
    let mut req = sender.request("POST", &path);
    if proto == Proto::Http10 {
        req = req.header("content-length", (chunks * chunk).to_string());
    }
    let pending = tokio::spawn(sender.send(req.body(body).expect("req")));
    let writer = tokio::spawn(async move {
        let mut pattern = Pattern::new(42);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
        for _ in 0..chunks {
            tick.tick().await;
            if tx.send(Ok(pattern.bytes(chunk))).await.is_err() {
                return false;
            }
        }
        true
    });
    let (_r, received) = request(&server, proto, "GET", &path, &[], empty()).await;
    let mut body = received.into_body();
    let mut expected = Pattern::new(42);
    let mut total = 0usize;
    let mut want = vec![0u8; chunk];
    while let Some(frame) = tokio::time::timeout(LIMIT, body.frame())
        .await
        .expect("data in time")
    {
        let data = frame.expect("no abort").into_data().unwrap_or_default();
        for piece in data.chunks(1) {
            if total % chunk == 0 {
                expected.fill(&mut want);
            }
            assert_eq!(piece[0], want[total % chunk], "byte {total}");
            total += 1;
        }
    }
    assert_eq!(total, chunks * chunk);
    assert!(
        writer.await.expect("writer"),
        "sender was held back for good"
    );
    let response = tokio::time::timeout(LIMIT, pending)
        .await
        .expect("sender in time")
        .expect("task")
        .expect("sender");
    let log = read_body(response).await.expect("log");
    assert!(
        String::from_utf8_lossy(&log).contains("All receiver(s) was/were received successfully.")
    );
    drop(sender);
    server.wait_empty().await;
    server.stop().await;
}
