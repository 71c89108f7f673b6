//! TLS: a certificate swapped on disk during a running transfer. The
//! transfer finishes on the old certificate; new connections get the new.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tubes::relay::{Relay, RelayConfig};
use tubes::server::{self, ServeConfig};
use tubes::transport::tls::{write_self_signed, Certs, Source, ALPN_H2, ALPN_HTTP11};

fn client_config(
    certs: &[rustls::pki_types::CertificateDer<'static>],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert.clone()).expect("trust");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An HTTP/1.1-over-TLS connection trusting exactly `trust`.
async fn connect(
    addr: std::net::SocketAddr,
    trust: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<hyper::client::conn::http1::SendRequest<ReqBody>, std::io::Error> {
    let stream = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(client_config(trust))
        .connect(name, stream)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn touch_later(paths: &[&std::path::Path]) {
    let later = SystemTime::now() + Duration::from_secs(10);
    for p in paths {
        let f = std::fs::File::options().write(true).open(p).expect("open");
        f.set_modified(later).expect("set mtime");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_swapped_during_a_transfer() {
    let dir = std::env::temp_dir().join(format!("tubes-tls-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    write_self_signed(&cert, &key).expect("first pair");
    let certs = Certs::load(Source::Files {
        cert: cert.clone(),
        key: key.clone(),
    })
    .expect("load");
    let old_chain = certs.chain();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let relay = Relay::new(RelayConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server::serve_tls(
        listener,
        relay.clone(),
        ServeConfig::default(),
        Arc::new(certs.server_config(&[ALPN_H2, ALPN_HTTP11])),
        async move {
            let _ = stopped.await;
        },
    ));

    // A transfer starts on the first certificate.
    let mut receiver = connect(addr, &old_chain).await.expect("receiver connects");
    let received = receiver.send_request(
        http::Request::get("/swap")
            .header("host", "localhost")
            .body(empty())
            .expect("req"),
    );
    let mut sender = connect(addr, &old_chain).await.expect("sender connects");
    let (tx, body) = streaming();
    let sent = sender.send_request(
        http::Request::post("/swap")
            .header("host", "localhost")
            .body(body)
            .expect("req"),
    );
    let sent = tokio::spawn(sent);
    let response = tokio::time::timeout(LIMIT, received)
        .await
        .expect("in time")
        .expect("response");
    let mut body = response.into_body();
    let mut pattern = Pattern::new(5);
    let mut expected = Vec::new();
    let mut got = Vec::new();
    for _ in 0..4 {
        let chunk: Bytes = pattern.bytes(64 * 1024);
        expected.extend_from_slice(&chunk);
        tx.send(Ok(chunk)).await.expect("send");
    }
    while got.len() < 64 * 1024 {
        let frame = tokio::time::timeout(LIMIT, body.frame())
            .await
            .expect("data")
            .expect("frame")
            .expect("ok");
        got.extend_from_slice(&frame.into_data().unwrap_or_default());
    }

    // The files change: a new pair, reloaded while the transfer runs.
    write_self_signed(&cert, &key).expect("second pair");
    touch_later(&[&cert, &key]);
    assert!(
        certs.reload_if_changed().expect("reload"),
        "the new pair is taken"
    );
    let new_chain = certs.chain();
    assert_ne!(new_chain, old_chain);

    // New connections get the new certificate: trusting only the old one
    // fails, trusting the new one works.
    assert!(
        connect(addr, &old_chain).await.is_err(),
        "old certificate still served"
    );
    let mut fresh = connect(addr, &new_chain)
        .await
        .expect("new certificate served");
    let version = fresh
        .send_request(
            http::Request::get("/version")
                .header("host", "localhost")
                .body(empty())
                .expect("req"),
        )
        .await
        .expect("version");
    assert_eq!(version.status(), 200);

    // The running transfer goes on to its end, every byte intact.
    for _ in 0..4 {
        let chunk: Bytes = pattern.bytes(64 * 1024);
        expected.extend_from_slice(&chunk);
        tx.send(Ok(chunk)).await.expect("send");
    }
    drop(tx);
    while let Some(frame) = tokio::time::timeout(LIMIT, body.frame())
        .await
        .expect("data")
    {
        got.extend_from_slice(&frame.expect("no abort").into_data().unwrap_or_default());
    }
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the transfer's bytes are intact");
    let log = tokio::time::timeout(LIMIT, sent)
        .await
        .expect("in time")
        .expect("task")
        .expect("log");
    let log = read_body(log).await.expect("log body");
    assert!(
        String::from_utf8_lossy(&log).contains("All receiver(s) was/were received successfully.")
    );

    let _ = stop.send(());
    let _ = tokio::time::timeout(LIMIT, served).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that opens a TCP connection and never says hello does not
/// hold up anyone else's handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_blocks_nobody() {
    let server = Server::start().await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(server.tls_addr).await.expect("connect"));
    }
    let (_c, response) = request(&server, Proto::Https11, "GET", "/version", &[], empty()).await;
    assert_eq!(response.status(), 200);
    drop(idle);
    server.stop().await;
}

/// A handshake that stalls is dropped after the configured timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_dropped() {
    use tokio::io::AsyncReadExt;
    let certs = Certs::load(Source::SelfSigned).expect("certs");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = ServeConfig {
        tls_handshake_timeout: Duration::from_millis(200),
        ..ServeConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server::serve_tls(
        listener,
        Relay::default(),
        config,
        Arc::new(certs.server_config(&[ALPN_HTTP11])),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(LIMIT, stalled.read(&mut buf))
        .await
        .expect("the server closes the stalled connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let _ = stop.send(());
    let _ = tokio::time::timeout(LIMIT, served).await;
}
