//! HTTP to a registered host: each request gets a channel of its own to
//! the host's `http` service, over which the relay speaks HTTP/1.1 as a
//! client (hyper), forwarding the request and streaming the response back.
//! Upgrades (WebSocket above all) are forwarded too: after a `101` the two
//! connections are joined byte for byte; a WebSocket over HTTP/2 (RFC 8441
//! extended CONNECT) is turned into an HTTP/1.1 upgrade towards the host.
//!
//! The host sees the request as the client sent it, minus the hop-by-hop
//! headers, with the path below the name's prefix, and with
//! `X-Forwarded-Host`, `X-Forwarded-Proto` and, for path routing,
//! `X-Forwarded-Prefix`. A response can never widen a service worker's
//! scope beyond its name (`Service-Worker-Allowed` is dropped under path
//! routing, where every name shares the relay's origin).

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rand::RngCore;

use super::protocol::HTTP_SERVICE;
use super::{one_line, ExposeRefusal};
use crate::relay::names::ChannelIo;
use crate::relay::Relay;
use crate::transport::body::{Body, BoxError};
use crate::transport::websocket;

type UpstreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Headers of one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// `headers` without the hop-by-hop ones (and those `Connection` names),
/// nor `Upgrade`, which the caller sets when it means it.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if HOP_BY_HOP.contains(name) || name == header::UPGRADE || named.contains(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The protocol an HTTP/1.1 request asks to upgrade to, if it does.
fn upgrade_asked<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

fn host_failed(name: &str, e: impl std::fmt::Display) -> ExposeRefusal {
    ExposeRefusal::HostFailed(name.to_owned(), one_line(&e.to_string()))
}

/// Forwards one request to the host `name` (`target`: the path and query
/// it should see; `prefix`: the path prefix it sits under, for path
/// routing) and streams its answer back.
pub async fn proxy<B>(
    relay: Relay,
    name: String,
    mut req: Request<B>,
    target: String,
    prefix: Option<String>,
    tls: bool,
) -> Result<Response<Body>, ExposeRefusal>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let h2_websocket = req.method() == Method::CONNECT && websocket::is_websocket(&req);
    if req.method() == Method::CONNECT && !h2_websocket {
        return Err(ExposeRefusal::Method(Method::CONNECT));
    }
    let upgrade = if h2_websocket {
        Some(HeaderValue::from_static("websocket"))
    } else {
        upgrade_asked(&req)
    };
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let host = super::request_host(&req);

    let request = relay.connect_name(&name, Some(HTTP_SERVICE))?;
    let end = super::open(request, &name, relay.names_config().open_timeout).await?;
    let io = TokioIo::new(ChannelIo::new(end));
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, UpstreamBody>(io)
        .await
        .map_err(|e| host_failed(&name, e))?;
    {
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%name, %error, "a proxied connection failed");
            }
        });
    }

    let (parts, body) = req.into_parts();
    let mut headers = end_to_end(&parts.headers);
    if let Some(host) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(header::HOST, host.clone());
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    let proto = if tls { "https" } else { "http" };
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    if let Some(prefix) = prefix
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        headers.insert(HeaderName::from_static("x-forwarded-prefix"), prefix);
    }
    let method = if h2_websocket {
        Method::GET
    } else {
        parts.method.clone()
    };
    let body: UpstreamBody = match &upgrade {
        Some(protocol) => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
            if h2_websocket {
                let mut key = [0u8; 16];
                rand::thread_rng().fill_bytes(&mut key);
                use base64::Engine;
                let key = base64::engine::general_purpose::STANDARD.encode(key);
                if let Ok(key) = HeaderValue::from_str(&key) {
                    headers.insert(header::SEC_WEBSOCKET_KEY, key);
                }
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync()
        }
        None => body.map_err(Into::into).boxed_unsync(),
    };
    let mut upstream = Request::new(body);
    *upstream.method_mut() = method;
    *upstream.uri_mut() = target
        .parse()
        .map_err(|e| host_failed(&name, format!("bad path: {e}")))?;
    *upstream.headers_mut() = headers;
    let mut response = sender
        .send_request(upstream)
        .await
        .map_err(|e| host_failed(&name, e))?;
    drop(sender); // the connection ends with this exchange

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(host_failed(&name, "an upgrade no one asked for"));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let mut out = Response::new(Body::empty());
        if h2_websocket {
            // Over HTTP/2 the WebSocket is accepted with a 200 and no key.
            for name in [
                header::SEC_WEBSOCKET_PROTOCOL,
                header::SEC_WEBSOCKET_EXTENSIONS,
            ] {
                if let Some(v) = response.headers().get(&name) {
                    out.headers_mut().insert(name, v.clone());
                }
            }
        } else {
            *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *out.headers_mut() = end_to_end(response.headers());
            out.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(v) = response.headers().get(header::UPGRADE) {
                out.headers_mut().insert(header::UPGRADE, v.clone());
            }
        }
        tokio::spawn(async move {
            let (client, host) = tokio::join!(client_upgrade, upstream_upgrade);
            let (Ok(client), Ok(host)) = (client, host) else {
                tracing::debug!(%name, "a proxied upgrade failed");
                return;
            };
            let (mut client, mut host) = (TokioIo::new(client), TokioIo::new(host));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut host).await;
        });
        return Ok(out);
    }

    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream().map_err(BoxError::from);
    let mut out = Response::new(Body::Boxed(Box::pin(stream)));
    *out.status_mut() = parts.status;
    let mut headers = end_to_end(&parts.headers);
    if prefix.is_some() {
        headers.remove(HeaderName::from_static("service-worker-allowed"));
    }
    *out.headers_mut() = headers;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.append("x-kept", HeaderValue::from_static("a"));
        h.append("x-kept", HeaderValue::from_static("b"));
        let out = end_to_end(&h);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out.get_all("x-kept").iter().count(), 2);
    }

    #[test]
    fn upgrades_are_asked_with_both_headers() {
        let req = Request::get("/")
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert_eq!(upgrade_asked(&req).unwrap(), "websocket");
        let req = Request::get("/")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(upgrade_asked(&req).is_none());
    }
}
