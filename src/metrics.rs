//! What the server reports: Prometheus metrics on their own address
//! (`GET /metrics`), and a health check (`GET /healthz`, also on the
//! relay's port as `/-/healthz`).
//!
//! Counts that happen in the transports (requests, rejections by reason,
//! receivers' wait) are kept here as they happen; what the relay core
//! knows (paths, waiting peers, transfers, bytes) is read from it at each
//! scrape, so the core carries no metrics code and a scrape costs one
//! pass over the registry.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::relay::Relay;

/// Why a request was turned away, as the `reason` label says it.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Rejection {
    /// A Piping protocol refusal (wrong `n`, path busy, ...).
    Protocol,
    /// Malformed requests and the like.
    BadRequest,
    Unauthorized,
    Forbidden,
    RateLimited,
    TooManyConnections,
    TooManyPaths,
    TooLarge,
    WaitTimeout,
    ShuttingDown,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Protocol => "protocol",
            Rejection::BadRequest => "bad_request",
            Rejection::Unauthorized => "unauthorized",
            Rejection::Forbidden => "forbidden",
            Rejection::RateLimited => "rate_limited",
            Rejection::TooManyConnections => "too_many_connections",
            Rejection::TooManyPaths => "too_many_paths",
            Rejection::TooLarge => "too_large",
            Rejection::WaitTimeout => "wait_timeout",
            Rejection::ShuttingDown => "shutting_down",
        }
    }
}

impl EncodeLabelValue for Rejection {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Rejection,
}

/// The server's metrics. Cheap to clone; clones share the counts.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    requests: Counter,
    rejections: Family<ReasonLabel, Counter>,
    /// Set while the server drains for shutdown: health checks fail so
    /// load balancers send new clients elsewhere.
    draining: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Arc::new(Inner {
                requests: Counter::default(),
                rejections: Family::default(),
                draining: AtomicBool::new(false),
            }),
        }
    }
}

impl Metrics {
    pub fn request(&self) {
        self.inner.requests.inc();
    }

    pub fn rejected(&self, reason: Rejection) {
        self.inner
            .rejections
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Everything in the Prometheus text format, the relay's state read
    /// now; `connections` is the number of open client connections.
    pub fn render(&self, relay: &Relay, connections: usize) -> String {
        let mut registry = Registry::with_prefix("tubes");
        registry.register(
            "requests",
            "Requests received, on every transport",
            self.inner.requests.clone(),
        );
        registry.register(
            "rejections",
            "Requests turned away, by reason",
            self.inner.rejections.clone(),
        );
        registry.register_collector(Box::new(RelayState {
            relay: relay.clone(),
            connections,
        }));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, &registry);
        text
    }
}

/// The relay core's state, read at each scrape.
#[derive(Debug)]
struct RelayState {
    relay: Relay,
    connections: usize,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relay")
    }
}

impl Collector for RelayState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.relay.stats();
        let totals = self.relay.totals();
        let gauge = |encoder: &mut DescriptorEncoder, name, help, value: usize| {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)
        };
        gauge(
            &mut encoder,
            "connections_open",
            "Client connections open (HTTP/1, HTTP/2 and HTTP/3)",
            self.connections,
        )?;
        gauge(
            &mut encoder,
            "paths",
            "Paths in use (waiting or transferring)",
            stats.paths,
        )?;
        gauge(
            &mut encoder,
            "transfers_active",
            "Transfers running now",
            stats.transfers,
        )?;
        let waiting = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "waiting",
            "Peers waiting, by kind",
            None,
            waiting.metric_type(),
        )?;
        for (kind, value) in [
            ("sender", stats.waiting_senders),
            ("receiver", stats.waiting_receivers),
            ("pair", stats.pairs_waiting),
            ("live_receiver", stats.live_receivers),
            ("room_member", stats.room_members),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&[("kind", kind)])?)?;
        }
        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "transfers",
            "Transfers ended, by outcome",
            None,
            counter.metric_type(),
        )?;
        for (outcome, value) in [("completed", totals.completed), ("aborted", totals.aborted)] {
            ConstCounter::new(value).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        histogram(
            &mut encoder,
            "transfer_seconds",
            "How long transfers ran, from the start to their end (whole or cut)",
            &totals.durations,
        )?;
        histogram(
            &mut encoder,
            "receiver_wait_seconds",
            "How long receivers waited for their transfer to start",
            &totals.waits,
        )?;
        let bytes = ConstCounter::new(totals.bytes);
        let metric = encoder.encode_descriptor(
            "relayed_bytes",
            "Bytes read from senders of running transfers",
            None,
            bytes.metric_type(),
        )?;
        bytes.encode(metric)?;
        let spliced = ConstCounter::new(totals.spliced);
        let metric = encoder.encode_descriptor(
            "spliced_bytes",
            "Of the relayed bytes, those moved from the sender's socket to the receivers' by splice(2), never copied into the relay",
            None,
            spliced.metric_type(),
        )?;
        spliced.encode(metric)
    }
}

/// One of the core's duration histograms, encoded.
fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    snapshot: &crate::relay::HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    let kind = Histogram::new([1.0]).metric_type();
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    let buckets: Vec<(f64, u64)> = crate::relay::DURATION_BUCKETS
        .iter()
        .copied()
        .chain([f64::MAX])
        .zip(snapshot.counts)
        .collect();
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        snapshot.sum,
        snapshot.counts.iter().sum(),
        &buckets,
        None,
    )
}

/// The health check's answer: 200 while serving, 503 while draining.
pub fn health(metrics: &Metrics, relay: &Relay) -> (StatusCode, String) {
    let stats = relay.stats();
    let (status, word) = if metrics.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ok")
    };
    let body = serde_json::json!({
        "status": word,
        "version": env!("CARGO_PKG_VERSION"),
        "paths": stats.paths,
        "transfers": stats.transfers,
    });
    (status, format!("{body}\n"))
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    relay: Relay,
    gate: Arc<crate::policy::Gate>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let relay = relay.clone();
        let gate = Arc::clone(&gate);
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let response = answer(&req, &relay, &gate);
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    connections.shutdown().await;
    Ok(())
}

fn answer<B>(req: &Request<B>, relay: &Relay, gate: &crate::policy::Gate) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            gate.metrics.render(relay, gate.open_connections()),
        ),
        (&Method::GET, "/healthz") => {
            let (status, body) = health(&gate.metrics, relay);
            (status, "application/json", body)
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "[ERROR] Only GET /metrics and GET /healthz here.\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_has_the_relay_state_and_the_counts() {
        let relay = Relay::default();
        let metrics = Metrics::default();
        let _waiting = relay.receive("/x", 1).expect("receive");
        metrics.request();
        metrics.rejected(Rejection::RateLimited);
        let text = metrics.render(&relay, 3);
        for line in [
            "tubes_requests_total 1",
            "tubes_rejections_total{reason=\"rate_limited\"} 1",
            "tubes_waiting{kind=\"receiver\"} 1",
            "tubes_connections_open 3",
            "tubes_paths 1",
            "tubes_transfers_total{outcome=\"completed\"} 0",
            "tubes_relayed_bytes_total 0",
            "tubes_spliced_bytes_total 0",
            "tubes_receiver_wait_seconds_count 0",
            "tubes_transfer_seconds_count 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
