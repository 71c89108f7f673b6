//! Hosts over plain HTTP, for networks that let no WebSocket through:
//!
//! - `POST /-/expose` (or `PUT`) with the `register` message as its body:
//!   the response is an event stream whose `data:` lines are the same
//!   control messages as over a WebSocket (`registered`, then `open`s),
//!   with a `: keep-alive` comment every third of the idle limit. A refused
//!   registration is an ordinary error response. The name is held while
//!   the response is being read.
//! - `GET /-/channel/ID`: the client-to-host bytes of channel `ID`, as the
//!   response body; it ends when the client ends its direction.
//! - `PUT /-/channel/ID` (or `POST`): the host-to-client bytes, as the
//!   request body; its end ends that direction, a body cut short closes
//!   the channel. The two requests may come in either order.
//! - `DELETE /-/channel/ID[?reason=...]`: refuses the channel.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response};
use http_body_util::BodyExt;

use super::protocol::{FromHost, ToHost, MAX_CONTROL};
use super::{control, now, ExposeRefusal, Reply};
use crate::relay::names::{Claim, Registration};
use crate::relay::Relay;
use crate::transport::body::{Body, BoxError};
use crate::transport::pages;

fn streaming(body: Body, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        http::header::HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

/// `POST /-/expose`: a control connection as an event stream.
pub fn control<B>(relay: &Relay, req: Request<B>, tls: bool) -> Reply
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let base = pages::base_url(&req, tls);
    let relay = relay.clone();
    Box::pin(async move {
        let limited = http_body_util::Limited::new(req.into_body(), MAX_CONTROL);
        let body = limited
            .collect()
            .await
            .map_err(|e| ExposeRefusal::BadControl(e.to_string()))?
            .to_bytes();
        let claim = match serde_json::from_slice::<FromHost>(&body) {
            Ok(FromHost::Register {
                name,
                secret,
                services,
            }) => Claim {
                name,
                secret,
                services,
            },
            Ok(_) => return Err(ExposeRefusal::BadControl("not a register message".into())),
            Err(e) => return Err(ExposeRefusal::BadControl(e.to_string())),
        };
        let registration = relay.register_name(claim)?;
        tracing::info!(
            name = %registration.name,
            resumed = registration.resumed,
            "a host registered over HTTP"
        );
        let first = control::registered(&relay, &base, &registration);
        let idle = relay.names_config().control_idle;
        let events = futures_util::stream::once(async move { Ok(event(&first)) })
            .chain(notices(registration, idle / 3));
        Ok(streaming(
            Body::Boxed(Box::pin(events)),
            "text/event-stream",
        ))
    })
}

/// One control message as an event.
fn event(message: &ToHost) -> Bytes {
    let json = serde_json::to_string(message).unwrap_or_default();
    Bytes::from(format!("data: {json}\n\n"))
}

/// The `open`s of a registration as events, with keep-alives; ends (after
/// an `error`) when a newer control connection took the name over.
fn notices(
    registration: Registration,
    beat: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, BoxError>> + Send {
    futures_util::stream::unfold(Some(registration), move |state| async move {
        let mut registration = state?;
        match tokio::time::timeout(beat, registration.notices.recv()).await {
            Err(_) => Some((
                Ok(Bytes::from_static(b": keep-alive\n\n")),
                Some(registration),
            )),
            Ok(Some(notice)) => {
                let open = ToHost::Open {
                    id: notice.id,
                    service: notice.service,
                };
                Some((Ok(event(&open)), Some(registration)))
            }
            Ok(None) => {
                let error = ToHost::Error {
                    message: "[ERROR] Replaced by a newer control connection.".into(),
                };
                Some((Ok(event(&error)), None))
            }
        }
    })
}

/// `GET`, `PUT`/`POST` and `DELETE` on `/-/channel/ID`.
pub fn channel<B>(relay: &Relay, req: Request<B>, id: &str) -> Reply
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let method = req.method().clone();
    if method == Method::GET {
        let reader = match relay.channel_reader(id) {
            Ok(r) => r,
            Err(e) => return now(Err(e.into())),
        };
        let idle = relay.names_config().channel_idle;
        let stream = futures_util::stream::unfold(reader, move |mut reader| async move {
            match tokio::time::timeout(idle, reader.next()).await {
                Ok(Some(data)) => Some((Ok::<_, BoxError>(data), reader)),
                _ => None,
            }
        });
        return now(Ok(streaming(
            Body::Boxed(Box::pin(stream)),
            "application/octet-stream",
        )));
    }
    if method == Method::PUT || method == Method::POST {
        let writer = match relay.channel_writer(id) {
            Ok(w) => w,
            Err(e) => return now(Err(e.into())),
        };
        return Box::pin(async move {
            let body = req.into_body().into_data_stream();
            tokio::pin!(body);
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(data) => {
                        if !writer.send(data).await {
                            break; // the client is gone
                        }
                    }
                    // Cut short: dropping the writer closes the channel.
                    Err(e) => {
                        return Err(ExposeRefusal::HostFailed(
                            "(channel)".into(),
                            super::one_line(&e.to_string()),
                        ))
                    }
                }
            }
            writer.end().await;
            Ok(streaming(Body::empty(), "text/plain"))
        });
    }
    if method == Method::DELETE {
        let reason = req
            .uri()
            .query()
            .and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "reason")
                    .map(|(_, v)| super::one_line(&v))
            })
            .unwrap_or_else(|| "refused by the host".into());
        return now(relay
            .refuse_channel(id, &reason)
            .map(|()| streaming(Body::empty(), "text/plain"))
            .map_err(Into::into));
    }
    now(Err(ExposeRefusal::Method(method)))
}
