//! The `tubes` command: parses the command line and calls the library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tubes::client::config::{ConnectOptions, Connection, HttpVersion};
use tubes::client::expose::{self, ExposeOptions};
use tubes::client::recv::{self, RecvOptions};
use tubes::client::send::{self, SendOptions};
use tubes::client::tunnel;
use tubes::client::ClientError;
use tubes::relay::{Relay, RelayConfig};
use tubes::server::{self, ServeConfig};
use tubes::transport::http::Handler;
use tubes::transport::http3;
use tubes::transport::tls::{self, Certs};

/// jemalloc: about half the memory per waiting connection of glibc's
/// malloc (page-aligned buffers leave untouched pages out of RSS), and it
/// gives freed memory back to the system (see shared/notes).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "tubes", version, about = "A realtime relay over pure HTTP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay server.
    Serve(ServeArgs),
    /// Send files, a folder or stdin (under a fresh code unless --path).
    Send(SendArgs),
    /// Receive what was sent under a code or to a path.
    Recv(RecvArgs),
    /// Carry TCP connections through the relay (SSH, VNC, databases...).
    #[command(subcommand)]
    Tunnel(TunnelCommand),
    /// Make local servers reachable through the relay by a name, from a
    /// host behind NAT (HTTP at /-/host/NAME/, TCP with `tubes tunnel
    /// client --exposed NAME`).
    Expose(ExposeArgs),
}

#[derive(clap::Args)]
struct ExposeArgs {
    /// Port of a local HTTP server, proxied by the relay
    #[arg(required_unless_present = "tcp")]
    port: Option<u16>,
    /// Port of a local TCP service carried raw (repeatable), reached with
    /// `tubes tunnel client --exposed NAME`
    #[arg(long, value_name = "PORT")]
    tcp: Vec<u16>,
    /// Host of the local services
    #[arg(long, default_value = "localhost")]
    host: String,
    /// The name to register [default: a random one, printed]
    #[arg(long)]
    name: Option<String>,
    /// The secret that holds the name [default: made by the relay, printed]
    #[arg(long, env = "TUBES_EXPOSE_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Speak plain HTTP to the relay (an event stream and streaming
    /// requests), for networks that let no WebSocket through
    #[arg(long)]
    http_only: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Subcommand)]
enum TunnelCommand {
    /// On the host with the service: connect each tunnelled connection to it.
    Server {
        /// Port of the service
        #[arg(long, short = 'p')]
        port: u16,
        /// Host of the service
        #[arg(long, default_value = "localhost")]
        host: String,
        #[command(flatten)]
        tunnel: TunnelArgs,
    },
    /// On the host that wants the service: listen locally (or use stdio).
    Client {
        /// Local port to listen on (0 picks a free one)
        #[arg(long, short = 'p', default_value_t = 31376, conflicts_with = "stdio")]
        port: u16,
        /// Local address to listen on
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Carry one connection over stdin and stdout (an ssh ProxyCommand)
        #[arg(long)]
        stdio: bool,
        /// Be a SOCKS5 proxy whose connections the `tubes tunnel socks` side
        /// makes (needs --mux)
        #[arg(long, requires = "mux")]
        socks: bool,
        /// PATH is the name of a host registered with `tubes expose`: each
        /// connection gets a channel of its own to it
        #[arg(long, conflicts_with_all = ["mux", "socks"])]
        exposed: bool,
        /// The exposed host's service, e.g. tcp/5432 [default: its first]
        #[arg(long, requires = "exposed")]
        service: Option<String>,
        #[command(flatten)]
        tunnel: TunnelArgs,
    },
    /// On a host that can reach the targets: the far end of a SOCKS tunnel.
    Socks {
        #[command(flatten)]
        tunnel: TunnelArgs,
    },
}

#[derive(clap::Args)]
struct TunnelArgs {
    /// The tunnel's path (streams NAME/cs and NAME/sc), or with a second
    /// path, the client-to-server path
    path: String,
    /// The server-to-client path (plain mode)
    second_path: Option<String>,
    /// Many connections at once, with heartbeats and reconnection (both
    /// sides must use it)
    #[arg(long)]
    mux: bool,
    /// Encrypt end to end with this passphrase (both sides give it)
    #[arg(long, env = "TUBES_PASS")]
    pass: Option<String>,
    /// Encrypt end to end with a generated passphrase, printed in the
    /// other side's command
    #[arg(long, conflicts_with = "pass")]
    encrypt: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// How a client reaches the relay.
#[derive(clap::Args)]
struct ConnectArgs {
    /// Relay URL, e.g. https://relay.example [default: from the config file]
    #[arg(long, short = 's', env = "TUBES_SERVER")]
    server: Option<String>,
    /// Extra request header, `Name: value` (repeatable), e.g. for auth
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    headers: Vec<String>,
    /// Accept any TLS certificate (a self-signed relay)
    #[arg(long, short = 'k', env = "TUBES_INSECURE")]
    insecure: bool,
    /// Speak HTTP/1.1 only
    #[arg(long, conflicts_with = "http2")]
    http1: bool,
    /// Speak HTTP/2 only (over http:// with prior knowledge)
    #[arg(long, conflicts_with = "http3")]
    http2: bool,
    /// Speak HTTP/3 (QUIC; https:// relays only)
    #[arg(long, conflicts_with = "http1")]
    http3: bool,
    /// No progress bar or messages (the code is still printed)
    #[arg(long, short = 'q')]
    quiet: bool,
}

impl ConnectArgs {
    fn options(&self) -> ConnectOptions {
        ConnectOptions {
            server: self.server.clone(),
            headers: self.headers.clone(),
            insecure: self.insecure,
            http: match (self.http1, self.http2, self.http3) {
                (true, _, _) => HttpVersion::Http1,
                (_, true, _) => HttpVersion::Http2,
                (_, _, true) => HttpVersion::Http3,
                _ => HttpVersion::Auto,
            },
        }
    }
}

#[derive(clap::Args)]
struct SendArgs {
    /// Files and folders to send (several, or a folder, go as one tar
    /// stream); nothing or `-` sends stdin
    inputs: Vec<PathBuf>,
    /// Send to this path, without a code (plain unless --encrypt or --pass)
    #[arg(long, short = 'p')]
    path: Option<String>,
    /// Number of receivers that will take the stream (`?n=`)
    #[arg(long = "receivers", short = 'n', value_parser = clap::value_parser!(u32).range(1..))]
    receivers: Option<u32>,
    /// Encrypt a --path transfer with a fresh code (printed)
    #[arg(long, requires = "path")]
    encrypt: bool,
    /// Encrypt with a passphrase instead (works with several receivers)
    #[arg(long, env = "TUBES_PASS", conflicts_with = "encrypt")]
    pass: Option<String>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(clap::Args)]
struct RecvArgs {
    /// The code the sender printed (or a path; with --path, the secret of
    /// an encrypted path transfer)
    target: Option<String>,
    /// Receive from this path
    #[arg(long, short = 'p')]
    path: Option<String>,
    /// Write here: a file, a folder, or `-` for stdout [default: the
    /// sender's file name, folders here, streams to stdout]
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Number of receivers the sender asked for (`?n=`)
    #[arg(long = "receivers", short = 'n', value_parser = clap::value_parser!(u32).range(1..))]
    receivers: Option<u32>,
    /// The passphrase the sender used
    #[arg(long, env = "TUBES_PASS")]
    pass: Option<String>,
    /// Replace existing files and folders (a file named by -o FILE is
    /// always replaced, as with curl -o)
    #[arg(long, short = 'f')]
    force: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: every interface, IPv6 and IPv4]
    #[arg(long, env = "TUBES_HOST")]
    host: Option<IpAddr>,
    /// Port of the plain HTTP listener (HTTP/1.0, 1.1 and cleartext HTTP/2)
    #[arg(long, env = "TUBES_HTTP_PORT", default_value_t = 8080)]
    http_port: u16,
    /// Also serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) on --https-port
    #[arg(long, env = "TUBES_ENABLE_HTTPS")]
    enable_https: bool,
    /// Port of the HTTPS listener
    #[arg(long, env = "TUBES_HTTPS_PORT", default_value_t = 8443)]
    https_port: u16,
    /// Certificate chain (PEM); reloaded when the file changes
    #[arg(long, env = "TUBES_CRT_PATH", requires = "key_path")]
    crt_path: Option<PathBuf>,
    /// Private key (PEM); reloaded when the file changes
    #[arg(long, env = "TUBES_KEY_PATH", requires = "crt_path")]
    key_path: Option<PathBuf>,
    /// Make a certificate for localhost at start-up instead (prints its
    /// SHA-256 fingerprint); implies --enable-https
    #[arg(long, env = "TUBES_SELF_SIGNED", conflicts_with_all = ["crt_path", "key_path"])]
    self_signed: bool,
    /// Do not serve HTTP/3 (QUIC, on the HTTPS port over UDP) beside HTTPS
    #[arg(long, env = "TUBES_NO_HTTP3")]
    no_http3: bool,
    /// Worker threads [default: one per CPU core]. One thread relays a
    /// stream with the least CPU; more serve more streams at once.
    #[arg(long, env = "TUBES_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Route NAME.DOMAIN to the host registered as NAME (`tubes expose`);
    /// needs a wildcard DNS record (and certificate) for *.DOMAIN
    #[arg(long, env = "TUBES_EXPOSE_DOMAIN", value_name = "DOMAIN")]
    expose_domain: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The platform verifier logs every refused certificate as an error;
    // the client reports it once, in its own words.
    let quiet_default = if matches!(
        cli.command,
        Command::Serve(_) | Command::Tunnel(_) | Command::Expose(_)
    ) {
        "info,rustls_platform_verifier=off"
    } else {
        "warn,rustls_platform_verifier=off"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(quiet_default)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => match runtime(args.threads).and_then(|rt| rt.block_on(serve(args)))
        {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                // One line, the causes joined: no backtrace for a user's mistake.
                eprintln!("tubes: {error:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Send(args) => {
            let options = SendOptions {
                inputs: args.inputs,
                path: args.path,
                receivers: args.receivers,
                encrypt: args.encrypt,
                pass: args.pass,
                quiet: args.connect.quiet,
            };
            run_client(args.connect.options(), |conn| send::send(conn, options))
        }
        Command::Recv(args) => {
            let options = RecvOptions {
                target: args.target,
                path: args.path,
                output: args.output,
                receivers: args.receivers,
                pass: args.pass,
                force: args.force,
                quiet: args.connect.quiet,
            };
            run_client(args.connect.options(), |conn| recv::recv(conn, options))
        }
        Command::Expose(args) => {
            let options = ExposeOptions {
                http_port: args.port,
                tcp_ports: args.tcp,
                host: args.host,
                name: args.name,
                secret: args.secret,
                http_only: args.http_only,
                quiet: args.connect.quiet,
            };
            run_client(args.connect.options(), |conn| expose::run(conn, options))
        }
        Command::Tunnel(command) => {
            let (mut exposed, mut service) = (false, None);
            let (role, args) = match command {
                TunnelCommand::Server { port, host, tunnel } => {
                    (tunnel::Role::Server { host, port }, tunnel)
                }
                TunnelCommand::Client {
                    port,
                    host,
                    stdio,
                    socks,
                    exposed: to_name,
                    service: to_service,
                    tunnel,
                } => {
                    (exposed, service) = (to_name, to_service);
                    (
                        tunnel::Role::Client {
                            bind: host,
                            port,
                            stdio,
                            socks,
                        },
                        tunnel,
                    )
                }
                TunnelCommand::Socks { tunnel } => (tunnel::Role::Socks, tunnel),
            };
            let mux = args.mux || matches!(role, tunnel::Role::Socks);
            let quiet = args.connect.quiet;
            let options = tunnel::TunnelOptions {
                role,
                path: args.path,
                second_path: args.second_path,
                mux,
                pass: args.pass,
                encrypt: args.encrypt,
                exposed,
                service,
            };
            run_client(args.connect.options(), |conn| {
                tunnel::run(conn, options, quiet)
            })
        }
    }
}

/// Runs a client command and exits with its status (see
/// `ClientError::exit_code`); blocking readers and writers still running
/// after a failure end with the process.
fn run_client<F, Fut>(connect: ConnectOptions, command: F) -> std::process::ExitCode
where
    F: FnOnce(Connection) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let result = connect.resolve().and_then(|conn| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::local("cannot start the async runtime", e))?;
        let result = runtime.block_on(command(conn));
        // A reader blocked on stdin must not keep the process alive.
        runtime.shutdown_timeout(std::time::Duration::from_millis(100));
        result
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tubes: {error}");
            std::process::exit(error.exit_code());
        }
    }
}

/// The tokio runtime: a single thread, or a pool of workers.
fn runtime(threads: Option<u16>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(n));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let tls = tls_source(&args)?;
    let mut relay_config = RelayConfig::default();
    relay_config.names.domain = args.expose_domain.clone();
    let relay = Relay::new(relay_config);
    let config = ServeConfig::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let mut servers = tokio::task::JoinSet::new();
    let mut watcher = None;

    if let Some(source) = tls {
        let certs = Certs::load(source)?;
        let listener = server::bind(args.host, args.https_port)
            .with_context(|| format!("cannot listen on HTTPS port {}", args.https_port))?;
        let address = listener.local_addr()?;
        tracing::info!(
            %address,
            fingerprint = %certs.fingerprint(),
            "Tubes is serving HTTPS"
        );
        let mut https_config = config.clone();
        if !args.no_http3 {
            // The same port number, over UDP.
            let socket = server::bind_udp(args.host, address.port()).with_context(|| {
                format!("cannot listen for HTTP/3 on UDP port {}", address.port())
            })?;
            tracing::info!(address = %socket.local_addr()?, "Tubes is serving HTTP/3");
            https_config.alt_svc = Some(format!("h3=\":{}\"; ma=86400", address.port()));
            let handler = Handler::new(relay.clone(), true);
            servers.spawn(http3::serve(
                socket,
                handler,
                Arc::clone(&certs),
                until_stopped(),
            ));
        }
        let tls_config = Arc::new(certs.server_config(&[tls::ALPN_H2, tls::ALPN_HTTP11]));
        servers.spawn(server::serve_tls(
            listener,
            relay.clone(),
            https_config,
            tls_config,
            until_stopped(),
        ));
        watcher = Some(tokio::spawn(certs.watch()));
    }

    let listener = server::bind(args.host, args.http_port)
        .with_context(|| format!("cannot listen on port {}", args.http_port))?;
    tracing::info!(
        address = %listener.local_addr()?,
        version = env!("CARGO_PKG_VERSION"),
        "Tubes is serving HTTP"
    );
    servers.spawn(server::serve(listener, relay, config, until_stopped()));

    tokio::select! {
        () = shutdown_signal() => {}
        Some(ended) = servers.join_next() => {
            // A listener stopped on its own: that is an error.
            ended??;
        }
    }
    let _ = stop.send(true);
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    while let Some(ended) = servers.join_next().await {
        ended??;
    }
    Ok(())
}

/// Where the HTTPS certificate comes from, if HTTPS is on.
fn tls_source(args: &ServeArgs) -> anyhow::Result<Option<tls::Source>> {
    match (&args.crt_path, &args.key_path, args.self_signed) {
        (_, _, true) => Ok(Some(tls::Source::SelfSigned)),
        (Some(cert), Some(key), false) => Ok(args.enable_https.then(|| tls::Source::Files {
            cert: cert.clone(),
            key: key.clone(),
        })),
        _ if args.enable_https => {
            anyhow::bail!("--enable-https needs --crt-path and --key-path (or --self-signed)")
        }
        _ => Ok(None),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
