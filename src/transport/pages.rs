//! The reserved pages. Their content lives in `assets/` and is embedded
//! at build time; the few values that vary are filled into `{{name}}`
//! placeholders, escaped for where they go.

use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
};
use http::{Request, Response, StatusCode};
use rand::RngCore;

use super::body::Body;

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const NOSCRIPT_HTML: &str = include_str!("../../assets/noscript.html");
const HELP_TXT: &str = include_str!("../../assets/help.txt");

/// The paths a sender may not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    Index,
    NoScript,
    Version,
    Help,
    Favicon,
    Robots,
}

impl Reserved {
    pub fn from_path(path: &str) -> Option<Reserved> {
        Some(match path {
            "" | "/" => Reserved::Index,
            "/noscript" => Reserved::NoScript,
            "/version" => Reserved::Version,
            "/help" => Reserved::Help,
            "/favicon.ico" => Reserved::Favicon,
            "/robots.txt" => Reserved::Robots,
            _ => return None,
        })
    }
}

pub fn render<B>(page: Reserved, req: &Request<B>, tls: bool) -> Response<Body> {
    match page {
        Reserved::Index => text(StatusCode::OK, "text/html", INDEX_HTML.to_string()),
        Reserved::NoScript => noscript(req.uri().query()),
        Reserved::Version => cors(text(
            StatusCode::OK,
            "text/plain",
            format!("{}\n", env!("CARGO_PKG_VERSION")),
        )),
        Reserved::Help => cors(text(StatusCode::OK, "text/plain", help(req, tls))),
        Reserved::Favicon => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        Reserved::Robots => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(0));
            response
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let length = body.len();
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    response
}

fn cors(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// The base URL clients should use, as this request reached us.
pub(crate) fn base_url<B>(req: &Request<B>, tls: bool) -> String {
    let forwarded_https = req
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| String::from_utf8_lossy(v.as_bytes()).contains("https"));
    let scheme = if tls || forwarded_https {
        "https"
    } else {
        "http"
    };
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "hostname".to_string());
    format!("{scheme}://{host}")
}

fn help<B>(req: &Request<B>, tls: bool) -> String {
    HELP_TXT
        .replace("{{ws_url}}", &ws_url(&base_url(req, tls)))
        .replace("{{url}}", &base_url(req, tls))
        .replace("{{version}}", env!("CARGO_PKG_VERSION"))
}

fn noscript(query: Option<&str>) -> Response<Body> {
    let mut path = String::new();
    let mut mode = String::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "path" if path.is_empty() => path = v.into_owned(),
            "mode" if mode.is_empty() => mode = v.into_owned(),
            _ => {}
        }
    }
    let text_mode = mode == "text";
    let action = if path.starts_with('/') {
        path.clone()
    } else {
        format!("/{path}")
    };
    let mut nonce = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut nonce);
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let page = NOSCRIPT_HTML
        .replace("{{nonce}}", &nonce)
        .replace("{{path}}", &escape_html(&path))
        .replace("{{action}}", &escape_html(&action))
        .replace("{{file_checked}}", if text_mode { "" } else { "checked" })
        .replace("{{text_checked}}", if text_mode { "checked" } else { "" })
        .replace("{{file_hidden}}", if text_mode { "hidden" } else { "" })
        .replace("{{text_hidden}}", if text_mode { "" } else { "hidden" })
        .replace(
            "{{send_disabled}}",
            if path.is_empty() { "disabled" } else { "" },
        );
    let mut response = text(StatusCode::OK, "text/html", page);
    let csp = format!("default-src 'none'; style-src 'nonce-{nonce}'");
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        response.headers_mut().insert(CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// Escapes text for an HTML attribute or element.
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The WebSocket form of a base URL: `ws://` for `http://`, `wss://` for
/// `https://`.
fn ws_url(base: &str) -> String {
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape_html("\"><script>'&"),
            "&quot;&gt;&lt;script&gt;&#39;&amp;"
        );
    }

    #[test]
    fn reserved_paths() {
        assert_eq!(Reserved::from_path(""), Some(Reserved::Index));
        assert_eq!(Reserved::from_path("/help"), Some(Reserved::Help));
        assert_eq!(Reserved::from_path("/help/"), None);
        assert_eq!(Reserved::from_path("/mypath"), None);
    }
}
