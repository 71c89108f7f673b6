//! Scale-out: three `tubes serve` nodes (the real binary, as child
//! processes) behind a real nginx that runs `deploy/nginx.conf`, the file
//! we ship, with only its node addresses, listen ports, certificate and log
//! path swapped for the test's own (see [`render_site`]).
//!
//! What it shows, through nginx only:
//! - transfers on thirty paths land on more than one node, and the sender
//!   and receiver of each path always meet on the same node (nginx's access
//!   log names the node of every request; the node's own log confirms it
//!   relayed that path, and no other node did);
//! - sender first and receiver first, 8 MiB byte for byte (sha256), over
//!   HTTP/1.1 and with an HTTP/2 sender over TLS; this is also the guard
//!   against nginx's `proxy_pass`, which stalls such uploads for good;
//! - `?n=3` fan-out, whose receivers hash with the query left out;
//! - live mode (`?live`) on paths held by different nodes, with receivers
//!   that join at different moments;
//! - WebSockets (`?ws=send`, `?ws=receive`) meeting curl on the same path;
//! - killing one node cuts only the transfers it carried: streams on other
//!   nodes go on, a receiver waiting on the dead node is moved by nginx to
//!   the next node on the ring and meets its sender there, the dead node's
//!   paths all move to the surviving nodes (the same node for every
//!   request on a path) and every other path stays where it was.
//!
//! Needs `/usr/sbin/nginx` and curl (`scripts/test.sh` installs both); a
//! missing one fails the test, it never skips. nginx runs as a single
//! foreground process (`master_process off`) from a temporary folder, so it
//! works as root and as any other user, and dies with the test.
//!
//! ```sh
//! cargo test --test scaleout
//! ```
//!
//! Every wait is bounded by [`WAIT`] and waits for an event (a line a
//! receiver got, a sender's log line, a refusal, a line in nginx's access
//! log or a node's log, a process ending); where nothing notifies (a log
//! file, nginx starting to listen) it is polled every few milliseconds.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// The bound of every wait (debug builds on a busy two-core machine).
const WAIT: Duration = Duration::from_secs(30);

/// Where Debian's `nginx` package puts the binary.
const NGINX: &str = "/usr/sbin/nginx";

/// The shipped configuration under test.
const SITE: &str = include_str!("../deploy/nginx.conf");

/// More lines than any log read here has: the bound of every read loop.
const MAX_LINES: usize = 10_000;

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
async fn within<T>(what: impl std::fmt::Display, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Deterministic bytes (xorshift): large enough payloads without storing
/// test data.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tubes-scaleout-{name}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary folder");
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `data` to a file in the folder and returns its path.
    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, data).expect("write a temporary file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------
// The nodes
// ---------------------------------------------------------------------

/// One `tubes serve` child process with its log.
struct Node {
    child: Option<std::process::Child>,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    /// Starts a node on 127.0.0.1 port 0 with debug logs (they name every
    /// transfer's path) and reads its address from the log.
    fn start() -> Node {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tubes"))
            .args(["serve", "--host", "127.0.0.1", "--http-port", "0"])
            .args(["--threads", "1"])
            .env("RUST_LOG", "tubes=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tubes serve");
        let stderr = child.stderr.take().expect("the node's stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut addr = None;
        for _ in 0..MAX_LINES {
            let line = lines
                .next()
                .expect("tubes printed its address before exiting")
                .expect("read the node's log");
            if let Some(rest) = line.split("address=").nth(1) {
                let text = rest.split_whitespace().next().expect("an address");
                addr = Some(text.parse::<SocketAddr>().expect("a socket address"));
                break;
            }
        }
        let addr = addr.expect("the node's address in its first lines");
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&log);
        // Keep reading, so the node never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                keep.lock().expect("log lock").push(line);
            }
        });
        Node {
            child: Some(child),
            addr,
            log,
        }
    }

    /// Whether the node logged the start of a transfer on `path`.
    fn relayed(&self, path: &str) -> bool {
        let needle = format!("transfer starts path={path} ");
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .any(|line| line.contains(&needle))
    }

    /// Kills the node at once (SIGKILL), as a crash or a pulled cable would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill the node");
            child.wait().expect("reap the node");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------
// nginx with the shipped configuration
// ---------------------------------------------------------------------

/// A port that was free a moment ago (nginx has no port 0): bound on
/// 127.0.0.1:0 and released for nginx to take.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// `deploy/nginx.conf` with the test's node addresses, listen ports,
/// certificate and access log. Every other line is kept as shipped; each
/// rewritten line must be found exactly as often as the shipped file has
/// it, so a reshaped file fails here instead of testing something else.
fn render_site(site: &str, nodes: &[SocketAddr], http: u16, https: u16, dir: &Path) -> String {
    let mut out = String::new();
    let mut in_upstream = false;
    let (mut servers, mut listens, mut dropped, mut certs, mut logs) = (0, 0, 0, 0, 0);
    for line in site.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        if trimmed.starts_with("upstream tubes {") {
            in_upstream = true;
        } else if in_upstream && trimmed.starts_with('}') {
            in_upstream = false;
        }
        let rewritten = match words.first().copied() {
            Some("server") if in_upstream => {
                let node = nodes.get(servers).unwrap_or_else(|| {
                    panic!("deploy/nginx.conf has more than {} nodes", nodes.len())
                });
                servers += 1;
                // Keep the parameters (max_fails, fail_timeout) as shipped.
                let params = match words.get(2..) {
                    Some(rest) if !rest.is_empty() => rest.join(" "),
                    _ => ";".to_owned(),
                };
                Some(format!("{indent}server {node} {params}"))
            }
            Some("listen") => {
                let address = words.get(1).copied().unwrap_or("");
                let rest = words.get(2..).unwrap_or_default().join(" ");
                if address.starts_with('[') {
                    dropped += 1;
                    Some(String::new()) // no IPv6 listeners in the test
                } else if address == "80;" {
                    listens += 1;
                    Some(format!("{indent}listen 127.0.0.1:{http};"))
                } else if address == "443" {
                    listens += 1;
                    Some(format!("{indent}listen 127.0.0.1:{https} {rest}"))
                } else {
                    panic!("unexpected listen line in deploy/nginx.conf: {line}")
                }
            }
            Some("ssl_certificate") => {
                certs += 1;
                Some(format!(
                    "{indent}ssl_certificate {};",
                    arg(&dir.join("cert.pem"))
                ))
            }
            Some("ssl_certificate_key") => {
                certs += 1;
                Some(format!(
                    "{indent}ssl_certificate_key {};",
                    arg(&dir.join("key.pem"))
                ))
            }
            Some("access_log") => {
                logs += 1;
                let format = words.get(2).copied().unwrap_or(";");
                Some(format!(
                    "{indent}access_log {} {format}",
                    arg(&dir.join("access.log"))
                ))
            }
            _ => None,
        };
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    assert_eq!(
        servers,
        nodes.len(),
        "node lines in deploy/nginx.conf's upstream"
    );
    assert_eq!(
        (listens, dropped),
        (2, 2),
        "listen lines in deploy/nginx.conf"
    );
    assert_eq!(certs, 2, "ssl_certificate(_key) lines in deploy/nginx.conf");
    assert_eq!(logs, 1, "access_log lines in deploy/nginx.conf");
    out
}

/// nginx in front of the nodes, from a temporary folder.
struct Nginx {
    child: Option<std::process::Child>,
    http: u16,
    https: u16,
    dir: TempDir,
}

impl Nginx {
    fn start(nodes: &[SocketAddr]) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: run scripts/test.sh, which installs Debian's nginx \
             package (this test never skips)"
        );
        let dir = TempDir::new("nginx");
        tubes::transport::tls::write_self_signed(&dir.join("cert.pem"), &dir.join("key.pem"))
            .expect("a self-signed certificate for nginx");
        let (http, https) = (free_port(), free_port());
        let site = render_site(SITE, nodes, http, https, &dir.0);
        std::fs::write(dir.join("tubes.conf"), site).expect("write the site file");
        let d = arg(&dir.0);
        // The main file of the test (not shipped): one foreground process,
        // everything it writes inside the temporary folder.
        let main = format!(
            "daemon off;\n\
             master_process off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             client_body_temp_path {d}/client_body;\n\
             proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             include {d}/tubes.conf;\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).expect("write nginx.conf");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("nginx's stderr file");
        let child = std::process::Command::new(NGINX)
            .arg("-p")
            .arg(&dir.0)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {NGINX}: {e}; scripts/test.sh installs nginx")
            });
        let mut nginx = Nginx {
            child: Some(child),
            http,
            https,
            dir,
        };
        nginx.wait_ready();
        nginx
    }

    /// Waits until nginx accepts on both ports, or fails with its logs if
    /// it exits first.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            let up = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up(self.http) && up(self.https) {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("nginx's status"));
            if let Some(status) = exited {
                panic!("nginx exited ({status}) at start:\n{}", self.logs());
            }
            assert!(
                start.elapsed() < WAIT,
                "nginx did not listen within {WAIT:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> String {
        let read = |name| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "stderr: {}\nerror.log: {}",
            read("stderr.log"),
            read("error.log")
        )
    }

    /// The access log so far.
    fn access(&self) -> Vec<Access> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(Access::parse)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One line of the `tubes` access log format.
#[derive(Debug, Clone)]
struct Access {
    method: String,
    /// Path and query as requested.
    target: String,
    status: u16,
    /// The nodes tried, in order (more than one when a node failed).
    upstreams: Vec<String>,
}

impl Access {
    fn parse(line: &str) -> Access {
        fn bad<T>(line: &str) -> T {
            panic!("unexpected access log line: {line}")
        }
        let (_, rest) = line.split_once('"').unwrap_or_else(|| bad(line));
        let (request, rest) = rest.split_once('"').unwrap_or_else(|| bad(line));
        let mut request = request.split(' ');
        let method = request.next().unwrap_or_else(|| bad(line)).to_owned();
        let target = request.next().unwrap_or_else(|| bad(line)).to_owned();
        let status = rest
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| bad(line));
        let (_, upstream) = rest.split_once("upstream=\"").unwrap_or_else(|| bad(line));
        let (upstream, _) = upstream.split_once('"').unwrap_or_else(|| bad(line));
        let upstreams = upstream
            .split([',', ':'])
            .map(str::trim)
            .collect::<Vec<_>>()
            .chunks(2)
            .filter(|pair| pair.len() == 2 && !pair[0].is_empty())
            .map(|pair| format!("{}:{}", pair[0], pair[1]))
            .collect();
        Access {
            method,
            target,
            status,
            upstreams,
        }
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The node that answered in the end.
    fn node(&self) -> &str {
        self.upstreams.last().map_or("", String::as_str)
    }
}

// ---------------------------------------------------------------------
// The pool
// ---------------------------------------------------------------------

struct Pool {
    nodes: Vec<Node>,
    nginx: Nginx,
}

impl Pool {
    fn start() -> Pool {
        let nodes: Vec<Node> = (0..3).map(|_| Node::start()).collect();
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        let nginx = Nginx::start(&addrs);
        Pool { nodes, nginx }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{path_and_query}", self.nginx.http)
    }

    fn tls_url(&self, path_and_query: &str) -> String {
        format!("https://127.0.0.1:{}{path_and_query}", self.nginx.https)
    }

    fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://127.0.0.1:{}{path_and_query}", self.nginx.http)
    }

    /// The index of the node at `addr`.
    fn index(&self, addr: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.addr.to_string() == addr)
            .unwrap_or_else(|| panic!("{addr} is not a node of the pool"))
    }

    /// Waits until nginx's access log satisfies `done` (lines are written
    /// when a request ends, a moment after the client saw its end).
    async fn access_until(&self, what: &str, done: impl Fn(&[Access]) -> bool) -> Vec<Access> {
        let start = Instant::now();
        loop {
            let lines = self.nginx.access();
            if done(&lines) {
                return lines;
            }
            assert!(
                start.elapsed() < WAIT,
                "nginx's access log never showed {what}: {lines:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Access lines for requests on `path` (any query).
    async fn requests_on(&self, path: &str, count: usize) -> Vec<Access> {
        let lines = self
            .access_until(&format!("{count} requests on {path}"), |lines| {
                lines.iter().filter(|a| a.path() == path).count() >= count
            })
            .await;
        lines.into_iter().filter(|a| a.path() == path).collect()
    }

    /// Which node each path is on now: one `OPTIONS` per path through
    /// nginx (answered at once by the node, logged by nginx).
    async fn owners(&self, paths: &[String]) -> Vec<usize> {
        let before = self.nginx.access().len();
        let mut args = vec!["-X", "OPTIONS"];
        let urls: Vec<String> = paths.iter().map(|p| self.url(p)).collect();
        for url in &urls {
            args.extend(["-o", "/dev/null", url.as_str()]);
        }
        let out = finish(spawn(curl(&args)), "curl -X OPTIONS").await;
        assert!(out.status.success(), "{}", describe(&out));
        let lines = self
            .access_until("the OPTIONS probes", |lines| {
                let probes = lines.get(before..).unwrap_or_default();
                paths.iter().all(|p| {
                    probes
                        .iter()
                        .any(|a| a.method == "OPTIONS" && a.path() == p)
                })
            })
            .await;
        let probes = &lines[before..];
        paths
            .iter()
            .map(|p| {
                let line = probes
                    .iter()
                    .find(|a| a.method == "OPTIONS" && a.path() == p)
                    .unwrap_or_else(|| panic!("no probe of {p} in {probes:#?}"));
                assert_eq!(line.status, 200, "{line:?}");
                self.index(line.node())
            })
            .collect()
    }
}

// ---------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------

/// curl with no proxy and no ~/.curlrc, killed if the test fails.
fn curl(args: &[&str]) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-q", "-sS", "--noproxy", "*", "--max-time", "60"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn spawn(mut cmd: Command) -> Child {
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "cannot start curl: {e}; install the `curl` package (scripts/test.sh does), \
             this test never skips"
        ),
        Err(e) => panic!("cannot start curl: {e}"),
    }
}

async fn finish(child: Child, what: &str) -> Output {
    within(what, child.wait_with_output())
        .await
        .unwrap_or_else(|e| panic!("wait for {what}: {e}"))
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}, stdout {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout[..output.stdout.len().min(300)]),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The lines a process prints, read as they come.
struct Lines {
    lines: tokio::io::Lines<tokio::io::BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let stdout = child.stdout.take().expect("a piped stdout");
        Lines {
            lines: tokio::io::BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// The next line; `None` at the end.
    async fn next(&mut self, what: &str) -> Option<String> {
        let line = within(what, self.lines.next_line())
            .await
            .unwrap_or_else(|e| panic!("read {what}: {e}"));
        if let Some(line) = &line {
            self.seen.push(line.clone());
        }
        line
    }

    /// Reads until the line `want` (exactly).
    async fn until(&mut self, want: &str) {
        for _ in 0..MAX_LINES {
            match self.next(want).await {
                Some(line) if line == want => return,
                Some(_) => {}
                None => panic!("ended before {want:?}; saw {:?}", self.seen),
            }
        }
        panic!("no {want:?} in {MAX_LINES} lines");
    }

    /// Everything until the end.
    async fn rest(&mut self) -> Vec<String> {
        for _ in 0..MAX_LINES {
            if self.next("the end of the output").await.is_none() {
                return self.seen.clone();
            }
        }
        panic!("more than {MAX_LINES} lines");
    }
}

/// Starts two receivers on `url` and returns the one left waiting: the
/// other must be refused at once because the path already has its
/// receiver, which proves that one is registered on the node.
async fn one_waiting_receiver(url: &str, extra: &[&str]) -> Child {
    let args: Vec<&str> = extra.iter().copied().chain([url]).collect();
    let mut a = spawn(curl(&args));
    let mut b = spawn(curl(&args));
    let (first, status) = within("one of two receivers refused", async {
        tokio::select! {
            status = a.wait() => (0, status),
            status = b.wait() => (1, status),
        }
    })
    .await;
    assert!(status.expect("curl's status").success(), "curl failed");
    let (mut refused, waiting) = if first == 0 { (a, b) } else { (b, a) };
    let mut out = String::new();
    refused
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .await
        .expect("read the refusal");
    assert_eq!(
        out, "[ERROR] The number of receivers has reached limits.\n",
        "the second receiver on {url}"
    );
    waiting
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

// ---------------------------------------------------------------------
// 1. Paths spread over the nodes; each stays on one
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_spread_over_the_nodes_and_each_meets_on_one() {
    let pool = Pool::start();
    let tmp = TempDir::new("spread");
    let paths: Vec<String> = (0..30).map(|i| format!("/spread-{i}")).collect();
    let bodies: Vec<Vec<u8>> = (0..30).map(|i| pattern(i as u64 + 1, 40_000 + i)).collect();
    for batch in (0..paths.len()).collect::<Vec<_>>().chunks(10) {
        let transfers = batch.iter().map(|&i| {
            let file = tmp.file(&format!("in-{i}"), &bodies[i]);
            let url = pool.url(&paths[i]);
            let bodies = &bodies;
            async move {
                let receiver = spawn(curl(&[&url]));
                let sender = spawn(curl(&["-T", arg(&file), &url]));
                let sent = finish(sender, "a sender").await;
                let got = finish(receiver, "a receiver").await;
                assert!(sent.status.success(), "{}", describe(&sent));
                assert!(got.status.success(), "{}", describe(&got));
                assert!(got.stdout == bodies[i], "bytes received on {url}");
            }
        });
        futures_util::future::join_all(transfers).await;
    }

    let lines = pool
        .access_until("a GET and a PUT for each path", |lines| {
            paths.iter().all(|p| {
                ["GET", "PUT"]
                    .iter()
                    .all(|m| lines.iter().any(|a| a.path() == p && a.method == *m))
            })
        })
        .await;
    let mut per_node = [0usize; 3];
    for path in &paths {
        let on_path: Vec<&Access> = lines.iter().filter(|a| a.path() == path).collect();
        assert_eq!(on_path.len(), 2, "{on_path:#?}");
        assert_eq!(on_path[0].node(), on_path[1].node(), "{on_path:#?}");
        assert!(on_path.iter().all(|a| a.status == 200), "{on_path:#?}");
        let node = pool.index(on_path[0].node());
        per_node[node] += 1;
        // The node nginx named relayed the path, and no other node did.
        let start = Instant::now();
        while !pool.nodes[node].relayed(path) {
            assert!(start.elapsed() < WAIT, "node {node} never logged {path}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (other, n) in pool.nodes.iter().enumerate() {
            assert!(
                other == node || !n.relayed(path),
                "{path} on node {other} too"
            );
        }
    }
    let used = per_node.iter().filter(|&&n| n > 0).count();
    assert!(used >= 2, "30 paths all on one node: {per_node:?}");
    eprintln!("paths per node: {per_node:?}");
}

// ---------------------------------------------------------------------
// 2. Sender first, receiver first, HTTP/2 over TLS
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_first_and_receiver_first_meet_through_nginx() {
    let pool = Pool::start();
    let tmp = TempDir::new("meet");
    let data = pattern(7, 8 << 20);
    let file = tmp.file("in.bin", &data);

    // Sender first: its log comes back through nginx while its body is
    // held back; then the receiver. (Through proxy_pass this upload
    // stalls for good after a few megabytes.)
    let url = pool.url("/meet-sender-first");
    let mut sender = spawn(curl(&["-N", "-T", arg(&file), &url]));
    let mut log = Lines::of(&mut sender);
    log.until("[INFO] Waiting for 1 receiver(s)...").await;
    let got = finish(spawn(curl(&[&url])), "the receiver").await;
    assert!(got.status.success(), "{}", describe(&got));
    assert_eq!(sha(&got.stdout), sha(&data), "sender first: bytes received");
    let lines = log.rest().await;
    assert!(
        lines
            .iter()
            .any(|l| l == "[INFO] A receiver was connected."),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "[INFO] All receiver(s) was/were received successfully."),
        "{lines:?}"
    );
    assert!(within("the sender", sender.wait())
        .await
        .expect("status")
        .success());

    // Receiver first.
    let url = pool.url("/meet-receiver-first");
    let receiver = one_waiting_receiver(&url, &[]).await;
    let sent = finish(spawn(curl(&["-T", arg(&file), &url])), "the sender").await;
    assert!(sent.status.success(), "{}", describe(&sent));
    let log = String::from_utf8_lossy(&sent.stdout);
    assert!(
        log.contains("[INFO] 1 receiver(s) has/have been connected.\n"),
        "{log}"
    );
    let got = finish(receiver, "the receiver").await;
    assert!(got.status.success(), "{}", describe(&got));
    assert_eq!(
        sha(&got.stdout),
        sha(&data),
        "receiver first: bytes received"
    );

    // An HTTP/2 sender over TLS, sender first, an HTTP/1.1 receiver.
    let path = "/meet-h2";
    let mut sender = spawn(curl(&[
        "-k",
        "--http2",
        "-N",
        "-w",
        "%{stderr}version=%{http_version}\n",
        "-T",
        arg(&file),
        &pool.tls_url(path),
    ]));
    let mut log = Lines::of(&mut sender);
    log.until("[INFO] Waiting for 1 receiver(s)...").await;
    let got = finish(spawn(curl(&[&pool.url(path)])), "the receiver").await;
    assert!(got.status.success(), "{}", describe(&got));
    assert_eq!(sha(&got.stdout), sha(&data), "h2 sender: bytes received");
    log.rest().await;
    let sent = finish(sender, "the h2 sender").await;
    assert!(sent.status.success(), "{}", describe(&sent));
    assert!(
        String::from_utf8_lossy(&sent.stderr).contains("version=2"),
        "{}",
        describe(&sent)
    );

    // /help names the public address and scheme (Host and
    // X-Forwarded-Proto pass through).
    let help = finish(spawn(curl(&["-k", &pool.tls_url("/help")])), "/help").await;
    let text = String::from_utf8_lossy(&help.stdout);
    let public = format!("https://127.0.0.1:{}/mypath", pool.nginx.https);
    assert!(text.contains(&public), "{text}");

    // Each path's requests met on one node.
    for (path, count) in [
        ("/meet-sender-first", 2),
        ("/meet-receiver-first", 3),
        ("/meet-h2", 2),
    ] {
        let requests = pool.requests_on(path, count).await;
        let winners: Vec<&Access> = requests.iter().filter(|a| a.status == 200).collect();
        assert!(
            winners.iter().all(|a| a.node() == winners[0].node()),
            "{requests:#?}"
        );
    }
}

// ---------------------------------------------------------------------
// 3. ?n=3 fan-out
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_three_receivers_through_nginx() {
    let pool = Pool::start();
    let tmp = TempDir::new("fanout");
    let data = pattern(3, 3 << 20);
    let file = tmp.file("in.bin", &data);
    let path = "/fan-out";
    let url = pool.url(&format!("{path}?n=3"));

    let mut sender = spawn(curl(&["-N", "-T", arg(&file), &url]));
    let mut log = Lines::of(&mut sender);
    log.until("[INFO] Waiting for 3 receiver(s)...").await;
    let receivers: Vec<Child> = (0..3).map(|_| spawn(curl(&[&url]))).collect();
    for (i, receiver) in receivers.into_iter().enumerate() {
        let got = finish(receiver, "a receiver").await;
        assert!(got.status.success(), "{}", describe(&got));
        assert_eq!(sha(&got.stdout), sha(&data), "receiver {i}");
    }
    let lines = log.rest().await;
    assert!(
        lines
            .iter()
            .any(|l| l == "[INFO] Start sending to 3 receiver(s)!"),
        "{lines:?}"
    );
    assert!(within("the sender", sender.wait())
        .await
        .expect("status")
        .success());

    let requests = pool.requests_on(path, 4).await;
    assert!(
        requests.iter().all(|a| a.target == format!("{path}?n=3")),
        "{requests:#?}"
    );
    assert!(
        requests.iter().all(|a| a.node() == requests[0].node()),
        "the query must not change the node: {requests:#?}"
    );
}

// ---------------------------------------------------------------------
// 4. Live mode across the pool
// ---------------------------------------------------------------------

/// A receiver (curl) whose lines a task collects as they come, so the
/// test can wait for a given line.
struct LineReceiver {
    lines: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<Output>,
}

impl LineReceiver {
    fn join(url: &str) -> LineReceiver {
        let mut child = spawn(curl(&["-N", url]));
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&lines);
        let task = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            for _ in 0..MAX_LINES {
                match reader.next_line().await {
                    Ok(Some(line)) => keep.lock().expect("lock").push(line),
                    _ => break,
                }
            }
            child.wait_with_output().await.expect("curl's status")
        });
        LineReceiver { lines, task }
    }

    async fn wait_for(&self, want: &str) {
        let start = Instant::now();
        while !self.lines.lock().expect("lock").iter().any(|l| l == want) {
            assert!(
                start.elapsed() < WAIT,
                "a receiver never got {want:?}: {:?}",
                self.lines.lock().expect("lock")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Its lines and how curl ended.
    async fn finish(self) -> (Vec<String>, Output) {
        let out = within("a receiver's end", self.task).await.expect("task");
        let lines = self.lines.lock().expect("lock").clone();
        (lines, out)
    }

    /// Its lines, after a clean end.
    async fn end(self) -> Vec<String> {
        let (lines, out) = self.finish().await;
        assert!(out.status.success(), "{}", describe(&out));
        lines
    }
}

/// `curl -T -` whose standard input the test writes. (curl blocks on its
/// input between writes and shows the sender's log only as it goes on
/// reading, so the test waits on receivers, not on this log.)
fn piped_sender(url: &str) -> (Child, tokio::process::ChildStdin) {
    let mut cmd = curl(&["-N", "-T", "-", url]);
    cmd.stdin(Stdio::piped());
    let mut child = spawn(cmd);
    let stdin = child.stdin.take().expect("stdin");
    (child, stdin)
}

async fn write_line(stdin: &mut tokio::process::ChildStdin, line: &str) {
    within(
        "a write to curl",
        stdin.write_all(format!("{line}\n").as_bytes()),
    )
    .await
    .expect("write to the sender");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_on_several_nodes() {
    let pool = Pool::start();
    // One live path per node where the first candidates allow it.
    let candidates: Vec<String> = (0..30).map(|i| format!("/live-{i}")).collect();
    let owners = pool.owners(&candidates).await;
    let mut paths: Vec<(String, usize)> = Vec::new();
    for (path, &node) in candidates.iter().zip(&owners) {
        if !paths.iter().any(|(_, n)| *n == node) {
            paths.push((path.clone(), node));
        }
    }
    assert!(paths.len() >= 2, "30 paths on one node: {owners:?}");

    let mut senders = Vec::new();
    for (path, _) in &paths {
        let url = pool.url(&format!("{path}?live"));
        let (child, mut stdin) = piped_sender(&url);
        write_line(&mut stdin, &format!("{path} line 1")).await;
        let early = [LineReceiver::join(&url), LineReceiver::join(&url)];
        senders.push((path.clone(), url, child, stdin, early));
    }

    // Line by line: each line reaches every receiver before the next is
    // written. The first receivers start on line 1 whether they came
    // before the sender's first line (they get the stream from its start)
    // or after it (they start on the newest line).
    for k in 1..=5 {
        for (path, _, _, stdin, _) in &mut senders {
            if k > 1 {
                write_line(stdin, &format!("{path} line {k}")).await;
            }
        }
        for (path, _, _, _, early) in &senders {
            for receiver in early {
                receiver.wait_for(&format!("{path} line {k}")).await;
            }
        }
    }
    // A late joiner starts at the newest line, then gets what follows.
    let mut late = Vec::new();
    for (path, url, _, _, _) in &senders {
        let receiver = LineReceiver::join(url);
        receiver.wait_for(&format!("{path} line 5")).await;
        late.push(receiver);
    }
    for (path, _, _, stdin, _) in &mut senders {
        write_line(stdin, &format!("{path} line 6")).await;
    }
    for ((path, _, mut child, stdin, early), late) in senders.into_iter().zip(late) {
        drop(stdin); // the end of the stream
        let log = Lines::of(&mut child).rest().await;
        assert_eq!(
            log.first().map(String::as_str),
            Some("[INFO] Live: receivers may join at any time."),
            "{log:?}"
        );
        assert!(within("a live sender", child.wait())
            .await
            .expect("status")
            .success());
        let want: Vec<String> = (1..=6).map(|k| format!("{path} line {k}")).collect();
        for receiver in early {
            assert_eq!(receiver.end().await, want, "an early receiver on {path}");
        }
        assert_eq!(late.end().await, want[4..], "the late receiver on {path}");
        // The probe, the sender and its three receivers: one node.
        let requests = pool.requests_on(&path, 5).await;
        assert!(
            requests.iter().all(|a| a.node() == requests[0].node()),
            "{requests:#?}"
        );
    }
}

// ---------------------------------------------------------------------
// 5. WebSockets
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_meet_curl_through_nginx() {
    let pool = Pool::start();
    let tmp = TempDir::new("ws");
    let data = pattern(11, 1 << 20);

    // A WebSocket sender, a curl receiver.
    let path = "/ws-send";
    let (ws, response) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(pool.ws_url(&format!("{path}?ws=send"))),
    )
    .await
    .expect("WebSocket handshake through nginx");
    assert_eq!(response.status().as_u16(), 101);
    let (mut sink, mut stream) = ws.split();
    let first = within("the sender's first message", stream.next()).await;
    match first {
        Some(Ok(Message::Text(text))) => {
            assert_eq!(text.as_str(), "[INFO] Waiting for 1 receiver(s)...\n")
        }
        other => panic!("expected the sender's log, got {other:?}"),
    }
    let texts = tokio::spawn(async move {
        let mut texts = Vec::new();
        for _ in 0..MAX_LINES {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => texts.push(text.as_str().to_owned()),
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        texts
    });
    let receiver = spawn(curl(&[&pool.url(path)]));
    for chunk in data.chunks(64 << 10) {
        within(
            "a WebSocket send",
            sink.send(Message::binary(chunk.to_vec())),
        )
        .await
        .expect("send");
    }
    within(
        "the close",
        sink.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))),
    )
    .await
    .expect("close");
    let got = finish(receiver, "curl receiving").await;
    assert!(got.status.success(), "{}", describe(&got));
    assert_eq!(
        sha(&got.stdout),
        sha(&data),
        "curl received what the socket sent"
    );
    let texts = within("the sender's log", texts).await.expect("task");
    assert!(
        texts
            .iter()
            .any(|t| t == "[INFO] Start sending to 1 receiver(s)!\n"),
        "{texts:?}"
    );

    // A curl sender, a WebSocket receiver.
    let path = "/ws-receive";
    let (ws, _) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(pool.ws_url(&format!("{path}?ws=receive"))),
    )
    .await
    .expect("WebSocket handshake through nginx");
    let file = tmp.file("in.bin", &data);
    let sent = finish(spawn(curl(&["-T", arg(&file), &pool.url(path)])), "curl -T").await;
    assert!(sent.status.success(), "{}", describe(&sent));
    let (_, mut stream) = ws.split();
    let mut received = Vec::new();
    let mut close = None;
    for _ in 0..MAX_LINES {
        match within("a WebSocket message", stream.next()).await {
            Some(Ok(Message::Binary(bytes))) => received.extend_from_slice(&bytes),
            Some(Ok(Message::Close(frame))) => {
                close = frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("the receiving socket ended without a close: {other:?}"),
        }
    }
    assert_eq!(
        sha(&received),
        sha(&data),
        "the socket received what curl sent"
    );
    assert_eq!(close, Some((1000, "end".to_owned())));

    // The WebSocket and the plain request of each path, though nginx
    // sends them through different proxies, met on one node.
    for path in ["/ws-send", "/ws-receive"] {
        let requests = pool.requests_on(path, 2).await;
        assert!(
            requests.iter().all(|a| a.node() == requests[0].node()),
            "{requests:#?}"
        );
        assert!(requests.iter().any(|a| a.status == 101), "{requests:#?}");
    }
}

// ---------------------------------------------------------------------
// 6. A node dies
// ---------------------------------------------------------------------

/// A transfer of lines whose sender writes when the test says so.
struct Stream {
    path: String,
    sender: Child,
    stdin: tokio::process::ChildStdin,
    receiver: LineReceiver,
    sent: Vec<String>,
}

impl Stream {
    /// Opens a sender and a receiver on `path` and waits until a first
    /// line went through.
    async fn open(pool: &Pool, path: &str) -> Stream {
        let url = pool.url(path);
        let (sender, stdin) = piped_sender(&url);
        let mut stream = Stream {
            path: path.to_owned(),
            sender,
            stdin,
            receiver: LineReceiver::join(&url),
            sent: Vec::new(),
        };
        stream.line().await;
        stream
    }

    /// Writes the next line and waits until the receiver has it.
    async fn line(&mut self) {
        let line = format!("{} line {}", self.path, self.sent.len() + 1);
        write_line(&mut self.stdin, &line).await;
        self.receiver.wait_for(&line).await;
        self.sent.push(line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_only_affects_the_paths_it_held() {
    let mut pool = Pool::start();
    let candidates: Vec<String> = (0..30).map(|i| format!("/held-{i}")).collect();
    let before = pool.owners(&candidates).await;
    let mut count = [0usize; 3];
    for &n in &before {
        count[n] += 1;
    }
    // The victim holds at least three candidates; another node one.
    let victim = (0..3)
        .find(|&n| count[n] >= 3)
        .unwrap_or_else(|| panic!("no node with three of 30 paths: {count:?}"));
    let victims: Vec<&String> = candidates
        .iter()
        .zip(&before)
        .filter(|(_, &n)| n == victim)
        .map(|(p, _)| p)
        .collect();
    let survivor = candidates
        .iter()
        .zip(&before)
        .find(|(_, &n)| n != victim)
        .map(|(p, _)| p.clone())
        .unwrap_or_else(|| panic!("every path on node {victim}: {before:?}"));

    // A stream on the victim, one on another node, a receiver waiting on
    // the victim.
    let doomed = Stream::open(&pool, victims[0]).await;
    let mut lasting = Stream::open(&pool, &survivor).await;
    let waiting_path = victims[1].clone();
    let waiting = one_waiting_receiver(&pool.url(&waiting_path), &[]).await;

    pool.nodes[victim].kill();

    // The victim's stream is cut, visibly: its receiver fails, having got
    // no more than was sent.
    let (lines, cut) = doomed.receiver.finish().await;
    assert!(
        !cut.status.success(),
        "a cut stream ended cleanly: {}",
        describe(&cut)
    );
    assert_eq!(lines, doomed.sent, "the cut stream's lines");
    drop(doomed.stdin);
    let mut doomed_sender = doomed.sender;
    let _ = within("the cut sender", doomed_sender.wait()).await;

    // The other stream goes on to a clean end.
    for _ in 0..3 {
        lasting.line().await;
    }
    drop(lasting.stdin);
    let mut sender = lasting.sender;
    let log = Lines::of(&mut sender).rest().await;
    assert!(
        log.iter()
            .any(|l| l == "[INFO] All receiver(s) was/were received successfully."),
        "{log:?}"
    );
    assert!(within("the lasting sender", sender.wait())
        .await
        .expect("status")
        .success());
    assert_eq!(
        lasting.receiver.end().await,
        lasting.sent,
        "the lasting stream"
    );

    // The receiver that waited on the victim was moved by nginx (no
    // response head had come yet) and meets a new sender on the next node.
    let mut sender = curl(&["-T", "-", &pool.url(&waiting_path)]);
    sender.stdin(Stdio::piped());
    let mut sender = spawn(sender);
    let mut stdin = sender.stdin.take().expect("stdin");
    within("a write", stdin.write_all(b"moved\n"))
        .await
        .expect("write");
    drop(stdin);
    let sent = finish(sender, "the new sender").await;
    assert!(sent.status.success(), "{}", describe(&sent));
    let got = finish(waiting, "the moved receiver").await;
    assert!(got.status.success(), "{}", describe(&got));
    assert_eq!(got.stdout, b"moved\n");
    let victim_addr = pool.nodes[victim].addr.to_string();
    let lines = pool
        .access_until("the moved GET and the new PUT", |lines| {
            let on = |m: &str| {
                lines
                    .iter()
                    .any(|a| a.path() == waiting_path && a.method == m && a.status == 200)
            };
            on("GET") && on("PUT")
        })
        .await;
    let requests: Vec<&Access> = lines
        .iter()
        .filter(|a| a.path() == waiting_path && a.status == 200)
        .collect();
    let get = requests
        .iter()
        .find(|a| a.method == "GET")
        .unwrap_or_else(|| panic!("{requests:#?}"));
    assert_eq!(get.upstreams.first(), Some(&victim_addr), "{get:?}");
    assert_ne!(get.node(), victim_addr, "{get:?}");
    let put = requests
        .iter()
        .find(|a| a.method == "PUT")
        .unwrap_or_else(|| panic!("{requests:#?}"));
    assert_eq!(put.node(), get.node(), "{requests:#?}");

    // Every other path stays where it was; the victim's paths move to the
    // survivors, each to one node, asked twice.
    let after = pool.owners(&candidates).await;
    let again = pool.owners(&candidates).await;
    assert_eq!(after, again, "a path moved between two probes");
    for ((path, &was), &now) in candidates.iter().zip(&before).zip(&after) {
        if was == victim {
            assert_ne!(now, victim, "{path} still on the dead node");
        } else {
            assert_eq!(now, was, "{path} moved although its node is alive");
        }
    }

    // And a new transfer on one of the victim's paths works.
    let url = pool.url(victims[2]);
    let receiver = spawn(curl(&[&url]));
    let mut sender = curl(&["-T", "-", &url]);
    sender.stdin(Stdio::piped());
    let mut sender = spawn(sender);
    let mut stdin = sender.stdin.take().expect("stdin");
    within("a write", stdin.write_all(b"after\n"))
        .await
        .expect("write");
    drop(stdin);
    assert!(finish(sender, "the sender").await.status.success());
    let got = finish(receiver, "the receiver").await;
    assert_eq!(got.stdout, b"after\n", "{}", describe(&got));
}
