//! The expose protocol, all of it: the relay's paths under `/-/`, the
//! control messages between a registered host and the relay, and their
//! limits. Hosts are `tubes expose` and browser pages; both speak this.
//!
//! **Paths** (all under the one reserved prefix [`PREFIX`]):
//!
//! - `/-/expose`: a host's control connection (WebSocket). The host sends
//!   [`FromHost::Register`] first; the relay answers
//!   [`ToHost::Registered`] (or [`ToHost::Error`] and closes with 1008),
//!   then sends [`ToHost::Open`] for each channel a client asks for.
//! - `/-/channel/ID`: the host's end of channel `ID` (WebSocket), opened
//!   in answer to an `open`. Messages pass to the client's end unchanged.
//! - `/-/connect/NAME[?service=S]`: a client's end of a new channel to the
//!   host `NAME` (WebSocket). The handshake is answered once the host has
//!   opened its end (so nothing sent is lost), or fails: 404 for an
//!   unknown name or service, 502 when the host refused, 504 when it did
//!   not answer within the open timeout.
//! - `/-/host/NAME/...`: HTTP to the host's `http` service (path routing).
//!   The relay opens a channel and speaks HTTP/1.1 over it to the host,
//!   which carries the bytes to its local server. `/-/host/NAME` redirects
//!   to `/-/host/NAME/`.
//! - `/-/examples/...`: the example pages (a browser host and client).
//! - Hosts without WebSockets: `POST /-/expose` and `GET`/`PUT`/`DELETE
//!   /-/channel/ID` (see [`super::plain`]).
//!
//! With a domain configured (`tubes serve --expose-domain relay.example`),
//! a request whose `Host` is `NAME.relay.example` goes to the host `NAME`
//! whatever its path (sub-domain routing).
//!
//! **Control messages** are JSON text messages with a `type` field:
//!
//! ```text
//! host -> relay  {"type":"register","name":"myhome","secret":"...","services":["http"]}
//!                {"type":"refuse","id":"<32 hex>","reason":"connection refused"}
//!                {"type":"ping"}
//! relay -> host  {"type":"registered","name":"myhome","secret":null,"resumed":false,
//!                 "url":"https://relay/-/host/myhome/","domain_url":null,"services":["http"]}
//!                {"type":"open","id":"<32 hex>","service":"http"}
//!                {"type":"pong"}
//!                {"type":"error","message":"[ERROR] The name 'myhome' is held with another secret."}
//! ```
//!
//! `name` and `secret` may be left out (or `null`): the relay then picks a
//! random name, or makes a secret and returns it once in `registered`.
//! The relay pings the control socket (WebSocket ping) every third of its
//! idle limit and drops a control connection it has heard nothing from
//! (no message, no pong) for that long; the name then waits out its grace
//! period.

use serde::{Deserialize, Serialize};

/// The one path prefix everything here lives under.
pub const PREFIX: &str = "/-/";
/// The control endpoint.
pub const CONTROL_PATH: &str = "/-/expose";
/// Prefix of a host's channel endpoint (`/-/channel/ID`).
pub const CHANNEL_PREFIX: &str = "/-/channel/";
/// Prefix of a client's channel endpoint (`/-/connect/NAME`).
pub const CONNECT_PREFIX: &str = "/-/connect/";
/// Prefix of path routing (`/-/host/NAME/...`).
pub const HOST_PREFIX: &str = "/-/host/";
/// Prefix of the example pages.
pub const EXAMPLES_PREFIX: &str = "/-/examples/";
/// The service the HTTP proxy asks for.
pub const HTTP_SERVICE: &str = "http";
/// The largest control message, in bytes.
pub const MAX_CONTROL: usize = 16 * 1024;
/// How long a new control connection may take to send `register`.
pub const REGISTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a host sends on its control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FromHost {
    /// The first message: the name wanted (random if absent), the secret
    /// that holds it (generated if absent), the services offered (the
    /// first is the default of `/-/connect`; `["default"]` if none).
    Register {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        secret: Option<String>,
        #[serde(default)]
        services: Vec<String>,
    },
    /// Channel `id` cannot be served (the local service is down, ...);
    /// the waiting client is told `reason` at once.
    Refuse {
        id: String,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Answered with `pong` (for hosts that cannot send WebSocket pings).
    Ping,
}

/// What the relay sends on a control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ToHost {
    /// The name is held. `secret` is set only when the relay generated it;
    /// `resumed` when the name was already held with this secret (a
    /// reconnection). `url` is the path-routed address of the `http`
    /// service, `domain_url` the sub-domain one when the relay has a
    /// domain.
    Registered {
        name: String,
        secret: Option<String>,
        resumed: bool,
        url: String,
        domain_url: Option<String>,
        services: Vec<String>,
    },
    /// A client asked for a channel: open `/-/channel/ID` (or refuse it).
    Open { id: String, service: String },
    /// The answer to `ping`.
    Pong,
    /// A refusal (the registration, or a bad message), one `[ERROR]` line.
    Error { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_on_the_wire() {
        let register: FromHost =
            serde_json::from_str(r#"{"type":"register","name":"home"}"#).unwrap();
        assert_eq!(
            register,
            FromHost::Register {
                name: Some("home".into()),
                secret: None,
                services: vec![]
            }
        );
        let open = ToHost::Open {
            id: "ab".into(),
            service: "http".into(),
        };
        assert_eq!(
            serde_json::to_string(&open).unwrap(),
            r#"{"type":"open","id":"ab","service":"http"}"#
        );
        assert!(serde_json::from_str::<FromHost>(r#"{"type":"other"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<FromHost>(r#"{"type":"ping"}"#).unwrap(),
            FromHost::Ping
        );
    }
}
