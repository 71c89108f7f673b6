//! The harness of the operator tests (`tests/operate.rs`,
//! `tests/operate_browser.rs`): a `tubes serve` child started with a
//! settings file on 127.0.0.1 port 0 (relay and metrics), its log kept and
//! searchable as it grows, signals by PID, a metrics scrape parsed with
//! `prometheus-parse`, and real curl runs with their status, headers and
//! body.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Bound for anything a test waits on that should take milliseconds.
pub const LIMIT: Duration = Duration::from_secs(20);

const HOW: &str = "run scripts/test.sh, which installs it";

/// A fresh folder under the system's temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tubes-operate-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server's log as it grows, with a wake-up on every line.
#[derive(Default)]
struct Log {
    text: Mutex<LogState>,
    grew: Condvar,
}

#[derive(Default)]
struct LogState {
    text: String,
    relay: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    /// The server's stderr closed (it exited).
    closed: bool,
}

/// A `tubes serve` child, killed when dropped.
pub struct Server {
    child: Child,
    /// The plain HTTP listener.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The metrics listener, when the server has one.
    pub metrics: Option<SocketAddr>,
    /// The settings file it was started with.
    pub config: PathBuf,
    pub dir: TempDir,
    log: Arc<Log>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address a log line gives for a listener: `... MESSAGE address=ADDR`
/// in text, `"fields":{"message":MESSAGE,"address":ADDR}` in JSON.
fn address_in(line: &str, message: &str) -> Option<SocketAddr> {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        let fields = json.get("fields")?;
        if fields.get("message")?.as_str()? != message {
            return None;
        }
        return fields.get("address")?.as_str()?.parse().ok();
    }
    let (_, rest) = line.split_once(&format!("{message} address="))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The settings file of a test, written into its own folder.
pub fn write_config(dir: &TempDir, toml: &str) -> PathBuf {
    let path = dir.join("tubes.toml");
    std::fs::write(&path, toml).expect("write settings");
    path
}

impl Server {
    /// Starts `tubes serve --config FILE` (FILE holding `toml`) on
    /// 127.0.0.1 port 0 with metrics on 127.0.0.1 port 0.
    pub fn start(name: &str, toml: &str) -> Server {
        Server::start_with(name, toml, &[])
    }

    /// [`Server::start`] with extra flags.
    pub fn start_with(name: &str, toml: &str, extra: &[&str]) -> Server {
        let dir = TempDir::new(name);
        let config = write_config(&dir, toml);
        Server::start_in(dir, config, extra)
    }

    /// Starts the server on a settings file already written in `dir`.
    pub fn start_in(dir: TempDir, config: PathBuf, extra: &[&str]) -> Server {
        let mut child = tubes()
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args([
                "--host",
                "127.0.0.1",
                "--http-port",
                "0",
                "--metrics-address",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tubes");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Log::default());
        {
            let log = Arc::clone(&log);
            // Reads the whole log, so the server never blocks on a full pipe.
            thread::spawn(move || {
                let mut lines = BufReader::new(stderr).lines();
                while let Some(Ok(line)) = lines.next() {
                    let mut state = log.text.lock().unwrap_or_else(|e| e.into_inner());
                    if state.relay.is_none() {
                        state.relay = address_in(&line, "Tubes is serving HTTP");
                    }
                    if state.metrics.is_none() {
                        state.metrics = address_in(&line, "serving metrics");
                    }
                    state.text.push_str(&line);
                    state.text.push('\n');
                    log.grew.notify_all();
                }
                let mut state = log.text.lock().unwrap_or_else(|e| e.into_inner());
                state.closed = true;
                log.grew.notify_all();
            });
        }
        let deadline = Instant::now() + LIMIT;
        let (addr, metrics) = {
            let mut state = log.text.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(addr) = state.relay {
                    break (addr, state.metrics);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if state.closed || left.is_zero() {
                    let text = state.text.clone();
                    drop(state);
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "tubes did not print its HTTP address (within {LIMIT:?}); its log:\n{text}"
                    );
                }
                state = log
                    .grew
                    .wait_timeout(state, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        Server {
            child,
            addr,
            url: format!("http://{addr}"),
            metrics,
            config,
            dir,
            log,
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log
            .text
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .text
            .clone()
    }

    /// Waits (at most `limit`) until the log holds `needle` at least
    /// `count` times; false if it does not.
    pub fn wait_log(&self, needle: &str, count: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.log.text.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if state.text.matches(needle).count() >= count {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.closed || left.is_zero() {
                return false;
            }
            state = self
                .log
                .grew
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits (at most `limit`) until the server's stderr closes, so that
    /// [`Server::log`] is the whole log.
    pub fn wait_log_closed(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.log.text.lock().unwrap_or_else(|e| e.into_inner());
        while !state.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .log
                .grew
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`-HUP`, `-TERM`) to the server, by PID.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}", self.pid());
    }

    /// Waits at most `limit` for the server to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Scrapes `/metrics`.
    pub fn scrape(&self) -> Scrape {
        let addr = self.metrics.expect("the server has a metrics address");
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        Scrape::parse(&body)
    }

    /// Scrapes until `metric{labels}` is `value` (at most [`LIMIT`]).
    pub fn wait_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let scrape = self.scrape();
            if scrape.value(name, labels) == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} did not become {value} within {LIMIT:?}; last scrape:\n{}",
                scrape.text
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `tubes` binary, with no settings from the environment.
pub fn tubes() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tubes"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TUBES_") {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "info").env("NO_COLOR", "1");
    command
}

/// A parsed scrape, with its text for failure messages.
pub struct Scrape {
    pub text: String,
    pub scrape: prometheus_parse::Scrape,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("parse the scrape");
        Scrape {
            text: text.to_owned(),
            scrape,
        }
    }

    /// The value of the sample `name` with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .and_then(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
    }

    /// Like [`Scrape::value`], failing with the scrape if it is missing.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape:\n{}", self.text))
    }
}

/// A plain HTTP/1.0 GET over a fresh connection: status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(LIMIT)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw:?}"));
    (status, body.to_owned())
}

/// What a curl run gave: the exit code, the final response's status and
/// headers (`-i`), and its body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub exit: i32,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses `curl -sS -i` output.
    pub fn from_output(out: &Output) -> Reply {
        let mut rest: &[u8] = &out.stdout;
        let mut status = 0;
        let mut headers = Vec::new();
        // Header blocks, skipping interim (1xx) responses.
        while rest.starts_with(b"HTTP/") {
            let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            rest = &rest[end + 4..];
            let mut lines = head.split("\r\n");
            status = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            if !(100..200).contains(&status) {
                break;
            }
        }
        Reply {
            exit: out.status.code().unwrap_or(-1),
            status,
            headers,
            body: rest.to_vec(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `curl -sS -i --max-time 20` with `args`, not yet run.
pub fn curl_command(args: &[&str]) -> Command {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-i", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs curl with `args` and parses its output.
pub fn curl(args: &[&str]) -> Reply {
    let out = curl_command(args)
        .output()
        .unwrap_or_else(|e| panic!("curl must be installed ({e}): {HOW}"));
    Reply::from_output(&out)
}

/// A curl run in the background.
pub struct Running(Child);

impl Running {
    pub fn start(args: &[&str]) -> Running {
        Running(
            curl_command(args)
                .spawn()
                .unwrap_or_else(|e| panic!("curl must be installed ({e}): {HOW}")),
        )
    }

    pub fn finish(self) -> Reply {
        Reply::from_output(&self.0.wait_with_output().expect("wait for curl"))
    }
}

/// Moves `data` from a sender to a receiver with real curl: the receiver
/// first (in the background), then the sender (`-T file`), each with its
/// own extra arguments. Returns (sender, receiver).
pub fn transfer(
    dir: &TempDir,
    send_url: &str,
    send_args: &[&str],
    recv_url: &str,
    recv_args: &[&str],
    data: &[u8],
) -> (Reply, Reply) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let file = dir.join(&format!("send-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&file, data).expect("write data");
    let mut args = recv_args.to_vec();
    args.push(recv_url);
    let receiver = Running::start(&args);
    let file = file.to_str().expect("utf-8 path").to_owned();
    let mut args = send_args.to_vec();
    args.extend(["-T", &file, send_url]);
    let sender = curl(&args);
    (sender, receiver.finish())
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads a pipe to its end on a thread.
pub fn collect(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}
