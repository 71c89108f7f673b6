//! WebSocket connections to the relay, for `tubes expose` and the
//! channels of `tubes tunnel client --exposed`: TCP, then TLS (rustls, the
//! system's roots, or any certificate with `-k`) for an `https://` relay,
//! then the HTTP/1.1 upgrade, with the configured headers (`-H`, the
//! config file). Proxies (`HTTPS_PROXY`) are not used here.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::config::Connection;
use super::ClientError;

/// How long the TCP connection and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the upgrade may take (a channel's waits for the host).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes read from a local socket per message.
const CHUNK: usize = 64 * 1024;
/// The largest message accepted (the relay sends at most 1 MiB).
const MAX_MESSAGE: usize = 1 << 20;
/// How long a finished splice waits for its closing handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Any byte stream the socket can run on (TCP or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A client WebSocket to the relay.
pub type WsStream = WebSocketStream<Box<dyn Io>>;

/// Opens WebSockets to one relay.
#[derive(Clone)]
pub struct Connector {
    conn: Connection,
    tls: Option<tokio_rustls::TlsConnector>,
}

fn setup_error(e: impl std::fmt::Display) -> ClientError {
    ClientError::local("cannot set up TLS", e)
}

impl Connector {
    pub fn new(conn: &Connection) -> Result<Self, ClientError> {
        let tls = if conn.server.scheme() == "https" {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(setup_error)?;
            let mut config = if conn.insecure {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(super::h3::AcceptAny(provider)))
                    .with_no_client_auth()
            } else {
                use rustls_platform_verifier::BuilderVerifierExt;
                builder
                    .with_platform_verifier()
                    .map_err(setup_error)?
                    .with_no_client_auth()
            };
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Self {
            conn: conn.clone(),
            tls,
        })
    }

    /// The `ws://` or `wss://` URL of `path` (with `query` pairs).
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> reqwest::Url {
        let mut url = self.conn.server.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/{}", path.trim_start_matches('/')));
        url.set_query(None);
        for (k, v) in query {
            url.query_pairs_mut().append_pair(k, v);
        }
        let ws = if url.scheme() == "https" { "wss" } else { "ws" };
        // Both are special schemes: the change cannot fail.
        let _ = url.set_scheme(ws);
        url
    }

    /// Opens a WebSocket on `path`.
    pub async fn connect(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<WsStream, ClientError> {
        let url = self.url(path, query);
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.to_string(),
            reason,
        };
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let dial = host.trim_matches(['[', ']']).to_owned();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((dial.as_str(), port)))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(dial.clone())
                    .map_err(|e| ClientError::Usage(format!("bad relay host {host:?}: {e}")))?;
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                    .await
                    .map_err(|_| unreachable("the TLS handshake timed out".into()))?
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                Box::new(stream)
            }
            None => Box::new(tcp),
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Usage(format!("bad URL {url}: {e}")))?;
        for (name, value) in &self.conn.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let handshake = tokio_tungstenite::client_async_with_config(request, stream, Some(config));
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Err(_) => Err(unreachable("the WebSocket handshake timed out".into())),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(WsError::Http(response))) => {
                let status = response.status().as_u16();
                let body = response.body().as_deref().unwrap_or_default();
                let mut message: String = String::from_utf8_lossy(body)
                    .trim()
                    .chars()
                    .take(300)
                    .collect();
                if message.is_empty() {
                    message = response
                        .status()
                        .canonical_reason()
                        .unwrap_or("error")
                        .to_owned();
                }
                Err(ClientError::Refused {
                    url: url.to_string(),
                    status,
                    message,
                })
            }
            Ok(Err(e)) => Err(unreachable(e.to_string())),
        }
    }
}

/// Joins a WebSocket and a local byte stream both ways: the stream's bytes
/// go out as binary messages, messages' bytes (text or binary) are written
/// to it at once. An empty binary message ends one direction (the end of
/// the local stream is sent as one; one received shuts the local write
/// half), so half-closed connections keep their replies. Ends when both
/// directions have ended, when the relay closes the socket, or on an
/// error.
pub async fn splice<S>(socket: WsStream, io: S) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite,
{
    let (mut sink, mut stream) = socket.split();
    let (mut read, mut write) = tokio::io::split(io);
    let result = {
        let up = async {
            let mut buf = BytesMut::with_capacity(CHUNK);
            loop {
                buf.reserve(CHUNK);
                let data = match read.read_buf(&mut buf).await {
                    Ok(0) => Bytes::new(), // the end of this direction
                    Ok(_) => buf.split().freeze(),
                    Err(e) => return Err(format!("local read: {e}")),
                };
                let end = data.is_empty();
                sink.send(Message::Binary(data))
                    .await
                    .map_err(|e| format!("relay write: {e}"))?;
                if end {
                    return Ok(());
                }
            }
        };
        let down = async {
            while let Some(message) = stream.next().await {
                let data = match message {
                    Ok(Message::Binary(data)) => data,
                    Ok(Message::Text(text)) => Bytes::from(text),
                    Ok(Message::Close(_)) => return Ok(Down::Closed),
                    Ok(_) => continue,
                    Err(e) => return Err(format!("relay read: {e}")),
                };
                if data.is_empty() {
                    let _ = write.shutdown().await;
                    return Ok(Down::Ended);
                }
                // Flushed at once: stdout (an ssh ProxyCommand) buffers otherwise.
                write
                    .write_all(&data)
                    .await
                    .map_err(|e| format!("local write: {e}"))?;
                write
                    .flush()
                    .await
                    .map_err(|e| format!("local write: {e}"))?;
            }
            Ok(Down::Closed)
        };
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(()) if down_done => break Ok(()),
                    Ok(()) => up_done = true,
                    Err(e) => break Err(e),
                },
                r = &mut down, if !down_done => match r {
                    Ok(Down::Ended) if up_done => break Ok(()),
                    Ok(Down::Ended) => down_done = true,
                    Ok(Down::Closed) => break Ok(()),
                    Err(e) => break Err(e),
                },
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
    result
}

/// How the relay-to-local direction ended.
enum Down {
    /// An empty message: the other side sends no more.
    Ended,
    /// The socket was closed (or ended).
    Closed,
}
