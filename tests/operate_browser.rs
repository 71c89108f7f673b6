//! A signed URL in a real browser: Chromium's `EventSource` (which cannot
//! set an Authorization header) receives with the URL `tubes sign` made,
//! while curl sends with a token; a tampered URL fails for good.
//! The driver script is `tests/js/operate-eventsource.mjs`.

mod operate_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use operate_common::{collect, tubes, Running, Server};

const CHROMIUM: &str = "/usr/bin/chromium";
const LIMIT: Duration = Duration::from_secs(60);

/// Fails (never skips) when something the test needs is missing.
fn require_tools() {
    const HOW: &str = "run scripts/test.sh, which installs it";
    let node = Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(out) if out.status.success()),
        "this test needs Node.js (`node` on PATH): {HOW} ({node:?})"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "this test needs Chromium at {CHROMIUM}: {HOW}"
    );
    let playwright =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/node_modules/playwright-core");
    assert!(
        playwright.join("package.json").exists(),
        "this test needs the npm package playwright-core in {}: {HOW}",
        playwright.display()
    );
}

#[test]
fn eventsource_receives_with_a_signed_url() {
    require_tools();
    let server = Server::start(
        "eventsource",
        r#"
[auth]
signing_key = "eventsource-signing-key-0123"
[[auth.tokens]]
name = "feeder"
token = "feeder-token"
"#,
    );
    let out = tubes()
        .args(["sign", "/feeds/today", "--allow", "receive", "--config"])
        .arg(&server.config)
        .args(["-s", &server.url])
        .output()
        .expect("run tubes sign");
    assert!(out.status.success(), "tubes sign: {out:?}");
    let signed = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    // Another path under the same signature.
    let tampered = signed.replace("/feeds/today", "/feeds/other");
    assert_ne!(signed, tampered);
    let lines = ["hello from curl", "a second line", "ünïcödé third"];

    let started = Instant::now();
    let mut node = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/operate-eventsource.mjs"))
        .args([&server.url, &signed, &tampered, &lines.len().to_string()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let pid = node.id();
    let stderr = collect(node.stderr.take().expect("stderr"));
    let stdout = node.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (done_tx, done) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(node.wait());
    });

    // Once the page's EventSources exist, the sender comes with its token.
    let mut seen = Vec::new();
    let mut sender = None;
    let deadline = started + LIMIT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if line == "opened" && sender.is_none() {
                    let file = server.dir.join("lines.txt");
                    std::fs::write(&file, lines.map(|l| format!("{l}\n")).concat()).expect("write");
                    sender = Some(Running::start(&[
                        "--max-time",
                        "50",
                        "-H",
                        "Authorization: Bearer feeder-token",
                        "-H",
                        "Content-Type: text/plain; charset=utf-8",
                        "-T",
                        file.to_str().expect("path"),
                        &format!("{}/feeds/today", server.url),
                    ]));
                }
                seen.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
                break;
            }
        }
    }
    let status = done
        .recv_timeout(Duration::from_secs(15))
        .map(|s| s.expect("wait for node"));
    let stderr = String::from_utf8_lossy(&stderr.join().expect("stderr")).into_owned();
    let context = format!(
        "node: {status:?} after {:?}\nstdout: {seen:#?}\nstderr:\n{stderr}\nserver log:\n{}",
        started.elapsed(),
        server.log()
    );
    assert!(
        matches!(&status, Ok(s) if s.success()) && seen.last().map(String::as_str) == Some("ok"),
        "the driver failed; {context}"
    );
    let sender = sender.expect("the sender ran").finish();
    assert_eq!(sender.status, 200, "the sender: {sender:?}");
    assert!(
        sender.text().contains("[INFO] Sent successfully!"),
        "the sender's log: {}",
        sender.text()
    );
    let result = seen
        .iter()
        .find_map(|l| l.strip_prefix("result "))
        .unwrap_or_else(|| panic!("no result line; {context}"));
    let result: serde_json::Value = serde_json::from_str(result).expect("result JSON");
    assert_eq!(
        result["signed"]["messages"],
        serde_json::json!(lines),
        "the events the page got; {context}"
    );
    assert_eq!(result["signed"]["ended"], true);
    // EventSource.CLOSED: a 401 fails the connection, without retries.
    assert_eq!(
        result["tampered"],
        serde_json::json!({ "readyState": 2 }),
        "the tampered URL; {context}"
    );
    // Once: the browser did not retry it.
    let scrape = server.scrape();
    assert_eq!(
        scrape.get("tubes_rejections_total", &[("reason", "unauthorized")]),
        1.0,
        "the tampered URL's 401s"
    );
}
