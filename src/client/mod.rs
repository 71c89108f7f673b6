//! The client side of Tubes: `tubes send` and `tubes recv`. A plain Piping
//! client underneath (any compatible server works), with codes, progress,
//! folders as tar streams and end-to-end encryption on top.
//!
//! - [`config`]: which relay, which headers; flags, environment, file.
//! - [`http`]: the HTTP requests to the relay (reqwest; [`h3`] for
//!   HTTP/3).
//! - [`code`]: human codes and the paths derived from them.
//! - [`e2e`]: the key exchange and the sealed record stream.
//! - [`pipe`]: blocking producers and consumers (files, tar) joined to the
//!   async requests by bounded channels.
//! - [`archive`]: folders as tar streams, unpacked without escaping.
//! - [`progress`]: the progress bar on stderr.
//! - [`send`], [`recv`]: the two commands.
//! - [`tunnel`]: `tubes tunnel`, TCP services through the relay.
//! - [`expose`]: `tubes expose`, local services reachable by a name
//!   through the relay; [`ws`]: the WebSockets it runs on.

pub mod archive;
pub mod code;
pub mod config;
pub mod e2e;
pub mod expose;
pub mod h3;
pub mod http;
pub mod meta;
pub mod pipe;
pub mod progress;
pub mod recv;
pub mod send;
pub mod tunnel;
pub mod ws;

use e2e::E2eError;

/// Everything a client command can fail with, each kind with its own exit
/// status so scripts can tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A bad command line or configuration.
    #[error("{0}")]
    Usage(String),
    /// No connection to the relay.
    #[error("cannot reach the relay at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The relay answered with an error status.
    #[error("the relay refused {url}: {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// The other side or the stream failed a security check.
    #[error(transparent)]
    Security(E2eError),
    /// The transfer ended before it was complete.
    #[error("transfer cut short: {0}")]
    CutShort(String),
    /// An archive entry that would land outside the output folder.
    #[error("refused archive entry {0:?}: it would be written outside the output folder")]
    HostileEntry(String),
    /// A local file-system problem.
    #[error("{0}")]
    Local(String),
}

impl ClientError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Local(_) => 1,
            ClientError::Usage(_) => 2,
            ClientError::Unreachable { .. } | ClientError::Refused { .. } => 3,
            ClientError::Security(E2eError::Truncated) | ClientError::CutShort(_) => 5,
            ClientError::Security(_) | ClientError::HostileEntry(_) => 4,
        }
    }

    /// A local error with context, e.g. `local("cannot open x", err)`.
    pub fn local(what: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        ClientError::Local(format!("{what}: {err}"))
    }
}

impl From<E2eError> for ClientError {
    fn from(e: E2eError) -> Self {
        ClientError::Security(e)
    }
}
