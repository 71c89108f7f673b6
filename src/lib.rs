//! Tubes: a realtime relay over pure HTTP, compatible with the Piping
//! protocol.
//!
//! # Layout
//!
//! - [`relay`]: the core. Paths, rendezvous of a sender with `n`
//!   receivers, fan-out with backpressure, cleanup; beside it the other
//!   registries: [`relay::pair`] (two peers joined), [`relay::live`]
//!   (broadcast with a window), [`relay::room`] (signaling rooms),
//!   [`relay::names`] (hosts registered by name, channels to them). Knows
//!   nothing of HTTP.
//! - [`transport`]: protocols around the core; [`transport::http`] serves
//!   HTTP/1.0, HTTP/1.1 and HTTP/2, [`transport::http3`] HTTP/3,
//!   [`transport::websocket`] and [`transport::sse`] the WebSocket and
//!   event-stream views, [`transport::pages`] the reserved pages,
//!   [`transport::expose`] the names' paths under `/-/` (control, channels,
//!   the HTTP proxy).
//! - [`client`]: `tubes send`, `tubes recv`, `tubes tunnel` and `tubes
//!   expose`: a Piping client with codes, folders, end-to-end encryption,
//!   TCP tunnels, and local servers reachable by name.
//! - [`server`]: binding, the accept loop and shutdown: `serve(listener,
//!   relay, config, shutdown)`.
//!
//! The binary's `main.rs` only parses the command line and calls these.

#![forbid(unsafe_code)]
#![warn(clippy::await_holding_lock)]

pub mod client;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod relay;
pub mod server;
pub mod settings;
pub mod transport;
