//! The requests a client makes to a Piping relay: a `PUT` that sends and a
//! `GET` that receives, nothing else, so any compatible server works.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header;

use super::config::{Connection, HttpVersion};
use super::ClientError;

/// How long to wait for a TCP (and TLS) connection to the relay.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an error response's body shown to the user.
const ERROR_BODY_MAX: usize = 300;

/// A relay and the client that talks to it.
#[derive(Clone)]
pub struct Relay {
    client: reqwest::Client,
    conn: Connection,
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
    response: reqwest::Response,
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
        Ok(Self { client, conn })
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

    /// Adds the configured headers (`-H`, the config file), repeats kept.
    fn with_headers(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        for (name, value) in &self.conn.headers {
            req = req.header(name.clone(), value.clone());
        }
        req
    }

    fn unreachable(&self, url: &reqwest::Url, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: url.to_string(),
            reason: error_chain(e),
        }
    }

    /// Starts sending `body` to `path`; returns once the relay has answered
    /// (a Piping relay answers at once and then streams its log).
    pub async fn send(
        &self,
        path: &str,
        body: reqwest::Body,
        upload: Upload,
    ) -> Result<SenderLog, ClientError> {
        let url = self.url(path, upload.n);
        let mut req = self.with_headers(self.client.put(url.clone())).body(body);
        if let Some(len) = upload.length {
            req = req.header(header::CONTENT_LENGTH, len);
        }
        if let Some(ct) = upload.content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        if let Some(cd) = upload.disposition {
            req = req.header(header::CONTENT_DISPOSITION, cd);
        }
        let response = req.send().await.map_err(|e| self.unreachable(&url, &e))?;
        let response = check_status(&url, response).await?;
        Ok(SenderLog {
            url: url.to_string(),
            response,
        })
    }

    /// Asks to receive from `path`; returns once the transfer has started.
    pub async fn receive(
        &self,
        path: &str,
        n: Option<u32>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url(path, n);
        let response = self
            .with_headers(self.client.get(url.clone()))
            .send()
            .await
            .map_err(|e| self.unreachable(&url, &e))?;
        check_status(&url, response).await
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

async fn check_status(
    url: &reqwest::Url,
    response: reqwest::Response,
) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
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
pub async fn read_message_at_most(
    response: reqwest::Response,
    max: usize,
) -> Result<Bytes, ClientError> {
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
pub async fn read_message(response: reqwest::Response, len: usize) -> Result<Bytes, ClientError> {
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
