//! The web app at `/` (`assets/app/`, `docs/web-app.md`) in a real browser:
//! Debian's Chromium, headless, driven by playwright-core from the
//! `tests/js/app-*.mjs` scripts, against `tubes serve` over HTTPS/h2, with
//! curl, tar and the `tubes` binary on the other side where a test says so.
//!
//! - `vendor_bundle_is_reproducible`: `assets/app/vendor.js` is exactly what
//!   `tests/js/build-vendor.mjs` builds from the pinned npm packages;
//! - `text`: CSP and asset headers, the encryption vectors computed by the
//!   page, text page to page (plain path and code), `/noscript` to the
//!   page, hostile HTML shown as text;
//! - `files`: page to curl, curl to page (sha256 equal), several files as
//!   one tar to `curl | tar x`, page to page saved to disk as it arrives;
//! - `cli`: encrypted transfers between the page and `tubes send` /
//!   `tubes recv` both ways (code, folder, passphrase, `--path --encrypt`);
//! - `chat`: live chat lines arrive in order both ways, over a streaming
//!   upload and over the WebSocket fallback;
//! - `screen`: a canvas "screen" shared live plays in a `<video>` on two
//!   viewer pages, one joining late.
//!
//! Screenshots of the main screens (desktop and phone widths) are saved in
//! `$CARGO_TARGET_TMPDIR/app-screenshots` (the path is printed).
//!
//! Needs `node`, `/usr/bin/chromium`, curl, tar and `tests/js/node_modules`
//! (playwright-core, esbuild, @noble/curves, uqr); `scripts/test.sh`
//! installs them. Without them these tests fail, saying so.

mod browser_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use browser_common::{js_dir, require_tools, run_node, serve};

/// The longest a driver script may run before it is killed.
const SCRIPT_LIMIT: Duration = Duration::from_secs(100);
/// How long a killed script gets to close its browser after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// How long the server may take to print its addresses.
const START_LIMIT: Duration = Duration::from_secs(30);

fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("app-screenshots")
}

/// Runs `node tests/js/<script> <https-url> <args...>` against a fresh
/// server and asserts success and a final `ok` line.
fn run_script(script: &str, args: &[&str]) {
    require_tools();
    let server = serve(START_LIMIT);
    let shots = format!("--screenshots={}", screenshot_dir().display());
    let mut all = vec![shots.as_str()];
    all.extend_from_slice(args);
    let run = run_node(&server, script, &all, SCRIPT_LIMIT, TERM_GRACE, None);
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
    eprintln!(
        "tests/js/{script}: ok in {elapsed:.1?} (screenshots in {})\n{stderr}",
        screenshot_dir().display()
    );
}

#[test]
fn vendor_bundle_is_reproducible() {
    require_tools();
    let esbuild = js_dir().join("node_modules").join("esbuild");
    assert!(
        esbuild.join("package.json").exists(),
        "rebuilding assets/app/vendor.js needs the npm package esbuild in {}: run scripts/test.sh, which installs it",
        esbuild.display()
    );
    let started = Instant::now();
    let out = Command::new("node")
        .arg(js_dir().join("build-vendor.mjs"))
        .arg("--check")
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "assets/app/vendor.js is not what tests/js/build-vendor.mjs builds ({:?}):\n{}{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn text() {
    run_script("app-text.mjs", &[]);
}

#[test]
fn files() {
    run_script("app-files.mjs", &[]);
}

#[test]
fn cli() {
    let tubes = format!("--tubes={}", env!("CARGO_BIN_EXE_tubes"));
    run_script("app-cli.mjs", &[&tubes]);
}

#[test]
fn chat() {
    run_script("app-chat.mjs", &[]);
}

#[test]
fn screen() {
    run_script("app-screen.mjs", &[]);
}
