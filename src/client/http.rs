//! The requests a client makes to a Piping relay: a `PUT` that sends and a
//! `GET` that receives, nothing else, so any compatible server works.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use http::header;

use super::config::{Connection, HttpVersion};
use super::h3::H3Client;
use super::ClientError;

/// How long to wait for a TCP (and TLS) connection to the relay.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an error response's body shown to the user.
const ERROR_BODY_MAX: usize = 300;

/// A relay and the client that talks to it.
#[derive(Clone)]
pub struct Relay {
    backend: Backend,
    conn: Connection,
}

/// reqwest for HTTP/1.1 and HTTP/2, our own quinn + h3 client for HTTP/3.
#[derive(Clone)]
enum Backend {
    Tcp(reqwest::Client),
    H3(Arc<H3Client>),
}

/// A request body: a few bytes, or a stream (an error in the stream
/// aborts the request, so the relay aborts the transfer).
pub enum Body {
    Bytes(Bytes),
    Stream(BoxStream<'static, io::Result<Bytes>>),
}

impl Body {
    pub fn stream(s: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> Self {
        Body::Stream(s.boxed())
    }

    pub fn into_stream(self) -> BoxStream<'static, io::Result<Bytes>> {
        match self {
            Body::Bytes(b) => futures_util::stream::once(async move { Ok(b) }).boxed(),
            Body::Stream(s) => s,
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body::Bytes(v.into())
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Bytes(b)
    }
}

/// Why a response body broke off.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// A relay's answer: status, headers and the body as a stream.
pub struct Response {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: BoxStream<'static, Result<Bytes, BodyError>>,
}

impl Response {
    pub fn new(
        status: http::StatusCode,
        headers: http::HeaderMap,
        body: BoxStream<'static, Result<Bytes, BodyError>>,
    ) -> Self {
        Self {
            status,
            headers,
            body,
        }
    }

    fn from_reqwest(r: reqwest::Response) -> Self {
        let status = r.status();
        let headers = r.headers().clone();
        let body = r
            .bytes_stream()
            .map(|item| item.map_err(|e| BodyError(error_chain(&e))))
            .boxed();
        Self::new(status, headers, body)
    }

    pub fn status(&self) -> http::StatusCode {
        self.status
    }

    pub fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }

    pub fn bytes_stream(self) -> BoxStream<'static, Result<Bytes, BodyError>> {
        self.body
    }

    /// The body as text, for short error responses (at most 64 KiB).
    async fn text(self) -> String {
        let mut body = self.body;
        let mut out = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            out.extend_from_slice(&chunk);
            if out.len() > 64 * 1024 {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// What a `PUT` carries besides its body.
#[derive(Default)]
pub struct Upload {
    pub n: Option<u32>,
    pub length: Option<u64>,
    pub content_type: Option<String>,
    pub disposition: Option<String>,
}

/// The relay's live log for a sender; read it to the end to learn whether
/// every receiver got the data (dropping it early would cut the upload).
pub struct SenderLog {
    url: String,
    response: Response,
}

fn install_crypto_provider() {
    // Several calls are harmless: only the first one installs.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Relay {
    pub fn new(conn: Connection) -> Result<Self, ClientError> {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .danger_accept_invalid_certs(conn.insecure)
            .user_agent(concat!("tubes/", env!("CARGO_PKG_VERSION")));
        builder = match conn.http {
            HttpVersion::Http3 => {
                let h3 = H3Client::new(&conn.server, conn.insecure)?;
                return Ok(Self {
                    backend: Backend::H3(Arc::new(h3)),
                    conn,
                });
            }
            HttpVersion::Auto => builder,
            HttpVersion::Http1 => builder.http1_only(),
            HttpVersion::Http2 => builder
                .http2_prior_knowledge()
                .http2_initial_stream_window_size(4 << 20)
                .http2_initial_connection_window_size(8 << 20),
        };
        // Headers go on each request: reqwest's default headers would keep
        // only the last of several with one name.
        let client = builder
            .build()
            .map_err(|e| ClientError::local("cannot set up the HTTP client", e))?;
        Ok(Self {
            backend: Backend::Tcp(client),
            conn,
        })
    }

    /// The URL of `path` (with `?n=` when given) on this relay.
    pub fn url(&self, path: &str, n: Option<u32>) -> reqwest::Url {
        let mut url = self.conn.server.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/{}", path.trim_start_matches('/')));
        url.set_query(None);
        if let Some(n) = n {
            url.query_pairs_mut().append_pair("n", &n.to_string());
        }
        url
    }

    /// Starts sending `body` to `path`; returns once the relay has answered
    /// (a Piping relay answers at once and then streams its log).
    pub async fn send(
        &self,
        path: &str,
        body: Body,
        upload: Upload,
    ) -> Result<SenderLog, ClientError> {
        let url = self.url(path, upload.n);
        let mut headers = http::HeaderMap::new();
        if let Some(len) = upload.length {
            headers.insert(header::CONTENT_LENGTH, len.into());
        }
        let mut text_header = |name, value: Option<String>| {
            if let Some(v) = value.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
                headers.insert(name, v);
            }
        };
        text_header(header::CONTENT_TYPE, upload.content_type);
        text_header(header::CONTENT_DISPOSITION, upload.disposition);
        let response = self.request(http::Method::PUT, &url, headers, body).await?;
        let response = check_status(&url, response).await?;
        Ok(SenderLog {
            url: url.to_string(),
            response,
        })
    }

    /// Asks to receive from `path`; returns once the transfer has started.
    pub async fn receive(&self, path: &str, n: Option<u32>) -> Result<Response, ClientError> {
        let url = self.url(path, n);
        let response = self
            .request(
                http::Method::GET,
                &url,
                http::HeaderMap::new(),
                Body::Bytes(Bytes::new()),
            )
            .await?;
        check_status(&url, response).await
    }

    /// `DELETE`s `path` (with `query` pairs).
    pub async fn delete(&self, path: &str, query: &[(&str, &str)]) -> Result<(), ClientError> {
        let mut url = self.url(path, None);
        for (k, v) in query {
            url.query_pairs_mut().append_pair(k, v);
        }
        let response = self
            .request(
                http::Method::DELETE,
                &url,
                http::HeaderMap::new(),
                Body::Bytes(Bytes::new()),
            )
            .await?;
        check_status(&url, response).await.map(drop)
    }

    async fn request(
        &self,
        method: http::Method,
        url: &reqwest::Url,
        mut headers: http::HeaderMap,
        body: Body,
    ) -> Result<Response, ClientError> {
        // The configured headers (`-H`, the config file), repeats kept.
        for (name, value) in &self.conn.headers {
            headers.append(name.clone(), value.clone());
        }
        match &self.backend {
            Backend::Tcp(client) => {
                let mut req = client.request(method.clone(), url.clone()).headers(headers);
                if method != http::Method::GET {
                    req = req.body(match body {
                        Body::Bytes(b) => reqwest::Body::from(b),
                        Body::Stream(s) => reqwest::Body::wrap_stream(s),
                    });
                }
                let response = req.send().await.map_err(|e| ClientError::Unreachable {
                    url: url.to_string(),
                    reason: error_chain(&e),
                })?;
                Ok(Response::from_reqwest(response))
            }
            Backend::H3(h3) => {
                let mut req = http::Request::builder().method(method).uri(url.as_str());
                if let Some(h) = req.headers_mut() {
                    h.extend(headers);
                    h.insert(
                        header::USER_AGENT,
                        http::HeaderValue::from_static(concat!(
                            "tubes/",
                            env!("CARGO_PKG_VERSION")
                        )),
                    );
                }
                let req = req
                    .body(())
                    .map_err(|e| ClientError::Usage(format!("bad request to {url}: {e}")))?;
                h3.request(req, body).await
            }
        }
    }
}

/// Every cause of a reqwest error on one line ("error sending request:
/// connection refused").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

async fn check_status(url: &reqwest::Url, response: Response) -> Result<Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await;
    let mut message: String = body.trim().chars().take(ERROR_BODY_MAX).collect();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_owned();
    }
    Err(ClientError::Refused {
        url: url.to_string(),
        status: status.as_u16(),
        message,
    })
}

impl SenderLog {
    /// The response body itself (for relays' other streams, such as the
    /// control events of `tubes expose --http-only`).
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes, BodyError>> {
        self.response.bytes_stream()
    }

    /// Reads the log to its end. Fails if the relay reports that a receiver
    /// aborted, or if the log itself is cut off.
    pub async fn finish(self) -> Result<(), ClientError> {
        let mut stream = self.response.bytes_stream();
        let mut log = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ClientError::CutShort(format!(
                    "the relay's log for {} broke off: {}",
                    self.url,
                    error_chain(&e)
                ))
            })?;
            // Keep the tail only: a log is a few lines, but be safe.
            log.extend_from_slice(&chunk);
            if log.len() > 64 * 1024 {
                log.drain(..log.len() - 4096);
            }
        }
        let log = String::from_utf8_lossy(&log);
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("aborted") || l.starts_with("[ERROR]"))
        {
            return Err(ClientError::CutShort(format!(
                "the relay says: {}",
                line.trim()
            )));
        }
        Ok(())
    }
}

/// Reads a whole response of at most `max` bytes: a control message.
pub async fn read_message_at_most(response: Response, max: usize) -> Result<Bytes, ClientError> {
    let mut stream = response.bytes_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ClientError::CutShort(error_chain(&e)))?;
        buf.extend_from_slice(&chunk);
        if buf.len() > max {
            return Err(ClientError::CutShort(format!(
                "a message of over {max} bytes"
            )));
        }
    }
    Ok(buf.freeze())
}

/// Reads exactly `len` bytes from a response: a key-exchange message.
pub async fn read_message(response: Response, len: usize) -> Result<Bytes, ClientError> {
    let mut stream = response.bytes_stream();
    let mut buf = BytesMut::with_capacity(len);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ClientError::CutShort(error_chain(&e)))?;
        buf.extend_from_slice(&chunk);
        if buf.len() > len {
            return Err(ClientError::Security(super::e2e::E2eError::BadShare));
        }
    }
    if buf.len() < len {
        return Err(ClientError::CutShort(format!(
            "the key-exchange message had {} of {len} bytes",
            buf.len()
        )));
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::config::parse_server;

    fn relay(server: &str) -> Relay {
        Relay::new(Connection {
            server: parse_server(server).unwrap(),
            headers: vec![],
            insecure: false,
            http: HttpVersion::Auto,
        })
        .unwrap()
    }

    #[test]
    fn urls() {
        let r = relay("http://h:1");
        assert_eq!(r.url("/a/b", None).as_str(), "http://h:1/a/b");
        assert_eq!(r.url("x y", Some(3)).as_str(), "http://h:1/x%20y?n=3");
        let r = relay("https://h/base/");
        assert_eq!(r.url("p", None).as_str(), "https://h/base/p");
    }
}
