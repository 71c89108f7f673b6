//! WebSocket on any path (RFC 6455 over HTTP/1.1, RFC 8441 extended
//! CONNECT over HTTP/2), as one more view onto the relay core, chosen with
//! the `ws` query option:
//!
//! - `?ws=send` (with `n` as usual): the socket is the sender of an
//!   ordinary transfer. Each message's bytes are the body, in order; a
//!   close with code 1000 ends it cleanly, anything else (another code, a
//!   dropped connection) aborts it, so every receiver sees a cut stream.
//!   The relay's live log comes back as text messages.
//! - `?ws=receive`: the socket is a receiver; the body arrives as binary
//!   messages, then a close 1000 (`end`) for a complete transfer or 1011
//!   (`aborted`) for one cut short.
//! - `?ws=pair`: two sockets on a path are joined full duplex, each
//!   message passed through unchanged (text stays text); when one leaves
//!   the other is closed (1000).
//! - `?ws=room`: the socket is a member of the signaling room on the path:
//!   its messages reach every other member (WebSocket or SSE), and theirs
//!   reach it.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use super::body::Body;
use crate::relay::pair::{Message, PairEnd};
use crate::relay::{BodyError, ByteStream, Count, Head, Reject, Relay, SenderLog};

/// The largest message accepted from a client: with the bounded queues
/// this caps the memory a socket can hold.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Messages of a sending socket queued before it is held back.
const SEND_QUEUE: usize = 4;

/// A server-side WebSocket on an upgraded connection.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Which view a socket asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Send,
    Receive,
    Pair,
    Room,
}

/// Why a WebSocket request is refused before the upgrade.
#[derive(Debug, thiserror::Error)]
pub enum WsRefusal {
    #[error("[ERROR] A WebSocket needs ?ws=send, ?ws=receive, ?ws=pair or ?ws=room.\n")]
    Mode,
    #[error("{0}")]
    Room(#[from] crate::relay::room::RoomError),
    #[error("[ERROR] Unsupported WebSocket handshake: {0}.\n")]
    Handshake(&'static str),
    #[error("{0}")]
    Relay(#[from] Reject),
}

/// True for a WebSocket opening handshake (HTTP/1.1 upgrade, or an HTTP/2
/// extended CONNECT for the `websocket` protocol).
pub fn is_websocket<B>(req: &Request<B>) -> bool {
    if req.method() == Method::CONNECT {
        return req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    }
    req.method() == Method::GET
        && req
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
            })
}

fn mode(query: Option<&str>) -> Option<Mode> {
    let value = form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "ws")
        .map(|(_, v)| v.into_owned())?;
    match value.as_str() {
        "send" => Some(Mode::Send),
        "receive" | "recv" => Some(Mode::Receive),
        "pair" => Some(Mode::Pair),
        "room" => Some(Mode::Room),
        _ => None,
    }
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// What the socket will do once upgraded, registered with the relay now
/// so that a refusal is still an ordinary HTTP error.
enum Job {
    Send(SenderLog, mpsc::Sender<Result<Bytes, BodyError>>),
    Receive(crate::relay::ReceiverTicket),
    Pair(crate::relay::pair::PairTicket),
    Room(crate::relay::room::Member),
}

/// Accepts a WebSocket handshake: registers with the relay, answers 101
/// (or 200 over HTTP/2), and runs the socket in a task of its own.
pub fn accept<B>(relay: &Relay, req: Request<B>, n: Count) -> Result<Response<Body>, WsRefusal> {
    let mode = mode(req.uri().query()).ok_or(WsRefusal::Mode)?;
    check_handshake(&req)?;
    let path = req.uri().path().to_owned();
    let job = match mode {
        Mode::Send => {
            let (tx, rx) = mpsc::channel(SEND_QUEUE);
            let body: ByteStream =
                Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                }));
            Job::Send(relay.send(&path, n, Head::default(), body)?, tx)
        }
        Mode::Receive => Job::Receive(relay.receive(&path, n)?),
        Mode::Pair => Job::Pair(relay.pair(&path)?),
        Mode::Room => Job::Room(relay.join_room(&path)?),
    };
    upgrade(req, move |socket| async move {
        match job {
            Job::Send(log, tx) => run_sender(socket, log, tx).await,
            Job::Receive(ticket) => run_receiver(socket, ticket).await,
            Job::Pair(ticket) => run_pair(socket, ticket, None).await,
            Job::Room(member) => run_member(socket, member).await,
        }
    })
}

/// Checks a WebSocket handshake before anything is registered for it.
pub fn check_handshake<B>(req: &Request<B>) -> Result<(), WsRefusal> {
    if req.method() == Method::CONNECT {
        return Ok(());
    }
    let headers = req.headers();
    if headers.get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(WsRefusal::Handshake("Sec-WebSocket-Version must be 13"));
    }
    if !headers.contains_key(SEC_WEBSOCKET_KEY) {
        return Err(WsRefusal::Handshake("no Sec-WebSocket-Key"));
    }
    Ok(())
}

/// Answers a WebSocket handshake (101, or 200 over HTTP/2) and runs `run`
/// on the socket in a task of its own once the connection is upgraded.
pub fn upgrade<B, F, Fut>(mut req: Request<B>, run: F) -> Result<Response<Body>, WsRefusal>
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    check_handshake(&req)?;
    let accept_key = match req.method() {
        &Method::CONNECT => None,
        _ => req.headers().get(SEC_WEBSOCKET_KEY).map(|key| {
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
        }),
    };
    let path = req.uri().path().to_owned();
    let upgrade = hyper::upgrade::on(&mut req);
    drop(req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%path, "websocket upgrade failed: {e}");
                return;
            }
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config()))
                .await;
        run(socket).await;
    });
    let mut response = Response::new(Body::empty());
    if let Some(accept) = accept_key {
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, v);
        }
    }
    Ok(response)
}

/// How long a closing socket waits for the client's close in reply.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the closing handshake and waits (a little) for the client's
/// reply: dropping the connection at once can lose the close frame on the
/// way (over HTTP/2 the stream is reset), and the client sees 1006.
pub async fn closing(socket: &mut Socket, code: CloseCode, reason: &'static str) {
    if socket.send(close(code, reason)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

fn close(code: CloseCode, reason: &'static str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

#[derive(Debug, thiserror::Error)]
#[error("the sending WebSocket {0}")]
struct SocketCut(String);

/// What a message from a sending socket means for the body.
enum Incoming {
    Data(Bytes),
    End,
    Cut(BodyError),
    Nothing,
}

fn incoming(message: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>) -> Incoming {
    match message {
        Some(Ok(WsMessage::Binary(data))) => Incoming::Data(data),
        Some(Ok(WsMessage::Text(text))) => Incoming::Data(Bytes::from(text)),
        Some(Ok(WsMessage::Close(frame))) => {
            if frame.as_ref().is_none_or(|f| f.code == CloseCode::Normal) {
                Incoming::End
            } else {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or_default();
                Incoming::Cut(SocketCut(format!("closed with code {code}")).into())
            }
        }
        Some(Ok(_)) => Incoming::Nothing, // ping, pong
        Some(Err(e)) => Incoming::Cut(SocketCut(e.to_string()).into()),
        None => Incoming::Cut(SocketCut("went away".into()).into()),
    }
}

type BodySender = mpsc::Sender<Result<Bytes, BodyError>>;

async fn reserve(tx: Option<BodySender>) -> Option<mpsc::OwnedPermit<Result<Bytes, BodyError>>> {
    tx?.reserve_owned().await.ok()
}

/// A sending socket: messages become the body; the log goes back as text.
///
/// The log is polled all along (polling it runs the transfer), and a
/// message is read from the socket only when the body has room for it, so
/// a slow transfer holds the socket back instead of stalling the relay.
/// After the client's closing handshake (or a failed write) log lines are
/// no longer sent, but the transfer still runs to its end.
async fn run_sender(mut socket: Socket, mut log: SenderLog, tx: BodySender) {
    let mut tx = Some(tx);
    let mut permit = None;
    let mut writable = true;
    loop {
        tokio::select! {
            line = log.next() => match line {
                Some(line) => {
                    if writable && socket.send(WsMessage::text(line.to_string())).await.is_err() {
                        writable = false;
                    }
                }
                None => break, // the transfer is over
            },
            got = reserve(tx.clone()), if tx.is_some() && permit.is_none() => match got {
                Some(p) => permit = Some(p),
                None => tx = None, // the transfer is gone
            },
            message = socket.next(), if permit.is_some() => match incoming(message) {
                Incoming::Data(data) => {
                    if let Some(p) = permit.take() {
                        p.send(Ok(data));
                    }
                }
                Incoming::End => {
                    // The end of the body; answer the closing handshake.
                    permit = None;
                    tx = None;
                    let _ = socket.flush().await;
                    writable = false;
                }
                Incoming::Cut(error) => {
                    if let Some(p) = permit.take() {
                        p.send(Err(error));
                    }
                    tx = None;
                    writable = false;
                }
                Incoming::Nothing => {}
            },
        }
    }
    if writable {
        closing(&mut socket, CloseCode::Normal, "").await;
    }
    let _ = socket.close(None).await;
}

/// A receiving socket: waits for its transfer, then streams it.
async fn run_receiver(mut socket: Socket, ticket: crate::relay::ReceiverTicket) {
    let ready = ticket.ready();
    tokio::pin!(ready);
    // While waiting, watch the socket: a client that leaves drops its place.
    let delivery = loop {
        tokio::select! {
            delivery = &mut ready => break delivery,
            message = socket.next() => match message {
                Some(Ok(WsMessage::Close(_))) => {
                    // Answer the closing handshake (tungstenite queued it).
                    let _ = socket.flush().await;
                    return;
                }
                Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    };
    let delivery = match delivery {
        Ok(delivery) => delivery,
        Err(crate::relay::Undelivered::TimedOut(_)) => {
            closing(&mut socket, CloseCode::Again, "no sender came in time").await;
            return;
        }
        Err(crate::relay::Undelivered::ShuttingDown) => {
            closing(&mut socket, CloseCode::Away, "the server is shutting down").await;
            return;
        }
        Err(crate::relay::Undelivered::SenderLeft) => {
            closing(&mut socket, CloseCode::Error, "aborted").await;
            return;
        }
    };
    let mut body = delivery.body;
    loop {
        tokio::select! {
            chunk = body.next() => match chunk {
                Some(Ok(data)) => {
                    if socket.send(WsMessage::Binary(data)).await.is_err() {
                        return; // dropping the body counts this receiver out
                    }
                }
                Some(Err(_)) => {
                    closing(&mut socket, CloseCode::Error, "aborted").await;
                    return;
                }
                None => {
                    closing(&mut socket, CloseCode::Normal, "end").await;
                    return;
                }
            },
            message = socket.next() => match message {
                Some(Ok(WsMessage::Close(_))) => {
                    // Answer the closing handshake (tungstenite queued it).
                    let _ = socket.flush().await;
                    return;
                }
                Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// A pair-mode socket: waits for its partner (`ticket`), then passes
/// messages both ways until one side closes, or, with `idle`, until
/// nothing has passed either way for that long.
pub async fn run_pair(
    mut socket: Socket,
    ticket: impl std::future::Future<Output = Option<PairEnd>>,
    idle: Option<std::time::Duration>,
) {
    tokio::pin!(ticket);
    let end: PairEnd = loop {
        tokio::select! {
            // The partner first: with both ready (a channel's end is there
            // from the start), a message already read must not be dropped
            // as if no one were there to take it.
            biased;
            end = &mut ticket => match end {
                Some(end) => break end,
                None => return,
            },
            message = socket.next() => match message {
                Some(Ok(WsMessage::Close(_))) => {
                    // Answer the closing handshake (tungstenite queued it).
                    let _ = socket.flush().await;
                    return;
                }
                Some(Err(_)) | None => return,
                Some(Ok(_)) => {} // nobody to give it to yet
            },
        }
    };
    let PairEnd { tx, mut rx, .. } = end;
    // A message is read from the socket only once the partner's queue has
    // room for it, and the partner's messages are delivered meanwhile: two
    // busy directions never wait on each other.
    let mut permit = None;
    let idle_for = idle.unwrap_or(std::time::Duration::from_secs(86_400));
    let timer = tokio::time::sleep(idle_for);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            () = &mut timer, if idle.is_some() => {
                closing(&mut socket, CloseCode::Normal, "idle").await;
                return;
            }
            incoming = rx.recv() => match incoming {
                Some(message) => {
                    if socket.send(to_ws(message)).await.is_err() {
                        return;
                    }
                    if idle.is_some() {
                        timer.as_mut().reset(tokio::time::Instant::now() + idle_for);
                    }
                }
                None => {
                    // The partner left.
                    closing(&mut socket, CloseCode::Normal, "the other side left").await;
                    return;
                }
            },
            got = tx.clone().reserve_owned(), if permit.is_none() => match got {
                Ok(p) => permit = Some(p),
                Err(_) => {
                    closing(&mut socket, CloseCode::Normal, "the other side left").await;
                    return;
                }
            },
            message = socket.next(), if permit.is_some() => {
                let message = match message {
                    Some(Ok(WsMessage::Text(t))) => Message { text: true, data: Bytes::from(t) },
                    Some(Ok(WsMessage::Binary(b))) => Message { text: false, data: b },
                    Some(Ok(WsMessage::Close(_))) => {
                        // Answer the closing handshake (tungstenite queued it).
                        let _ = socket.flush().await;
                        return;
                    }
                    Some(Err(_)) | None => return,
                    Some(Ok(_)) => continue,
                };
                if let Some(p) = permit.take() {
                    p.send(message);
                }
                if idle.is_some() {
                    timer.as_mut().reset(tokio::time::Instant::now() + idle_for);
                }
            }
        }
    }
}

/// A room member: its messages go to the others, theirs come to it.
async fn run_member(mut socket: Socket, mut member: crate::relay::room::Member) {
    loop {
        tokio::select! {
            incoming = member.rx.recv() => match incoming {
                Some(message) => {
                    if socket.send(to_ws(message)).await.is_err() {
                        return;
                    }
                }
                None => {
                    // Dropped from the room for not keeping up.
                    closing(&mut socket, CloseCode::Again, "too slow").await;
                    return;
                }
            },
            message = socket.next() => match message {
                Some(Ok(WsMessage::Text(t))) => member.post(Message { text: true, data: Bytes::from(t) }),
                Some(Ok(WsMessage::Binary(b))) => member.post(Message { text: false, data: b }),
                Some(Ok(WsMessage::Close(_))) => {
                    // Answer the closing handshake (tungstenite queued it).
                    let _ = socket.flush().await;
                    return;
                }
                Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

fn to_ws(Message { text, data }: Message) -> WsMessage {
    if text {
        match String::from_utf8(data.to_vec()) {
            Ok(s) => WsMessage::text(s),
            Err(_) => WsMessage::Binary(data),
        }
    } else {
        WsMessage::Binary(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(mode(Some("ws=send&n=2")), Some(Mode::Send));
        assert_eq!(mode(Some("n=2&ws=receive")), Some(Mode::Receive));
        assert_eq!(mode(Some("ws=pair")), Some(Mode::Pair));
        assert_eq!(mode(Some("ws=room")), Some(Mode::Room));
        assert_eq!(mode(Some("ws=other")), None);
        assert_eq!(mode(None), None);
    }
}
