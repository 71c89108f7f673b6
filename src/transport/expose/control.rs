//! A host's control connection (`/-/expose`, WebSocket): `register`
//! first, then an `open` for each channel a client asks for, `refuse` and
//! `ping` from the host, and WebSocket pings from the relay to tell a dead
//! connection from a quiet one. The name is held as long as this runs;
//! when it ends the name waits out its grace period (see
//! [`crate::relay::names`]).

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::protocol::{FromHost, ToHost, HOST_PREFIX, MAX_CONTROL, REGISTER_TIMEOUT};
use super::ExposeRefusal;
use crate::relay::names::{Claim, Registration};
use crate::relay::Relay;
use crate::transport::body::Body;
use crate::transport::pages;
use crate::transport::websocket::{self, closing, Socket};

/// Accepts a control connection.
pub fn accept<B>(
    relay: &Relay,
    req: Request<B>,
    tls: bool,
) -> Result<Response<Body>, ExposeRefusal> {
    if !websocket::is_websocket(&req) {
        return Err(ExposeRefusal::NeedsWebSocket(req.uri().path().to_owned()));
    }
    let base = pages::base_url(&req, tls);
    let relay = relay.clone();
    Ok(websocket::upgrade(req, move |socket| {
        run(socket, relay, base)
    })?)
}

/// The addresses of a name's `http` service, as the host should print
/// them: path-routed under `base`, and on the name's sub-domain when the
/// relay has a domain.
fn urls(relay: &Relay, base: &str, name: &str) -> (String, Option<String>) {
    let path = format!("{base}{HOST_PREFIX}{name}/");
    let domain = relay.names_config().domain.as_ref().map(|domain| {
        let (scheme, authority) = base.split_once("://").unwrap_or(("http", base));
        // Keep the port the host reached us on.
        let port = authority
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']'))
            .map(|(_, p)| format!(":{p}"))
            .unwrap_or_default();
        format!("{scheme}://{name}.{}{port}/", domain.trim_matches('.'))
    });
    (path, domain)
}

/// The answer to a registration.
pub(super) fn registered(relay: &Relay, base: &str, registration: &Registration) -> ToHost {
    let (url, domain_url) = urls(relay, base, &registration.name);
    ToHost::Registered {
        name: registration.name.clone(),
        secret: registration.generated_secret.clone(),
        resumed: registration.resumed,
        url,
        domain_url,
        services: registration.services.clone(),
    }
}

/// What came from the host, as far as the control loop cares.
enum Heard {
    Message(FromHost),
    Bad(String),
    /// A ping, a pong: only proof of life.
    Alive,
    Gone,
}

fn heard(message: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>) -> Heard {
    match message {
        Some(Ok(WsMessage::Text(text))) => {
            if text.len() > MAX_CONTROL {
                return Heard::Bad(format!(
                    "[ERROR] A control message is at most {MAX_CONTROL} bytes."
                ));
            }
            match serde_json::from_str::<FromHost>(text.as_str()) {
                Ok(message) => Heard::Message(message),
                Err(e) => Heard::Bad(format!("[ERROR] Bad control message: {e}.")),
            }
        }
        Some(Ok(WsMessage::Binary(_))) => {
            Heard::Bad("[ERROR] Control messages are JSON text messages.".into())
        }
        Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => Heard::Gone,
        Some(Ok(_)) => Heard::Alive,
    }
}

async fn send(socket: &mut Socket, message: &ToHost) -> bool {
    match serde_json::to_string(message) {
        Ok(text) => socket.send(WsMessage::text(text)).await.is_ok(),
        Err(_) => false,
    }
}

async fn refuse(socket: &mut Socket, message: String) {
    let message = message.trim_end().to_owned();
    tracing::debug!(%message, "control connection refused");
    if send(socket, &ToHost::Error { message }).await {
        closing(socket, CloseCode::Policy, "refused").await;
    }
}

async fn run(mut socket: Socket, relay: Relay, base: String) {
    // The first message must be `register`.
    let first = tokio::time::timeout(REGISTER_TIMEOUT, async {
        loop {
            match heard(socket.next().await) {
                Heard::Alive => continue,
                other => return other,
            }
        }
    })
    .await;
    let claim = match first {
        Ok(Heard::Message(FromHost::Register {
            name,
            secret,
            services,
        })) => Claim {
            name,
            secret,
            services,
        },
        Ok(Heard::Gone) => return,
        Ok(Heard::Bad(why)) => return refuse(&mut socket, why).await,
        Ok(_) => {
            let why = "[ERROR] The first control message must be register.".to_owned();
            return refuse(&mut socket, why).await;
        }
        Err(_) => {
            let why = format!(
                "[ERROR] No register within {} s.",
                REGISTER_TIMEOUT.as_secs()
            );
            return refuse(&mut socket, why).await;
        }
    };
    let registration = match relay.register_name(claim) {
        Ok(r) => r,
        Err(e) => return refuse(&mut socket, e.to_string()).await,
    };
    tracing::info!(
        name = %registration.name,
        resumed = registration.resumed,
        "a host registered"
    );
    let registered = registered(&relay, &base, &registration);
    if !send(&mut socket, &registered).await {
        return;
    }
    let name = registration.name.clone();
    serve(socket, &relay, registration).await;
    tracing::info!(%name, "a host's control connection ended");
}

/// The registered control loop.
async fn serve(mut socket: Socket, relay: &Relay, mut registration: Registration) {
    let idle = relay.names_config().control_idle;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + idle / 3, idle / 3);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            notice = registration.notices.recv() => match notice {
                Some(notice) => {
                    let open = ToHost::Open { id: notice.id, service: notice.service };
                    if !send(&mut socket, &open).await {
                        return;
                    }
                }
                None => {
                    closing(&mut socket, CloseCode::Normal, "replaced by a newer control connection").await;
                    return;
                }
            },
            message = socket.next() => {
                last_heard = Instant::now();
                match heard(message) {
                    Heard::Gone => {
                        // Answer a closing handshake (tungstenite queued it).
                        let _ = socket.flush().await;
                        return;
                    }
                    Heard::Alive => {}
                    Heard::Bad(why) => {
                        if !send(&mut socket, &ToHost::Error { message: why }).await {
                            return;
                        }
                    }
                    Heard::Message(FromHost::Refuse { id, reason }) => {
                        let reason = reason.unwrap_or_else(|| "refused by the host".into());
                        // Unknown ids (answered or given up meanwhile) are no error.
                        let _ = relay.refuse_channel(&id, &reason);
                    }
                    Heard::Message(FromHost::Ping) => {
                        if !send(&mut socket, &ToHost::Pong).await {
                            return;
                        }
                    }
                    Heard::Message(FromHost::Register { .. }) => {
                        let message = "[ERROR] Already registered: open another control connection to register another name.".to_owned();
                        if !send(&mut socket, &ToHost::Error { message }).await {
                            return;
                        }
                    }
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= idle {
                    tracing::info!(name = %registration.name, "a silent control connection was dropped");
                    // The name's grace period starts now, not after the
                    // closing handshake a silent host may never answer.
                    drop(registration);
                    closing(&mut socket, CloseCode::Away, "silent for too long").await;
                    return;
                }
                if socket.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
        }
    }
}
