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

mod browser_common;

use std::time::{Duration, Instant};

use serde_json::Value;

use browser_common::{require_tools, run_node, serve, Serve};

const SCRIPT: &str = "browser-rtc.mjs";
/// How long the server may take to print its addresses.
const START_LIMIT: Duration = Duration::from_secs(10);
/// The longest the driver script may run before it is killed (it stops
/// itself after 35 s).
const SCRIPT_LIMIT: Duration = Duration::from_secs(42);
/// How long a killed script gets to close its browser after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(5);

const HELLO: &str = "hello over webrtc";
const REPLY: &str = "hello back over webrtc";

/// What the driver script reported, and everything to print on failure.
struct Run {
    result: Value,
    report: String,
}

/// Runs the driver script against `server`, bounded by [`SCRIPT_LIMIT`];
/// panics unless it succeeds with a `result {JSON}` line and a final `ok`.
fn run_script(server: &Serve) -> Run {
    let run = run_node(server, SCRIPT, &[], SCRIPT_LIMIT, TERM_GRACE, None);
    let elapsed = run.elapsed;
    let stderr = &run.stderr;
    let report = format!(
        "node tests/js/{SCRIPT} {} ran {elapsed:.1?}{}: {}\n\
         --- stdout ---\n{}\n--- stderr ---\n{stderr}\n--- tubes log ---\n{}",
        server.https,
        run.killed_note(SCRIPT_LIMIT),
        run.status,
        run.lines.join("\n"),
        server.log()
    );
    assert!(run.ok(), "{report}");
    let result = run
        .lines
        .iter()
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
    let server = serve(START_LIMIT);
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
