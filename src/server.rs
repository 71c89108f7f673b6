//! Serving: binding the listening socket, the accept loop, and shutdown.
//!
//! [`serve`] runs on a listener it is given (port 0 in tests) until the
//! shutdown future completes; it knows nothing of the command line.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::metrics::Rejection;
use crate::policy::Gate;
use crate::relay::Relay;
use crate::transport::http::Handler;
use tokio_util::sync::CancellationToken;

/// Settings of the HTTP transport's connections.
#[derive(Clone)]
pub struct ServeConfig {
    /// How long a client may take to send a request head.
    pub header_read_timeout: Duration,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// An `Alt-Svc` value for every response (to advertise HTTP/3).
    pub alt_svc: Option<String>,
    /// Bytes of a request head: the HTTP/2 header list, and the HTTP/1
    /// read buffer (hyper has no separate head limit). `None`: defaults.
    pub max_header_bytes: Option<usize>,
    /// After shutdown, how long open connections may finish what they
    /// are doing before they are cut (their transfers then abort).
    pub grace: Duration,
    /// Auth, limits and metrics shared with the other listeners.
    pub gate: Arc<Gate>,
    /// TCP congestion control set on connections from loopback addresses
    /// (see [`crate::settings::LoopbackCongestion`]); `None`: the system's.
    pub loopback_congestion: Option<Arc<str>>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            alt_svc: None,
            max_header_bytes: None,
            grace: Duration::ZERO,
            gate: Arc::default(),
            loopback_congestion: Some("cubic".into()),
        }
    }
}

/// Binds a TCP listener. With no host, listens on every interface, IPv6
/// and IPv4 on one dual-stack socket where the system has IPv6, else IPv4.
pub fn bind(host: Option<IpAddr>, port: u16) -> io::Result<TcpListener> {
    let listener = match host {
        Some(ip) => bind_socket(SocketAddr::new(ip, port), false)?,
        None => {
            let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
            match bind_socket(any6, true) {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::debug!(%error, "no IPv6; listening on IPv4 only");
                    let any4 = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port);
                    bind_socket(any4, false)?
                }
            }
        }
    };
    TcpListener::from_std(listener)
}

/// Binds a UDP socket (for HTTP/3) the way [`bind`] binds TCP: with no
/// host, dual-stack where the system has IPv6.
pub fn bind_udp(host: Option<IpAddr>, port: u16) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let udp = |addr: SocketAddr, dual_stack: bool| -> io::Result<std::net::UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if dual_stack {
            socket.set_only_v6(false)?;
        }
        // QUIC arrives in bursts of datagrams: ask for large socket buffers
        // (the kernel caps them at net.core.rmem_max / wmem_max) so bursts
        // are not dropped.
        let _ = socket.set_recv_buffer_size(UDP_BUFFER);
        let _ = socket.set_send_buffer_size(UDP_BUFFER);
        socket.bind(&addr.into())?;
        Ok(socket.into())
    };
    match host {
        Some(ip) => udp(SocketAddr::new(ip, port), false),
        None => udp(
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            true,
        )
        .or_else(|_| {
            udp(
                SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port),
                false,
            )
        }),
    }
}

/// Socket buffer size asked for on the HTTP/3 socket.
const UDP_BUFFER: usize = 8 << 20;

/// Connections the kernel queues before we accept them. The standard
/// library's 128 drops connections when a thousand clients arrive at once;
/// the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

fn bind_socket(addr: SocketAddr, dual_stack: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Sets a TCP congestion control algorithm on connections from this
/// host. A listener bound to a loopback address gets it once (its
/// connections inherit it from the start); on any other listener each
/// connection from a loopback address gets it when accepted. If the
/// kernel refuses the name, one warning, and the system's default stays.
struct LoopbackCongestion {
    algorithm: Option<Arc<str>>,
    /// The listener has it: accepted connections need nothing.
    inherited: bool,
}

impl LoopbackCongestion {
    fn new(listener: &TcpListener, algorithm: Option<Arc<str>>) -> Self {
        let mut this = LoopbackCongestion {
            algorithm,
            inherited: false,
        };
        let on_loopback = listener
            .local_addr()
            .is_ok_and(|a| a.ip().to_canonical().is_loopback());
        if on_loopback {
            this.inherited = this.set(socket2::SockRef::from(listener));
        }
        this
    }

    fn accepted(&mut self, stream: &TcpStream, peer: IpAddr) {
        if !self.inherited && peer.to_canonical().is_loopback() {
            self.set(socket2::SockRef::from(stream));
        }
    }

    /// Sets the algorithm on `socket`; true if it was set.
    fn set(&mut self, socket: socket2::SockRef<'_>) -> bool {
        let Some(algorithm) = &self.algorithm else {
            return false;
        };
        match socket.set_tcp_congestion(algorithm.as_bytes()) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(
                    %error,
                    %algorithm,
                    "cannot set the loopback congestion control; keeping the system's"
                );
                self.algorithm = None;
                false
            }
        }
    }
}

/// Bytes read from a TLS socket at a time.
const TLS_READ_BUFFER: usize = 64 * 1024;

/// HTTP/1 and HTTP/2 connection settings, tuned for long streams.
#[derive(Clone)]
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    /// The largest first request head read without hyper.
    max_head: usize,
    tls_handshake_timeout: Duration,
    /// Cancelled when the server drains (shared here rather than held by
    /// every connection's task).
    drain: CancellationToken,
}

impl Builders {
    fn new(config: &ServeConfig) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout);
        if let Some(max) = config.max_header_bytes {
            // hyper's floor is 8 KiB (the settings check says so too).
            http1.max_buf_size(max.max(8192));
        }
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // Windows big enough that one stream is not held back by round
            // trips of WINDOW_UPDATE; memory per stream stays bounded by
            // the window, so a client can make the server hold up to 16 MiB
            // per connection, as HTTP/3 allows too (same sizes). With the
            // earlier 1 / 4 MiB, curl's h2 upload cost curl ~3.2 s of CPU
            // per GiB; with these ~1.6-2.3 s, and it ran ~20-40% faster on
            // 2 busy cores (bench figure 8); fewer stalls on an exhausted
            // window, presumably.
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(1 << 16)
            .max_header_list_size(
                config
                    .max_header_bytes
                    .map_or(DEFAULT_H2_HEADER_LIST, |max| {
                        u32::try_from(max).unwrap_or(u32::MAX)
                    }),
            )
            .max_send_buf_size(1 << 20)
            // WebSocket over HTTP/2 (RFC 8441).
            .enable_connect_protocol();
        Builders {
            http1,
            http2,
            header_read_timeout: config.header_read_timeout,
            max_head: config
                .max_header_bytes
                .map_or(crate::transport::http1::MAX_HEAD, |max| {
                    max.min(crate::transport::http1::MAX_HEAD)
                }),
            tls_handshake_timeout: config.tls_handshake_timeout,
            drain: CancellationToken::new(),
        }
    }

    /// Serves one cleartext connection: its first request here if it is
    /// a plain GET (see [`crate::transport::http1`]), the rest with hyper:
    /// HTTP/2 if the connection opens with its preface, else HTTP/1.
    async fn serve(self: Arc<Self>, stream: TcpStream, handler: Handler) {
        use crate::transport::http1::{serve_first, Outcome};
        match serve_first(stream, &handler, self.header_read_timeout, self.max_head).await {
            Outcome::Closed => {}
            // Boxed: hyper's connection state is only allocated for the
            // connections that get that far, and a waiting receiver's
            // task stays small.
            Outcome::Http2(io) => Box::pin(self.serve_io(TokioIo::new(io), true, handler)).await,
            Outcome::Http1(io) => Box::pin(self.serve_io(TokioIo::new(io), false, handler)).await,
        }
    }

    /// Serves one TLS connection: the handshake (bounded in time, in the
    /// connection's own task so it never holds up the accept loop), then
    /// HTTP/2 or HTTP/1.1 as ALPN chose.
    async fn serve_tls(
        self: Arc<Self>,
        stream: TcpStream,
        acceptor: tokio_rustls::TlsAcceptor,
        handler: Handler,
    ) {
        // rustls reads at most 4 KiB per call; a buffer in front of the
        // socket turns that into one system call per 64 KiB on uploads.
        // Its pages are only touched when data comes, so a waiting
        // connection does not pay for it.
        let stream = tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, stream);
        let stream =
            match tokio::time::timeout(self.tls_handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(crate::transport::tls::ALPN_H2);
        // The TLS connection is boxed for the same reason as HTTP/2 is.
        Box::pin(self.serve_io(TokioIo::new(stream), h2, handler)).await;
    }

    /// Serves the connection until it ends; when the server drains, an
    /// HTTP/2 connection says GOAWAY and finishes its streams in flight.
    async fn serve_io<I>(&self, io: TokioIo<I>, h2: bool, handler: Handler)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(move |req| handler.handle(req));
        // The HTTP/2 connection is boxed: kept inline, its larger state
        // would size every connection's task, and most connections, the
        // waiting ones above all, are HTTP/1.
        let result = if h2 {
            let mut conn = Box::pin(self.http2.serve_connection(io, service));
            tokio::select! {
                result = conn.as_mut() => result,
                () = self.drain.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        } else {
            // No graceful shutdown for HTTP/1: hyper would close a
            // connection whose request waits for its response. Draining
            // answers those requests instead (see `accept_loop`).
            self.http1
                .serve_connection(io, service)
                .with_upgrades()
                .await
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

/// Serves plain HTTP on `listener` with `relay` until `shutdown`
/// completes, then closes every connection it opened.
pub async fn serve(
    listener: TcpListener,
    relay: Relay,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    accept_loop(listener, relay, &config, None, shutdown).await
}

/// Serves HTTPS (HTTP/2 and HTTP/1.1 by ALPN) on `listener` with the
/// given TLS configuration, until `shutdown` completes.
pub async fn serve_tls(
    listener: TcpListener,
    relay: Relay,
    config: ServeConfig,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    accept_loop(listener, relay, &config, Some(acceptor), shutdown).await
}

async fn accept_loop(
    listener: TcpListener,
    relay: Relay,
    config: &ServeConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let gate = Arc::clone(&config.gate);
    let mut handler = Handler::new(relay, tls.is_some()).with_gate(Arc::clone(&gate));
    if let Some(alt_svc) = &config.alt_svc {
        handler = handler.with_alt_svc(alt_svc);
    }
    // Shared, not cloned per connection: each waiting connection's task
    // stays small.
    let builders = Arc::new(Builders::new(config));
    let mut congestion = LoopbackCongestion::new(&listener, config.loopback_congestion.clone());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                gate.closed(1);
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = gate.connect(peer.ip()) else {
            gate.metrics.rejected(Rejection::TooManyConnections);
            tracing::debug!(%peer, "too many connections from this address");
            if tls.is_none() {
                // Best effort, without waiting: the socket is new and empty.
                let _ = stream.try_write(TOO_MANY_CONNECTIONS);
            }
            continue;
        };
        // Small writes (a log line, one typed byte) go out at once, and
        // HTTP/2 window updates are not held back by Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        congestion.accepted(&stream, peer.ip());
        let handler = handler.for_peer(peer.ip(), slot);
        let builders = Arc::clone(&builders);
        let span = tracing::debug_span!("conn", %peer);
        match &tls {
            None => {
                gate.opened();
                connections.spawn(builders.serve(stream, handler).instrument(span))
            }
            Some(acceptor) => {
                gate.opened();
                connections.spawn(
                    builders
                        .serve_tls(stream, acceptor.clone(), handler)
                        .instrument(span),
                )
            }
        };
    }
    // Stop accepting; let running transfers finish, up to the grace
    // period; give connections a moment to close after their last
    // response (responses while draining ask for it); then cut the rest,
    // so transfers still running abort. Idle keep-alive connections do not
    // hold the shutdown up: only the relay's work does.
    drop(listener);
    builders.drain.cancel();
    tracing::info!(open = connections.len(), grace = ?config.grace, "draining");
    let started = tokio::time::Instant::now();
    let relay = handler.relay().clone();
    let (stats, idle) = relay
        .wait_until(config.grace, |s| {
            s.paths == 0 && s.pairs_joined == 0 && s.live_paths == 0
        })
        .await;
    let rest = config
        .grace
        .saturating_sub(started.elapsed())
        .min(CLOSE_TIME);
    let _ = tokio::time::timeout(rest, async {
        while connections.join_next().await.is_some() {
            gate.closed(1);
        }
    })
    .await;
    if !idle {
        tracing::info!(
            open = connections.len(),
            paths = stats.paths,
            "grace period over; aborting the rest"
        );
    }
    gate.closed(connections.len());
    connections.shutdown().await;
    Ok(())
}

/// The HTTP/2 header list allowed when the settings say nothing.
const DEFAULT_H2_HEADER_LIST: u32 = 16 * 1024;

/// While draining, how long connections may take to close once nothing
/// runs on the relay.
const CLOSE_TIME: Duration = Duration::from_secs(1);

/// The answer to a connection over the per-address limit.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 53\r\nConnection: close\r\n\r\n[ERROR] Too many open connections from your address.\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// The congestion control of the server's end of a new connection to
    /// `listener`, once `congestion` has seen it.
    async fn accepted_congestion(
        listener: &TcpListener,
        congestion: &mut LoopbackCongestion,
    ) -> String {
        let port = listener.local_addr().expect("addr").port();
        let _client = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        congestion.accepted(&stream, peer.ip());
        let name = socket2::SockRef::from(&stream)
            .tcp_congestion()
            .expect("TCP_CONGESTION");
        String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_string()
    }

    fn system_congestion() -> String {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .expect("the system's congestion control")
            .trim()
            .to_string()
    }

    // `reno` is always built into Linux and never the default, so these
    // see the setting, not the system's choice.

    #[tokio::test]
    async fn a_loopback_listener_hands_its_congestion_control_down() {
        let listener = bind(Some(IpAddr::from([127, 0, 0, 1])), 0).expect("bind");
        let mut congestion = LoopbackCongestion::new(&listener, Some("reno".into()));
        assert!(congestion.inherited);
        assert_eq!(
            accepted_congestion(&listener, &mut congestion).await,
            "reno"
        );
    }

    #[tokio::test]
    async fn a_wildcard_listener_sets_it_on_loopback_peers() {
        let listener = bind(None, 0).expect("bind");
        let mut congestion = LoopbackCongestion::new(&listener, Some("reno".into()));
        assert!(!congestion.inherited);
        assert_eq!(
            accepted_congestion(&listener, &mut congestion).await,
            "reno"
        );
    }

    #[tokio::test]
    async fn system_keeps_the_systems_choice() {
        let listener = bind(Some(IpAddr::from([127, 0, 0, 1])), 0).expect("bind");
        let mut congestion = LoopbackCongestion::new(&listener, None);
        assert_eq!(
            accepted_congestion(&listener, &mut congestion).await,
            system_congestion()
        );
    }

    #[tokio::test]
    async fn an_unknown_algorithm_is_given_up_and_connections_go_on() {
        let listener = bind(Some(IpAddr::from([127, 0, 0, 1])), 0).expect("bind");
        let mut congestion = LoopbackCongestion::new(&listener, Some("no_such_cc".into()));
        assert!(congestion.algorithm.is_none() && !congestion.inherited);
        assert_eq!(
            accepted_congestion(&listener, &mut congestion).await,
            system_congestion()
        );
    }

    /// A waiting connection's task is allocated at its full size; keep it
    /// (as spawned: with its connection slot and its span) within
    /// jemalloc's 1 KiB class (it was 1.6 KiB with HTTP/2 inline).
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let builders = Arc::new(Builders::new(&ServeConfig::default()));
        let handler = Handler::new(Relay::default(), false);
        let connections = Arc::new(crate::policy::limits::Connections::default());
        let slot = connections
            .open(IpAddr::from([127, 0, 0, 1]), 0)
            .expect("slot");
        let span = tracing::debug_span!("conn");
        let handler = handler.for_peer(IpAddr::from([127, 0, 0, 1]), Some(slot));
        let task = builders.serve(client, handler).instrument(span);
        let size = std::mem::size_of_val(&task);
        eprintln!("a connection task: {size} bytes");
        assert!(size <= 1024, "a connection's future takes {size} bytes");
    }
}
