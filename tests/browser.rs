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

mod browser_common;

use std::time::Duration;

use browser_common::{require_tools, run_node, serve};

/// The longest a driver script may run before it is killed.
const SCRIPT_LIMIT: Duration = Duration::from_secs(90);
/// How long a killed script gets to close its browser after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// How long the server may take to print its addresses.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Runs `node tests/js/<script> <https-url>` against a fresh server, bounded
/// by [`SCRIPT_LIMIT`], and asserts success and a final `ok` line.
fn run_script(script: &str) {
    require_tools();
    let server = serve(START_LIMIT);
    let run = run_node(&server, script, &[], SCRIPT_LIMIT, TERM_GRACE, None);
    let elapsed = run.elapsed;
    let stderr = &run.stderr;
    if !run.ok() {
        panic!(
            "node tests/js/{script} {} failed after {elapsed:.1?}{}: {}\n\
             --- stdout ---\n{}\n--- stderr ---\n{stderr}\n--- tubes log ---\n{}",
            server.https,
            run.killed_note(SCRIPT_LIMIT),
            run.status,
            run.lines.join("\n"),
            server.log()
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
