//! The `tubes send` and `tubes recv` client against other Piping peers:
//! curl on the other side (both ways), the npm reference server instead of
//! Tubes' own, tar reading a folder sent plainly, TLS with h2 by ALPN and
//! h2c by prior knowledge, the configuration sources, and the progress bar
//! as a terminal shows it.
//!
//! The client is the real binary (`CARGO_BIN_EXE_tubes`) in child
//! processes; Tubes' server runs in-process on `127.0.0.1:0`
//! (`tests/common`), the reference as a `node tests/js/reference-server.js`
//! child. `scripts/test.sh` installs curl, Node.js, the reference and
//! `script` (Debian's `bsdutils`); without one of them these tests fail
//! and say so, they never skip. Once installed:
//!
//! ```sh
//! cargo test --test client_interop
//! ```
//!
//! Nothing here sleeps to let something happen: a test waits for a
//! process to end, for a line on its stderr, for the relay's registry to
//! reach a state (the reference's, which has no change notification, is
//! polled as in tests/differential.rs), or for the terminal to show a
//! frame; every wait is bounded by [`WAIT`]. Each test works in a temporary folder with a
//! random suffix that is removed when it ends, and its children run with
//! an empty configuration (no `TUBES_*` variables, no config file, no
//! proxy), so the machine's settings cannot change what they do.

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Proto, Server};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tubes::transport::tls::{ALPN_H2, ALPN_HTTP11};

/// The bound of every wait (debug builds on a busy two-core machine).
const WAIT: Duration = Duration::from_secs(60);

/// "A few MB" of random bytes for the file transfers.
const FILE_SIZE: usize = 5 << 20;

/// How the sizes of [`FILE_SIZE`] read in the client's summary lines.
const FILE_SIZE_TEXT: &str = "5.00 MiB";

const INSTALL_HINT: &str = "run the README's test command, `scripts/test.sh`, which installs \
     curl, Node.js with the reference server (`npm ci --prefix tests/js`) and `script` \
     (Debian's bsdutils), then runs the tests";

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
async fn within<T>(what: impl fmt::Display, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------
// Temporary folders, files and trees
// ---------------------------------------------------------------------

/// A temporary folder with a random suffix, removed when dropped.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!(
            "tubes-interop-{name}-{:016x}",
            rand::random::<u64>()
        ));
        std::fs::create_dir(&dir).expect("create the temporary folder");
        Tmp(dir)
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// A new empty folder inside.
    fn dir(&self, rel: &str) -> PathBuf {
        let dir = self.join(rel);
        std::fs::create_dir_all(&dir).expect("create a folder");
        dir
    }

    /// A file of `len` random bytes; returns its path and contents.
    fn random_file(&self, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
        let path = self.join(name);
        let data = random_bytes(len);
        std::fs::write(&path, &data).expect("write the input file");
        (path, data)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Random-looking bytes, fast even in a debug build (xorshift64*, one
/// word at a time, from a random seed): no two 8-byte words repeat in a
/// pattern a shifted or repeated chunk could match.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = rand::random::<u64>() | 1;
    let mut data = vec![0; len.next_multiple_of(8)];
    for word in data.chunks_exact_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    data.truncate(len);
    data
}

/// Fails unless `got` is `want`, without printing megabytes.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {} bytes; first difference at {:?}",
            got.len(),
            want.len(),
            first.or(Some(got.len().min(want.len())))
        );
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The names in a folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// One entry of a file tree, as compared between sender and receiver.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File {
        len: u64,
        sha256: String,
        executable: bool,
    },
    Link(PathBuf),
}

/// Every entry under `root`, by path relative to it (symlinks not
/// followed).
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for entry in std::fs::read_dir(dir).expect("list a folder") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("inside")
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let node = if meta.is_symlink() {
                Node::Link(std::fs::read_link(&path).expect("link"))
            } else if meta.is_dir() {
                walk(root, &path, out);
                Node::Dir
            } else {
                let data = read(&path);
                Node::File {
                    len: data.len() as u64,
                    sha256: format!("{:x}", Sha256::digest(&data)),
                    executable: meta.permissions().mode() & 0o100 != 0,
                }
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A folder with what trips tar streams up: nesting, an empty folder, an
/// empty file, a name with spaces, an executable, a symlink, and a file
/// larger than the client's 64 KiB chunks.
fn make_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("a/b/c")).expect("mkdir");
    std::fs::create_dir_all(root.join("empty folder")).expect("mkdir");
    std::fs::write(root.join("a/b/c/deep.txt"), b"deep inside\n").expect("write");
    std::fs::write(root.join("a/zero"), b"").expect("write");
    std::fs::write(root.join("top file.txt"), b"hello, tar\n").expect("write");
    std::fs::write(root.join("a/b/blob.bin"), random_bytes((1 << 20) + 12345)).expect("write");
    std::fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::os::unix::fs::symlink("a/b/c/deep.txt", root.join("link")).expect("symlink");
}

// ---------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------

/// Environment variables that could point the client elsewhere.
const CLEARED_ENV: &[&str] = &[
    "TUBES_SERVER",
    "TUBES_CONFIG",
    "TUBES_PASS",
    "TUBES_INSECURE",
    "RUST_LOG",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// Gives a child an empty configuration and a working folder in `tmp`.
fn isolate(cmd: &mut Command, tmp: &Tmp) {
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    // A config folder that does not exist: no config file.
    cmd.env("XDG_CONFIG_HOME", tmp.join("no-config"))
        .env("HOME", &tmp.0)
        .env("NO_COLOR", "1")
        .current_dir(&tmp.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
}

/// `tubes ARGS...`, isolated, with its working folder in `tmp`.
fn tubes(tmp: &Tmp, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tubes"));
    isolate(&mut cmd, tmp);
    cmd.args(args);
    cmd
}

/// `curl -sS --fail ARGS...`, ignoring any proxy.
fn curl(tmp: &Tmp, args: &[&str]) -> Command {
    let mut cmd = Command::new("curl");
    isolate(&mut cmd, tmp);
    cmd.args(["-sS", "--fail", "--noproxy", "*", "--max-time", "60"])
        .args(args);
    cmd
}

fn spawn(mut cmd: Command, what: &str) -> Child {
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("cannot start {what}: {e} (not installed?); {INSTALL_HINT}")
        }
        Err(e) => panic!("cannot start {what}: {e}"),
    }
}

/// Waits for a child to end and collects its output.
async fn finish(child: Child, what: &str) -> Output {
    within(what, child.wait_with_output())
        .await
        .unwrap_or_else(|e| panic!("wait for {what}: {e}"))
}

/// Runs a command to its end.
async fn run(cmd: Command, what: &str) -> Output {
    finish(spawn(cmd, what), what).await
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails unless the process succeeded; returns its stderr.
fn ok(out: &Output, what: &str) -> String {
    let err = stderr(out);
    assert!(
        out.status.success(),
        "{what} failed: {:?}\n{err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{what} panicked:\n{err}");
    err
}

/// Fails unless the process exited with `code`; returns its stderr.
fn fails_with(out: &Output, code: i32, what: &str) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: {:?}\n{err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{what} panicked:\n{err}");
    err
}

/// The values of a response header in `curl -D` output, in order.
fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// Checks a closing line such as `sent 5.00 MiB in 0.3 s (16.46 MiB/s)`.
fn assert_summary(line: &str, verb: &str, size: &str) {
    let bad = || panic!("not a `{verb} {size} in <secs> s (<rate>/s)` summary: {line:?}");
    let Some(rest) = line.strip_prefix(&format!("{verb} {size} in ")) else {
        bad()
    };
    let Some((secs, rate)) = rest.split_once(" s (") else {
        bad()
    };
    if secs.parse::<f64>().is_err() {
        bad()
    }
    let Some(rate) = rate.strip_suffix("/s)") else {
        bad()
    };
    let Some((number, unit)) = rate.split_once(' ') else {
        bad()
    };
    if number.parse::<f64>().is_err() || !["B", "KiB", "MiB", "GiB"].contains(&unit) {
        bad()
    }
}

/// The stderr line that starts with `prefix`, or a failure naming it.
fn line_starting<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
}

// ---------------------------------------------------------------------
// The relays: Tubes in-process, or the npm reference as a child
// ---------------------------------------------------------------------

/// The npm piping-server (`tests/js/reference-server.js`), killed when
/// dropped (and it exits on its own when its stdin closes).
struct Reference {
    _child: Child,
    addr: SocketAddr,
    io: tokio::sync::Mutex<(ChildStdin, tokio::io::Lines<BufReader<ChildStdout>>)>,
}

impl Reference {
    async fn start() -> Reference {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
        check_reference_installed(&dir);
        let mut child = match Command::new("node")
            .arg("reference-server.js")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("`node` was not found on PATH ({e}); {INSTALL_HINT}")
            }
            Err(e) => panic!("cannot start `node reference-server.js`: {e}; {INSTALL_HINT}"),
        };
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let line = within("the reference server to print its port", stdout.next_line())
            .await
            .expect("read the reference server's stdout")
            .unwrap_or_else(|| {
                panic!("the reference server exited before it listened (see its stderr above); {INSTALL_HINT}")
            });
        let port: u16 = line
            .strip_prefix("port ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the reference server printed {line:?}, not `port <n>`"));
        Reference {
            _child: child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            io: tokio::sync::Mutex::new((stdin, stdout)),
        }
    }

    /// `(waiting senders, waiting receivers)` from the reference itself.
    async fn waiting(&self) -> (usize, usize) {
        let mut io = self.io.lock().await;
        io.0.write_all(b"stats\n").await.expect("write `stats`");
        io.0.flush().await.expect("flush");
        let line =
            io.1.next_line()
                .await
                .expect("read the reference's stdout")
                .expect("the reference server exited");
        let numbers: Vec<usize> = line
            .strip_prefix("stats ")
            .map(|rest| rest.split(' ').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        assert_eq!(numbers.len(), 3, "unexpected reply to `stats`: {line:?}");
        (numbers[0], numbers[1])
    }
}

/// Fails unless `tests/js/node_modules` holds the pinned piping-server.
fn check_reference_installed(dir: &Path) {
    let pinned = std::fs::read_to_string(dir.join("package.json"))
        .expect("read tests/js/package.json")
        .split("\"piping-server\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_string)
        .expect("tests/js/package.json pins piping-server");
    let installed = dir.join("node_modules/piping-server/package.json");
    let Ok(manifest) = std::fs::read_to_string(&installed) else {
        panic!("{} is missing; {INSTALL_HINT}", installed.display());
    };
    assert!(
        manifest.contains(&format!("\"version\": \"{pinned}\"")),
        "{} is not piping-server {pinned} as pinned; {INSTALL_HINT}",
        installed.display()
    );
}

/// A relay a scenario runs against.
enum Relay<'a> {
    Tubes(&'a Server),
    Reference(&'a Reference),
}

impl Relay<'_> {
    /// The base URL for `-s`.
    fn base(&self) -> String {
        match self {
            Relay::Tubes(server) => format!("http://{}", server.addr),
            Relay::Reference(reference) => format!("http://{}", reference.addr),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base())
    }

    /// Waits until this many senders and receivers wait on the relay.
    async fn wait_for(&self, senders: usize, receivers: usize) {
        match self {
            Relay::Tubes(server) => {
                server
                    .wait_for(
                        &format!("{senders} sender(s), {receivers} receiver(s)"),
                        |s| s.waiting_senders == senders && s.waiting_receivers == receivers,
                    )
                    .await
            }
            Relay::Reference(reference) => {
                // It has no change notification: poll, bounded, for the
                // state (as tests/differential.rs does).
                let mut last = reference.waiting().await;
                let reached = tokio::time::timeout(WAIT, async {
                    while last != (senders, receivers) {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        last = reference.waiting().await;
                    }
                })
                .await;
                assert!(
                    reached.is_ok(),
                    "the reference never had {senders} sender(s) and {receivers} \
                     receiver(s) waiting; last {last:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------
// Scenarios, run against either relay
// ---------------------------------------------------------------------

/// `tubes send --path p FILE` (waiting first), `curl -D - -o out`: the
/// bytes arrive unchanged under the headers a browser or `curl -OJ` needs.
async fn tubes_send_to_curl(relay: &Relay<'_>) {
    let tmp = Tmp::new("send-to-curl");
    let (file, data) = tmp.random_file("data file.bin", FILE_SIZE);
    let base = relay.base();
    let file_arg = file.to_str().expect("utf-8 path");
    let sender = spawn(
        tubes(&tmp, &["send", "--path", "p", file_arg, "-s", &base]),
        "tubes send",
    );
    relay.wait_for(1, 0).await;
    let out = tmp.join("out.bin");
    let received = run(
        curl(
            &tmp,
            &["-D", "-", "-o", out.to_str().unwrap(), &relay.url("p")],
        ),
        "curl (receiver)",
    )
    .await;
    ok(&received, "curl (receiver)");
    let sent = finish(sender, "tubes send").await;
    let log = ok(&sent, "tubes send");
    assert_same(&read(&out), &data, "what curl received");

    let head = String::from_utf8_lossy(&received.stdout);
    assert_eq!(
        header_values(&head, "content-disposition"),
        ["attachment; filename=\"data file.bin\""],
        "{head}"
    );
    assert_eq!(
        header_values(&head, "content-length"),
        [FILE_SIZE.to_string()],
        "{head}"
    );
    // A file is not a folder: no tar media type.
    assert!(header_values(&head, "content-type")
        .iter()
        .all(|t| !t.contains("tar")));
    assert_summary(line_starting(&log, "sent "), "sent", FILE_SIZE_TEXT);
    assert!(sent.stdout.is_empty(), "tubes send wrote to stdout");
}

/// `tubes recv --path p` (waiting first) from `curl -T FILE`: into `-o`,
/// then with no `-o` to stdout, since curl sends no file name.
async fn curl_to_tubes_recv(relay: &Relay<'_>) {
    let tmp = Tmp::new("curl-to-recv");
    let (file, data) = tmp.random_file("in.bin", FILE_SIZE);
    let file_arg = file.to_str().expect("utf-8 path");
    let base = relay.base();

    let out = tmp.join("out.bin");
    let receiver = spawn(
        tubes(
            &tmp,
            &[
                "recv",
                "--path",
                "p",
                "-o",
                out.to_str().unwrap(),
                "-s",
                &base,
            ],
        ),
        "tubes recv -o",
    );
    relay.wait_for(0, 1).await;
    let sent = run(curl(&tmp, &["-T", file_arg, &relay.url("p")]), "curl -T").await;
    ok(&sent, "curl -T");
    let received = finish(receiver, "tubes recv -o").await;
    let log = ok(&received, "tubes recv -o");
    assert_same(&read(&out), &data, "what tubes recv -o wrote");
    assert!(received.stdout.is_empty(), "tubes recv -o wrote to stdout");
    assert_summary(line_starting(&log, "received "), "received", FILE_SIZE_TEXT);

    // No -o and no file name from the sender: stdout, and no file at all
    // in the working folder.
    let mut cmd = tubes(&tmp, &["recv", "--path", "q", "-s", &base]);
    let cwd = tmp.dir("cwd");
    cmd.current_dir(&cwd);
    let receiver = spawn(cmd, "tubes recv (stdout)");
    relay.wait_for(0, 1).await;
    // The receiver's stdout is read while curl sends: a full pipe would
    // hold the receiver, and through it the sender, back.
    let (sent, received) = tokio::join!(
        run(curl(&tmp, &["-T", file_arg, &relay.url("q")]), "curl -T"),
        finish(receiver, "tubes recv (stdout)")
    );
    ok(&sent, "curl -T");
    let log = ok(&received, "tubes recv (stdout)");
    assert_same(&received.stdout, &data, "what tubes recv wrote to stdout");
    assert_eq!(
        names(&cwd),
        Vec::<String>::new(),
        "files left in the working folder"
    );
    assert_summary(line_starting(&log, "received "), "received", FILE_SIZE_TEXT);
}

// ---------------------------------------------------------------------
// 1, 2: curl and the client on Tubes' server
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tubes_send_path_to_curl() {
    let server = Server::start().await;
    tubes_send_to_curl(&Relay::Tubes(&server)).await;
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_upload_to_tubes_recv_path() {
    let server = Server::start().await;
    curl_to_tubes_recv(&Relay::Tubes(&server)).await;
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// 3: the same through the npm reference server
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_tubes_send_path_to_curl() {
    let reference = Reference::start().await;
    tubes_send_to_curl(&Relay::Reference(&reference)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_curl_upload_to_tubes_recv_path() {
    let reference = Reference::start().await;
    curl_to_tubes_recv(&Relay::Reference(&reference)).await;
}

/// `tubes send --path` → `tubes recv --path` with no `-o`: the file lands
/// in the receiver's working folder under the sender's name, which only
/// the relay's forwarded `Content-Disposition` carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_tubes_send_path_to_tubes_recv_path() {
    let reference = Reference::start().await;
    let relay = Relay::Reference(&reference);
    let tmp = Tmp::new("ref-path");
    let (file, data) = tmp.random_file("photo album.raw", FILE_SIZE);
    let base = relay.base();
    let sender = spawn(
        tubes(
            &tmp,
            &["send", "--path", "p", file.to_str().unwrap(), "-s", &base],
        ),
        "tubes send",
    );
    relay.wait_for(1, 0).await;
    let cwd = tmp.dir("cwd");
    let mut cmd = tubes(&tmp, &["recv", "--path", "p", "-s", &base]);
    cmd.current_dir(&cwd);
    let received = run(cmd, "tubes recv").await;
    let log = ok(&received, "tubes recv");
    ok(&finish(sender, "tubes send").await, "tubes send");
    assert_eq!(names(&cwd), ["photo album.raw"]);
    assert_same(&read(&cwd.join("photo album.raw")), &data, "the saved file");
    assert!(received.stdout.is_empty(), "tubes recv wrote to stdout");
    assert!(log.contains("saved photo album.raw"), "{log}");
}

/// An encrypted transfer under a code through the reference: the code is
/// read from the sender's stderr, and the command it prints for the other
/// side is the one that is run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_encrypted_code_transfer() {
    let reference = Reference::start().await;
    let relay = Relay::Reference(&reference);
    let tmp = Tmp::new("ref-code");
    let (file, data) = tmp.random_file("secret.bin", FILE_SIZE);
    let base = relay.base();
    let mut sender = spawn(
        tubes(&tmp, &["send", file.to_str().unwrap(), "-s", &base]),
        "tubes send (code)",
    );
    let mut lines = BufReader::new(sender.stderr.take().expect("piped stderr")).lines();
    let mut before = Vec::new();
    let code = within("the sender to print `Code: `", async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read the sender's stderr")
                .unwrap_or_else(|| panic!("the sender ended without a code:\n{before:#?}"));
            if let Some(code) = line.strip_prefix("Code: ") {
                break code.trim().to_owned();
            }
            before.push(line);
        }
    })
    .await;
    let run_line = within("the sender to print the command", lines.next_line())
        .await
        .expect("read")
        .expect("a line after the code");
    assert_eq!(run_line, "On the other side, run:");
    let command = within("the sender to print the command", lines.next_line())
        .await
        .expect("read")
        .expect("the command line");
    // Keep the pipe drained; the rest is the sender's summary.
    let rest: JoinHandle<Vec<String>> = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    });
    assert_eq!(command, format!("  tubes recv {code} --server {base}"));
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let out = tmp.join("out.bin");
    let mut cmd = tubes(&tmp, &args);
    cmd.arg("-o").arg(&out);
    let received = run(cmd, "tubes recv CODE").await;
    let log = ok(&received, "tubes recv CODE");
    let status = within("tubes send (code) to end", sender.wait())
        .await
        .expect("wait");
    let rest = within("the sender's stderr to close", rest)
        .await
        .expect("reader task");
    assert!(status.success(), "tubes send (code): {status:?}\n{rest:#?}");
    assert_same(&read(&out), &data, "the decrypted file");
    assert_summary(line_starting(&log, "received "), "received", FILE_SIZE_TEXT);
    let summary = rest
        .iter()
        .find(|l| l.starts_with("sent "))
        .unwrap_or_else(|| panic!("no summary from the sender: {rest:#?}"));
    // The sender counts the payload, not the encryption's overhead.
    assert_summary(summary, "sent", FILE_SIZE_TEXT);
}

// ---------------------------------------------------------------------
// 4: a folder as a standard tar stream
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_sent_plainly_unpacks_with_curl_and_tar() {
    let server = Server::start().await;
    let relay = Relay::Tubes(&server);
    let tmp = Tmp::new("folder");
    let tree = tmp.dir("src/tree");
    make_tree(&tree);
    let want = snapshot(&tree);
    let base = relay.base();
    let tree_arg = tree.to_str().unwrap();

    let sender = spawn(
        tubes(&tmp, &["send", "--path", "dir", tree_arg, "-s", &base]),
        "tubes send DIR",
    );
    relay.wait_for(1, 0).await;
    let head = tmp.join("head.txt");
    let mut curl_child = spawn(
        curl(&tmp, &["-D", head.to_str().unwrap(), &relay.url("dir")]),
        "curl (receiver)",
    );
    let stream: Stdio = curl_child
        .stdout
        .take()
        .expect("piped stdout")
        .try_into()
        .expect("curl's stdout as tar's stdin");
    let unpacked = tmp.dir("unpacked");
    let mut tar = Command::new("tar");
    isolate(&mut tar, &tmp);
    tar.arg("-x").arg("-C").arg(&unpacked).stdin(stream);
    let tar = run(tar, "tar -x").await;
    ok(&tar, "tar -x");
    ok(&finish(curl_child, "curl").await, "curl");
    ok(&finish(sender, "tubes send DIR").await, "tubes send DIR");
    assert_eq!(names(&unpacked), ["tree"]);
    assert_eq!(snapshot(&unpacked.join("tree")), want);
    let head = String::from_utf8_lossy(&read(&head)).into_owned();
    assert_eq!(
        header_values(&head, "content-type"),
        ["application/x-tar"],
        "{head}"
    );
    assert_eq!(
        header_values(&head, "content-disposition"),
        ["attachment; filename=\"tree.tar\""],
        "{head}"
    );

    // And the client's own receiver unpacks the same stream.
    let sender = spawn(
        tubes(&tmp, &["send", "--path", "dir2", tree_arg, "-s", &base]),
        "tubes send DIR",
    );
    relay.wait_for(1, 0).await;
    let out = tmp.join("by-tubes");
    let received = run(
        tubes(
            &tmp,
            &[
                "recv",
                "--path",
                "dir2",
                "-o",
                out.to_str().unwrap(),
                "-s",
                &base,
            ],
        ),
        "tubes recv (folder)",
    )
    .await;
    ok(&received, "tubes recv (folder)");
    ok(&finish(sender, "tubes send DIR").await, "tubes send DIR");
    assert_eq!(names(&out), ["tree"]);
    assert_eq!(snapshot(&out.join("tree")), want);
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// 5: TLS, h2 by ALPN, h2c by prior knowledge
// ---------------------------------------------------------------------

/// What a [`Front`] saw of one connection: the ALPN protocol agreed in
/// the TLS handshake, and whether the first bytes were the HTTP/2 preface.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    alpn: Option<String>,
    h2: bool,
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A recording proxy in front of Tubes' plain listener: it ends TLS
/// itself (with the test server's certificate) when given a TLS config,
/// notes what each connection speaks, and passes the bytes on, so a test
/// can check which protocol the client really used.
struct Front {
    addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Front {
    fn drop(&mut self) {
        // Drops the connections' JoinSet too, which aborts them.
        self.task.abort();
    }
}

impl Front {
    async fn start(upstream: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                let tls = tls.clone();
                connections.spawn(async move {
                    let _ = match tls {
                        None => forward(tcp, None, upstream, &record).await,
                        Some(config) => {
                            match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                                Ok(stream) => {
                                    let alpn = stream
                                        .get_ref()
                                        .1
                                        .alpn_protocol()
                                        .map(|p| String::from_utf8_lossy(p).into_owned());
                                    forward(stream, alpn, upstream, &record).await
                                }
                                Err(e) => Err(e),
                            }
                        }
                    };
                });
            }
        });
        Front { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    alpn: Option<String>,
    upstream: SocketAddr,
    record: &std::sync::Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    // Every HTTP/1.1 request line with its Host is longer than this.
    let mut first = [0u8; 24];
    client.read_exact(&mut first).await?;
    record.lock().expect("not poisoned").push(Seen {
        alpn,
        h2: &first == H2_PREFACE,
    });
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&first).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

/// `tubes send -k` to Tubes' TLS listener, `tubes recv -k --http2` from
/// it; then through a recording TLS front: `--http1` is HTTP/1.1 by ALPN,
/// `--http2` is h2 by ALPN, and the default over TLS is h2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_insecure_flag_and_h2_by_alpn() {
    let server = Server::start().await;
    let tmp = Tmp::new("tls");
    let (file, data) = tmp.random_file("tls.bin", FILE_SIZE);
    let file_arg = file.to_str().unwrap();
    let https = format!("https://127.0.0.1:{}", server.tls_addr.port());

    let sender = spawn(
        tubes(&tmp, &["send", "-k", "-s", &https, "--path", "p", file_arg]),
        "tubes send -k",
    );
    server
        .wait_for("the TLS sender", |s| s.waiting_senders == 1)
        .await;
    let out = tmp.join("out.bin");
    let received = run(
        tubes(
            &tmp,
            &[
                "recv",
                "-k",
                "-s",
                &https,
                "--http2",
                "--path",
                "p",
                "-o",
                out.to_str().unwrap(),
            ],
        ),
        "tubes recv -k --http2",
    )
    .await;
    ok(&received, "tubes recv -k --http2");
    ok(&finish(sender, "tubes send -k").await, "tubes send -k");
    assert_same(&read(&out), &data, "received over TLS");

    // Which protocol each flag really speaks.
    let config = Arc::new(server.certs.server_config(&[ALPN_H2, ALPN_HTTP11]));
    let front = Front::start(server.addr, Some(config)).await;
    let via = format!("https://127.0.0.1:{}", front.addr.port());
    for (send_flag, recv_flag, want) in [
        ("--http1", "--http2", [("http/1.1", false), ("h2", true)]),
        ("--http2", "--http1", [("h2", true), ("http/1.1", false)]),
    ] {
        let start = front.seen().len();
        let sender = spawn(
            tubes(
                &tmp,
                &["send", "-k", send_flag, "-s", &via, "--path", "q", file_arg],
            ),
            "tubes send via the front",
        );
        server
            .wait_for("the sender via the front", |s| s.waiting_senders == 1)
            .await;
        let out = tmp.join("via.bin");
        let _ = std::fs::remove_file(&out);
        let received = run(
            tubes(
                &tmp,
                &[
                    "recv",
                    "-k",
                    recv_flag,
                    "-s",
                    &via,
                    "--path",
                    "q",
                    "-o",
                    out.to_str().unwrap(),
                ],
            ),
            "tubes recv via the front",
        )
        .await;
        ok(&received, &format!("tubes recv {recv_flag} via the front"));
        ok(
            &finish(sender, "tubes send via the front").await,
            &format!("tubes send {send_flag} via the front"),
        );
        assert_same(&read(&out), &data, "received via the front");
        let want: Vec<Seen> = want
            .iter()
            .map(|(alpn, h2)| Seen {
                alpn: Some(alpn.to_string()),
                h2: *h2,
            })
            .collect();
        assert_eq!(
            front.seen()[start..],
            want,
            "send {send_flag}, recv {recv_flag}"
        );
    }

    // No flag: h2 when the relay offers it.
    let start = front.seen().len();
    let sender = spawn(
        tubes(&tmp, &["send", "-k", "-s", &via, "--path", "r", file_arg]),
        "tubes send (auto)",
    );
    server
        .wait_for("the sender via the front", |s| s.waiting_senders == 1)
        .await;
    let got = run(curl(&tmp, &["-k", &format!("{via}/r")]), "curl -k").await;
    ok(&got, "curl -k");
    ok(
        &finish(sender, "tubes send (auto)").await,
        "tubes send (auto)",
    );
    assert_same(&got.stdout, &data, "received via the front by curl");
    assert_eq!(
        front.seen()[start],
        Seen {
            alpn: Some("h2".into()),
            h2: true
        },
        "the default over TLS"
    );
    drop(front);
    server.wait_empty().await;
    server.stop().await;
}

/// `--http2` on `http://`: h2c with prior knowledge, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_both_ways() {
    let server = Server::start().await;
    let tmp = Tmp::new("h2c");
    let (file, data) = tmp.random_file("h2c.bin", FILE_SIZE);
    let front = Front::start(server.addr, None).await;
    let via = format!("http://{}", front.addr);

    let sender = spawn(
        tubes(
            &tmp,
            &[
                "send",
                "--http2",
                "-s",
                &via,
                "--path",
                "p",
                file.to_str().unwrap(),
            ],
        ),
        "tubes send --http2",
    );
    server
        .wait_for("the h2c sender", |s| s.waiting_senders == 1)
        .await;
    let out = tmp.join("out.bin");
    let received = run(
        tubes(
            &tmp,
            &[
                "recv",
                "--http2",
                "-s",
                &via,
                "--path",
                "p",
                "-o",
                out.to_str().unwrap(),
            ],
        ),
        "tubes recv --http2",
    )
    .await;
    ok(&received, "tubes recv --http2");
    ok(
        &finish(sender, "tubes send --http2").await,
        "tubes send --http2",
    );
    assert_same(&read(&out), &data, "received over h2c");
    let h2c = Seen {
        alpn: None,
        h2: true,
    };
    assert_eq!(front.seen(), [h2c.clone(), h2c]);
    drop(front);
    server.wait_empty().await;
    server.stop().await;
}

/// Without `-k`, the self-signed certificate stops both commands before
/// anything registers: exit 3, and the message says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificate_refused_without_insecure_flag() {
    let server = Server::start().await;
    let tmp = Tmp::new("tls-refused");
    let (file, _) = tmp.random_file("f.bin", 1024);
    let https = format!("https://127.0.0.1:{}", server.tls_addr.port());
    for (what, args) in [
        (
            "tubes send",
            vec!["send", "-s", &https, "--path", "p", file.to_str().unwrap()],
        ),
        ("tubes recv", vec!["recv", "-s", &https, "--path", "p"]),
    ] {
        let out = run(tubes(&tmp, &args), what).await;
        let err = fails_with(&out, 3, &format!("{what} without -k"));
        assert!(
            err.to_lowercase().contains("certificate"),
            "{what}: the message does not mention the certificate:\n{err}"
        );
        assert!(
            err.contains(&https),
            "{what}: the relay is not named:\n{err}"
        );
    }
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// 6: configuration sources
// ---------------------------------------------------------------------

/// A small sender/receiver pair: `tubes send` (with `setup` applied to
/// its command) to `path`, received by curl from the plain listener;
/// returns curl's response head.
async fn send_with(
    server: &Server,
    tmp: &Tmp,
    path: &str,
    setup: impl FnOnce(&mut Command),
) -> String {
    let (file, data) = tmp.random_file(&format!("{path}.bin"), 100_000);
    let mut cmd = tubes(tmp, &["send", "--path", path, file.to_str().unwrap()]);
    setup(&mut cmd);
    let sender = spawn(cmd, "tubes send");
    let url = server.url(&format!("/{path}"));
    let head = tmp.join(&format!("{path}.head"));
    let got = run(curl(tmp, &["-D", head.to_str().unwrap(), &url]), "curl").await;
    let sent = finish(sender, "tubes send").await;
    ok(&sent, &format!("tubes send ({path})"));
    ok(&got, "curl");
    assert_same(&got.stdout, &data, path);
    String::from_utf8_lossy(&read(&head)).into_owned()
}

/// A free loopback port: nothing listens there.
async fn dead_relay() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}")
}

/// `server`, `headers` and `insecure` from `$TUBES_CONFIG` (an https
/// relay with the self-signed certificate, and no `-k`); `-H` adds to the
/// file's headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_gives_server_headers_and_insecure() {
    let server = Server::start().await;
    let tmp = Tmp::new("config");
    let config = tmp.join("my tubes.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"https://127.0.0.1:{}\"\nheaders = [\"X-Piping: from-config\"]\ninsecure = true\n",
            server.tls_addr.port()
        ),
    )
    .expect("write the config");
    let head = send_with(&server, &tmp, "cfg", |cmd| {
        cmd.env("TUBES_CONFIG", &config)
            .args(["-H", "Content-Type: text/x-from-flag"]);
    })
    .await;
    // The relay passes both on to the receiver.
    assert_eq!(header_values(&head, "x-piping"), ["from-config"], "{head}");
    assert_eq!(
        header_values(&head, "content-type"),
        ["text/x-from-flag"],
        "{head}"
    );
    server.wait_empty().await;
    server.stop().await;
}

/// Headers of the same name, repeated with `-H` or given in the config
/// file and with `-H`, all go out, as curl sends them: the Piping relay
/// passes every `X-Piping` line on, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_header_names_all_reach_the_relay() {
    let server = Server::start().await;
    let tmp = Tmp::new("repeated-headers");

    // Control: from curl, the relay passes both lines on.
    let (file, data) = tmp.random_file("control.bin", 1000);
    let url = server.url("/control");
    let sender = spawn(
        curl(
            &tmp,
            &[
                "-T",
                file.to_str().unwrap(),
                "-H",
                "X-Piping: one",
                "-H",
                "X-Piping: two",
                &url,
            ],
        ),
        "curl -T",
    );
    let head = tmp.join("control.head");
    let got = run(curl(&tmp, &["-D", head.to_str().unwrap(), &url]), "curl").await;
    ok(&got, "curl");
    ok(&finish(sender, "curl -T").await, "curl -T");
    assert_same(&got.stdout, &data, "control");
    let head = String::from_utf8_lossy(&read(&head)).into_owned();
    assert_eq!(header_values(&head, "x-piping"), ["one", "two"], "{head}");

    let base = format!("http://{}", server.addr);
    let head = send_with(&server, &tmp, "flags", |cmd| {
        cmd.args(["-s", &base])
            .args(["-H", "X-Piping: one", "-H", "X-Piping: two"]);
    })
    .await;
    assert_eq!(header_values(&head, "x-piping"), ["one", "two"], "{head}");

    let config = tmp.join("headers.toml");
    std::fs::write(&config, "headers = [\"X-Piping: from-config\"]\n").expect("write");
    let head = send_with(&server, &tmp, "config-and-flag", |cmd| {
        cmd.env("TUBES_CONFIG", &config)
            .args(["-s", &base, "-H", "X-Piping: from-flag"]);
    })
    .await;
    assert_eq!(
        header_values(&head, "x-piping"),
        ["from-config", "from-flag"],
        "{head}"
    );
    server.wait_empty().await;
    server.stop().await;
}

/// `TUBES_SERVER` is used; it beats the file; `-s` beats it; with none
/// of them, exit 2 and a message that says how to give one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_from_environment_and_precedence() {
    let server = Server::start().await;
    let tmp = Tmp::new("env");
    let base = format!("http://{}", server.addr);
    let dead = dead_relay().await;

    send_with(&server, &tmp, "env", |cmd| {
        cmd.env("TUBES_SERVER", &base);
    })
    .await;

    let config = tmp.join("dead.toml");
    std::fs::write(&config, format!("server = \"{dead}\"\n")).expect("write");
    send_with(&server, &tmp, "env-over-file", |cmd| {
        cmd.env("TUBES_SERVER", &base).env("TUBES_CONFIG", &config);
    })
    .await;

    send_with(&server, &tmp, "flag-over-env", |cmd| {
        cmd.env("TUBES_SERVER", &dead).args(["-s", &base]);
    })
    .await;

    // The dead relay really is dead: a test of precedence that could not
    // fail would prove nothing.
    let out = run(
        tubes(&tmp, &["recv", "--path", "x", "-s", &dead]),
        "tubes recv (dead relay)",
    )
    .await;
    fails_with(&out, 3, "tubes recv (dead relay)");

    let out = run(
        tubes(&tmp, &["recv", "--path", "x"]),
        "tubes recv (no relay)",
    )
    .await;
    let err = fails_with(&out, 2, "tubes recv with no relay");
    assert!(err.contains("no relay given"), "{err}");
    server.wait_empty().await;
    server.stop().await;
}

/// A config file that is not valid TOML, or has an unknown key: exit 2,
/// with the file named. An explicit `$TUBES_CONFIG` that does not exist is
/// an error too (exit 1), also naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_file_exits_2_naming_it() {
    let tmp = Tmp::new("bad-config");
    for (name, text) in [
        ("broken.toml", "server = \"http://127.0.0.1:1\n"),
        ("unknown key.toml", "servr = \"http://127.0.0.1:1\"\n"),
        ("wrong type.toml", "server = 8080\n"),
    ] {
        let config = tmp.join(name);
        std::fs::write(&config, text).expect("write");
        for sub in [
            &["send", "--path", "p", "-"][..],
            &["recv", "--path", "p"][..],
        ] {
            let mut cmd = tubes(&tmp, sub);
            cmd.env("TUBES_CONFIG", &config);
            let out = run(cmd, "tubes with a bad config").await;
            let err = fails_with(&out, 2, &format!("{} with {name}", sub[0]));
            assert!(
                err.contains(&format!("bad config file {}", config.display())),
                "{name}: the file is not named:\n{err}"
            );
        }
    }
    let missing = tmp.join("missing.toml");
    let mut cmd = tubes(&tmp, &["recv", "--path", "p"]);
    cmd.env("TUBES_CONFIG", &missing);
    let out = run(cmd, "tubes with a missing config").await;
    let err = fails_with(&out, 1, "a missing $TUBES_CONFIG");
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

// ---------------------------------------------------------------------
// 7: the progress bar, on a terminal and off it
// ---------------------------------------------------------------------

/// What a terminal shows once it has processed `raw`: lines with trailing
/// blanks removed. Knows carriage return, newline, backspace, erase in
/// line (`ESC[K`), cursor up/down/column and erase in display; other
/// escape sequences (colours, cursor visibility) change nothing visible.
fn screen(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut lines: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => {
                row += 1;
                if row == lines.len() {
                    lines.push(Vec::new());
                }
            }
            '\x08' => col = col.saturating_sub(1),
            '\x1b' => {
                if chars.next_if_eq(&'[').is_none() {
                    chars.next(); // a two-character escape
                    continue;
                }
                let mut params = String::new();
                let mut command = None;
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        command = Some(c);
                        break;
                    }
                    params.push(c);
                }
                let n: Option<usize> = params.split(';').next().and_then(|p| p.parse().ok());
                match command {
                    Some('K') => match n.unwrap_or(0) {
                        0 => lines[row].truncate(col),
                        1 => lines[row].iter_mut().take(col + 1).for_each(|x| *x = ' '),
                        _ => lines[row].clear(),
                    },
                    Some('A') => row = row.saturating_sub(n.unwrap_or(1).max(1)),
                    Some('B') => {
                        row += n.unwrap_or(1).max(1);
                        while lines.len() <= row {
                            lines.push(Vec::new());
                        }
                    }
                    Some('G') => col = n.unwrap_or(1).saturating_sub(1),
                    Some('J') if !params.starts_with('?') => {
                        lines[row].truncate(col);
                        lines.truncate(row + 1);
                    }
                    _ => {}
                }
            }
            c if c.is_control() => {}
            c => {
                let line = &mut lines[row];
                while line.len() < col {
                    line.push(' ');
                }
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    lines
        .into_iter()
        .map(|l| l.into_iter().collect::<String>().trim_end().to_owned())
        .collect()
}

/// The terminal model itself: a cleared bar leaves nothing, a bar left
/// behind shows, so the terminal test can tell the two apart.
#[test]
fn the_screen_model_tells_a_cleared_bar_from_one_left_behind() {
    let cleared = b"run:\r\nsent [=> ] 1 B/2 B 1 B/s ETA 1s\r\x1b[2Ksent 2 B in 1.0 s (2 B/s)\r\n";
    assert_eq!(screen(cleared), ["run:", "sent 2 B in 1.0 s (2 B/s)", ""]);
    let left = b"run:\r\nsent [=> ] 1 B/2 B 1 B/s ETA 1s\rsent 2 B in 1.0 s (2 B/s)\r\n";
    assert!(screen(left)[1].contains("ETA"), "{:?}", screen(left));
    let newline = b"sent [=> ] 1 B/2 B 1 B/s ETA 1s\r\nsent 2 B in 1.0 s (2 B/s)\r\n";
    assert_eq!(screen(newline).len(), 3);
    let up = b"one\r\ntwo\r\n\x1b[1A\x1b[2K\x1b[1A\x1b[Knew";
    assert_eq!(screen(up), ["new", "", ""]);
}

/// The bar frames in raw terminal output: the pieces between carriage
/// returns and newlines, escape sequences removed, that look like
/// `sent [===>   ] 1.50 MiB/24.00 MiB 30.00 MiB/s ETA 1s`.
fn frames(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut plain = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .split(['\r', '\n'])
        .filter(|f| f.starts_with("sent [") && f.contains(" ETA "))
        .map(|f| f.trim_end().to_owned())
        .collect()
}

/// `(sent, total)` of a frame: `("64.00 KiB", "24.00 MiB")`.
fn frame_sizes(frame: &str) -> (&str, &str) {
    let sizes = frame.split_once("] ").map(|(_, rest)| rest);
    let (sent, rest) = sizes
        .and_then(|rest| rest.split_once('/'))
        .unwrap_or_else(|| panic!("not a bar frame: {frame:?}"));
    // `24.00 MiB 30.06 MiB/s ETA 1s`: the total is the first two words.
    let end = rest
        .match_indices(' ')
        .nth(1)
        .map_or(rest.len(), |(i, _)| i);
    (sent, &rest[..end])
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `tubes send --path` under a pseudo-terminal (`script`), with a receiver
/// that reads nothing until the terminal shows a frame with progress:
/// the bar rendered (carriage returns, erase-line sequences, sizes, ETA),
/// then was cleared, and what the screen keeps is the two informational
/// lines and the summary. With `-q`, the terminal shows nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bar_renders_on_a_terminal_and_ends_clean() {
    let server = Server::start().await;
    let tmp = Tmp::new("tty");
    let size = 24 << 20;
    let (file, data) = tmp.random_file("big.bin", size);
    let base = format!("http://{}", server.addr);
    let command = format!(
        "{} send --path bar {} -s {}",
        sh_quote(env!("CARGO_BIN_EXE_tubes")),
        sh_quote(file.to_str().unwrap()),
        sh_quote(&base)
    );
    let mut script = Command::new("script");
    isolate(&mut script, &tmp);
    script
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env("SHELL", "/bin/sh");
    let mut script = spawn(script, "script (util-linux)");

    // Everything the terminal receives, as it arrives.
    let mut pty = script.stdout.take().expect("piped stdout");
    let (shown, mut watch) = tokio::sync::watch::channel(Vec::<u8>::new());
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n) = pty.read(&mut buf).await {
            if n == 0 {
                break;
            }
            shown.send_modify(|all| all.extend_from_slice(&buf[..n]));
        }
        shown.borrow().clone()
    });

    // The transfer starts, then stalls: this receiver reads nothing yet.
    let (_conn, response) =
        common::request(&server, Proto::Http11, "GET", "/bar", &[], common::empty()).await;
    assert_eq!(response.status(), 200);
    within(
        "the terminal to show a bar frame with progress",
        watch.wait_for(|raw| frames(raw).iter().any(|f| frame_sizes(f).0 != "0 B")),
    )
    .await
    .expect("the pty reader stopped before a frame with progress");
    let body = common::read_body(response).await.expect("the whole body");
    assert_same(&body, &data, "received from the terminal's sender");

    let status = within("script to end", script.wait()).await.expect("wait");
    let raw = within("the terminal output to close", reader)
        .await
        .expect("reader task");
    let shown = String::from_utf8_lossy(&raw).into_owned();
    assert!(
        status.success(),
        "tubes send under script: {status:?}\n{shown:?}"
    );

    // The bar was drawn, in place.
    let frames = frames(&raw);
    assert!(!frames.is_empty(), "no bar frame: {shown:?}");
    for frame in &frames {
        assert_eq!(frame_sizes(frame).1, "24.00 MiB", "{frame:?}");
    }
    assert!(shown.contains("ETA"), "{shown:?}");
    assert!(shown.contains('\r'), "no carriage return: {shown:?}");
    assert!(shown.contains("\x1b["), "no control sequence: {shown:?}");

    // And cleared: the screen keeps the informational lines and the
    // summary, nothing of the bar.
    let mut lines = screen(&raw);
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    let summary = lines.pop().unwrap_or_default();
    assert_summary(&summary, "sent", "24.00 MiB");
    let printed_before_bar: Vec<&str> = shown
        .split("sent [")
        .next()
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect();
    assert_eq!(
        lines, printed_before_bar,
        "the screen should hold the lines printed before the bar, then the summary;\nraw: {shown:?}"
    );
    assert_eq!(lines[0], "On the other side, run:");
    assert!(
        lines.contains(&format!("  tubes recv --path bar --server {base}")),
        "{lines:#?}"
    );

    // -q on a terminal: no bar, no lines, nothing.
    let command = format!(
        "{} send -q --path quiet {} -s {}",
        sh_quote(env!("CARGO_BIN_EXE_tubes")),
        sh_quote(file.to_str().unwrap()),
        sh_quote(&base)
    );
    let mut quiet = Command::new("script");
    isolate(&mut quiet, &tmp);
    quiet
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env("SHELL", "/bin/sh");
    let quiet = spawn(quiet, "script (util-linux)");
    let got = run(curl(&tmp, &[&server.url("/quiet")]), "curl").await;
    ok(&got, "curl");
    let quiet = finish(quiet, "script -q").await;
    ok(&quiet, "tubes send -q under script");
    assert_same(&got.stdout, &data, "received from the quiet sender");
    assert!(
        quiet.stdout.is_empty(),
        "tubes send -q wrote to the terminal: {:?}",
        String::from_utf8_lossy(&quiet.stdout)
    );
    server.wait_empty().await;
    server.stop().await;
}

/// The same send with stderr on a pipe: no bar, no carriage return, no
/// escape sequence; just the informational lines and the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bar_when_stderr_is_not_a_terminal() {
    let server = Server::start().await;
    let tmp = Tmp::new("no-tty");
    let (file, data) = tmp.random_file("big.bin", 24 << 20);
    let base = format!("http://{}", server.addr);
    let sender = spawn(
        tubes(
            &tmp,
            &["send", "--path", "bar", file.to_str().unwrap(), "-s", &base],
        ),
        "tubes send",
    );
    let got = run(curl(&tmp, &[&server.url("/bar")]), "curl").await;
    ok(&got, "curl");
    let sent = finish(sender, "tubes send").await;
    let log = ok(&sent, "tubes send");
    assert_same(&got.stdout, &data, "received");
    assert!(!log.contains("ETA"), "{log:?}");
    assert!(!log.contains('\r'), "{log:?}");
    assert!(!log.contains('\x1b'), "{log:?}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.first(), Some(&"On the other side, run:"), "{log:?}");
    assert!(
        lines.contains(&format!("  tubes recv --path bar --server {base}").as_str()),
        "{log:?}"
    );
    assert_summary(lines.last().unwrap_or(&""), "sent", "24.00 MiB");
    server.wait_empty().await;
    server.stop().await;
}

/// `--http3`: QUIC to the relay's HTTP/3 port, both ways, and an HTTP/3
/// sender meeting an HTTP/2 receiver under a code (end to end encrypted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_both_ways_and_mixed_with_h2() {
    let server = Server::start().await;
    let tmp = Tmp::new("h3");
    let (file, data) = tmp.random_file("h3.bin", FILE_SIZE);
    let h3 = format!("https://127.0.0.1:{}", server.h3_addr.port());
    let h2 = format!("https://127.0.0.1:{}", server.tls_addr.port());
    let file_arg = file.to_str().unwrap();

    let sender = spawn(
        tubes(
            &tmp,
            &["send", "--http3", "-k", "-s", &h3, "--path", "p", file_arg],
        ),
        "tubes send --http3",
    );
    server
        .wait_for("the h3 sender", |s| s.waiting_senders == 1)
        .await;
    let out = tmp.join("out.bin");
    let args = [
        "recv",
        "--http3",
        "-k",
        "-s",
        &h3,
        "--path",
        "p",
        "-o",
        out.to_str().unwrap(),
    ];
    let received = run(tubes(&tmp, &args), "tubes recv --http3").await;
    ok(&received, "tubes recv --http3");
    ok(
        &finish(sender, "tubes send --http3").await,
        "tubes send --http3",
    );
    assert_same(&read(&out), &data, "received over HTTP/3");

    // Encrypted: the HTTP/3 sender prints a code, an h2 receiver uses it.
    let mut child = spawn(
        tubes(&tmp, &["send", "--http3", "-k", "-s", &h3, file_arg]),
        "tubes send --http3 (code)",
    );
    let stderr_pipe = child.stderr.take().expect("stderr");
    let code = within("the code", async {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stderr_pipe).lines();
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if let Some(code) = line.strip_prefix("Code: ") {
                // Keep reading: a closed stderr would fail the sender.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return code.trim().to_owned();
            }
        }
        panic!("tubes send --http3 printed no code");
    })
    .await;
    let out2 = tmp.join("out2.bin");
    let args = ["recv", &code, "-k", "-s", &h2, "-o", out2.to_str().unwrap()];
    let received = run(tubes(&tmp, &args), "tubes recv (h2) of an h3 sender").await;
    ok(&received, "tubes recv (h2) of an h3 sender");
    let status = within("tubes send --http3 (code)", child.wait())
        .await
        .expect("sender status");
    assert!(status.success(), "tubes send --http3 failed: {status}");
    assert_same(&read(&out2), &data, "h3 sender to h2 receiver, encrypted");
    server.wait_empty().await;
    server.stop().await;
}
