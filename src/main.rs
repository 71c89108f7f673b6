//! The `tubes` command: parses the command line and calls the library.

use std::net::IpAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tubes::relay::{Relay, RelayConfig};
use tubes::server::{self, ServeConfig};

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
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: every interface, IPv6 and IPv4]
    #[arg(long, env = "TUBES_HOST")]
    host: Option<IpAddr>,
    /// Port of the plain HTTP listener (HTTP/1.0, 1.1 and cleartext HTTP/2)
    #[arg(long, env = "TUBES_HTTP_PORT", default_value_t = 8080)]
    http_port: u16,
    /// Worker threads [default: one per CPU core]. One thread relays a
    /// stream with the least CPU; more serve more streams at once.
    #[arg(long, env = "TUBES_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => runtime(args.threads)?.block_on(serve(args)),
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
    let listener = server::bind(args.host, args.http_port)
        .with_context(|| format!("cannot listen on port {}", args.http_port))?;
    tracing::info!(
        address = %listener.local_addr()?,
        version = env!("CARGO_PKG_VERSION"),
        "Tubes is serving HTTP"
    );
    let relay = Relay::new(RelayConfig::default());
    server::serve(listener, relay, ServeConfig::default(), shutdown_signal()).await?;
    Ok(())
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
