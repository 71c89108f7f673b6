//! The harness the browser tests share (`tests/browser.rs`,
//! `tests/browser_live.rs`, `tests/browser_rtc.rs`): a `tubes serve` child
//! with self-signed HTTPS on port 0, a check for the tools the tests need,
//! and a bounded run of a Node driver script from `tests/js/`.
//!
//! Each test file includes it with `mod browser_common;` and keeps its own
//! time limits, result checks and failure messages.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// Fails (never skips) when something the browser tests need is missing.
pub fn require_tools() {
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
pub struct Serve {
    child: Child,
    /// `https://localhost:PORT`, for the browser.
    pub https: String,
    /// The plain HTTP listener, for the test's own requests.
    #[allow(dead_code)] // only `tests/browser_live.rs` makes its own requests
    pub http: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The address a `Tubes is serving ...` log line names, for a listener
/// whose description is exactly `what` (`HTTPS`, `HTTP`).
fn served_address(line: &str, what: &str) -> Option<String> {
    let (_, rest) = line.split_once(&format!("Tubes is serving {what} address="))?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// Starts `tubes serve`, waiting at most `start_limit` for it to print its
/// HTTPS and HTTP addresses.
pub fn serve(start_limit: Duration) -> Serve {
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
        // handing over the two addresses as soon as both are printed.
        thread::spawn(move || {
            let mut tx = Some(tx);
            let (mut https, mut http) = (None, None);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                https = https.or_else(|| served_address(&line, "HTTPS"));
                http = http.or_else(|| served_address(&line, "HTTP"));
                if let (Some(s), Some(p)) = (&https, &http) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((s.clone(), p.clone()));
                    }
                }
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    let (https, http) = match rx.recv_timeout(start_limit) {
        Ok(addresses) => addresses,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tubes did not print its HTTPS and HTTP addresses within {start_limit:?}; its log:\n{}",
                log.lock().unwrap_or_else(|e| e.into_inner())
            );
        }
    };
    let port = https
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in the HTTPS address {https:?}"));
    Serve {
        child,
        // `localhost`, a name the self-signed certificate carries.
        https: format!("https://localhost:{port}"),
        http: http
            .parse()
            .unwrap_or_else(|e| panic!("the HTTP address {http:?}: {e}")),
        log,
    }
}

/// Collects a child's output pipe on a thread.
pub fn collect(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
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

/// Answers a script's stdout lines on its stdin; an `Err` stops the script.
pub type OnLine<'a> = &'a mut dyn FnMut(&str, &mut ChildStdin) -> Result<(), String>;

/// How a driver script ended; the caller judges it.
pub struct Finished {
    pub status: ExitStatus,
    /// Every stdout line, in order.
    pub lines: Vec<String>,
    pub stderr: String,
    pub elapsed: Duration,
    /// Why the script was stopped: `on_line`'s error, or
    /// `killed: longer than ...` (the only reason without `on_line`).
    pub problem: Option<String>,
}

impl Finished {
    /// Whether it ended on its own, successfully, with a final `ok` line.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
            && self.status.success()
            && self.lines.last().map(|l| l.trim()) == Some("ok")
    }

    /// ` (killed: longer than LIMIT)` if it was stopped, else nothing; for
    /// scripts run without `on_line`, whose only stop is the time limit.
    #[allow(dead_code)] // `tests/browser_live.rs` prints `problem` itself
    pub fn killed_note(&self, limit: Duration) -> String {
        if self.problem.is_some() {
            format!(" (killed: longer than {limit:?})")
        } else {
            String::new()
        }
    }
}

/// Runs `node tests/js/<script> <https-url> <args...>` against `server`,
/// bounded by `limit` (then SIGTERM, and SIGKILL after `term_grace`). With
/// `on_line`, each stdout line goes to it as it comes, with the script's
/// stdin to answer on; without, the script's stdin is empty.
pub fn run_node(
    server: &Serve,
    script: &str,
    args: &[&str],
    limit: Duration,
    term_grace: Duration,
    mut on_line: Option<OnLine>,
) -> Finished {
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(js_dir().join(script))
        .arg(&server.https)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(if on_line.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let pid = child.id();
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = collect(child.stderr.take().expect("stderr"));
    let (line_tx, lines) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (tx, exited) = mpsc::channel::<std::io::Result<ExitStatus>>();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let deadline = started + limit;
    let killed = || format!("killed: longer than {limit:?}");
    let mut seen = Vec::new();
    let mut problem = None;
    // Every line until stdout closes, unless the test objects or time is up.
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let answer = match (&mut on_line, &mut stdin) {
                    (Some(on_line), Some(stdin)) => on_line(&line, stdin),
                    _ => Ok(()),
                };
                seen.push(line);
                if let Err(e) = answer {
                    problem = Some(e);
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                problem = Some(killed());
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(stdin);
    let waited = match problem {
        Some(_) => None,
        None => exited
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok(),
    };
    let status = match waited {
        Some(status) => status,
        None => {
            problem.get_or_insert_with(killed);
            // SIGTERM first: playwright-core then closes the browser it started.
            signal(pid, "-TERM");
            match exited.recv_timeout(term_grace) {
                Ok(status) => status,
                Err(_) => {
                    signal(pid, "-KILL");
                    exited.recv().expect("node was waited for")
                }
            }
        }
    }
    .expect("wait for node");
    Finished {
        status,
        lines: seen,
        stderr: stderr.join().expect("stderr reader"),
        elapsed: started.elapsed(),
        problem,
    }
}
