//! A browser tab as a host behind NAT: two headless Chromium pages open
//! the relay's example page `/-/examples/expose.html` (over HTTPS/h2);
//! one registers a name through it, the other connects to that name, and
//! they talk through the relay: text both ways through the page's forms,
//! then two more channels at once with text and 64 KiB of bytes each,
//! every channel getting exactly its own echoes. The driver is
//! `tests/js/browser-expose.mjs` (playwright-core, as in the other browser
//! tests); this test checks what it reports.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/js/node_modules/playwright-core`;
//! `scripts/test.sh` installs them. Without them this test fails, saying so.

mod browser_common;

use std::time::{Duration, Instant};

use serde_json::Value;

use browser_common::{require_tools, run_node, serve};

const SCRIPT: &str = "browser-expose.mjs";
/// How long the server may take to print its addresses.
const START_LIMIT: Duration = Duration::from_secs(10);
/// The longest the driver script may run before it is killed (it stops
/// itself after 40 s).
const SCRIPT_LIMIT: Duration = Duration::from_secs(47);
/// How long a killed script gets to close its browser after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(5);

#[test]
fn a_browser_tab_hosts_a_name_and_another_connects_to_it() {
    require_tools();
    let started = Instant::now();
    let server = serve(START_LIMIT);
    let run = run_node(&server, SCRIPT, &[], SCRIPT_LIMIT, TERM_GRACE, None);
    let report = format!(
        "node tests/js/{SCRIPT} {} ran {:.1?}{}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- tubes log ---\n{}",
        server.https,
        run.elapsed,
        run.killed_note(SCRIPT_LIMIT),
        run.status,
        run.lines.join("\n"),
        run.stderr,
        server.log()
    );
    assert!(run.ok(), "{report}");
    let result: Value = run
        .lines
        .iter()
        .find_map(|line| line.strip_prefix("result "))
        .map(serde_json::from_str)
        .unwrap_or_else(|| panic!("no result line\n{report}"))
        .unwrap_or_else(|e| panic!("the result line is not JSON: {e}\n{report}"));

    let name = result["name"].as_str().unwrap_or_default();
    assert_eq!(
        result["status"],
        format!("Registered as {name}."),
        "the host page's status\n{report}"
    );
    // Each of the two channels got its own text back and its bytes
    // unchanged, and nothing of the other's.
    let channels = result["channels"].as_array().cloned().unwrap_or_default();
    assert_eq!(channels.len(), 2, "{report}");
    for channel in &channels {
        let tag = channel["tag"].as_str().unwrap_or_default();
        assert_eq!(
            channel["text"],
            format!("echo: text of {tag}"),
            "channel {tag}\n{report}"
        );
        assert_eq!(channel["bytes"], 65536, "channel {tag}\n{report}");
        assert_eq!(channel["bytesEqual"], true, "channel {tag}\n{report}");
    }
    // The host saw four clients (the form's twice, the two at once) come
    // and go, and the form's line.
    let log: Vec<&str> = result["hostLog"]
        .as_array()
        .map(|lines| lines.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count(" connected"),
        4,
        "the host page's log: {log:?}\n{report}"
    );
    assert_eq!(count(" left"), 4, "the host page's log: {log:?}\n{report}");
    assert_eq!(
        count("\"hello from the client tab\""),
        1,
        "the host page's log: {log:?}\n{report}"
    );
    eprintln!(
        "tests/js/{SCRIPT}: ok in {:.1?} ({:.1?} in all)\n{}",
        run.elapsed,
        started.elapsed(),
        run.stderr
    );
}
