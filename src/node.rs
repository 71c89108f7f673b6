//! One Tubes server as `tubes serve` runs it: the listeners its settings
//! ask for (HTTP, HTTPS, HTTP/3, metrics) around one relay, reloads of
//! the settings file on SIGHUP, and a graceful shutdown.
//!
//! Shutdown goes in steps: health checks start failing (load balancers
//! stop sending new clients), listeners stop accepting, peers still
//! waiting for a partner are turned away with a message, running
//! transfers may finish within the grace period, and whatever still runs
//! after it is cut, so its receivers see an aborted response.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::metrics::{self, Metrics};
use crate::policy::{Gate, Policy};
use crate::relay::{Relay, RelayConfig};
use crate::server::{self, ServeConfig};
use crate::settings::Settings;
use crate::transport::http::Handler;
use crate::transport::http3;
use crate::transport::tls::{self, Certs};

/// Runs the server until `shutdown` completes (or a listener fails).
/// `reload_from`: the settings file to read again on SIGHUP.
pub async fn run(
    settings: Settings,
    reload_from: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    raise_open_files_limit();
    let policy = Policy::from_settings(&settings).map_err(|e| match &reload_from {
        Some(path) => anyhow::anyhow!("{}: {e}", path.display()),
        None => anyhow::Error::msg(e),
    })?;
    let tls = tls_source(&settings)?;
    let relay = Relay::new(relay_config(&settings));
    // One timer for every waiting peer's wait limit.
    let expiry = tokio::spawn(relay.clone().expire_forever());
    let gate = Gate::new(policy, Metrics::default());
    let config = ServeConfig {
        header_read_timeout: settings.limits.header_read_timeout,
        max_header_bytes: settings.limits.max_header_bytes,
        grace: settings.shutdown.grace,
        gate: Arc::clone(&gate),
        loopback_congestion: settings.loopback_congestion.algorithm().map(Into::into),
        ..ServeConfig::default()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let mut servers = tokio::task::JoinSet::new();
    let mut watcher = None;
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut metrics_server = None;
    let host = settings.host;

    if let Some(address) = settings.metrics.address {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen for metrics on {address}"))?;
        tracing::info!(address = %listener.local_addr()?, "serving metrics");
        // Stopped last, so that scrapes and health checks see the drain.
        metrics_server = Some((
            tokio::spawn(metrics::serve(
                listener,
                relay.clone(),
                Arc::clone(&gate),
                async move {
                    let _ = metrics_stopped.await;
                },
            )),
            metrics_stop,
        ));
    }

    if let Some(source) = tls {
        let certs = Certs::load(source)?;
        let port = settings.https.port;
        let listener = server::bind(host, port)
            .with_context(|| format!("cannot listen on HTTPS port {port}"))?;
        let address = listener.local_addr()?;
        tracing::info!(
            %address,
            fingerprint = %certs.fingerprint(),
            "Tubes is serving HTTPS"
        );
        let mut https_config = config.clone();
        if settings.https.http3 {
            // The same port number, over UDP.
            let socket = server::bind_udp(host, address.port()).with_context(|| {
                format!("cannot listen for HTTP/3 on UDP port {}", address.port())
            })?;
            tracing::info!(address = %socket.local_addr()?, "Tubes is serving HTTP/3");
            https_config.alt_svc = Some(format!("h3=\":{}\"; ma=86400", address.port()));
            let handler = Handler::new(relay.clone(), true).with_gate(Arc::clone(&gate));
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

    let port = settings.http_port;
    let listener =
        server::bind(host, port).with_context(|| format!("cannot listen on port {port}"))?;
    tracing::info!(
        address = %listener.local_addr()?,
        version = env!("CARGO_PKG_VERSION"),
        "Tubes is serving HTTP"
    );
    servers.spawn(server::serve(
        listener,
        relay.clone(),
        config,
        until_stopped(),
    ));

    tokio::pin!(shutdown);
    let mut hangups = hangups();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = next_hangup(&mut hangups) => {
                reload(reload_from.as_ref(), &relay, &gate);
            }
            Some(ended) = servers.join_next() => {
                // A listener stopped on its own: that is an error.
                ended??;
                anyhow::bail!("a listener stopped");
            }
        }
    }
    tracing::info!(grace = ?settings.shutdown.grace, "shutting down");
    // New requests are refused from here on, so that after the waiting
    // peers are turned away no new ones come.
    gate.metrics.set_draining();
    let turned = relay.turn_away_waiting();
    tracing::info!(waiting = turned, "waiting peers turned away");
    let _ = stop.send(true);
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    expiry.abort();
    while let Some(ended) = servers.join_next().await {
        ended??;
    }
    if let Some((server, stop)) = metrics_server {
        let _ = stop.send(());
        server.await??;
    }
    Ok(())
}

/// The relay core's settings from the server's.
fn relay_config(settings: &Settings) -> RelayConfig {
    let mut names = crate::relay::names::NamesConfig::default();
    let expose = &settings.expose;
    names.domain.clone_from(&expose.domain);
    names.grace = expose.grace.unwrap_or(names.grace);
    names.channel_idle = expose.channel_idle.unwrap_or(names.channel_idle);
    names.control_idle = expose.control_idle.unwrap_or(names.control_idle);
    names.max_names = expose.max_names.unwrap_or(names.max_names);
    names.max_names_per_secret = expose
        .max_names_per_secret
        .unwrap_or(names.max_names_per_secret);
    names.max_channels_per_name = expose
        .max_channels_per_name
        .unwrap_or(names.max_channels_per_name);
    RelayConfig {
        wait_timeout: Some(settings.limits.wait_timeout),
        max_paths: settings.limits.max_paths,
        max_transfer_bytes: settings.limits.max_transfer_bytes,
        names,
        ..RelayConfig::default()
    }
}

/// Reads the settings file again and puts its auth and limits in place.
/// A file that does not check out changes nothing (and says why).
fn reload(path: Option<&PathBuf>, relay: &Relay, gate: &Gate) {
    let Some(path) = path else {
        tracing::info!("SIGHUP: no settings file to reload (start with --config)");
        return;
    };
    let loaded = Settings::load(path)
        .map_err(|e| e.to_string())
        .and_then(|settings| {
            let settings =
                settings.relative_to(path.parent().unwrap_or_else(|| std::path::Path::new(".")));
            Policy::from_settings(&settings)
                .map(|policy| (settings, policy))
                .map_err(|e| format!("{}: {e}", path.display()))
        });
    match loaded {
        Ok((settings, policy)) => {
            let limits = relay_config(&settings);
            relay.set_limits(
                limits.wait_timeout,
                limits.max_paths,
                limits.max_transfer_bytes,
            );
            gate.replace(policy);
            tracing::info!(path = %path.display(), "settings reloaded (auth and limits; listeners and TLS files keep theirs)");
        }
        Err(error) => {
            tracing::error!(%error, "settings NOT reloaded; the previous ones stay");
        }
    }
}

/// Where the HTTPS certificate comes from, if HTTPS is on.
fn tls_source(settings: &Settings) -> anyhow::Result<Option<tls::Source>> {
    let https = &settings.https;
    match (&https.crt_path, &https.key_path, https.self_signed) {
        (_, _, true) => Ok(Some(tls::Source::SelfSigned)),
        (Some(cert), Some(key), false) => Ok(https.enable.then(|| tls::Source::Files {
            cert: cert.clone(),
            key: key.clone(),
        })),
        (Some(_), None, _) | (None, Some(_), _) => {
            anyhow::bail!("HTTPS needs both a certificate (--crt-path) and a key (--key-path)")
        }
        _ if https.enable => {
            anyhow::bail!("--enable-https needs --crt-path and --key-path (or --self-signed)")
        }
        _ => Ok(None),
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

/// The next SIGHUP (never, where there are none).
#[cfg(unix)]
async fn next_hangup(hangups: &mut Hangups) -> Option<()> {
    match hangups {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) -> Option<()> {
    std::future::pending().await
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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

/// Raises the soft limit on open files to the hard one (as servers do:
/// the soft default is often 1,024). Each connection takes a descriptor,
/// and a spliced transfer two more for its pipe; at most a quarter of the
/// limit goes to pipes (see `transport::http1::upload`).
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    /// Where the hard limit is "unlimited": the kernel's usual `nr_open`.
    const UNLIMITED: u64 = 1 << 20;
    let limit = getrlimit(Resource::Nofile);
    let want = limit.maximum.unwrap_or(UNLIMITED);
    if limit.current.is_some_and(|current| current >= want) {
        return;
    }
    let raised = Rlimit {
        current: Some(want),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(from = ?limit.current, to = want, "open files limit raised"),
        Err(error) => {
            tracing::warn!(%error, current = ?limit.current, "cannot raise the open files limit")
        }
    }
}
