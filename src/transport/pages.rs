//! The reserved pages. Their content lives in `assets/` and is embedded
//! at build time; the few values that vary are filled into `{{name}}`
//! placeholders, escaped for where they go.
//!
//! `/` is the web app (`assets/app/`, described in `docs/web-app.md`): its
//! HTML, and its scripts, styles and word list under the one reserved
//! prefix `/-/`. The app's pages carry a strict Content-Security-Policy:
//! only scripts and styles from these files run, and nothing the relay
//! carries can.

use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_LENGTH,
    CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{Request, Response, StatusCode};
use rand::RngCore;

use super::body::Body;

const NOSCRIPT_HTML: &str = include_str!("../../assets/noscript.html");
const HELP_TXT: &str = include_str!("../../assets/help.txt");

/// The reserved prefix of the web app's files.
pub const ASSET_PREFIX: &str = "/-/";

/// The policy of the app's pages: its own scripts and styles only, no
/// inline code, no other origin, no string-to-HTML sinks (Trusted Types),
/// not framed. `blob:` media is the received video; `data:` images none
/// today, kept for icons.
const APP_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; form-action 'self'; \
base-uri 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

/// One embedded file of the web app.
struct Asset {
    /// Its path: `/` for the app's page, else under [`ASSET_PREFIX`].
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// A hash of `body`, computed at build time, for `ETag`.
    hash: u64,
}

/// FNV-1a, 64 bits: enough to tell versions of a file apart for caching.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

macro_rules! asset {
    ($path:literal, $type:literal, $file:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!($file),
            hash: fnv1a(include_bytes!($file)),
        }
    };
}

/// The app's page and files. `vendor.js` is generated (see
/// `tests/js/build-vendor.mjs`); the others are written by hand.
const ASSETS: &[Asset] = &[
    asset!("/", "text/html", "../../assets/app/index.html"),
    asset!(
        "/-/app.js",
        "text/javascript; charset=utf-8",
        "../../assets/app/app.js"
    ),
    asset!(
        "/-/tubes.js",
        "text/javascript; charset=utf-8",
        "../../assets/app/tubes.js"
    ),
    asset!(
        "/-/screen.js",
        "text/javascript; charset=utf-8",
        "../../assets/app/screen.js"
    ),
    asset!(
        "/-/vendor.js",
        "text/javascript; charset=utf-8",
        "../../assets/app/vendor.js"
    ),
    asset!(
        "/-/app.css",
        "text/css; charset=utf-8",
        "../../assets/app/app.css"
    ),
    asset!("/-/icon.svg", "image/svg+xml", "../../assets/app/icon.svg"),
    asset!(
        "/-/words.txt",
        "text/plain; charset=utf-8",
        "../../assets/words.txt"
    ),
];

/// The total size of the web app's files, in bytes.
#[cfg(test)]
fn app_size() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}

/// The paths a sender may not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    Index,
    NoScript,
    Version,
    Help,
    Favicon,
    Robots,
    /// Anything under [`ASSET_PREFIX`] (unknown names are a 404).
    Asset,
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
            "/-" => Reserved::Asset,
            p if p.starts_with(ASSET_PREFIX) => Reserved::Asset,
            _ => return None,
        })
    }
}

pub fn render<B>(page: Reserved, req: &Request<B>, tls: bool) -> Response<Body> {
    match page {
        Reserved::Index => asset(req, "/"),
        Reserved::Asset => asset(req, req.uri().path()),
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

/// An embedded file, answered `304` when the client has this version.
/// Names carry no version, so clients must revalidate (`no-cache`).
fn asset<B>(req: &Request<B>, path: &str) -> Response<Body> {
    let Some(file) = ASSETS.iter().find(|a| a.path == path) else {
        let mut response = text(StatusCode::NOT_FOUND, "text/plain", "Not found\n".into());
        response
            .headers_mut()
            .insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        return response;
    };
    let etag = format!("\"{:016x}\"", file.hash);
    let fresh = req
        .headers()
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let mut response = if fresh {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(Body::full(file.body));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(file.content_type));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(file.body.len()));
        response
    };
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, v);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if file.path == "/" {
        headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(APP_CSP));
        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
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
        // Only the shown field is sent: the relay passes on the first part.
        .replace("{{file_disabled}}", if text_mode { "disabled" } else { "" })
        .replace("{{text_disabled}}", if text_mode { "" } else { "disabled" })
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
        assert_eq!(Reserved::from_path("/-/app.js"), Some(Reserved::Asset));
        assert_eq!(
            Reserved::from_path("/-/anything/else"),
            Some(Reserved::Asset)
        );
        assert_eq!(Reserved::from_path("/-"), Some(Reserved::Asset));
        assert_eq!(Reserved::from_path("/-x"), None);
    }

    fn get(path: &str, etag: Option<&str>) -> Response<Body> {
        let mut req = Request::get(path);
        if let Some(etag) = etag {
            req = req.header(IF_NONE_MATCH, etag);
        }
        let req = req.body(()).expect("request");
        let page = Reserved::from_path(path).expect("reserved");
        render(page, &req, false)
    }

    #[test]
    fn app_files_are_served_with_etags() {
        for file in ASSETS {
            let response = get(file.path, None);
            assert_eq!(response.status(), StatusCode::OK, "{}", file.path);
            let headers = response.headers();
            assert_eq!(headers[CONTENT_TYPE], file.content_type);
            assert_eq!(
                headers[CONTENT_LENGTH],
                file.body.len().to_string().as_str()
            );
            assert_eq!(headers[CACHE_CONTROL], "no-cache");
            assert_eq!(headers[X_CONTENT_TYPE_OPTIONS], "nosniff");
            let etag = headers[ETAG].to_str().expect("etag").to_owned();
            let again = get(file.path, Some(&etag));
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{}", file.path);
            assert_eq!(again.headers()[ETAG], etag.as_str());
            let other = get(file.path, Some("\"0000000000000000\""));
            assert_eq!(other.status(), StatusCode::OK);
        }
        assert_eq!(get("/-/nothing.js", None).status(), StatusCode::NOT_FOUND);
        assert_eq!(get("/-", None).status(), StatusCode::NOT_FOUND);
        assert!(app_size() > 0);
    }

    /// docs/web-app.md states the size; keep it small.
    #[test]
    fn the_app_stays_small() {
        assert!(app_size() < 200_000, "the web app is {} bytes", app_size());
    }

    #[test]
    fn the_app_page_has_a_strict_policy() {
        let response = get("/", None);
        let csp = response.headers()[CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("csp");
        assert!(csp.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"));
        assert!(!csp.contains("unsafe"));
        assert!(csp.contains("frame-ancestors 'none'"));
        // No inline script or style, no other origin in the page itself.
        let html = std::str::from_utf8(ASSETS[0].body).expect("utf-8");
        assert!(html.contains("<meta charset=\"utf-8\">"));
        assert!(!html.contains("<script>") && !html.contains(" style="));
        assert!(!html.contains("<style"));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}
