//! Differential tests: the same HTTP/1.1 request sequences go to Tubes and
//! to the reference server (npm piping-server, pinned in
//! `tests/js/package.json`) over real loopback sockets, and what comes back
//! must match: status, every response header except `Date`, `Connection`,
//! `Keep-Alive` and `Transfer-Encoding` (names compared case-insensitively,
//! repeated headers such as `X-Piping` in order), and the bodies, the
//! sender's live log included.
//!
//! The README's test command, `scripts/test.sh`, installs Node.js and the
//! reference (`npm ci --prefix tests/js`) and runs these tests with the
//! others; once they are installed, `cargo test --test differential` runs
//! them alone. Without `node` or `tests/js/node_modules` these tests fail
//! (they never skip) and say so.
//!
//! Tubes runs in-process on `127.0.0.1:0`; the reference runs as a child
//! (`tests/js/reference-server.js`) that listens on `127.0.0.1:0`, prints
//! its port and is killed when the test ends. Each test starts a fresh
//! pair, runs its scenario against Tubes, then against the reference, and
//! compares the two transcripts step by step.
//!
//! Scenarios never sleep to let something happen: they wait for a response
//! or for the server's registry of waiting peers to reach a given state (a
//! waiting receiver gets no response that could tell it): Tubes'
//! `Relay::wait_until`, the reference's registry through its stdin. Every
//! wait is bounded by [`WAIT`].
//!
//! # Deliberate differences (the allow-list)
//!
//! Where the reference says something other than what
//! `shared/spec/piping-protocol.md` requires, the reference's answer is
//! rewritten into the spec's before the comparison, so Tubes is held to the
//! spec, not to the reference's slip. Each entry of [`DIFFERENCES`] is
//! narrow (it matches exact text) and carries its reason:
//!
//! 1. `receiver-invalid-n-message`: for a receiver the reference says
//!    `[ERROR] Invalid query parameter "n"`; the spec (section 5, "invalid
//!    `n`: as for the sender") says `[ERROR] Invalid "n" query parameter`,
//!    the reference's own sender wording.
//! 2. `405-content-type`: the reference's `405` has no `Content-Type`; the
//!    spec (section 3) gives every rejection `Content-Type: text/plain`.
//! 3. `html-media-type-any-case`: the spec's Decision (security, section 6)
//!    turns the media type `text/html` into `text/plain`. The reference
//!    only does so for the lowercase spelling with no space before `;`, so
//!    it forwards `TEXT/HTML` or `text/html ;charset=...`, which browsers
//!    render as a page (media types are case-insensitive, RFC 9110 8.3.1).
//! 4. `no-buffering-headers`: Tubes adds `Cache-Control: no-store` and
//!    `X-Accel-Buffering: no` to every response of a sender, a receiver
//!    or a rejection, so buffering proxies (nginx) pass streams on as they
//!    come and nothing relayed is cached; the reference sends neither.
//! 5. `sandboxed-receivers`: a receiver's `200` carries
//!    `Content-Security-Policy: sandbox`, so a stream opened from the
//!    relay's URL never runs scripts as the relay's origin (the `text/html`
//!    rewrite alone leaves SVG and XML documents).
//! 4. Reserved pages `/`, `/noscript`, `/help`, `/version`: their contents
//!    are each server's own (web UI, version, this server's URL, a CSP
//!    nonce), so only the status, `Content-Type` and
//!    `Access-Control-Allow-Origin` are compared there (see
//!    [`Transcript::page`]). `/favicon.ico` and `/robots.txt` are compared
//!    in full.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{oneshot, Mutex};
use tubes::relay::{Relay, RelayConfig};
use tubes::server::{serve, ServeConfig};

/// The bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// Response headers that are about the connection, not the protocol.
const IGNORED_HEADERS: &[&str] = &["date", "connection", "keep-alive", "transfer-encoding"];

/// What to do when the reference server cannot run.
const INSTALL_HINT: &str = "the differential tests need Node.js and the reference server: \
     run the README's test command, `scripts/test.sh`, which installs both (the reference \
     with `npm ci --prefix tests/js`) and then runs the tests";

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
async fn within<T>(what: impl fmt::Display, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------
// The two servers
// ---------------------------------------------------------------------

/// Tubes, served in-process until dropped.
struct TubesServer {
    addr: SocketAddr,
    relay: Relay,
    _shutdown: oneshot::Sender<()>,
}

impl TubesServer {
    async fn start() -> TubesServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for Tubes");
        let addr = listener.local_addr().expect("Tubes' local address");
        let relay = Relay::new(RelayConfig::default());
        let (shutdown, stop) = oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            relay.clone(),
            ServeConfig::default(),
            async move {
                // Ends when the sender is dropped with the server.
                let _ = stop.await;
            },
        ));
        TubesServer {
            addr,
            relay,
            _shutdown: shutdown,
        }
    }

    fn target(&self) -> Target {
        Target {
            name: "tubes",
            addr: self.addr,
            registry: Registry::Tubes(self.relay.clone()),
        }
    }
}

/// The reference server's stdin and stdout (see `reference-server.js`).
struct ReferenceIo {
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// The npm piping-server as a child process, killed when dropped.
struct ReferenceServer {
    child: Child,
    addr: SocketAddr,
    io: Arc<Mutex<ReferenceIo>>,
}

impl Drop for ReferenceServer {
    fn drop(&mut self) {
        // It also exits on its own when its stdin closes.
        let _ = self.child.start_kill();
    }
}

impl ReferenceServer {
    async fn start() -> ReferenceServer {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
        check_reference_installed(&dir);
        let mut child = match Command::new("node")
            .arg("reference-server.js")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                panic!("`node` was not found on PATH ({error}); {INSTALL_HINT}")
            }
            Err(error) => {
                panic!("cannot start `node reference-server.js`: {error}; {INSTALL_HINT}")
            }
        };
        let stdin = child.stdin.take().expect("the child's stdin is piped");
        let mut stdout =
            BufReader::new(child.stdout.take().expect("the child's stdout is piped")).lines();
        let line = within("the reference server to print its port", stdout.next_line())
            .await
            .expect("read the reference server's stdout")
            .unwrap_or_else(|| {
                panic!(
                    "the reference server exited before it listened (its stderr is above); \
                     {INSTALL_HINT}"
                )
            });
        let port: u16 = line
            .strip_prefix("port ")
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("the reference server printed {line:?}, not `port <n>`"));
        ReferenceServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            io: Arc::new(Mutex::new(ReferenceIo { stdin, stdout })),
        }
    }

    fn target(&self) -> Target {
        Target {
            name: "reference",
            addr: self.addr,
            registry: Registry::Reference(Arc::clone(&self.io)),
        }
    }
}

/// Fails unless `tests/js/node_modules` holds the pinned piping-server.
fn check_reference_installed(dir: &std::path::Path) {
    let pinned = std::fs::read_to_string(dir.join("package.json"))
        .expect("read tests/js/package.json")
        .split("\"piping-server\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_string)
        .expect("tests/js/package.json pins piping-server");
    let installed = dir.join("node_modules/piping-server/package.json");
    let Ok(manifest) = std::fs::read_to_string(&installed) else {
        panic!("{} is missing; {INSTALL_HINT}", installed.display());
    };
    assert!(
        manifest.contains(&format!("\"version\": \"{pinned}\"")),
        "{} is not piping-server {pinned} as pinned; {INSTALL_HINT}",
        installed.display()
    );
}

/// How many peers a server holds, over all paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Registered {
    senders: usize,
    receivers: usize,
    transfers: usize,
}

const IDLE: Registered = Registered {
    senders: 0,
    receivers: 0,
    transfers: 0,
};

fn waiting(senders: usize, receivers: usize) -> Registered {
    Registered {
        senders,
        receivers,
        transfers: 0,
    }
}

fn transfers(transfers: usize) -> Registered {
    Registered {
        senders: 0,
        receivers: 0,
        transfers,
    }
}

/// Where a server's registry of peers can be read.
#[derive(Clone)]
enum Registry {
    Tubes(Relay),
    Reference(Arc<Mutex<ReferenceIo>>),
}

/// One server under test, as a scenario sees it.
#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    registry: Registry,
}

fn registered(stats: &tubes::relay::Stats) -> Registered {
    Registered {
        senders: stats.waiting_senders,
        receivers: stats.waiting_receivers,
        transfers: stats.transfers,
    }
}

/// Asks the reference server what its registry holds.
async fn reference_registered(io: &Mutex<ReferenceIo>) -> Registered {
    let mut io = io.lock().await;
    io.stdin
        .write_all(b"stats\n")
        .await
        .expect("write to the reference server's stdin");
    io.stdin.flush().await.expect("flush its stdin");
    let line = io
        .stdout
        .next_line()
        .await
        .expect("read the reference server's stdout")
        .expect("the reference server exited");
    let numbers: Vec<usize> = line
        .strip_prefix("stats ")
        .unwrap_or_else(|| panic!("unexpected reply to `stats`: {line:?}"))
        .split(' ')
        .map(|n| n.parse().expect("a count"))
        .collect();
    assert_eq!(numbers.len(), 3, "unexpected reply to `stats`: {line:?}");
    Registered {
        senders: numbers[0],
        receivers: numbers[1],
        transfers: numbers[2],
    }
}

impl Target {
    /// Waits until the registry is in state `want`.
    async fn wait_until(&self, want: Registered) {
        let (reached, last) = match &self.registry {
            Registry::Tubes(relay) => {
                let (stats, reached) = relay.wait_until(WAIT, |s| registered(s) == want).await;
                (reached, registered(&stats))
            }
            Registry::Reference(io) => {
                // It has no change notification: poll, bounded, for the
                // condition (never a sleep in the hope that it holds).
                let mut last = reference_registered(io).await;
                let reached = tokio::time::timeout(WAIT, async {
                    while last != want {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        last = reference_registered(io).await;
                    }
                })
                .await
                .is_ok();
                (reached, last)
            }
        };
        assert!(
            reached,
            "{}: the registry did not reach {want:?} within {WAIT:?}; last seen {last:?}",
            self.name
        );
    }

    /// Opens a connection and writes a whole request head (and `body`,
    /// when given, in the same write).
    async fn exchange(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Exchange {
        Exchange::start(self.name, self.addr, method, target, headers, body).await
    }

    /// One request with a complete body; returns the whole response.
    async fn fetch(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (Head, Vec<u8>) {
        let length = body.len().to_string();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !body.is_empty() || method == "POST" || method == "PUT" {
            all.push(("Content-Length", &length));
        }
        let mut exchange = self.exchange(method, target, &all, body).await;
        let head = exchange.head().await;
        let body = exchange.body().await;
        (head, body)
    }

    /// [`Target::fetch`], recorded in the transcript.
    async fn check(
        &self,
        transcript: &mut Transcript,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let (head, body) = self.fetch(method, target, headers, body).await;
        let step = describe(method, target, headers);
        transcript.response(step, Role::Single, method, &head, Some(&body));
    }

    /// [`Target::fetch`] of a reserved page: only status, type and CORS
    /// recorded.
    async fn check_page(&self, transcript: &mut Transcript, method: &str, target: &str) {
        let (head, _) = self.fetch(method, target, &[], b"").await;
        transcript.page(format!("{method} {target}"), method, &head);
    }

    /// Starts a sender and waits for its `200` head.
    async fn sender(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        upload: Upload,
    ) -> Sender {
        let mut all: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match upload {
            Upload::Length(length) => all.push(("Content-Length".into(), length.to_string())),
            Upload::Chunked => all.push(("Transfer-Encoding".into(), "chunked".into())),
        }
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (&**k, &**v)).collect();
        let mut exchange = self.exchange(method, target, &all, b"").await;
        let head = exchange.head().await;
        if head.status != 200 {
            let body = exchange.body().await;
            panic!(
                "{}: sender {method} {target} got {} {:?} {:?} instead of 200",
                self.name,
                head.status,
                head.headers,
                String::from_utf8_lossy(&body)
            );
        }
        Sender {
            exchange,
            head,
            upload,
        }
    }
}

/// A request line and the headers that matter, as a step's name.
fn describe(method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut step = format!("{method} {target}");
    for (name, value) in headers {
        if !name.eq_ignore_ascii_case("content-length") {
            step.push_str(&format!(" [{name}: {value}]"));
        }
    }
    step
}

// ---------------------------------------------------------------------
// A raw HTTP/1.1 client
// ---------------------------------------------------------------------

/// A response's status and headers; names lowercased, in arrival order.
#[derive(Debug, Clone)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the rest of a response body is delimited.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// The head has not been read yet.
    BeforeHead,
    Length(u64),
    Chunked {
        left: u64,
        first: bool,
    },
    UntilClose,
    Done,
}

/// One request and its response on a connection of its own.
struct Exchange {
    label: String,
    io: BufReader<TcpStream>,
    head_request: bool,
    framing: Framing,
}

impl Exchange {
    async fn start(
        server: &str,
        addr: SocketAddr,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Exchange {
        let label = format!("{server}: {method} {target}");
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        let mut stream = within(format!("{label}: connect"), TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("{label}: connect: {e}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        within(format!("{label}: write"), stream.write_all(&bytes))
            .await
            .unwrap_or_else(|e| panic!("{label}: write the request: {e}"));
        Exchange {
            label,
            io: BufReader::new(stream),
            head_request: method == "HEAD",
            framing: Framing::BeforeHead,
        }
    }

    /// Writes more of the request body as it is.
    async fn send(&mut self, bytes: &[u8]) {
        let label = self.label.clone();
        within(
            format!("{label}: write the body"),
            self.io.get_mut().write_all(bytes),
        )
        .await
        .unwrap_or_else(|e| panic!("{label}: write the body: {e}"));
    }

    async fn send_chunk(&mut self, data: &[u8]) {
        let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
        chunk.extend_from_slice(data);
        chunk.extend_from_slice(b"\r\n");
        self.send(&chunk).await;
    }

    async fn end_chunks(&mut self) {
        self.send(b"0\r\n\r\n").await;
    }

    /// Reads the response head (skipping any `1xx`).
    async fn head(&mut self) -> Head {
        let label = self.label.clone();
        within(format!("{label}: response head"), self.read_head()).await
    }

    async fn read_head(&mut self) -> Head {
        loop {
            let status_line = self.line().await;
            let status: u16 = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{}: bad status line {status_line:?}", self.label));
            let mut headers = Vec::new();
            loop {
                let line = self.line().await;
                if line.is_empty() {
                    break;
                }
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{}: bad header line {line:?}", self.label));
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
            if (100..200).contains(&status) {
                continue;
            }
            let head = Head { status, headers };
            let chunked = head
                .get("transfer-encoding")
                .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
            self.framing = if self.head_request || status == 204 || status == 304 {
                Framing::Done
            } else if chunked {
                Framing::Chunked {
                    left: 0,
                    first: true,
                }
            } else if let Some(length) = head.get("content-length") {
                let length = length
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: bad Content-Length {length:?}", self.label));
                Framing::Length(length)
            } else {
                Framing::UntilClose
            };
            return head;
        }
    }

    /// Reads the next piece of the response body; `None` at its end.
    async fn read_some(&mut self) -> Option<Vec<u8>> {
        let label = self.label.clone();
        within(
            format!("{label}: response body"),
            self.read_some_unbounded(),
        )
        .await
    }

    async fn read_some_unbounded(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.framing {
                Framing::BeforeHead => panic!("{}: body read before the head", self.label),
                Framing::Done | Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return None;
                }
                Framing::Length(left) => {
                    let data = self.take(left).await;
                    self.framing = Framing::Length(left - data.len() as u64);
                    return Some(data);
                }
                Framing::Chunked { left: 0, first } => {
                    if !first {
                        let end = self.line().await;
                        assert!(end.is_empty(), "{}: bad chunk end {end:?}", self.label);
                    }
                    let size_line = self.line().await;
                    let size = size_line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16).unwrap_or_else(|_| {
                        panic!("{}: bad chunk size line {size_line:?}", self.label)
                    });
                    if size == 0 {
                        // Trailers, up to the empty line.
                        while !self.line().await.is_empty() {}
                        self.framing = Framing::Done;
                        return None;
                    }
                    self.framing = Framing::Chunked {
                        left: size,
                        first: false,
                    };
                }
                Framing::Chunked { left, .. } => {
                    let data = self.take(left).await;
                    self.framing = Framing::Chunked {
                        left: left - data.len() as u64,
                        first: false,
                    };
                    return Some(data);
                }
                Framing::UntilClose => {
                    let buf = self
                        .io
                        .fill_buf()
                        .await
                        .unwrap_or_else(|e| panic!("{}: read: {e}", self.label));
                    if buf.is_empty() {
                        self.framing = Framing::Done;
                        return None;
                    }
                    let data = buf.to_vec();
                    self.io.consume(data.len());
                    return Some(data);
                }
            }
        }
    }

    /// Reads the rest of the response body.
    async fn body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        while let Some(data) = self.read_some().await {
            body.extend_from_slice(&data);
        }
        body
    }

    /// Up to `max` bytes of body that are there or come next.
    async fn take(&mut self, max: u64) -> Vec<u8> {
        let buf = self
            .io
            .fill_buf()
            .await
            .unwrap_or_else(|e| panic!("{}: read: {e}", self.label));
        assert!(
            !buf.is_empty(),
            "{}: the connection closed in the middle of the body",
            self.label
        );
        let n = buf.len().min(usize::try_from(max).unwrap_or(usize::MAX));
        let data = buf[..n].to_vec();
        self.io.consume(n);
        data
    }

    /// One line of the head or of the chunked framing, without its CRLF.
    async fn line(&mut self) -> String {
        let mut line = Vec::new();
        self.io
            .read_until(b'\n', &mut line)
            .await
            .unwrap_or_else(|e| panic!("{}: read: {e}", self.label));
        assert!(
            line.ends_with(b"\n"),
            "{}: the connection closed in the middle of a line ({:?})",
            self.label,
            String::from_utf8_lossy(&line)
        );
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
        String::from_utf8_lossy(&line).into_owned()
    }
}

/// How a sender frames its upload.
#[derive(Debug, Clone, Copy)]
enum Upload {
    /// With `Content-Length` of this many bytes.
    Length(usize),
    /// With `Transfer-Encoding: chunked`.
    Chunked,
}

/// A sender that has its `200` head; its body is the live log.
struct Sender {
    exchange: Exchange,
    head: Head,
    upload: Upload,
}

impl Sender {
    /// Writes `payload` in a few pieces (one of a single byte) and ends it.
    async fn upload(&mut self, payload: &[u8]) {
        let cut = payload.len().min(1);
        let middle = payload.len().min(1000);
        for piece in [&payload[..cut], &payload[cut..middle], &payload[middle..]] {
            if piece.is_empty() {
                continue;
            }
            match self.upload {
                Upload::Length(_) => self.exchange.send(piece).await,
                Upload::Chunked => self.exchange.send_chunk(piece).await,
            }
        }
        if let Upload::Chunked = self.upload {
            self.exchange.end_chunks().await;
        }
    }

    /// Reads the live log to its end.
    async fn log(&mut self) -> Vec<u8> {
        self.exchange.body().await
    }
}

// ---------------------------------------------------------------------
// Transcripts, the allow-list and the comparison
// ---------------------------------------------------------------------

/// What a recorded response answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A request answered at once (a rejection, a preflight, ...).
    Single,
    /// A reserved page of its own contents.
    Page,
    /// A sender of a transfer; the body is its log.
    Sender,
    /// A receiver of a transfer.
    Receiver,
}

/// One response as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    step: String,
    role: Role,
    method: String,
    status: u16,
    /// Lowercased names, sorted by name; repeated names keep their order.
    headers: Vec<(String, String)>,
    body: Option<String>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn set_header(&mut self, name: &str, value: String) {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_string(), value));
        self.headers.sort_by(|a, b| a.0.cmp(&b.0));
    }
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        for (name, value) in &self.headers {
            write!(f, "\n      {name}: {value}")?;
        }
        if let Some(body) = &self.body {
            write!(f, "\n      body: {body}")?;
        }
        Ok(())
    }
}

/// A body as text fit to compare and print: escaped, or its size and
/// digest when long.
fn show_body(body: &[u8]) -> String {
    if body.len() <= 600 {
        format!("\"{}\"", body.escape_ascii())
    } else {
        format!("<{} bytes, sha256 {:x}>", body.len(), Sha256::digest(body))
    }
}

/// Everything one server answered in one scenario.
#[derive(Default)]
struct Transcript {
    seen: Vec<Seen>,
}

impl Transcript {
    /// Records a response: status, headers (all but [`IGNORED_HEADERS`]),
    /// and the body if it was read.
    fn response(
        &mut self,
        step: impl Into<String>,
        role: Role,
        method: &str,
        head: &Head,
        body: Option<&[u8]>,
    ) {
        let mut headers: Vec<(String, String)> = head
            .headers
            .iter()
            .filter(|(name, _)| !IGNORED_HEADERS.contains(&name.as_str()))
            .cloned()
            .collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        self.seen.push(Seen {
            step: step.into(),
            role,
            method: method.to_string(),
            status: head.status,
            headers,
            body: body.map(show_body),
        });
    }

    /// Records a reserved page whose contents are each server's own:
    /// status, `Content-Type` and `Access-Control-Allow-Origin` only.
    fn page(&mut self, step: impl Into<String>, method: &str, head: &Head) {
        let headers = ["access-control-allow-origin", "content-type"]
            .into_iter()
            .filter_map(|name| head.get(name).map(|v| (name.to_string(), v.to_string())))
            .collect();
        self.seen.push(Seen {
            step: step.into(),
            role: Role::Page,
            method: method.to_string(),
            status: head.status,
            headers,
            body: None,
        });
    }
}

/// A place where the reference's answer is not what the spec requires.
struct Difference {
    name: &'static str,
    why: &'static str,
    /// Turns the reference's answer into the spec's; true if it changed it.
    rewrite: fn(&mut Seen) -> bool,
}

/// The allow-list; see the crate documentation above for the reasons.
const DIFFERENCES: &[Difference] = &[
    Difference {
        name: "receiver-invalid-n-message",
        why: "spec 5.2: a receiver's invalid n is reported as for the sender",
        rewrite: receiver_invalid_n_message,
    },
    Difference {
        name: "405-content-type",
        why: "spec 3: every rejection has Content-Type: text/plain",
        rewrite: method_not_allowed_content_type,
    },
    Difference {
        name: "html-media-type-any-case",
        why: "spec 6 Decision (security): the media type text/html, in any case, is served as text/plain",
        rewrite: html_media_type_any_case,
    },
    Difference {
        name: "sandboxed-receivers",
        why: "a stream opened from the relay's URL is a sandboxed document: Content-Security-Policy: sandbox on receivers' responses",
        rewrite: sandboxed_receivers,
    },
    Difference {
        name: "no-buffering-headers",
        why: "proxies must pass streams on as they come and never cache them (issue 9): Cache-Control: no-store and X-Accel-Buffering: no on senders', receivers' and rejections' responses",
        rewrite: no_buffering_headers,
    },
];

fn sandboxed_receivers(seen: &mut Seen) -> bool {
    if seen.role != Role::Receiver || seen.status != 200 {
        return false;
    }
    seen.set_header("content-security-policy", "sandbox".to_string());
    true
}

fn no_buffering_headers(seen: &mut Seen) -> bool {
    // (204 and 404 are /favicon.ico and /robots.txt, reserved pages.)
    if seen.role == Role::Page
        || matches!(seen.status, 204 | 404)
        || seen.method == "OPTIONS"
        || seen.header("cache-control").is_some()
        || seen.header("x-accel-buffering").is_some()
    {
        return false;
    }
    seen.set_header("cache-control", "no-store".to_string());
    seen.set_header("x-accel-buffering", "no".to_string());
    true
}

fn receiver_invalid_n_message(seen: &mut Seen) -> bool {
    let reference = show_body(b"[ERROR] Invalid query parameter \"n\"\n");
    if seen.role != Role::Single
        || seen.method != "GET"
        || seen.status != 400
        || seen.body.as_ref() != Some(&reference)
    {
        return false;
    }
    let spec = b"[ERROR] Invalid \"n\" query parameter\n";
    seen.body = Some(show_body(spec));
    seen.set_header("content-length", spec.len().to_string());
    true
}

fn method_not_allowed_content_type(seen: &mut Seen) -> bool {
    if seen.status != 405 || seen.header("content-type").is_some() {
        return false;
    }
    seen.set_header("content-type", "text/plain".to_string());
    true
}

fn html_media_type_any_case(seen: &mut Seen) -> bool {
    if seen.role != Role::Receiver || seen.status != 200 {
        return false;
    }
    let Some(value) = seen.header("content-type") else {
        return false;
    };
    let rest = value.trim_start();
    let media = rest.split(';').next().unwrap_or("").trim_end();
    if !media.eq_ignore_ascii_case("text/html") {
        return false;
    }
    let safe = format!("text/plain{}", &rest[media.len()..]);
    seen.set_header("content-type", safe);
    true
}

/// Compares the transcripts step by step; reports every mismatch at once.
fn compare(tubes: &Transcript, reference: &Transcript) {
    let mut problems = Vec::new();
    if tubes.seen.len() != reference.seen.len() {
        problems.push(format!(
            "different numbers of steps: tubes {}, reference {}",
            tubes.seen.len(),
            reference.seen.len()
        ));
    }
    for (ours, theirs) in tubes.seen.iter().zip(&reference.seen) {
        assert_eq!(
            ours.step, theirs.step,
            "the scenario must run the same steps"
        );
        let mut expected = theirs.clone();
        let applied: Vec<&str> = DIFFERENCES
            .iter()
            .filter(|d| (d.rewrite)(&mut expected))
            .map(|d| d.name)
            .collect();
        if *ours != expected {
            let allowed = if applied.is_empty() {
                String::new()
            } else {
                let why: Vec<String> = DIFFERENCES
                    .iter()
                    .filter(|d| applied.contains(&d.name))
                    .map(|d| format!("{} ({})", d.name, d.why))
                    .collect();
                format!(
                    "\n    expected (the reference's answer after the allowed differences {}):\n      {expected}",
                    why.join(", ")
                )
            };
            problems.push(format!(
                "step `{}`:\n    tubes:\n      {ours}\n    reference:\n      {theirs}{allowed}",
                ours.step
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "Tubes and the reference server differ:\n\n{}\n",
        problems.join("\n\n")
    );
}

/// Runs `scenario` against a fresh Tubes and a fresh reference server and
/// compares what they answered.
async fn differential<F, Fut>(scenario: F)
where
    F: Fn(Target) -> Fut,
    Fut: Future<Output = Transcript>,
{
    // The reference first: without it the test fails before anything else.
    let reference = ReferenceServer::start().await;
    let tubes = TubesServer::start().await;
    let ours = scenario(tubes.target()).await;
    let theirs = scenario(reference.target()).await;
    assert!(!ours.seen.is_empty(), "the scenario recorded nothing");
    compare(&ours, &theirs);
}

// ---------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------

/// Deterministic bytes, every value from 0 to 255.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

/// What a sender declares, and headers that must not be forwarded.
const SENDER_HEADERS: &[(&str, &str)] = &[
    ("Content-Type", "application/x-tubes-test; charset=utf-8"),
    (
        "Content-Disposition",
        "attachment; filename=\"report 1.txt\"",
    ),
    ("X-Piping", "first"),
    ("X-Piping", "second=2; with=params"),
    ("X-Piping", "third, with a comma"),
    ("X-Not-Forwarded", "nope"),
    ("Cache-Control", "no-cache"),
];

/// One whole transfer on `path`. `order` says who arrives when: `S` the
/// sender, `R` a receiver (`n` is the number of `R`s). After each arrival
/// the registry must show it (or show the transfer once all are there);
/// then every receiver's head, the payload through to every receiver,
/// the sender's log to its end, and the path free again. Records the
/// sender's head and log and every receiver's head and body.
#[allow(clippy::too_many_arguments)]
async fn transfer(
    t: &Target,
    transcript: &mut Transcript,
    path: &str,
    query: &str,
    order: &str,
    method: &str,
    headers: &[(&str, &str)],
    upload: Upload,
    payload: &[u8],
) {
    let n = order.matches('R').count();
    let target = format!("{path}{query}");
    let mut sender: Option<Sender> = None;
    let mut receivers: Vec<Exchange> = Vec::new();
    for who in order.chars() {
        match who {
            'S' => sender = Some(t.sender(method, &target, headers, upload).await),
            'R' => receivers.push(t.exchange("GET", &target, &[], b"").await),
            other => panic!("unknown party {other:?} in {order:?}"),
        }
        let all_there = sender.is_some() && receivers.len() == n;
        t.wait_until(if all_there {
            transfers(1)
        } else {
            waiting(usize::from(sender.is_some()), receivers.len())
        })
        .await;
    }
    let mut sender = sender.expect("the order has a sender");
    // The reference sends a receiver's head with the first bytes of the
    // body, so the upload goes on while the receivers read.
    let (_, responses) = tokio::join!(
        sender.upload(payload),
        futures_util::future::join_all(receivers.iter_mut().map(|r| async move {
            let head = r.head().await;
            (head, r.body().await)
        }))
    );
    let log = within(format!("{}: the sender's log to end", t.name), sender.log()).await;
    let step = format!("{order} on {target}:");
    transcript.response(
        format!("{step} sender {method}"),
        Role::Sender,
        method,
        &sender.head,
        Some(&log),
    );
    for (i, (head, body)) in responses.iter().enumerate() {
        let step = format!("{step} receiver {}", i + 1);
        transcript.response(step, Role::Receiver, "GET", head, Some(body));
    }
    // After it ends the path is free again.
    t.wait_until(IDLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_first_with_content_length() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let data = payload(70_000);
        let upload = Upload::Length(data.len());
        let path = "/differential/Sender%20First";
        transfer(
            &t,
            &mut transcript,
            path,
            "",
            "SR",
            "POST",
            SENDER_HEADERS,
            upload,
            &data,
        )
        .await;
        transcript
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_first_chunked() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let data = payload(70_000);
        let path = "/sender-first-chunked";
        transfer(
            &t,
            &mut transcript,
            path,
            "?n=1",
            "SR",
            "PUT",
            SENDER_HEADERS,
            Upload::Chunked,
            &data,
        )
        .await;
        transcript
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_first_with_content_length() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let data = payload(70_000);
        let upload = Upload::Length(data.len());
        let path = "/receiver-first";
        transfer(
            &t,
            &mut transcript,
            path,
            "",
            "RS",
            "PUT",
            SENDER_HEADERS,
            upload,
            &data,
        )
        .await;
        transcript
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_first_chunked() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let data = payload(70_000);
        let path = "/Receiver-First-Chunked";
        transfer(
            &t,
            &mut transcript,
            path,
            "?n=1",
            "RS",
            "POST",
            SENDER_HEADERS,
            Upload::Chunked,
            &data,
        )
        .await;
        // An empty body, and a sender that declares nothing.
        transfer(
            &t,
            &mut transcript,
            path,
            "",
            "RS",
            "POST",
            &[],
            Upload::Chunked,
            b"",
        )
        .await;
        transcript
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_two_receivers() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let data = payload(70_000);
        let length = Upload::Length(data.len());
        let h = SENDER_HEADERS;
        transfer(
            &t,
            &mut transcript,
            "/fan1",
            "?n=2",
            "SRR",
            "POST",
            h,
            Upload::Chunked,
            &data,
        )
        .await;
        transfer(
            &t,
            &mut transcript,
            "/fan2",
            "?n=2",
            "RRS",
            "POST",
            h,
            length,
            &data,
        )
        .await;
        transfer(
            &t,
            &mut transcript,
            "/fan3",
            "?n=2",
            "RSR",
            "PUT",
            h,
            Upload::Chunked,
            &data,
        )
        .await;
        transfer(
            &t,
            &mut transcript,
            "/fan4",
            "?n=3",
            "RSRR",
            "POST",
            h,
            length,
            &data,
        )
        .await;
        transcript
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_and_the_html_rule() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let body = b"<script>alert(1)</script>";
        let upload = Upload::Length(body.len());
        let types = [
            "text/plain",
            "text/html",
            "text/html; charset=utf-8",
            "TEXT/HTML",
            "Text/Html; charset=utf-8",
            "text/html ; charset=utf-8",
            "text/htmlx",
            "application/xhtml+xml",
            "image/svg+xml",
        ];
        for (i, content_type) in types.into_iter().enumerate() {
            let headers = [("Content-Type", content_type)];
            let path = format!("/type{i}");
            transfer(
                &t,
                &mut transcript,
                &path,
                "",
                "SR",
                "POST",
                &headers,
                upload,
                body,
            )
            .await;
        }
        transcript
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_rejections() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let tr = &mut transcript;
        for path in [
            "/",
            "/noscript",
            "/version",
            "/help",
            "/favicon.ico",
            "/robots.txt",
        ] {
            t.check(tr, "POST", path, &[], b"hello").await;
        }
        t.check(tr, "PUT", "/", &[], b"hello").await;
        t.check(tr, "POST", "/help?n=2", &[], b"hello").await;
        // Checks in order: reserved path, Content-Range, n.
        let range = [("Content-Range", "bytes 0-4/5")];
        t.check(tr, "POST", "/help", &range, b"hello").await;
        t.check(tr, "POST", "/range", &range, b"hello").await;
        t.check(tr, "PUT", "/range", &range, b"hello").await;
        t.check(tr, "POST", "/range?n=abc", &range, b"hello").await;
        for n in ["0", "-1", "abc", "", "-0", "0x10", "%2D3", "-abc"] {
            t.check(tr, "POST", &format!("/count?n={n}"), &[], b"hello")
                .await;
            t.check(tr, "PUT", &format!("/count?x=1&n={n}"), &[], b"hello")
                .await;
        }
        // None of them registered anything.
        t.wait_until(IDLE).await;
        transcript
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_rejections() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let tr = &mut transcript;
        let worker = [("Service-Worker", "script")];
        t.check(tr, "GET", "/sw.js", &worker, b"").await;
        // Checks in order: Service-Worker, n.
        t.check(tr, "GET", "/sw.js?n=abc", &worker, b"").await;
        for n in ["0", "-1", "abc", "", "-0", "0x10", "%2D3"] {
            t.check(tr, "GET", &format!("/count?n={n}"), &[], b"").await;
        }
        t.wait_until(IDLE).await;
        transcript
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_rejections() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let tr = &mut transcript;

        // A second sender on a path with a waiting sender.
        let sender = t.sender("POST", "/Dup%2Fpath", &[], Upload::Chunked).await;
        t.wait_until(waiting(1, 0)).await;
        t.check(tr, "POST", "/Dup%2Fpath", &[], b"x").await;
        t.check(tr, "PUT", "/Dup%2Fpath?n=1", &[], b"x").await;
        // "Another sender" comes before a mismatched n.
        t.check(tr, "POST", "/Dup%2Fpath?n=2", &[], b"x").await;
        // Nor does it unregister the first one.
        t.wait_until(waiting(1, 0)).await;
        drop(sender);
        t.wait_until(IDLE).await;

        // Waiting receivers with n = 2; a sender or receiver with another n.
        let r1 = t.exchange("GET", "/mismatch?n=2", &[], b"").await;
        t.wait_until(waiting(0, 1)).await;
        t.check(tr, "POST", "/mismatch?n=3", &[], b"x").await;
        t.check(tr, "POST", "/mismatch", &[], b"x").await;
        t.check(tr, "GET", "/mismatch?n=1", &[], b"").await;
        t.check(tr, "GET", "/mismatch", &[], b"").await;
        let r2 = t.exchange("GET", "/mismatch?n=2", &[], b"").await;
        t.wait_until(waiting(0, 2)).await;
        // Too many receivers; a mismatched n is reported first.
        t.check(tr, "GET", "/mismatch?n=2", &[], b"").await;
        t.check(tr, "GET", "/mismatch?n=3", &[], b"").await;
        t.wait_until(waiting(0, 2)).await;
        drop((r1, r2));
        t.wait_until(IDLE).await;

        // Too many receivers with the default n.
        let r1 = t.exchange("GET", "/full", &[], b"").await;
        t.wait_until(waiting(0, 1)).await;
        t.check(tr, "GET", "/full", &[], b"").await;
        t.check(tr, "GET", "/full?n=1", &[], b"").await;
        drop(r1);
        t.wait_until(IDLE).await;

        // A waiting sender with n = 2; a receiver with another n.
        let sender = t
            .sender("PUT", "/mismatch2?n=2", &[], Upload::Chunked)
            .await;
        t.wait_until(waiting(1, 0)).await;
        t.check(tr, "GET", "/mismatch2?n=3", &[], b"").await;
        t.check(tr, "GET", "/mismatch2", &[], b"").await;
        t.wait_until(waiting(1, 0)).await;
        drop(sender);
        t.wait_until(IDLE).await;

        // A path mid-transfer.
        let mut sender = t.sender("POST", "/busy", &[], Upload::Chunked).await;
        let mut receiver = t.exchange("GET", "/busy", &[], b"").await;
        t.wait_until(transfers(1)).await;
        // The reference sends the receiver's head with the first bytes.
        sender.exchange.send_chunk(b"busy ").await;
        let receiver_head = receiver.head().await;
        t.check(tr, "POST", "/busy", &[], b"x").await;
        t.check(tr, "GET", "/busy", &[], b"").await;
        // "Established" comes before a mismatched n, after an invalid one.
        t.check(tr, "PUT", "/busy?n=2", &[], b"x").await;
        t.check(tr, "GET", "/busy?n=2", &[], b"").await;
        t.check(tr, "POST", "/busy?n=0", &[], b"x").await;
        t.check(tr, "GET", "/busy?n=abc", &[], b"").await;
        let (_, body) = tokio::join!(sender.upload(b"body"), receiver.body());
        let log = within("the busy sender's log", sender.log()).await;
        tr.response(
            "busy: sender",
            Role::Sender,
            "POST",
            &sender.head,
            Some(&log),
        );
        tr.response(
            "busy: receiver",
            Role::Receiver,
            "GET",
            &receiver_head,
            Some(&body),
        );
        t.wait_until(IDLE).await;

        // After it ends the path is free again.
        transfer(
            &t,
            tr,
            "/busy",
            "",
            "RS",
            "POST",
            &[],
            Upload::Length(4),
            b"next",
        )
        .await;
        transcript
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_peers_that_leave() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let tr = &mut transcript;
        // A waiting sender leaves; the next sender is accepted.
        let sender = t.sender("POST", "/leave", &[], Upload::Chunked).await;
        t.wait_until(waiting(1, 0)).await;
        drop(sender);
        t.wait_until(IDLE).await;
        transfer(
            &t,
            tr,
            "/leave",
            "",
            "SR",
            "POST",
            &[],
            Upload::Chunked,
            b"one",
        )
        .await;
        // A waiting receiver leaves; the next receiver is accepted.
        let receiver = t.exchange("GET", "/leave", &[], b"").await;
        t.wait_until(waiting(0, 1)).await;
        drop(receiver);
        t.wait_until(IDLE).await;
        transfer(
            &t,
            tr,
            "/leave",
            "",
            "RS",
            "POST",
            &[],
            Upload::Chunked,
            b"two",
        )
        .await;
        // One of two waiting receivers leaves; the other stays.
        let r1 = t.exchange("GET", "/leave?n=2", &[], b"").await;
        t.wait_until(waiting(0, 1)).await;
        let r2 = t.exchange("GET", "/leave?n=2", &[], b"").await;
        t.wait_until(waiting(0, 2)).await;
        drop(r1);
        t.wait_until(waiting(0, 1)).await;
        drop(r2);
        t.wait_until(IDLE).await;
        transcript
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_methods() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let tr = &mut transcript;
        t.check(tr, "DELETE", "/path", &[], b"").await;
        t.check(tr, "PATCH", "/path", &[], b"data").await;
        t.check(tr, "PROPFIND", "/path", &[], b"").await;
        // HEAD is a reserved page's method only.
        t.check(tr, "HEAD", "/path", &[], b"").await;
        t.check(tr, "DELETE", "/", &[], b"").await;
        t.check(tr, "DELETE", "/help", &[], b"").await;
        t.wait_until(IDLE).await;
        transcript
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let tr = &mut transcript;
        t.check(tr, "OPTIONS", "/path", &[], b"").await;
        let browser = [
            ("Origin", "https://example.com"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type, x-piping"),
        ];
        t.check(tr, "OPTIONS", "/path", &browser, b"").await;
        let private = [("Access-Control-Request-Private-Network", "true")];
        t.check(tr, "OPTIONS", "/path", &private, b"").await;
        let not_private = [("Access-Control-Request-Private-Network", "false")];
        t.check(tr, "OPTIONS", "/path", &not_private, b"").await;
        // Any path, reserved ones included.
        t.check(tr, "OPTIONS", "/", &private, b"").await;
        t.check(tr, "OPTIONS", "/help?n=2", &[], b"").await;
        t.wait_until(IDLE).await;
        transcript
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_pages() {
    differential(|t| async move {
        let mut transcript = Transcript::default();
        let tr = &mut transcript;
        for method in ["GET", "HEAD"] {
            for page in [
                "/",
                "/?n=2",
                "/noscript",
                "/noscript?path=abc&mode=text",
                "/help",
                "/version",
                "/version?n=abc",
            ] {
                t.check_page(tr, method, page).await;
            }
            for path in ["/favicon.ico", "/robots.txt", "/robots.txt?x=1"] {
                t.check(tr, method, path, &[], b"").await;
            }
        }
        t.wait_until(IDLE).await;
        transcript
    })
    .await;
}
