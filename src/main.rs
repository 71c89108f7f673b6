//! The `tubes` command: parses the command line and calls the library.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tubes::client::config::{ConnectOptions, Connection, HttpVersion};
use tubes::client::expose::{self, ExposeOptions};
use tubes::client::recv::{self, RecvOptions};
use tubes::client::send::{self, SendOptions};
use tubes::client::tunnel;
use tubes::client::ClientError;
use tubes::node;
use tubes::policy::auth;
use tubes::settings::{LogFormat, LoopbackCongestion, Settings};

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
    /// Make a signed, expiring URL for a path of a server with auth.
    Sign(SignArgs),
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
    /// Settings file (TOML; see docs/operate.md); flags and environment
    /// variables override it; SIGHUP reloads its auth and limits
    #[arg(long, env = "TUBES_SERVE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: every interface, IPv6 and IPv4]
    #[arg(long, env = "TUBES_HOST")]
    host: Option<IpAddr>,
    /// Port of the plain HTTP listener (HTTP/1.0, 1.1 and cleartext
    /// HTTP/2) [default: 8080]
    #[arg(long, env = "TUBES_HTTP_PORT")]
    http_port: Option<u16>,
    /// Also serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) on --https-port
    #[arg(long, env = "TUBES_ENABLE_HTTPS")]
    enable_https: bool,
    /// Port of the HTTPS listener [default: 8443]
    #[arg(long, env = "TUBES_HTTPS_PORT")]
    https_port: Option<u16>,
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
    /// Serve Prometheus metrics (/metrics) and /healthz on this address,
    /// e.g. 127.0.0.1:9090
    #[arg(long, env = "TUBES_METRICS_ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Log format [default: text]
    #[arg(long, env = "TUBES_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Route NAME.DOMAIN to the host registered as NAME (`tubes expose`);
    /// needs a wildcard DNS record (and certificate) for *.DOMAIN
    #[arg(long, env = "TUBES_EXPOSE_DOMAIN", value_name = "DOMAIN")]
    expose_domain: Option<String>,
    /// TCP congestion control for connections from this host (loopback),
    /// or `system` to keep the system's [default: cubic]
    #[arg(long, env = "TUBES_LOOPBACK_CONGESTION", value_name = "ALGORITHM")]
    loopback_congestion: Option<LoopbackCongestion>,
}

impl ServeArgs {
    /// The settings file, then the flags and environment over it.
    fn settings(&self) -> anyhow::Result<Settings> {
        let mut settings = match &self.config {
            Some(path) => {
                let base = path.parent().unwrap_or_else(|| std::path::Path::new("."));
                Settings::load(path)?.relative_to(base)
            }
            None => Settings::default(),
        };
        if self.host.is_some() {
            settings.host = self.host;
        }
        if let Some(port) = self.http_port {
            settings.http_port = port;
        }
        let https = &mut settings.https;
        https.enable |= self.enable_https;
        if let Some(port) = self.https_port {
            https.port = port;
        }
        if self.crt_path.is_some() {
            https.crt_path.clone_from(&self.crt_path);
            https.key_path.clone_from(&self.key_path);
            https.self_signed = false;
        }
        https.self_signed |= self.self_signed;
        https.http3 &= !self.no_http3;
        if self.threads.is_some() {
            settings.threads = self.threads;
        }
        if self.metrics_address.is_some() {
            settings.metrics.address = self.metrics_address;
        }
        if let Some(format) = self.log_format {
            settings.log.format = format;
        }
        if self.expose_domain.is_some() {
            settings.expose.domain.clone_from(&self.expose_domain);
        }
        if let Some(congestion) = &self.loopback_congestion {
            settings.loopback_congestion = congestion.clone();
        }
        Ok(settings)
    }
}

#[derive(clap::Args)]
struct SignArgs {
    /// The path the URL opens, e.g. /reports/today
    path: String,
    /// How long the URL works, e.g. 30m, 1h, 7d
    #[arg(long, default_value = "1h")]
    ttl: humantime::Duration,
    /// What the URL allows: send, receive or both
    #[arg(long, default_value = "receive", value_parser = ["send", "receive", "both"])]
    allow: String,
    /// The server's settings file, for its [auth] signing_key
    #[arg(long, env = "TUBES_SERVE_CONFIG", required_unless_present = "key")]
    config: Option<PathBuf>,
    /// The signing key itself (instead of --config)
    #[arg(long, env = "TUBES_SIGNING_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The server's public URL, printed in front of the path
    #[arg(long, short = 's', env = "TUBES_SERVER")]
    server: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match &cli.command {
        Command::Serve(args) => match args.settings() {
            Ok(settings) => Some(settings),
            Err(error) => {
                eprintln!("tubes: {error:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => None,
    };
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(quiet_default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match settings.as_ref().map(|s| s.log.format) {
        Some(LogFormat::Json) => logs.json().init(),
        _ => logs.init(),
    }
    match cli.command {
        Command::Serve(args) => {
            let settings = settings.unwrap_or_default();
            let settings_format = settings.log.format;
            let result = runtime(settings.threads).and_then(|rt| {
                rt.block_on(node::run(
                    settings,
                    args.config.clone(),
                    node::shutdown_signal(),
                ))
            });
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    // One line, the causes joined: no backtrace for a user's
                    // mistake; in the log's own format when it is JSON.
                    if settings_format == LogFormat::Json {
                        tracing::error!(error = format!("{error:#}"), "tubes stopped");
                    } else {
                        eprintln!("tubes: {error:#}");
                    }
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Sign(args) => match sign(&args) {
            Ok(url) => {
                println!("{url}");
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("tubes: {error:#}");
                std::process::ExitCode::from(2)
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

/// `tubes sign`: the signed URL of a path.
fn sign(args: &SignArgs) -> anyhow::Result<String> {
    let key = match (&args.key, &args.config) {
        (Some(key), _) => key.clone(),
        (None, Some(path)) => Settings::load(path)?
            .auth
            .and_then(|auth| auth.signing_key)
            .with_context(|| format!("{}: no [auth] signing_key", path.display()))?,
        (None, None) => anyhow::bail!("give --config or --key"),
    };
    if key.len() < auth::MIN_SIGNING_KEY {
        anyhow::bail!(
            "the signing key must have at least {} bytes",
            auth::MIN_SIGNING_KEY
        );
    }
    if !args.path.starts_with('/') {
        anyhow::bail!("the path must start with /");
    }
    // Signed as clients send it: percent-encoded (what is encoded already
    // stays so).
    let path = percent_encoding::utf8_percent_encode(&args.path, PATH_ENCODE).to_string();
    let allow = auth::parse_action(&args.allow).context("--allow is send, receive or both")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?;
    let exp = (now + *args.ttl).as_secs();
    let query = auth::sign(&auth::signing_key(&key), &path, allow, exp);
    let base = args.server.as_deref().unwrap_or("").trim_end_matches('/');
    Ok(format!("{base}{path}?{query}"))
}

/// What `tubes sign` encodes in a path: what may not appear raw in one
/// (RFC 3986 `pchar` and `/` stay, and `%` of what is encoded already).
const PATH_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b']')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');
