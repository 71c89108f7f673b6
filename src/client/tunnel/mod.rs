//! `tubes tunnel`: any TCP service carried through the relay over two
//! HTTP streams per connection, for hosts that can only make outgoing
//! HTTP requests.
//!
//! - [`protocol`]: paths, the announcement line, frames, limits.
//! - [`link`]: one direction of a connection through the relay.
//! - [`plain`]: one connection at a time, raw bytes (curl + socat
//!   compatible).
//! - [`mux`]: many connections, framed, announced on a control path, with
//!   heartbeats and reconnection.
//! - [`socks`]: the SOCKS5 front of a SOCKS tunnel.
//! - [`seal`]: optional end-to-end encryption of the streams.

pub mod link;
pub mod mux;
pub mod plain;
pub mod protocol;
pub mod seal;
pub mod socks;

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use super::config::Connection;
use super::http::Relay;
use super::ClientError;

/// The two plain-mode paths.
#[derive(Clone, Debug)]
pub struct Paths {
    /// Client to server.
    pub cs: String,
    /// Server to client.
    pub sc: String,
}

impl Paths {
    /// One name (the `NAME/cs`, `NAME/sc` convention of piping-tunnel) or
    /// two explicit paths, client-to-server first.
    pub fn new(path: &str, second: Option<&str>) -> Self {
        match second {
            Some(sc) => Self {
                cs: path.trim_start_matches('/').to_owned(),
                sc: sc.trim_start_matches('/').to_owned(),
            },
            None => {
                let (cs, sc) = protocol::plain_paths(path);
                Self { cs, sc }
            }
        }
    }
}

/// Where the client side takes its connections from.
pub enum Local {
    /// A listening socket: every connection accepted is carried.
    Listen(TcpListener),
    /// Standard input and output: one connection (an ssh ProxyCommand).
    Stdio,
}

/// Which side and mode a `tubes tunnel` command runs.
#[derive(Clone, Debug)]
pub enum Role {
    /// The side with the service: connect to `host:port` per connection.
    Server { host: String, port: u16 },
    /// The side with the SOCKS clients' targets within reach (mux only).
    Socks,
    /// The side that wants the service: listen on `bind:port`, or stdio.
    Client {
        bind: String,
        port: u16,
        stdio: bool,
        socks: bool,
    },
}

/// What `tubes tunnel` was asked to do.
#[derive(Clone, Debug)]
pub struct TunnelOptions {
    pub role: Role,
    pub path: String,
    /// A second path (plain mode: server to client).
    pub second_path: Option<String>,
    pub mux: bool,
    /// Encrypt the streams with this passphrase (both sides give it).
    pub pass: Option<String>,
    /// Generate a passphrase (printed in the other side's command).
    pub encrypt: bool,
    /// `path` is the name of a host registered with `tubes expose`: each
    /// connection gets a channel to it (client side only).
    pub exposed: bool,
    /// The exposed host's service (its first when `None`).
    pub service: Option<String>,
}

/// Connects to the service (or a SOCKS target) with a timeout.
pub async fn connect_service(target: &(String, u16)) -> Result<TcpStream, ClientError> {
    let (host, port) = (target.0.as_str(), target.1);
    let what = format!("cannot connect to {host}:{port}");
    let stream = tokio::time::timeout(protocol::CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| ClientError::Local(format!("{what}: timed out")))?
        .map_err(|e| ClientError::local(&what, e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// What the other side runs, printed for the user to pass on.
fn instructions(conn: &Connection, opts: &TunnelOptions, local: Option<SocketAddr>) -> String {
    let base = conn.server.as_str().trim_end_matches('/');
    let mut flags = format!(" --server {base}");
    if conn.insecure {
        flags.push_str(" -k");
    }
    // A generated passphrase is shown; one the user chose is not echoed.
    let encrypted = opts.pass.is_some();
    match (&opts.pass, opts.encrypt) {
        (Some(pass), true) => flags.push_str(&format!(" --pass {pass}")),
        (Some(_), false) => flags.push_str(" --pass PASSPHRASE"),
        _ => {}
    }
    let paths = match &opts.second_path {
        Some(second) => format!("{} {second}", opts.path),
        None => opts.path.clone(),
    };
    let p = Paths::new(&opts.path, opts.second_path.as_deref());
    let curl_k = if conn.insecure { "k" } else { "" };
    match &opts.role {
        Role::Server { .. } | Role::Socks => {
            let (mode, port) = match (&opts.role, opts.mux) {
                (Role::Socks, _) => (" --socks", 1080),
                (_, true) => (" --mux", 31376),
                _ => ("", 31376),
            };
            let mut text = format!(
                "On the host that wants the service, run:\n  tubes tunnel client --port {port}{mode} {paths}{flags}"
            );
            if !opts.mux && !encrypted && matches!(opts.role, Role::Server { .. }) {
                // socat splits EXEC: at every ':', so the URL's are escaped.
                let esc = base.replace(':', "\\:");
                text.push_str(&format!(
                    "\nor, with curl and socat only:\n  socat TCP-LISTEN:{port},reuseaddr 'EXEC:curl -NsS{curl_k} {esc}/{}!!EXEC:curl -NsS{curl_k}T - {esc}/{}'",
                    p.sc.replace(':', "\\:"),
                    p.cs.replace(':', "\\:")
                ));
            }
            text
        }
        Role::Client { socks, .. } => {
            let listening = local
                .map(|a| format!("Listening on {a}.\n"))
                .unwrap_or_default();
            if *socks {
                format!("{listening}On the host that reaches the targets, run:\n  tubes tunnel socks {paths}{flags}")
            } else {
                let mode = if opts.mux { " --mux" } else { "" };
                let mut text = format!(
                    "{listening}On the host with the service, run:\n  tubes tunnel server --port PORT{mode} {paths}{flags}"
                );
                if !opts.mux && !encrypted {
                    text.push_str(&format!(
                        "\nor, with curl and socat only:\n  curl -NsS{curl_k} {base}/{} | socat - TCP:localhost:PORT | curl -NsS{curl_k}T - {base}/{}",
                        p.cs, p.sc
                    ));
                }
                text
            }
        }
    }
}

/// Runs `tubes tunnel`.
pub async fn run(conn: Connection, opts: TunnelOptions, quiet: bool) -> Result<(), ClientError> {
    if opts.exposed {
        return exposed(conn, opts, quiet).await;
    }
    let relay = Relay::new(conn.clone())?;
    let local = match &opts.role {
        Role::Client {
            bind, port, stdio, ..
        } if !*stdio => {
            let listener = TcpListener::bind((bind.as_str(), *port))
                .await
                .map_err(|e| ClientError::local(format!("cannot listen on {bind}:{port}"), e))?;
            Some(listener)
        }
        _ => None,
    };
    let local_addr = local.as_ref().and_then(|l| l.local_addr().ok());
    let mut opts = opts;
    if opts.encrypt && opts.pass.is_none() {
        opts.pass = Some(seal::generate_passphrase());
    }
    let opts = opts;
    let key = match opts.pass.clone() {
        Some(pass) => {
            let path = opts.path.clone();
            let key =
                tokio::task::spawn_blocking(move || seal::TunnelKey::from_passphrase(&pass, &path))
                    .await
                    .map_err(|e| ClientError::local("key derivation failed", e))?;
            Some(std::sync::Arc::new(key))
        }
        None => None,
    };
    let stdio = matches!(opts.role, Role::Client { stdio: true, .. });
    if !quiet && !stdio {
        super::progress::always(instructions(&conn, &opts, local_addr));
    }
    let local = match local {
        Some(l) => Local::Listen(l),
        None => Local::Stdio,
    };
    match (opts.role, opts.mux) {
        (Role::Socks, _) => mux::serve(relay, opts.path, mux::Service::Socks, key).await,
        (Role::Server { host, port }, true) => {
            mux::serve(relay, opts.path, mux::Service::Fixed(host, port), key).await
        }
        (Role::Server { host, port }, false) => {
            plain::serve(
                relay,
                Paths::new(&opts.path, opts.second_path.as_deref()),
                (host, port),
                key,
            )
            .await
        }
        (Role::Client { socks, .. }, true) => {
            mux::client(relay, opts.path, local, socks, key).await
        }
        (Role::Client { socks: true, .. }, false) => {
            Err(ClientError::Usage("--socks needs --mux".into()))
        }
        (Role::Client { .. }, false) => {
            plain::client(
                relay,
                Paths::new(&opts.path, opts.second_path.as_deref()),
                local,
                key,
            )
            .await
        }
    }
}

/// `tubes tunnel client --exposed NAME`: a channel per connection to a
/// host registered with `tubes expose`.
async fn exposed(conn: Connection, opts: TunnelOptions, quiet: bool) -> Result<(), ClientError> {
    let Role::Client {
        bind, port, stdio, ..
    } = opts.role
    else {
        return Err(ClientError::Usage(
            "--exposed is for `tubes tunnel client`".into(),
        ));
    };
    if opts.mux || opts.pass.is_some() || opts.encrypt || opts.second_path.is_some() {
        return Err(ClientError::Usage(
            "--exposed takes one name, without --mux, --pass or --encrypt".into(),
        ));
    }
    let local = if stdio {
        Local::Stdio
    } else {
        let listener = TcpListener::bind((bind.as_str(), port))
            .await
            .map_err(|e| ClientError::local(format!("cannot listen on {bind}:{port}"), e))?;
        if !quiet {
            if let Ok(addr) = listener.local_addr() {
                super::progress::always(format!("Listening on {addr}."));
            }
        }
        Local::Listen(listener)
    };
    super::expose::connect(conn, opts.path, opts.service, local).await
}
