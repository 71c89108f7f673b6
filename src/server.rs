//! Serving: binding the listening socket, the accept loop, and shutdown.
//!
//! [`serve`] runs on a listener it is given (port 0 in tests) until the
//! shutdown future completes; it knows nothing of the command line.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::relay::Relay;
use crate::transport::http::Handler;

/// Settings of the HTTP transport's connections.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// How long a client may take to send a request head.
    pub header_read_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Binds a TCP listener. With no host, listens on every interface, IPv6
/// and IPv4 on one dual-stack socket where the system has IPv6, else IPv4.
pub fn bind(host: Option<IpAddr>, port: u16) -> io::Result<TcpListener> {
    let listener = match host {
        Some(ip) => std::net::TcpListener::bind(SocketAddr::new(ip, port))?,
        None => match bind_dual_stack(port) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(%error, "no IPv6; listening on IPv4 only");
                std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port))?
            }
        },
    };
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

fn bind_dual_stack(port: u16) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The HTTP connection builder: HTTP/1.0, 1.1 and cleartext HTTP/2 (prior
/// knowledge) on one port, tuned for long streams.
fn builder(config: &ServeConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(8192);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Windows big enough that one stream is not held back by
        // round trips of WINDOW_UPDATE; memory per stream stays bounded by
        // the window.
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_frame_size(1 << 16)
        .max_send_buf_size(1 << 20);
    builder
}

/// Serves HTTP on `listener` with `relay` until `shutdown` completes, then
/// closes every connection it opened.
pub async fn serve(
    listener: TcpListener,
    relay: Relay,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let handler = Handler::new(relay, false);
    let builder = builder(&config);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
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
        // Small writes (a log line, one typed byte) go out at once, and
        // HTTP/2 window updates are not held back by Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let span = tracing::debug_span!("conn", %peer);
        connections.spawn(
            async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { handler.handle(req).await }
                });
                if let Err(error) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    tracing::info!(open = connections.len(), "shutting down");
    connections.shutdown().await;
    Ok(())
}
