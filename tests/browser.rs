//! A real browser against `tubes serve` over HTTPS: Debian's Chromium,
//! headless, driven by playwright-core from the Node scripts in `tests/js/`.
//! Browsers stream a request body only over HTTP/2 (or 3) through TLS, so
//! the pages use the HTTPS listener with its self-signed certificate.
//!
//! - `text_chat`: page A sends lines one at a time through a streaming
//!   upload; each reaches page B's streaming download before the next is sent.
//! - `webm_screen_share`: page A records an animated canvas with
//!   `MediaRecorder` and uploads the WebM as it is recorded; page B sees a
//!   live, growing WebM stream, then exactly the bytes recorded.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/js/node_modules/playwright-core`;
//! `scripts/test.sh` installs them. Without them these tests fail, saying so.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The longest a driver script may run before it is killed.
const SCRIPT_LIMIT: Duration = Duration::from_secs(90);
/// How long a killed script gets to close its browser after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// How long the server may take to print its address.
const START_LIMIT: Duration = Duration::from_secs(30);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// Fails (never skips) when something the browser tests need is missing.
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
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    let address = match rx.recv_timeout(START_LIMIT) {
        Ok(address) => address,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tubes did not print its HTTPS address within {START_LIMIT:?}; its log:\n{}",
                log.lock().unwrap()
            );
        }
    };
    let port = address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in the HTTPS address {address:?}"));
    Serve {
        child,
        // `localhost`, a name the self-signed certificate carries.
        https: format!("https://localhost:{port}"),
        log,
    }
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

/// Runs `node tests/js/<script> <https-url>` against a fresh server, bounded
/// by [`SCRIPT_LIMIT`], and asserts success and a final `ok` line.
fn run_script(script: &str) {
    require_tools();
    let server = serve();
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(js_dir().join(script))
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
            // SIGTERM first: playwright-core then closes the browser it started.
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
    let ok = !timed_out && status.success() && stdout.lines().last().map(str::trim) == Some("ok");
    if !ok {
        panic!(
            "node tests/js/{script} {} failed after {elapsed:.1?}{}: {status}\n\
             --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- tubes log ---\n{}",
            server.https,
            if timed_out {
                format!(" (killed: longer than {SCRIPT_LIMIT:?})")
            } else {
                String::new()
            },
            server.log.lock().unwrap()
        );
    }
    eprintln!("tests/js/{script}: ok in {elapsed:.1?}\n{stderr}");
}

#[test]
fn text_chat() {
    run_script("browser-chat.mjs");
}

#[test]
fn webm_screen_share() {
    run_script("browser-webm.mjs");
}
