//! Tubes: a realtime relay over pure HTTP, compatible with the Piping
//! protocol.
//!
//! # Layout
//!
//! - [`relay`]: the core. Paths, rendezvous of a sender with `n`
//!   receivers, fan-out with backpressure, cleanup. Knows nothing of HTTP.
//! - [`transport`]: protocols around the core; [`transport::http`] serves
//!   HTTP/1.0, HTTP/1.1 and cleartext HTTP/2, [`transport::pages`] the
//!   reserved pages.
//! - [`client`]: `tubes send` and `tubes recv`: a Piping client with
//!   codes, folders and end-to-end encryption.
//! - [`server`]: binding, the accept loop and shutdown: `serve(listener,
//!   relay, config, shutdown)`.
//!
//! The binary's `main.rs` only parses the command line and calls these.

#![forbid(unsafe_code)]
#![warn(clippy::await_holding_lock)]

pub mod client;
pub mod relay;
pub mod server;
pub mod transport;
