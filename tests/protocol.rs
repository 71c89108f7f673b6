//! Every rule of the Piping spec besides the conformance checks, over
//! HTTP/1.0, HTTP/1.1 and h2c: reserved pages, rejections and their exact
//! messages, CORS, forwarded headers and the sender's log.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

per_protocol!(
    reserved_pages,
    rejections,
    preflight,
    forwarded_headers,
    sender_log_with_two_receivers,
);

async fn get(
    server: &Server,
    proto: Proto,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let (_c, response) = request(&server, proto, method, path, headers, empty()).await;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = read_body(response).await.expect("body");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn reserved_pages(proto: Proto) {
    let server = Server::start().await;
    let (status, headers, body) = get(&server, proto, "GET", "/", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(find(&headers, "content-type"), Some("text/html"));
    assert!(body.contains("<meta charset=\"utf-8\">"));

    let (status, headers, body) =
        get(&server, proto, "GET", "/noscript?path=a%22b&mode=text", &[]).await;
    assert_eq!(status, 200);
    let csp = find(&headers, "content-security-policy").expect("csp");
    let nonce = csp
        .strip_prefix("default-src 'none'; style-src 'nonce-")
        .and_then(|rest| rest.strip_suffix('\''))
        .expect("csp shape");
    assert!(
        body.contains(&format!("nonce=\"{nonce}\"")),
        "the style carries the nonce"
    );
    assert!(body.contains("<meta charset=\"utf-8\">"));
    assert!(body.contains("a&quot;b"), "the path is escaped");
    assert!(!body.contains("a\"b"));
    assert!(body.contains("name=\"input_text\""));

    let (status, headers, body) = get(&server, proto, "GET", "/version", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(find(&headers, "access-control-allow-origin"), Some("*"));
    assert_eq!(body, format!("{}\n", env!("CARGO_PKG_VERSION")));

    let (status, headers, body) = get(&server, proto, "GET", "/help", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(find(&headers, "content-type"), Some("text/plain"));
    assert_eq!(find(&headers, "access-control-allow-origin"), Some("*"));
    // Over TLS (HTTP/3 included) the help shows https URLs.
    let scheme = if matches!(proto, Proto::Https11 | Proto::H2 | Proto::H3) {
        "https"
    } else {
        "http"
    };
    assert!(
        body.contains(&format!("curl -T myfile {scheme}://localhost/mypath")),
        "{body}"
    );
    let (_, _, body) = get(
        &server,
        proto,
        "GET",
        "/help",
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert!(body.contains("https://localhost/mypath"), "{body}");

    let (status, _, body) = get(&server, proto, "GET", "/favicon.ico", &[]).await;
    assert_eq!((status, body.as_str()), (204, ""));
    let (status, headers, body) = get(&server, proto, "GET", "/robots.txt", &[]).await;
    assert_eq!((status, body.as_str()), (404, ""));
    assert_eq!(find(&headers, "content-length"), Some("0"));

    // HEAD: same status and headers, no body.
    for path in ["/", "/version", "/help", "/robots.txt", "/noscript"] {
        let (get_status, get_headers, _) = get(&server, proto, "GET", path, &[]).await;
        let (status, headers, body) = get(&server, proto, "HEAD", path, &[]).await;
        assert_eq!(status, get_status, "{path}");
        assert_eq!(body, "", "{path}");
        if path != "/noscript" {
            assert_eq!(
                find(&headers, "content-length"),
                find(&get_headers, "content-length"),
                "{path}"
            );
        }
        assert_eq!(
            find(&headers, "content-type"),
            find(&get_headers, "content-type"),
            "{path}"
        );
    }
    server.stop().await;
}

async fn expect_error(
    server: &Server,
    proto: Proto,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    status: u16,
    message: &str,
) {
    let body = if method == "POST" || method == "PUT" {
        full("data")
    } else {
        empty()
    };
    let (_c, response) = request(&server, proto, method, path, headers, body).await;
    assert_eq!(response.status().as_u16(), status, "{method} {path}");
    assert_eq!(header(&response, "content-type"), Some("text/plain"));
    assert_eq!(header(&response, "access-control-allow-origin"), Some("*"));
    assert_eq!(
        header(&response, "content-length"),
        Some(message.len().to_string().as_str())
    );
    let body = read_body(response).await.expect("body");
    assert_eq!(String::from_utf8_lossy(&body), message, "{method} {path}");
}

async fn rejections(proto: Proto) {
    let server = Server::start().await;
    for path in [
        "/",
        "/noscript",
        "/version",
        "/help",
        "/favicon.ico",
        "/robots.txt",
    ] {
        expect_error(
            &server,
            proto,
            "POST",
            path,
            &[],
            400,
            &format!("[ERROR] Cannot send to the reserved path '{path}'. (e.g. '/mypath123')\n"),
        )
        .await;
    }
    expect_error(
        &server,
        proto,
        "PUT",
        "/r",
        &[("content-range", "bytes 0-3/4")],
        400,
        "[ERROR] Content-Range is not supported for now in PUT\n",
    )
    .await;
    for (method, query, message) in [
        ("POST", "n=abc", "[ERROR] Invalid \"n\" query parameter\n"),
        ("GET", "n=abc", "[ERROR] Invalid \"n\" query parameter\n"),
        ("POST", "n=0", "[ERROR] n should > 0, but n = 0.\n"),
        ("GET", "n=-1", "[ERROR] n should > 0, but n = -1.\n"),
    ] {
        expect_error(
            &server,
            proto,
            method,
            &format!("/n?{query}"),
            &[],
            400,
            message,
        )
        .await;
    }
    expect_error(
        &server,
        proto,
        "DELETE",
        "/x",
        &[],
        405,
        "[ERROR] Unsupported method: DELETE.\n",
    )
    .await;
    let (status, headers, body) = get(&server, proto, "HEAD", "/x", &[]).await;
    assert_eq!((status, body.as_str()), (405, ""));
    assert_eq!(find(&headers, "content-length"), Some("34"));
    let (_c, response) = request(&server, proto, "PATCH", "/x", &[], empty()).await;
    assert_eq!(
        header(&response, "allow"),
        Some("GET, HEAD, POST, PUT, OPTIONS")
    );

    // Rules that depend on what waits on the path.
    let path = path("busy");
    let mut waiting = Conn::open(&server, proto).await;
    let _pending = waiting.send(
        waiting
            .request("GET", &format!("{path}?n=2"))
            .body(empty())
            .expect("req"),
    );
    server
        .wait_for("a receiver waits", |s| s.waiting_receivers == 1)
        .await;
    expect_error(
        &server,
        proto,
        "GET",
        &format!("{path}?n=3"),
        &[],
        400,
        "[ERROR] The number of receivers should be 2 but 3.\n",
    )
    .await;
    expect_error(
        &server,
        proto,
        "POST",
        &path,
        &[],
        400,
        "[ERROR] The number of receivers should be 2 but 1.\n",
    )
    .await;
    let mut second = Conn::open(&server, proto).await;
    let _second = second.send(
        second
            .request("GET", &format!("{path}?n=2"))
            .body(empty())
            .expect("req"),
    );
    server
        .wait_for("two receivers wait", |s| s.waiting_receivers == 2)
        .await;
    expect_error(
        &server,
        proto,
        "GET",
        &format!("{path}?n=2"),
        &[],
        400,
        "[ERROR] The number of receivers has reached limits.\n",
    )
    .await;

    let (tx, body) = streaming();
    let mut sender = Conn::open(&server, proto).await;
    let mut req = sender.request("POST", &format!("{path}?n=2"));
    if proto == Proto::Http10 {
        req = req.header("content-length", "100");
    }
    let _sent = sender.send(req.body(body).expect("req"));
    server.wait_for("transfer", |s| s.transfers == 1).await;
    expect_error(
        &server,
        proto,
        "GET",
        &path,
        &[],
        400,
        &format!("[ERROR] Connection on '{path}' has been established already.\n"),
    )
    .await;
    expect_error(
        &server,
        proto,
        "POST",
        &path,
        &[],
        400,
        &format!("[ERROR] Connection on '{path}' has been established already.\n"),
    )
    .await;
    drop(tx);

    let other = self::path("another");
    let mut first = Conn::open(&server, proto).await;
    let (_tx2, body) = streaming();
    let mut req = first.request("POST", &other);
    if proto == Proto::Http10 {
        req = req.header("content-length", "100");
    }
    let _first = first.send(req.body(body).expect("req"));
    server
        .wait_for("a sender waits", |s| s.waiting_senders == 1)
        .await;
    expect_error(
        &server,
        proto,
        "PUT",
        &other,
        &[],
        400,
        &format!("[ERROR] Another sender has been connected on '{other}'.\n"),
    )
    .await;
    expect_error(
        &server,
        proto,
        "GET",
        "/sw",
        &[("service-worker", "script")],
        400,
        "[ERROR] Service Worker registration is rejected.\n",
    )
    .await;
    server.stop().await;
}

async fn preflight(proto: Proto) {
    let server = Server::start().await;
    for private in [false, true] {
        let headers: &[(&str, &str)] = if private {
            &[("access-control-request-private-network", "true")]
        } else {
            &[]
        };
        let (status, headers, body) = get(&server, proto, "OPTIONS", "/any/path", headers).await;
        assert_eq!((status, body.as_str()), (200, ""));
        assert_eq!(find(&headers, "access-control-allow-origin"), Some("*"));
        assert_eq!(
            find(&headers, "access-control-allow-methods"),
            Some("GET, HEAD, POST, PUT, OPTIONS")
        );
        assert_eq!(
            find(&headers, "access-control-allow-headers"),
            Some("Content-Type, Content-Disposition, X-Piping")
        );
        assert_eq!(
            find(&headers, "access-control-expose-headers"),
            Some("Access-Control-Allow-Headers")
        );
        assert_eq!(find(&headers, "access-control-max-age"), Some("86400"));
        assert_eq!(find(&headers, "content-length"), Some("0"));
        assert_eq!(
            find(&headers, "access-control-allow-private-network"),
            private.then_some("true")
        );
    }
    server.stop().await;
}

/// Sends `body` with `headers` to a fresh path and returns what the
/// receiver sees.
async fn transfer(
    server: &Server,
    proto: Proto,
    headers: &[(&str, &str)],
    body: &'static str,
) -> (Vec<(String, String)>, String) {
    let path = path("headers");
    let mut sender = Conn::open(&server, proto).await;
    let mut req = sender.request("POST", &path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let _sent = tokio::spawn(sender.send(req.body(full(body)).expect("req")));
    server
        .wait_for("sender waits", |s| s.waiting_senders == 1)
        .await;
    let (status, received, text) = get(server, proto, "GET", &path, &[]).await;
    assert_eq!(status, 200);
    server.wait_empty().await;
    (received, text)
}

async fn forwarded_headers(proto: Proto) {
    let server = Server::start().await;
    let (headers, body) = transfer(
        &server,
        proto,
        &[
            ("content-type", "text/html; charset=utf-8"),
            ("content-disposition", "attachment; filename=\"a.html\""),
            ("x-piping", "first"),
            ("x-piping", "second"),
            ("x-other", "dropped"),
        ],
        "<b>hi</b>",
    )
    .await;
    assert_eq!(body, "<b>hi</b>");
    assert_eq!(
        find(&headers, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        find(&headers, "content-disposition"),
        Some("attachment; filename=\"a.html\"")
    );
    assert_eq!(find(&headers, "content-length"), Some("9"));
    let piping: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "x-piping")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(piping, ["first", "second"]);
    assert_eq!(
        find(&headers, "access-control-expose-headers"),
        Some("X-Piping")
    );
    assert_eq!(find(&headers, "access-control-allow-origin"), Some("*"));
    assert_eq!(find(&headers, "x-robots-tag"), Some("none"));
    assert_eq!(find(&headers, "x-other"), None);

    // No Content-Type from the sender: none forwarded, no sniffing.
    let (headers, _) = transfer(&server, proto, &[], "<html>").await;
    assert_eq!(find(&headers, "content-type"), None);
    assert_eq!(find(&headers, "access-control-expose-headers"), None);
    assert_eq!(find(&headers, "x-piping"), None);
    let allowed = [
        "content-length",
        "content-type",
        "content-disposition",
        "x-piping",
        "access-control-allow-origin",
        "access-control-expose-headers",
        "x-robots-tag",
        // Not forwarded from the sender: the server's own request to
        // proxies not to buffer or cache the stream (issue 9).
        "cache-control",
        "x-accel-buffering",
        // Whatever the stream claims to be, no script of it runs as the
        // relay's origin.
        "content-security-policy",
        "date",
        "connection",
        "transfer-encoding",
    ];
    for (k, _) in &headers {
        assert!(allowed.contains(&k.as_str()), "unexpected header {k}");
    }
    server.stop().await;
}

async fn sender_log_with_two_receivers(proto: Proto) {
    let server = Server::start().await;
    let path = format!("{}?n=2", path("log"));
    let mut sender = Conn::open(&server, proto).await;
    let sent = tokio::spawn(
        sender.send(
            sender
                .request("POST", &path)
                .body(full("to both"))
                .expect("req"),
        ),
    );
    server
        .wait_for("sender waits", |s| s.waiting_senders == 1)
        .await;
    let mut receivers = Vec::new();
    let mut conns = Vec::new();
    for k in 1..=2 {
        let mut conn = Conn::open(&server, proto).await;
        receivers.push(tokio::spawn(
            conn.send(conn.request("GET", &path).body(empty()).expect("req")),
        ));
        if k == 1 {
            server
                .wait_for("first receiver", |s| s.waiting_receivers == 1)
                .await;
        }
        conns.push(conn);
    }
    for r in receivers {
        let response = r.await.expect("task").expect("response");
        assert_eq!(read_body(response).await.expect("body"), "to both");
    }
    let response = sent.await.expect("task").expect("sender");
    let log = read_body(response).await.expect("log");
    assert_eq!(
        String::from_utf8_lossy(&log),
        "[INFO] Waiting for 2 receiver(s)...\n\
         [INFO] A receiver was connected.\n\
         [INFO] A receiver was connected.\n\
         [INFO] Start sending to 2 receiver(s)!\n\
         [INFO] Sent successfully!\n\
         [INFO] All receiver(s) was/were received successfully.\n"
    );
    server.stop().await;
}

/// HTTP/1.0: status lines say HTTP/1.0; the sender's log comes whole, with
/// a length; a receiver's body is delimited by the length or the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_0_wire_format() {
    let server = Server::start().await;
    let addr = server.addr;
    let receiver = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /ten HTTP/1.0\r\n\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    });
    server
        .wait_for("receiver", |s| s.waiting_receivers == 1)
        .await;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /ten HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    let sender = String::from_utf8_lossy(&out).into_owned();
    assert!(sender.starts_with("HTTP/1.0 200 OK\r\n"), "{sender}");
    let (head, body) = sender.split_once("\r\n\r\n").expect("head and body");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    assert!(!head.to_ascii_lowercase().contains("chunked"));
    assert!(body.ends_with("[INFO] All receiver(s) was/were received successfully.\n"));
    let received = tokio::time::timeout(LIMIT, receiver)
        .await
        .expect("in time")
        .expect("task");
    assert!(received.starts_with("HTTP/1.0 200 OK\r\n"), "{received}");
    assert!(received.ends_with("\r\n\r\nhello"), "{received}");
    server.stop().await;
}

/// curl sends `Expect: 100-continue` with large uploads and waits a second
/// for the `100` unless it comes: it must come before the sender's `200`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_before_the_sender_log() {
    let server = Server::start().await;
    let mut s = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    s.write_all(
        b"POST /continue HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, s.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 100 Continue\r\n"), "{text}");
    server.stop().await;
}
