//! WebRTC between two headless Chromium pages, signaled only through a
//! Tubes room (`?room`) over HTTPS: page A is a WebSocket member
//! (`?ws=room`), page B an SSE member that posts with `POST ?room&from=ID`,
//! so both room transports carry the offer, the answer and the ICE
//! candidates. The peer connections use no STUN or TURN server (host
//! candidates only); once the data channel opens, A sends
//! "hello over webrtc" and B replies. The driver is
//! `tests/js/browser-rtc.mjs` (playwright-core, as in `tests/browser.rs`);
//! this test checks what it reports: both data channel messages, and every
//! signaling message received by each page, in the order the other sent it.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/js/node_modules/playwright-core`;
//! `scripts/test.sh` installs them. Without them this test fails, saying so.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
const SCRIPT: &str = "browser-rtc.mjs";
/// How long the server may take to print its address.
const START_LIMIT: Duration = Duration::from_secs(10);
/// The longest the driver script may run before it is killed (it stops
/// itself after 35 s).
const SCRIPT_LIMIT: Duration = Duration::from_secs(42);
/// How long a killed script gets to close its browser after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(5);

const HELLO: &str = "hello over webrtc";
const REPLY: &str = "hello back over webrtc";

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// Fails (never skips) when something the browser test needs is missing.
fn require_tools() {
    const HOW: &str = "run scripts/test.sh, which installs it";
    let node = Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(out) if out.status.success()),
        "the browser tests need Node.js (`node` on PATH): {HOW} ({node:?})"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "the browser tests need Chromium at {CHROMIUM}: {HOW}"
    );
    let playwright = js_dir().join("node_modules").join("playwright-core");
    assert!(
        playwright.join("package.json").exists(),
        "the browser tests need the npm package playwright-core in {}: {HOW}",
        playwright.display()
    );
}

/// A `tubes serve` child with plain HTTP and self-signed HTTPS on port 0,
/// killed when dropped; its log is kept to print on failure.
struct Serve {
    child: Child,
    https: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn serve() -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tubes"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--https-port",
            "0",
            "--self-signed",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tubes");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    {
        let log = Arc::clone(&log);
        // Reads the whole log (so the server never blocks on a full pipe),
        // handing over the HTTPS address as soon as it is printed.
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("serving HTTPS") {
                    if let Some(address) = line.split("address=").nth(1) {
                        let address = address.split_whitespace().next().unwrap_or("");
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(address.to_string());
                        }
                    }
                }
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    let mut server = Serve {
        child,
        https: String::new(),
        log,
    };
    let Ok(address) = rx.recv_timeout(START_LIMIT) else {
        panic!(
            "tubes did not print its HTTPS address within {START_LIMIT:?}; its log:\n{}",
            server.log()
        );
    };
    let port = address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in the HTTPS address {address:?}"));
    // `localhost`, a name the self-signed certificate carries.
    server.https = format!("https://localhost:{port}");
    server
}

/// Collects a child's output pipe on a thread.
fn collect(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

/// What the driver script reported, and everything to print on failure.
struct Run {
    result: Value,
    report: String,
}

/// Runs the driver script against `server`, bounded by [`SCRIPT_LIMIT`];
/// panics unless it succeeds with a `result {JSON}` line and a final `ok`.
fn run_script(server: &Serve) -> Run {
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(js_dir().join(SCRIPT))
        .arg(&server.https)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let pid = child.id();
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));
    let (tx, rx) = mpsc::channel::<std::io::Result<ExitStatus>>();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let (status, timed_out) = match rx.recv_timeout(SCRIPT_LIMIT) {
        Ok(status) => (status.expect("wait for node"), false),
        Err(_) => {
            // SIGTERM first: the script then closes the browser it started.
            signal(pid, "-TERM");
            let status = match rx.recv_timeout(TERM_GRACE) {
                Ok(status) => status,
                Err(_) => {
                    signal(pid, "-KILL");
                    rx.recv().expect("node was waited for")
                }
            };
            (status.expect("wait for node"), true)
        }
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    let elapsed = started.elapsed();
    let report = format!(
        "node tests/js/{SCRIPT} {} ran {elapsed:.1?}{}: {status}\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- tubes log ---\n{}",
        server.https,
        if timed_out {
            format!(" (killed: longer than {SCRIPT_LIMIT:?})")
        } else {
            String::new()
        },
        server.log()
    );
    let ok = !timed_out && status.success() && stdout.lines().last().map(str::trim) == Some("ok");
    assert!(ok, "{report}");
    let result = stdout
        .lines()
        .find_map(|line| line.strip_prefix("result "))
        .map(serde_json::from_str::<Value>)
        .unwrap_or_else(|| panic!("no result line\n{report}"))
        .unwrap_or_else(|e| panic!("the result line is not JSON: {e}\n{report}"));
    eprintln!("tests/js/{SCRIPT}: ok in {elapsed:.1?}\n{stderr}");
    Run { result, report }
}

/// The strings at `pointer` (a JSON array of strings) in the result.
fn strings(run: &Run, pointer: &str) -> Vec<String> {
    let Some(Value::Array(items)) = run.result.pointer(pointer) else {
        panic!("no array at {pointer} in the result\n{}", run.report);
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => s.clone(),
            other => panic!("{pointer} holds {other}, not a string\n{}", run.report),
        })
        .collect()
}

/// Checks the types of the signaling messages a page received, in order:
/// `expected_start`, then only candidates, then `done`.
fn assert_signals(run: &Run, page: &str, expected_start: &[&str]) {
    let signals = strings(run, &format!("/{page}/signals"));
    let (start, rest) = signals.split_at(expected_start.len().min(signals.len()));
    let candidates = rest.len().saturating_sub(1);
    assert!(
        start == expected_start
            && rest.last().map(String::as_str) == Some("done")
            && rest[..candidates].iter().all(|s| s == "candidate"),
        "page {page} received the signaling messages {signals:?}, expected {expected_start:?}, \
         then candidates, then done\n{}",
        run.report
    );
}

#[test]
fn webrtc_signaled_through_a_room() {
    require_tools();
    let started = Instant::now();
    let server = serve();
    let run = run_script(&server);

    // The data channel carried both messages, once each.
    assert_eq!(
        strings(&run, "/b/channel"),
        [HELLO],
        "what page B received over the data channel\n{}",
        run.report
    );
    assert_eq!(
        strings(&run, "/a/channel"),
        [REPLY],
        "what page A received over the data channel\n{}",
        run.report
    );

    // The room delivered every signaling message, in order: B's `ready`
    // then its answer to A (posted over HTTP, received on the WebSocket);
    // A's offer to B (sent on the WebSocket, received as SSE events); then
    // each side's candidates, exactly as the other gathered them.
    assert_signals(&run, "a", &["ready", "answer"]);
    assert_signals(&run, "b", &["offer"]);
    for (from, to) in [("a", "b"), ("b", "a")] {
        let sent = strings(&run, &format!("/{from}/candidatesSent"));
        let received = strings(&run, &format!("/{to}/candidatesReceived"));
        assert!(
            !sent.is_empty(),
            "page {from} gathered no ICE candidate\n{}",
            run.report
        );
        assert_eq!(
            received, sent,
            "the candidates page {to} received are not those page {from} sent, in order\n{}",
            run.report
        );
    }
    eprintln!(
        "webrtc_signaled_through_a_room: {:.1?} in all; ICE pair {}",
        started.elapsed(),
        run.result["pair"]
    );
}
