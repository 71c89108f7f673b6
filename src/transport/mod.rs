//! Transports: each translates its protocol's world into the relay core's.
//!
//! - [`expose`]: names: hosts registered under a name, reached through
//!   the relay (`/-/...`, sub-domains).
//! - [`http`]: HTTP/1.0, HTTP/1.1 and cleartext HTTP/2 on one port (hyper).
//! - [`http1`]: the first request of a cleartext connection, answered
//!   without hyper (a waiting receiver keeps no read buffer).
//! - [`http3`]: HTTP/3 over QUIC (quinn and h3), on the same handler.
//! - [`quic`]: QUIC endpoint settings shared by the HTTP/3 server and
//!   clients (datagram sizes, segmentation offload).
//! - [`pages`]: the reserved pages (`/`, `/noscript`, `/help`, ...).
//! - [`sse`]: Server-Sent Events views of a stream.
//! - [`tls`]: certificates for HTTPS and QUIC, reloaded when they change.
//! - [`websocket`]: WebSocket views of a path (`?ws=send|receive|pair`).

pub mod body;
pub mod expose;
pub mod http;
pub mod http1;
pub mod http3;
pub mod pages;
pub mod quic;
pub mod sse;
pub mod tls;
pub mod websocket;
