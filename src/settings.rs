//! The server's settings: what `tubes serve` reads from its TOML file
//! (`--config`), before flags and environment variables override it.
//!
//! Every table and key is optional; a missing one takes the default shown
//! in `docs/operate.md`. Unknown keys are errors, so a typo is never a
//! silently ignored setting. [`Settings::load`] reads and checks a file;
//! turning the checked settings into what the server runs with (keys
//! loaded, rules compiled) is [`crate::policy::Policy::from_settings`],
//! which is also what a reload on SIGHUP calls.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything `tubes serve` can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on; `None`: every interface, IPv6 and IPv4.
    pub host: Option<IpAddr>,
    pub http_port: u16,
    /// Worker threads; `None`: one per core.
    pub threads: Option<u16>,
    pub https: Https,
    pub log: Log,
    pub metrics: Metrics,
    pub limits: Limits,
    pub shutdown: Shutdown,
    /// Present (even empty): auth is on. Absent: the Piping protocol as is.
    pub auth: Option<AuthSettings>,
    pub expose: Expose,
    /// TCP congestion control of connections from this host itself.
    pub loopback_congestion: LoopbackCongestion,
}

/// The TCP congestion control algorithm for connections whose peer is on
/// this host (a reverse proxy, a local client): a kernel algorithm's name
/// (default `cubic`), or `system` to leave the system's default alone.
///
/// Why: BBR, a common system default, paces every packet with a timer
/// when the queueing discipline does not (loopback has none). On loopback
/// there is no link to pace for, and those timers cost a relay about half
/// its CPU per byte (`docs/operate.md`, "Loopback congestion control").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LoopbackCongestion(Option<String>);

impl LoopbackCongestion {
    /// The algorithm to set, or `None` for the system's.
    pub fn algorithm(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl Default for LoopbackCongestion {
    fn default() -> Self {
        LoopbackCongestion(Some("cubic".into()))
    }
}

impl std::str::FromStr for LoopbackCongestion {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        if name == "system" {
            return Ok(LoopbackCongestion(None));
        }
        // The kernel's names are short and plain (TCP_CA_NAME_MAX is 16
        // with the NUL).
        let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        if name.is_empty() || name.len() > 15 || !name.chars().all(plain) {
            return Err(format!(
                "`{name}` is not a congestion control name (e.g. cubic, reno, or system)"
            ));
        }
        Ok(LoopbackCongestion(Some(name.into())))
    }
}

impl TryFrom<String> for LoopbackCongestion {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

/// Hosts reached by name (`tubes expose`); unset keys keep the defaults
/// of [`crate::relay::names::NamesConfig`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Expose {
    /// `NAME.domain` reaches the host registered as NAME.
    pub domain: Option<String>,
    /// How long a name stays reserved after its host's control
    /// connection went away.
    #[serde(with = "humantime_serde")]
    pub grace: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub channel_idle: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub control_idle: Option<Duration>,
    pub max_names: Option<usize>,
    pub max_names_per_secret: Option<usize>,
    pub max_channels_per_name: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: None,
            http_port: 8080,
            threads: None,
            https: Https::default(),
            log: Log::default(),
            metrics: Metrics::default(),
            limits: Limits::default(),
            shutdown: Shutdown::default(),
            auth: None,
            expose: Expose::default(),
            loopback_congestion: LoopbackCongestion::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Https {
    pub enable: bool,
    pub port: u16,
    pub crt_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    pub self_signed: bool,
    /// HTTP/3 on the HTTPS port (UDP).
    pub http3: bool,
}

impl Default for Https {
    fn default() -> Self {
        Https {
            enable: false,
            port: 8443,
            crt_path: None,
            key_path: None,
            self_signed: false,
            http3: true,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Where Prometheus scrapes `/metrics` (and `/healthz`); off if unset.
    pub address: Option<SocketAddr>,
}

/// Limits on what clients may take. Zero turns a count limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// How long a sender or receiver may wait for its peers.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Paths with peers waiting at once; more are refused with 503.
    pub max_paths: usize,
    /// Open connections per client address (0: no limit).
    pub connections_per_ip: usize,
    /// New requests per second per client address, refilled steadily
    /// (0: no limit); beyond the burst, 429 with `Retry-After`.
    pub requests_per_second: u32,
    pub request_burst: u32,
    /// Bytes one transfer may carry (0: no limit).
    pub max_transfer_bytes: u64,
    /// Time a client may take to send a request head (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Bytes of a request head: the HTTP/2 header list, and for HTTP/1
    /// the connection's read buffer (so small values also slow uploads
    /// down). Unset: HTTP/2 16 KiB, HTTP/1 hyper's ~400 KB buffer.
    pub max_header_bytes: Option<usize>,
    /// Proxies whose `X-Forwarded-For` and `X-Forwarded-Proto` are
    /// believed (addresses or networks, e.g. `10.0.0.0/8`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wait_timeout: Duration::from_secs(24 * 3600),
            max_paths: 100_000,
            connections_per_ip: 0,
            requests_per_second: 0,
            request_burst: 100,
            max_transfer_bytes: 0,
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: None,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// How long running transfers may go on after SIGTERM before they
    /// are aborted.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            grace: Duration::from_secs(30),
        }
    }
}

/// Who may send and receive where (see `docs/operate.md`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Bearer tokens, each with the name rules refer to.
    pub tokens: Vec<TokenEntry>,
    /// Basic-auth users with bcrypt password hashes (`htpasswd -nbB`).
    pub users: Vec<UserEntry>,
    pub jwt: Option<JwtSettings>,
    /// Key of signed URLs (`tubes sign`); at least 16 bytes.
    pub signing_key: Option<String>,
    /// Longest matching prefix wins; none matching: anyone may.
    /// No rules at all: one rule for `/` that asks any valid credential.
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    /// The token itself, or, better, its SHA-256 in hex.
    pub token: Option<String>,
    pub token_sha256: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    pub password_bcrypt: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// Shared secret of HS256 tokens.
    pub hs256_secret: Option<String>,
    /// A JWKS file (RS256 and ES256 public keys, chosen by `kid`).
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` and `aud`, when set.
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub prefix: String,
    /// Who may send: `anyone`, `authenticated`, or names (token names,
    /// user names, JWT subjects).
    #[serde(default)]
    pub send: Vec<String>,
    #[serde(default)]
    pub receive: Vec<String>,
}

/// A settings file that cannot be used, with the file's name.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Settings {
    /// Reads and parses a settings file; semantic checks are
    /// [`crate::policy::Policy::from_settings`]'s.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::parse(&text).map_err(|message| SettingsError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses settings from TOML text; the error is one line, with the
    /// line of the file it is about.
    pub fn parse(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    let shown = text.lines().nth(line - 1).unwrap_or("").trim();
                    format!("line {line} (`{shown}`): {message}")
                }
                None => message,
            }
        })
    }

    /// Resolves relative paths in the file against the file's folder.
    pub fn relative_to(mut self, base: &Path) -> Settings {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        };
        fix(&mut self.https.crt_path);
        fix(&mut self.https.key_path);
        if let Some(jwt) = self.auth.as_mut().and_then(|a| a.jwt.as_mut()) {
            fix(&mut jwt.jwks_file);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let s = Settings::parse("").expect("parse");
        assert_eq!(s.http_port, 8080);
        assert_eq!(s.https.port, 8443);
        assert!(s.https.http3);
        assert!(s.auth.is_none());
        assert_eq!(s.limits.wait_timeout, Duration::from_secs(86400));
    }

    #[test]
    fn loopback_congestion_is_a_name_or_system() {
        let s = Settings::parse("").expect("parse");
        assert_eq!(s.loopback_congestion.algorithm(), Some("cubic"));
        let s = Settings::parse("loopback_congestion = \"system\"").expect("parse");
        assert_eq!(s.loopback_congestion.algorithm(), None);
        let s = Settings::parse("loopback_congestion = \"reno\"").expect("parse");
        assert_eq!(s.loopback_congestion.algorithm(), Some("reno"));
        for bad in ["", "Cubic", "a/b", "sixteen_letters_"] {
            let error =
                Settings::parse(&format!("loopback_congestion = \"{bad}\"")).expect_err(bad);
            assert!(error.contains("not a congestion control name"), "{error}");
        }
    }

    #[test]
    fn a_full_file_parses() {
        let s = Settings::parse(
            r#"
            host = "127.0.0.1"
            http_port = 9000
            [https]
            enable = true
            crt_path = "cert.pem"
            key_path = "key.pem"
            [log]
            format = "json"
            [metrics]
            address = "127.0.0.1:9090"
            [limits]
            wait_timeout = "10m"
            requests_per_second = 5
            trusted_proxies = ["10.0.0.0/8", "127.0.0.1/32"]
            [shutdown]
            grace = "5s"
            [auth]
            signing_key = "0123456789abcdef0123"
            [[auth.tokens]]
            name = "ci"
            token = "t0ken"
            [[auth.rules]]
            prefix = "/private/"
            send = ["ci"]
            receive = ["anyone"]
            "#,
        )
        .expect("parse");
        assert_eq!(s.limits.wait_timeout, Duration::from_secs(600));
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.limits.trusted_proxies.len(), 2);
        let auth = s.auth.expect("auth");
        assert_eq!(auth.rules[0].send, ["ci"]);
        let s = Settings::parse("[https]\ncrt_path = \"c.pem\"")
            .expect("parse")
            .relative_to(Path::new("/etc/tubes"));
        assert_eq!(s.https.crt_path, Some(PathBuf::from("/etc/tubes/c.pem")));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors() {
        for bad in [
            "http_prot = 1",
            "[limits]\nwait_timeout = \"soon\"",
            "[limits]\ntrusted_proxies = [\"not-an-ip\"]",
            "[log]\nformat = \"xml\"",
            "http_port = 70000",
        ] {
            let error = Settings::parse(bad).expect_err(bad);
            assert!(!error.contains('\n'), "{bad}: {error}");
        }
    }
}
