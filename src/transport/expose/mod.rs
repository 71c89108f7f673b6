//! Names over HTTP: the reserved paths under `/-/` through which hosts
//! register ([`control`]), open channels, and clients reach them, raw
//! (`/-/connect/NAME`) or as HTTP ([`proxy`]). The paths and messages are
//! in [`protocol`]; the registry itself is [`crate::relay::names`].
//!
//! The HTTP transport hands every request to [`intercept`] first: it takes
//! the requests under `/-/` and those addressed to a name's sub-domain,
//! and gives back every other request untouched.

pub mod control;
pub mod plain;
pub mod protocol;
pub mod proxy;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION,
};
use http::{Method, Request, Response, StatusCode};

use super::body::Body;
use super::websocket::{self, WsRefusal};
use crate::relay::names::{normalize_name, NameError};
use crate::relay::Relay;
use protocol::{
    CHANNEL_PREFIX, CONNECT_PREFIX, CONTROL_PATH, EXAMPLES_PREFIX, HOST_PREFIX, PREFIX,
};

/// A request under `/-/` turned away. Each becomes one `[ERROR]` line
/// with the status of [`ExposeRefusal::status`].
#[derive(Debug, thiserror::Error)]
pub enum ExposeRefusal {
    #[error("{0}")]
    Name(#[from] NameError),
    #[error("{0}")]
    WebSocket(#[from] WsRefusal),
    #[error("[ERROR] Unknown path '{0}' (the paths under /-/ are listed in /help).\n")]
    Unknown(String),
    #[error("[ERROR] Cannot send to the reserved path '{0}'. (e.g. '/mypath123')\n")]
    ReservedPath(String),
    #[error("[ERROR] Bad control message: {0}.\n")]
    BadControl(String),
    #[error("[ERROR] '{0}' takes a WebSocket.\n")]
    NeedsWebSocket(String),
    #[error("[ERROR] Unsupported method: {0}.\n")]
    Method(Method),
    #[error("[ERROR] The host '{0}' did not open the channel within {1} s.\n")]
    NoAnswer(String, u64),
    #[error("[ERROR] The host '{0}' could not serve this: {1}.\n")]
    HostFailed(String, String),
}

impl ExposeRefusal {
    pub fn status(&self) -> StatusCode {
        match self {
            ExposeRefusal::Name(e) => match e {
                NameError::NoSuchName(_) | NameError::NoService(..) | NameError::NoSuchChannel => {
                    StatusCode::NOT_FOUND
                }
                NameError::Taken(_) => StatusCode::CONFLICT,
                NameError::TooManyNames(_) | NameError::Full | NameError::TooManyChannels(_) => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                NameError::BadName | NameError::BadSecret | NameError::BadServices => {
                    StatusCode::BAD_REQUEST
                }
            },
            ExposeRefusal::WebSocket(_) => StatusCode::BAD_REQUEST,
            ExposeRefusal::Unknown(_) => StatusCode::NOT_FOUND,
            ExposeRefusal::ReservedPath(_) | ExposeRefusal::BadControl(_) => {
                StatusCode::BAD_REQUEST
            }
            ExposeRefusal::NeedsWebSocket(_) => StatusCode::UPGRADE_REQUIRED,
            ExposeRefusal::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            ExposeRefusal::NoAnswer(..) => StatusCode::GATEWAY_TIMEOUT,
            ExposeRefusal::HostFailed(..) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// One line of text from whatever a host or a library said.
fn one_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    line.trim().to_owned()
}

/// The answer to a request [`intercept`] took.
pub type Reply = Pin<Box<dyn Future<Output = Result<Response<Body>, ExposeRefusal>> + Send>>;

fn now(result: Result<Response<Body>, ExposeRefusal>) -> Reply {
    Box::pin(std::future::ready(result))
}

/// What [`intercept`] did with a request. (Moved once per request: boxing
/// the request to even out the variants would cost an allocation each.)
#[allow(clippy::large_enum_variant)]
pub enum Intercepted<B> {
    /// A request for names, being answered.
    Taken(Reply),
    /// Any other request, as it was.
    Passed(Request<B>),
}

/// Takes the requests for names: those under `/-/` and, with a domain
/// configured, those whose host is `NAME.domain`. Every other request
/// comes back as it was.
pub fn intercept<B>(relay: &Relay, req: Request<B>, tls: bool) -> Intercepted<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if let Some(domain) = &relay.names_config().domain {
        if let Some(name) = request_host(&req).and_then(|h| name_from_host(&h, domain)) {
            let target = req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
            let relay = relay.clone();
            return Intercepted::Taken(Box::pin(proxy::proxy(relay, name, req, target, None, tls)));
        }
    }
    let path = req.uri().path();
    if !path.starts_with(PREFIX) {
        return Intercepted::Passed(req);
    }
    let path = path.to_owned();
    let sending = req.method() == Method::POST || req.method() == Method::PUT;
    let takes_uploads = [HOST_PREFIX, CONTROL_PATH, CHANNEL_PREFIX]
        .iter()
        .any(|p| path.starts_with(p));
    if sending && !takes_uploads {
        // As for every reserved path: no Piping sender here.
        return Intercepted::Taken(now(Err(ExposeRefusal::ReservedPath(path))));
    }
    let websocket = websocket::is_websocket(&req);
    if path == CONTROL_PATH {
        if !websocket && sending {
            return Intercepted::Taken(plain::control(relay, req, tls));
        }
        return Intercepted::Taken(now(control::accept(relay, req, tls)));
    }
    if let Some(id) = path.strip_prefix(CHANNEL_PREFIX) {
        if !websocket {
            return Intercepted::Taken(plain::channel(relay, req, id));
        }
        return Intercepted::Taken(now(host_channel(relay, req, id)));
    }
    if let Some(name) = path.strip_prefix(CONNECT_PREFIX) {
        let name = name.to_owned();
        return Intercepted::Taken(client_channel(relay, req, name));
    }
    if let Some(rest) = path.strip_prefix(HOST_PREFIX) {
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let Some((name, rest)) = rest.split_once('/') else {
            // Relative links resolve under the name only with the slash.
            return Intercepted::Taken(now(Ok(redirect(&format!("{path}/{query}")))));
        };
        let Some(name) = normalize_name(name) else {
            return Intercepted::Taken(now(Err(NameError::NoSuchName(name.to_owned()).into())));
        };
        let target = format!("/{rest}{query}");
        let prefix = format!("{HOST_PREFIX}{name}");
        let relay = relay.clone();
        return Intercepted::Taken(Box::pin(proxy::proxy(
            relay,
            name,
            req,
            target,
            Some(prefix),
            tls,
        )));
    }
    if let Some(file) = path.strip_prefix(EXAMPLES_PREFIX) {
        return Intercepted::Taken(now(example(&req, file)));
    }
    // Other paths under the prefix are not ours (the web app's files,
    // the health check).
    Intercepted::Passed(req)
}

/// For auth: the path a request to a name counts as, and whether the
/// request registers a host (`true`) or reaches one (`false`). `None`:
/// not a request to a name, or one that needs no credentials (a host's
/// channel, authenticated by its unguessable id; the examples).
pub fn auth_path<B>(relay: &Relay, req: &Request<B>) -> Option<(String, bool)> {
    if let Some(domain) = &relay.names_config().domain {
        if let Some(name) = request_host(req).and_then(|h| name_from_host(&h, domain)) {
            return Some((format!("{HOST_PREFIX}{name}{}", req.uri().path()), false));
        }
    }
    let path = req.uri().path();
    if path == CONTROL_PATH {
        return Some((path.to_owned(), true));
    }
    if path.starts_with(CONNECT_PREFIX) || path.starts_with(HOST_PREFIX) {
        return Some((path.to_owned(), false));
    }
    None
}

/// The host a request was addressed to: `Host`, or the authority of an
/// HTTP/2 or HTTP/3 request.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
}

/// `NAME` when `host` (with or without a port) is `NAME.domain`.
pub fn name_from_host(host: &str, domain: &str) -> Option<String> {
    if host.starts_with('[') {
        return None; // an IPv6 address
    }
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    let label = host.strip_suffix(&domain)?.strip_suffix('.')?;
    if label.contains('.') {
        return None;
    }
    normalize_name(label)
}

fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, v);
    }
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(0));
    response
}

/// `/-/channel/ID`: the host opens its end of a channel.
fn host_channel<B>(
    relay: &Relay,
    req: Request<B>,
    id: &str,
) -> Result<Response<Body>, ExposeRefusal> {
    websocket::check_handshake(&req)?;
    let end = relay.accept_channel(id)?;
    let idle = relay.names_config().channel_idle;
    Ok(websocket::upgrade(req, move |socket| {
        websocket::run_pair(socket, std::future::ready(Some(end)), Some(idle))
    })?)
}

/// `/-/connect/NAME[?service=S]`: a client's end of a new channel,
/// answered once the host has opened its end.
fn client_channel<B>(relay: &Relay, req: Request<B>, name: String) -> Reply
where
    B: Send + 'static,
{
    if !websocket::is_websocket(&req) {
        return now(Err(ExposeRefusal::NeedsWebSocket(
            req.uri().path().to_owned(),
        )));
    }
    if let Err(e) = websocket::check_handshake(&req) {
        return now(Err(e.into()));
    }
    let service = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "service")
            .map(|(_, v)| v.into_owned())
    });
    let request = match relay.connect_name(&name, service.as_deref()) {
        Ok(r) => r,
        Err(e) => return now(Err(e.into())),
    };
    let config = relay.names_config().clone();
    Box::pin(async move {
        let end = open(request, &name, config.open_timeout).await?;
        let idle = config.channel_idle;
        Ok(websocket::upgrade(req, move |socket| {
            websocket::run_pair(socket, std::future::ready(Some(end)), Some(idle))
        })?)
    })
}

/// Waits for the host to open a requested channel.
pub(crate) async fn open(
    request: crate::relay::names::ChannelRequest,
    name: &str,
    limit: std::time::Duration,
) -> Result<crate::relay::pair::PairEnd, ExposeRefusal> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(end)) => Ok(end),
        Ok(Err(failed)) => Err(ExposeRefusal::HostFailed(
            name.to_owned(),
            one_line(&failed.0),
        )),
        Err(_) => Err(ExposeRefusal::NoAnswer(name.to_owned(), limit.as_secs())),
    }
}

const EXAMPLE_HTML: &str = include_str!("../../../assets/examples/expose.html");
const EXAMPLE_JS: &str = include_str!("../../../assets/examples/expose.js");
const EXAMPLE_CSS: &str = include_str!("../../../assets/examples/expose.css");

/// The example pages, with a policy that allows only their own script,
/// style and same-origin connections.
fn example<B>(req: &Request<B>, file: &str) -> Result<Response<Body>, ExposeRefusal> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ExposeRefusal::Method(req.method().clone()));
    }
    let (body, content_type) = match file {
        "expose.html" => (EXAMPLE_HTML, "text/html; charset=utf-8"),
        "expose.js" => (EXAMPLE_JS, "text/javascript; charset=utf-8"),
        "expose.css" => (EXAMPLE_CSS, "text/css; charset=utf-8"),
        _ => return Err(ExposeRefusal::Unknown(req.uri().path().to_owned())),
    };
    let mut response = Response::new(Body::full(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'",
        ),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_domains() {
        let d = "relay.example";
        assert_eq!(
            name_from_host("home.relay.example", d).as_deref(),
            Some("home")
        );
        assert_eq!(
            name_from_host("Home.Relay.Example.:8443", d).as_deref(),
            Some("home")
        );
        assert_eq!(name_from_host("relay.example", d), None);
        assert_eq!(name_from_host("a.b.relay.example", d), None);
        assert_eq!(name_from_host("evilrelay.example", d), None);
        assert_eq!(name_from_host("[::1]:80", d), None);
        assert_eq!(name_from_host("-x.relay.example", d), None);
    }

    #[test]
    fn statuses() {
        let e = ExposeRefusal::from(NameError::Taken("x".into()));
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(e.to_string().starts_with("[ERROR] ") && e.to_string().ends_with(".\n"));
        assert_eq!(one_line("a\nb\r\n"), "a b");
    }
}
