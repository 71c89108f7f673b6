//! Which relay to use and how to talk to it: from the command line, then
//! the environment (`TUBES_SERVER`, read by clap), then a TOML file at
//! `$TUBES_CONFIG`, `$XDG_CONFIG_HOME/tubes/config.toml` or
//! `~/.config/tubes/config.toml`:
//!
//! ```toml
//! server = "https://relay.example"
//! headers = ["Authorization: Bearer 7f3a..."]
//! insecure = false
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use super::ClientError;

/// The HTTP version to speak to the relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/2 over TLS when the relay offers it (ALPN), else HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only; over `http://` with prior knowledge (h2c).
    Http2,
    /// HTTP/3 (QUIC), `https://` relays only.
    Http3,
}

/// What the command line (and environment) said about the connection.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    pub server: Option<String>,
    pub headers: Vec<String>,
    pub insecure: bool,
    pub http: HttpVersion,
}

/// The connection settings once every source is merged and checked.
#[derive(Clone, Debug)]
pub struct Connection {
    pub server: reqwest::Url,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub insecure: bool,
    pub http: HttpVersion,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    insecure: bool,
}

fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TUBES_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("tubes").join("config.toml"))
}

fn read_file_config() -> Result<FileConfig, ClientError> {
    let Some(path) = config_path() else {
        return Ok(FileConfig::default());
    };
    let explicit = std::env::var_os("TUBES_CONFIG").is_some();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(FileConfig::default())
        }
        Err(e) => {
            return Err(ClientError::local(
                format!("cannot read {}", path.display()),
                e,
            ))
        }
    };
    toml::from_str(&text).map_err(|e| {
        ClientError::Usage(format!(
            "bad config file {}: {}",
            path.display(),
            e.message()
        ))
    })
}

/// Parses `Name: value`.
pub fn parse_header(raw: &str) -> Result<(http::HeaderName, http::HeaderValue), ClientError> {
    let bad = |why: &str| ClientError::Usage(format!("bad header {raw:?}: {why}"));
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| bad("expected Name: value"))?;
    let name =
        http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad("invalid name"))?;
    let value = http::HeaderValue::from_str(value.trim()).map_err(|_| bad("invalid value"))?;
    Ok((name, value))
}

/// Parses a relay URL; a bare `host:port` means `http://host:port`.
pub fn parse_server(raw: &str) -> Result<reqwest::Url, ClientError> {
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let url = reqwest::Url::parse(&with_scheme)
        .map_err(|e| ClientError::Usage(format!("bad relay URL {raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ClientError::Usage(format!(
            "bad relay URL {raw:?}: expected http://host[:port] or https://host[:port]"
        )));
    }
    Ok(url)
}

impl ConnectOptions {
    /// Merges the command line with the config file and checks the result.
    pub fn resolve(self) -> Result<Connection, ClientError> {
        let file = read_file_config()?;
        let server = self.server.or(file.server).ok_or_else(|| {
            ClientError::Usage(
                "no relay given: use --server URL, set TUBES_SERVER, or put server = \"URL\" in ~/.config/tubes/config.toml"
                    .into(),
            )
        })?;
        let headers = file
            .headers
            .iter()
            .chain(&self.headers)
            .map(|h| parse_header(h))
            .collect::<Result<_, _>>()?;
        Ok(Connection {
            server: parse_server(&server)?,
            headers,
            insecure: self.insecure || file.insecure,
            http: self.http,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers() {
        assert_eq!(
            parse_server("localhost:8080").unwrap().as_str(),
            "http://localhost:8080/"
        );
        assert_eq!(
            parse_server("https://r.example/base").unwrap().path(),
            "/base"
        );
        assert!(parse_server("ftp://x").is_err());
        assert!(parse_server("http://").is_err());
    }

    #[test]
    fn headers() {
        let (n, v) = parse_header("Authorization: Bearer a:b").unwrap();
        assert_eq!(n, "authorization");
        assert_eq!(v, "Bearer a:b");
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }
}
