//! HTTP/1.0, HTTP/1.1 and HTTP/2: requests become calls to the relay core,
//! and what the core answers becomes responses. Every rejection is made in
//! [`error_response`], so each has the same shape: a status, a one-line
//! `[ERROR] ...` body with its length, and `Access-Control-Allow-Origin`.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::header::{
    HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ALLOW,
    CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;

use std::sync::Arc;
use std::time::Duration;

use super::body::{self, Body};
use super::{expose, pages, sse, websocket};
use crate::metrics::Rejection;
use crate::policy::limits::ConnectionSlot;
use crate::policy::{Action, Credentials, Denied, Gate, PasswordCheck, Policy, Verdict};
use crate::relay::{self, parse_count, safe_content_type, ByteStream, Head, Relay};

const X_PIPING: HeaderName = HeaderName::from_static("x-piping");
const X_ROBOTS_TAG: HeaderName = HeaderName::from_static("x-robots-tag");
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, OPTIONS";

/// What the HTTP transport needs to answer a request.
#[derive(Clone)]
pub struct Handler {
    relay: Relay,
    /// Auth, limits and metrics, shared by every connection.
    gate: Arc<Gate>,
    /// The connection's peer, when the transport knows it.
    peer: Peer,
    /// Whether this listener is TLS (for the URLs shown in `/help`), and
    /// its `Alt-Svc` (advertising HTTP/3): one `Arc` for both keeps each
    /// connection's task and each waiting request's future small.
    listener: Arc<Listener>,
}

/// What a handler knows of its listener.
struct Listener {
    tls: bool,
    alt_svc: Option<HeaderValue>,
}

/// Who is at the other end of a connection.
#[derive(Clone)]
enum Peer {
    Unknown,
    Address(IpAddr),
    /// Held while the connection lasts (kept behind an `Arc` so the
    /// connection's task stays small).
    Counted(Arc<ConnectionSlot>),
}

impl Peer {
    fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Unknown => None,
            Peer::Address(ip) => Some(*ip),
            Peer::Counted(slot) => Some(slot.ip()),
        }
    }
}

/// A request turned away: status and the one-line message.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Relay(#[from] relay::Reject),
    #[error("[ERROR] Unsupported method: {0}.\n")]
    Method(Method),
    #[error("[ERROR] Cannot send to the reserved path '{0}'. (e.g. '/mypath123')\n")]
    ReservedPath(String),
    #[error("[ERROR] Content-Range is not supported for now in {0}\n")]
    ContentRange(Method),
    #[error("[ERROR] Service Worker registration is rejected.\n")]
    ServiceWorker,
    #[error("[ERROR] Invalid multipart/form-data: {0}.\n")]
    Multipart(String),
    #[error("{0}")]
    WebSocket(#[from] websocket::WsRefusal),
    #[error("{0}")]
    Room(#[from] relay::room::RoomError),
    #[error("[ERROR] A room is joined with Accept: text/event-stream (or ?sse) or a WebSocket (?ws=room), and posted to with POST ?room[&from=ID].\n")]
    RoomView,
    #[error("[ERROR] A room message is at most 64 KiB.\n")]
    RoomMessageTooLarge,
    #[error("{0}")]
    Denied(#[from] Denied),
    #[error("[ERROR] Too many requests; try again in {} s.\n", retry_after(*.0))]
    RateLimited(Duration),
    #[error("{0}")]
    Undelivered(#[from] relay::Undelivered),
    #[error("{0}")]
    Expose(#[from] expose::ExposeRefusal),
}

/// Whole seconds to wait, at least one.
fn retry_after(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The health check on the relay's own port (also `/healthz` on the
/// metrics address).
pub const HEALTH_PATH: &str = "/-/healthz";

/// The largest message posted to a room over HTTP.
pub const MAX_ROOM_MESSAGE: usize = 64 * 1024;

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::Relay(reject) => {
                StatusCode::from_u16(reject.status()).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Refusal::Denied(denied) => {
                StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            Refusal::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Undelivered(relay::Undelivered::ShuttingDown) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::Undelivered(_) => StatusCode::REQUEST_TIMEOUT,
            Refusal::Expose(e) => e.status(),
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The metrics' name for this refusal.
    fn reason(&self) -> Rejection {
        match self {
            Refusal::Relay(relay::Reject::TooManyPaths) => Rejection::TooManyPaths,
            Refusal::Relay(relay::Reject::TooLarge(_)) => Rejection::TooLarge,
            Refusal::Relay(_) | Refusal::Room(_) | Refusal::WebSocket(_) => Rejection::Protocol,
            Refusal::Denied(Denied::Forbidden(..)) => Rejection::Forbidden,
            Refusal::Denied(Denied::Busy) => Rejection::RateLimited,
            Refusal::Denied(_) => Rejection::Unauthorized,
            Refusal::RateLimited(_) => Rejection::RateLimited,
            Refusal::Undelivered(relay::Undelivered::ShuttingDown) => Rejection::ShuttingDown,
            Refusal::Undelivered(_) => Rejection::WaitTimeout,
            _ => Rejection::BadRequest,
        }
    }
}

impl Handler {
    pub fn new(relay: Relay, tls: bool) -> Self {
        Handler {
            relay,
            gate: Arc::default(),
            peer: Peer::Unknown,
            listener: Arc::new(Listener { tls, alt_svc: None }),
        }
    }

    /// Uses `gate` for auth, limits and metrics (by default: none, and
    /// metrics nobody reads).
    pub fn with_gate(mut self, gate: Arc<Gate>) -> Self {
        self.gate = gate;
        self
    }

    /// This handler for one connection from `peer`.
    /// With `slot` (under a per-address limit), the connection is
    /// counted until its handler goes.
    pub fn for_peer(&self, ip: IpAddr, slot: Option<ConnectionSlot>) -> Self {
        let mut handler = self.clone();
        handler.peer = match slot {
            Some(slot) => Peer::Counted(Arc::new(slot)),
            None => Peer::Address(ip),
        };
        handler
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Adds `Alt-Svc: <value>` to every response (an invalid value is
    /// ignored).
    pub fn with_alt_svc(mut self, value: &str) -> Self {
        self.listener = Arc::new(Listener {
            tls: self.listener.tls,
            alt_svc: HeaderValue::from_str(value).ok(),
        });
        self
    }

    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Answers one request. Never fails: a request that cannot be served
    /// gets an error response; a transfer cut short aborts its body.
    ///
    /// Checks run at once; only what must wait becomes a future, and it
    /// holds no more than it needs: a waiting receiver's future keeps its
    /// ticket, not its request, so ten thousand waiting cost little.
    pub fn handle<B>(&self, req: Request<B>) -> Reply
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let version = req.version();
        let head_only = req.method() == Method::HEAD;
        let listener = Arc::clone(&self.listener);
        let gate = Arc::clone(&self.gate);
        let finish = move |result: Result<Response<Body>, Refusal>| {
            let mut response = result.unwrap_or_else(|refusal| {
                gate.metrics.rejected(refusal.reason());
                error_response(&refusal)
            });
            *response.version_mut() = version;
            if gate.metrics.draining() && version <= Version::HTTP_11 {
                // Shutting down: no next request on this connection.
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            if let Some(alt_svc) = &listener.alt_svc {
                response
                    .headers_mut()
                    .insert(http::header::ALT_SVC, alt_svc.clone());
            }
            if head_only {
                // Same status and headers as GET, no body.
                *response.body_mut() = Body::empty();
            }
            Ok(response)
        };
        self.gate.metrics.request();
        let route = match self.admit(&req) {
            Ok(None) => self.route(req),
            Ok(Some((policy, check))) => {
                // A Basic password to check first, off this thread.
                let this = self.clone();
                Route::Later(Box::pin(async move {
                    policy.check_password(check).await?;
                    drop(policy);
                    match this.route(req) {
                        Route::Now(result) => result,
                        Route::Later(later) => later.await,
                    }
                }))
            }
            Err(refusal) => Route::Now(Err(refusal)),
        };
        match route {
            Route::Now(result) => Box::pin(std::future::ready(finish(result))),
            Route::Later(later) => Box::pin(async move { finish(later.await) }),
        }
    }

    /// The operator's checks, before anything reaches the relay: the
    /// client's request rate, then whether its credentials allow what it
    /// asks. Preflights and the reserved pages need no credentials.
    ///
    /// A Basic password not seen before comes back, with the policy it
    /// was found under, to be checked before the request goes on.
    fn admit<B>(&self, req: &Request<B>) -> Result<Option<(Arc<Policy>, PasswordCheck)>, Refusal> {
        let policy = self.gate.policy();
        if let Some(peer) = self.peer.ip() {
            let forwarded = req
                .headers()
                .get("x-forwarded-for")
                .map(HeaderValue::as_bytes);
            let client = policy.client_ip(peer, forwarded);
            policy.check_rate(client).map_err(Refusal::RateLimited)?;
        }
        let (path, action) = match expose::auth_path(&self.relay, req) {
            // Registering a name is like sending; reaching one, both ways.
            Some((path, registers)) => {
                let action = if registers {
                    Action::Send
                } else {
                    Action::Both
                };
                (std::borrow::Cow::Owned(path), action)
            }
            None => match action_of(req) {
                Some(action) => (std::borrow::Cow::Borrowed(req.uri().path()), action),
                None => return Ok(None),
            },
        };
        if self.gate.metrics.draining() {
            return Err(relay::Undelivered::ShuttingDown.into());
        }
        if policy.auth.is_none() {
            return Ok(None);
        }
        let query = req.uri().query().unwrap_or("");
        let params: Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> =
            form_urlencoded::parse(query.as_bytes()).collect();
        let param = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_ref())
        };
        let signed = match (param("allow"), param("exp"), param("sig")) {
            (Some(allow), Some(exp), Some(sig)) => {
                Some(crate::policy::auth::Signed { allow, exp, sig })
            }
            _ => None,
        };
        let credentials = Credentials {
            authorization: req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
            query_token: param("token"),
            signed,
        };
        match policy.authorize(&path, action, &credentials)? {
            Verdict::Allowed => Ok(None),
            Verdict::Password(check) => Ok(Some((Arc::clone(&policy), check))),
        }
    }

    fn route<B>(&self, req: Request<B>) -> Route
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        // Names (`/-/...` and their sub-domains) come first.
        let req = match expose::intercept(&self.relay, req, self.listener.tls) {
            expose::Intercepted::Taken(reply) => {
                return Route::Later(Box::pin(async move { Ok(reply.await?) }))
            }
            expose::Intercepted::Passed(req) => req,
        };
        if websocket::is_websocket(&req) {
            if pages::Reserved::from_path(req.uri().path()).is_some() {
                return Route::Now(Err(Refusal::ReservedPath(req.uri().path().to_string())));
            }
            let result = parse_count(query_value(req.uri().query(), "n").as_deref())
                .map_err(Refusal::from)
                .and_then(|n| Ok(websocket::accept(&self.relay, req, n)?));
            return Route::Now(result);
        }
        let method = req.method();
        if method == Method::OPTIONS {
            return Route::Now(Ok(preflight(
                req.headers(),
                self.gate.policy().auth.is_some(),
            )));
        }
        if (method == Method::GET || method == Method::HEAD) && req.uri().path() == HEALTH_PATH {
            let (status, body) = crate::metrics::health(&self.gate.metrics, &self.relay);
            let mut response = message(status, Body::full(body));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return Route::Now(Ok(response));
        }
        let reserved = pages::Reserved::from_path(req.uri().path());
        if method == Method::GET || method == Method::HEAD {
            if let Some(page) = reserved {
                return Route::Now(Ok(pages::render(page, &req, self.listener.tls)));
            }
        }
        let live = query_value(req.uri().query(), "live").is_some();
        if query_value(req.uri().query(), "room").is_some()
            && (method == Method::POST || method == Method::PUT || method == Method::GET)
        {
            if reserved.is_some() {
                return Route::Now(Err(Refusal::ReservedPath(req.uri().path().to_string())));
            }
            return self.room(req);
        }
        if method == Method::POST || method == Method::PUT {
            if reserved.is_some() {
                return Route::Now(Err(Refusal::ReservedPath(req.uri().path().to_string())));
            }
            let this = self.clone();
            if live {
                return Route::Now(this.live_send(req));
            }
            return Route::Later(Box::pin(async move { this.send(req).await }));
        }
        if method == Method::GET {
            let query = req.uri().query();
            let events = sse::wanted(req.headers(), query).then(|| {
                (
                    query.map(str::to_owned),
                    sse::last_event_id(req.headers(), query),
                )
            });
            if live {
                let receiver = self.relay.live_receive(req.uri().path());
                drop(req);
                return Route::Later(Box::pin(async move {
                    Ok(live_response(receiver, events).await)
                }));
            }
            return match self.receive(&req) {
                Ok(ticket) => {
                    drop(req);
                    Route::Later(Box::pin(async move {
                        let delivery = match ticket.ready().await {
                            Ok(delivery) => Some(delivery),
                            // Cut between the rendezvous and the start.
                            Err(relay::Undelivered::SenderLeft) => None,
                            Err(other) => return Err(other.into()),
                        };
                        Ok(match events {
                            Some((query, _)) => events_response(delivery, query.as_deref()),
                            None => receiver_response(delivery),
                        })
                    }))
                }
                Err(refusal) => Route::Now(Err(refusal)),
            };
        }
        Route::Now(Err(Refusal::Method(method.clone())))
    }

    async fn send<B>(&self, req: Request<B>) -> Result<Response<Body>, Refusal>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if req.headers().contains_key(http::header::CONTENT_RANGE) {
            return Err(Refusal::ContentRange(req.method().clone()));
        }
        let n = parse_count(query_value(req.uri().query(), "n").as_deref())?;
        let version = req.version();
        let (mut parts, body) = req.into_parts();
        // The sender's transport may offer its receivers more than bytes
        // (see `transport::http1`); a multipart upload's first part cannot
        // use it.
        let offer = parts.extensions.remove::<relay::Offer>();
        let path = parts.uri.path();
        let mut body: ByteStream = Box::pin(body.into_data_stream().map_err(Into::into));
        if expects_continue(&parts.headers) {
            body = answer_continue(body).await;
        }
        let x_piping = parts
            .headers
            .get_all(&X_PIPING)
            .iter()
            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
            .collect();
        let (head, body) = match multipart_boundary(&parts.headers)? {
            Some(boundary) => first_part(body, boundary, x_piping).await?,
            None => {
                let mut head = head_of(&parts.headers, x_piping);
                head.offer = offer;
                (head, body)
            }
        };
        let log = self.relay.send(path, n, head, body)?;
        tracing::debug!(path, n, "sender registered");
        let body = if version == Version::HTTP_10 {
            // No chunked responses in HTTP/1.0: the whole log at the end.
            let text: String = log.map(|line| line.to_string()).collect().await;
            Body::full(text)
        } else {
            Body::Log(log)
        };
        Ok(message(StatusCode::OK, body))
    }

    /// Opens a live stream (`?live`): the response is its log, and
    /// polling it reads the body into the live window.
    fn live_send<B>(&self, req: Request<B>) -> Result<Response<Body>, Refusal>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if req.headers().contains_key(http::header::CONTENT_RANGE) {
            return Err(Refusal::ContentRange(req.method().clone()));
        }
        let (parts, body) = req.into_parts();
        let mut head = head_of(&parts.headers, Vec::new());
        // A live stream has no length: receivers join in the middle.
        head.content_length = None;
        let body: ByteStream = Box::pin(body.into_data_stream().map_err(Into::into));
        let sender = self.relay.live_send(parts.uri.path(), head, body)?;
        let log = sender
            .into_log()
            .map(|line| Ok::<_, body::BoxError>(Bytes::from(line.to_string())));
        Ok(message(StatusCode::OK, Body::Boxed(Box::pin(log))))
    }

    /// Signaling rooms over plain HTTP (`?room`): a GET asking for events
    /// joins the room and gets the others' messages as SSE; a POST (or PUT)
    /// of at most [`MAX_ROOM_MESSAGE`] bytes posts one message, from
    /// member `from=ID` (who does not get it back) or from outside.
    fn room<B>(&self, req: Request<B>) -> Route
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = req.uri().path().to_owned();
        if req.method() == Method::GET {
            if !sse::wanted(req.headers(), req.uri().query()) {
                return Route::Now(Err(Refusal::RoomView));
            }
            return Route::Now(
                self.relay
                    .join_room(&path)
                    .map(|member| {
                        let events = sse::room_events(member).map(|item| item.map_err(Into::into));
                        event_stream_response(Body::Boxed(Box::pin(events)))
                    })
                    .map_err(Refusal::from),
            );
        }
        let from = match query_value(req.uri().query(), "from") {
            Some(v) => match v.parse::<u64>() {
                Ok(id) => Some(id),
                Err(_) => return Route::Now(Err(Refusal::RoomView)),
            },
            None => None,
        };
        let relay = self.relay.clone();
        Route::Later(Box::pin(async move {
            let limited = http_body_util::Limited::new(req.into_body(), MAX_ROOM_MESSAGE);
            let data = limited
                .collect()
                .await
                .map_err(|_| Refusal::RoomMessageTooLarge)?
                .to_bytes();
            let text = std::str::from_utf8(&data).is_ok();
            relay.post_to_room(&path, from, relay::pair::Message { text, data })?;
            Ok(message(StatusCode::OK, Body::full("[INFO] Posted.\n")))
        }))
    }

    /// Registers a receiver; the ticket resolves when its transfer starts.
    fn receive<B>(&self, req: &Request<B>) -> Result<relay::ReceiverTicket, Refusal> {
        if req
            .headers()
            .get("service-worker")
            .is_some_and(|v| v.as_bytes() == b"script")
        {
            return Err(Refusal::ServiceWorker);
        }
        let n = parse_count(query_value(req.uri().query(), "n").as_deref())?;
        Ok(self.relay.receive(req.uri().path(), n)?)
    }
}

/// What [`Handler::handle`] returns: the response, once it is ready.
pub type Reply = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

enum Route {
    Now(Result<Response<Body>, Refusal>),
    Later(Pin<Box<dyn Future<Output = Result<Response<Body>, Refusal>> + Send>>),
}

/// A receiver's response: the sender's head and its stream. `None` (the
/// sender left between the rendezvous and the start) gives a response that
/// aborts at once, so the receiver sees a cut stream.
fn receiver_response(delivery: Option<relay::Delivery>) -> Response<Body> {
    // (A receiver whose wait timed out got its error response already.)
    let Some(relay::Delivery { head, body }) = delivery else {
        return Response::new(Body::Stream(relay::ReceiverStream::aborted()));
    };
    let mut response = Response::new(Body::Stream(body));
    if let Some(offer) = head.offer {
        response.extensions_mut().insert(offer);
    }
    let headers = response.headers_mut();
    if let Some(length) = head.content_length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    if let Some(v) = head.content_type.and_then(to_value) {
        headers.insert(CONTENT_TYPE, v);
    }
    if let Some(v) = head.content_disposition.and_then(to_value) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    let has_x_piping = !head.x_piping.is_empty();
    for v in head.x_piping.into_iter().filter_map(to_value) {
        headers.append(X_PIPING, v);
    }
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    if has_x_piping {
        headers.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("X-Piping"),
        );
    }
    headers.insert(X_ROBOTS_TAG, HeaderValue::from_static("none"));
    no_buffering(headers);
    sandboxed(headers);
    response
}

/// Whatever a sender claims its stream is, a browser that opens it from
/// the relay's URL treats it as a document of no origin, without scripts:
/// the `text/html` rewrite alone leaves SVG and XML documents, which run
/// scripts too.
fn sandboxed(headers: &mut HeaderMap) {
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
}

/// Asks proxies and caches on the way to pass a stream on as it comes:
/// nginx buffers responses unless told `X-Accel-Buffering: no`, and
/// nothing relayed may be cached.
fn no_buffering(headers: &mut HeaderMap) {
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
}

/// What a request asks to do, for auth; `None` for what needs no
/// credentials (preflights, the reserved pages).
fn action_of<B>(req: &Request<B>) -> Option<Action> {
    let method = req.method();
    if method == Method::OPTIONS || req.uri().path().starts_with("/-/") {
        // (Requests to names are sorted out by `expose::auth_path`.)
        return None;
    }
    if websocket::is_websocket(req) {
        return Some(match query_value(req.uri().query(), "ws").as_deref() {
            Some("send") => Action::Send,
            Some("receive") => Action::Receive,
            _ => Action::Both,
        });
    }
    if pages::Reserved::from_path(req.uri().path()).is_some() {
        return None;
    }
    if query_value(req.uri().query(), "room").is_some() {
        return Some(Action::Both);
    }
    if method == Method::POST || method == Method::PUT {
        Some(Action::Send)
    } else {
        Some(Action::Receive)
    }
}

/// The head of an upload from its headers.
fn head_of(headers: &HeaderMap, x_piping: Vec<Bytes>) -> Head {
    Head {
        content_length: headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok()),
        content_type: header_bytes(headers, &CONTENT_TYPE).map(|v| safe_content_type(&v)),
        content_disposition: header_bytes(headers, &CONTENT_DISPOSITION),
        x_piping,
        offer: None,
    }
}

/// Headers of every event stream: no caching, no proxy buffering.
fn event_stream_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// An ordinary transfer as Server-Sent Events.
fn events_response(delivery: Option<relay::Delivery>, query: Option<&str>) -> Response<Body> {
    let Some(relay::Delivery { head, body }) = delivery else {
        return Response::new(Body::Stream(relay::ReceiverStream::aborted()));
    };
    let encoding = sse::encoding(&head, query);
    let mut offset = 0u64;
    let pieces = body.map(move |item| {
        item.map(|bytes| {
            let at = offset;
            offset += bytes.len() as u64;
            (at, bytes)
        })
        .map_err(|e| sse::Cut(e.to_string()))
    });
    let events = sse::events(pieces, encoding).map(|item| item.map_err(Into::into));
    event_stream_response(Body::Boxed(Box::pin(events)))
}

/// A live receiver's response, raw or as events, once its sender is there.
async fn live_response(
    receiver: relay::live::LiveReceiver,
    events: Option<(Option<String>, Option<u64>)>,
) -> Response<Body> {
    let head = receiver.head().await;
    match events {
        Some((query, resume)) => {
            let encoding = sse::encoding(&head, query.as_deref());
            let join = resume.map_or(relay::live::Join::Now, relay::live::Join::At);
            let pieces = receiver
                .stream(join)
                .map(|item| item.map_err(|e| sse::Cut(e.to_string())));
            let events =
                sse::events(Box::pin(pieces), encoding).map(|item| item.map_err(Into::into));
            event_stream_response(Body::Boxed(Box::pin(events)))
        }
        None => {
            // A receiver that skipped ahead stopped in the middle of a
            // frame: end that frame before the next starts, so the next is
            // read whole (a line after "\n"; a part after "\r\n", the
            // start of every multipart delimiter).
            let multipart = head
                .content_type
                .as_deref()
                .is_some_and(|t| t.to_ascii_lowercase().starts_with(b"multipart/"));
            let mut expected = None::<u64>;
            let mut last = b'\n';
            let bytes = receiver.stream(relay::live::Join::Now).map(move |item| {
                item.map(|(at, b)| {
                    let gap = expected.is_some_and(|e| e != at);
                    expected = Some(at + b.len() as u64);
                    let closing: &[u8] = match (gap, multipart) {
                        (false, _) => b"",
                        (true, true) => b"\r\n",
                        (true, false) if last != b'\n' => b"\n",
                        (true, false) => b"",
                    };
                    last = b.last().copied().unwrap_or(last);
                    if closing.is_empty() {
                        b
                    } else {
                        Bytes::from([closing, &b[..]].concat())
                    }
                })
                .map_err(Into::into)
            });
            let mut response = Response::new(Body::Boxed(Box::pin(bytes)));
            let headers = response.headers_mut();
            if let Some(v) = head.content_type.and_then(to_value) {
                headers.insert(CONTENT_TYPE, v);
            }
            if let Some(v) = head.content_disposition.and_then(to_value) {
                headers.insert(CONTENT_DISPOSITION, v);
            }
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            no_buffering(headers);
            headers.insert(X_ROBOTS_TAG, HeaderValue::from_static("none"));
            sandboxed(headers);
            response
        }
    }
}

fn to_value(bytes: Bytes) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes).ok()
}

fn header_bytes(headers: &HeaderMap, name: &HeaderName) -> Option<Bytes> {
    headers
        .get(name)
        .map(|v| Bytes::copy_from_slice(v.as_bytes()))
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// A client that sent `Expect: 100-continue` (curl does for large or
/// unknown-size uploads) waits for `100 Continue` before its body, a
/// second by default. hyper writes the `100` when the body is first
/// polled, but only while no final response has been written, and a
/// sender's `200` goes out at once. So: poll the body once here, yield so
/// the connection writes the `100`, then go on. Nothing is lost: a chunk
/// that came with that poll is kept in front of the stream.
async fn answer_continue(body: ByteStream) -> ByteStream {
    let mut body = body.peekable();
    std::future::poll_fn(|cx| {
        let _ = std::pin::Pin::new(&mut body).poll_peek(cx);
        std::task::Poll::Ready(())
    })
    .await;
    tokio::task::yield_now().await;
    Box::pin(body)
}

/// The boundary of a `multipart/form-data` body; `None` for other bodies.
fn multipart_boundary(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let media = ct.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return Ok(None);
    }
    multer::parse_boundary(ct)
        .map(Some)
        .map_err(|_| Refusal::Multipart("no boundary".into()))
}

/// Reads a multipart body up to its first part's headers; the rest of that
/// part becomes the transfer. Only the part's own type and disposition
/// are forwarded, and no length (it is not known exactly).
async fn first_part(
    body: ByteStream,
    boundary: String,
    x_piping: Vec<Bytes>,
) -> Result<(Head, ByteStream), Refusal> {
    let mut multipart = multer::Multipart::new(body, boundary);
    let field = multipart
        .next_field()
        .await
        .map_err(|e| Refusal::Multipart(e.to_string()))?;
    let Some(field) = field else {
        let head = Head {
            x_piping,
            ..Head::default()
        };
        return Ok((head, Box::pin(futures_util::stream::empty())));
    };
    let head = Head {
        content_length: None,
        content_type: header_bytes(field.headers(), &CONTENT_TYPE).map(|v| safe_content_type(&v)),
        content_disposition: header_bytes(field.headers(), &CONTENT_DISPOSITION),
        x_piping,
        offer: None,
    };
    // The part's stream keeps the parser alive; the rest of the body after
    // the first part is never read.
    let stream = field.map_err(Into::into);
    Ok((head, Box::pin(stream)))
}

/// The receivers a request asks for with `?n=` (1 if it asks for none,
/// or in a way the handler refuses).
pub(super) fn receivers_asked(uri: &http::Uri) -> usize {
    parse_count(query_value(uri.query(), "n").as_deref()).map_or(1, |n| n as usize)
}

/// The first value of `key` in a query string, decoded as browsers do.
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// A `text/plain` response for senders and receivers.
fn message(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    no_buffering(headers);
    response
}

/// Every rejection goes through here.
fn error_response(refusal: &Refusal) -> Response<Body> {
    let text = refusal.to_string();
    let length = text.len();
    tracing::debug!(status = %refusal.status(), message = text.trim_end(), "refused");
    let mut response = message(refusal.status(), Body::full(text));
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(length));
    let headers = response.headers_mut();
    match refusal {
        Refusal::Method(_) => {
            headers.insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        }
        Refusal::Denied(denied) if denied.status() == 401 => {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tubes\", Basic realm=\"tubes\""),
            );
        }
        Refusal::RateLimited(wait) => {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(retry_after(*wait)),
            );
        }
        Refusal::Denied(Denied::Busy) => {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(1));
        }
        _ => {}
    }
    response
}

/// The CORS preflight, on any path.
/// With auth on, `Authorization` is listed among the allowed headers.
fn preflight(request: &HeaderMap, auth: bool) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOWED_METHODS),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(if auth {
            "Content-Type, Content-Disposition, X-Piping, Authorization"
        } else {
            "Content-Type, Content-Disposition, X-Piping"
        }),
    );
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Access-Control-Allow-Headers"),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    if request
        .get("access-control-request-private-network")
        .is_some_and(|v| v.as_bytes() == b"true")
    {
        headers.insert(
            HeaderName::from_static("access-control-allow-private-network"),
            HeaderValue::from_static("true"),
        );
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_decode_like_url_search_params() {
        assert_eq!(query_value(Some("n=3"), "n").as_deref(), Some("3"));
        assert_eq!(
            query_value(Some("a=1&n=%32&n=5"), "n").as_deref(),
            Some("2")
        );
        assert_eq!(query_value(Some("n"), "n").as_deref(), Some(""));
        assert_eq!(query_value(Some("x=1"), "n"), None);
        assert_eq!(query_value(None, "n"), None);
    }

    /// Ten thousand waiting receivers each keep their reply future alive;
    /// it must hold the ticket, not the request.
    #[tokio::test]
    async fn a_waiting_receiver_holds_little() {
        let handler = Handler::new(Relay::default(), false);
        let req = Request::get("/wait?n=1")
            .header("user-agent", "x".repeat(500))
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let reply = handler.handle(req);
        assert_eq!(handler.relay().stats().waiting_receivers, 1);
        let size = std::mem::size_of_val(&*reply);
        assert!(
            size <= 128,
            "a waiting receiver's future takes {size} bytes"
        );
        drop(reply);
        assert_eq!(handler.relay().stats().waiting_receivers, 0);
    }

    #[test]
    fn boundary_missing_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data"),
        );
        assert!(multipart_boundary(&h).is_err());
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data; boundary=abc"),
        );
        assert_eq!(
            multipart_boundary(&h).ok().flatten().as_deref(),
            Some("abc")
        );
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(multipart_boundary(&h).ok().flatten(), None);
    }
}
