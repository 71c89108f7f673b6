//! `tubes send` and `tubes recv` as users run them: the real binary as
//! child processes, against the real server started in-process (and, for
//! faults on the wire, a small TCP proxy of this file between the receiver
//! and the server). Large plain and encrypted streams, a passphrase with
//! two receivers, folders with odd names, links, modes and times, hostile
//! archives, wrong codes, altered and cut streams, unreachable relays and
//! files that must not be overwritten.
//!
//! Run with `cargo test --test client`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Pattern, Proto, Server};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// Bound for anything a test waits on, except the 1 GiB transfers.
const LIMIT: Duration = Duration::from_secs(30);
/// Bound for a 1 GiB transfer.
const BIG_LIMIT: Duration = Duration::from_secs(120);
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
/// Where the proxy alters or cuts the server-to-client bytes of a
/// connection: far past the response head, inside the data stream.
const FAULT_AT: u64 = 300_000;

/// A temporary folder with a random name, removed when dropped.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let dir =
            std::env::temp_dir().join(format!("tubes-client-{tag}-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).expect("create a temp dir");
        Tmp(dir)
    }

    fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.0.join(rel)
    }

    /// Creates a folder inside and returns its path.
    fn dir(&self, rel: &str) -> PathBuf {
        let dir = self.join(rel);
        std::fs::create_dir_all(&dir).expect("create a folder");
        dir
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `tubes` binary with a clean environment: no relay, secret or config
/// file from the user (HOME and XDG_CONFIG_HOME point into `tmp`), no HTTP
/// proxy, no colours, no logs; stdin empty, stdout and stderr captured.
fn tubes(tmp: &Tmp) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tubes"));
    for var in [
        "TUBES_SERVER",
        "TUBES_CONFIG",
        "TUBES_PASS",
        "TUBES_INSECURE",
        "RUST_LOG",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1")
        .env("NO_PROXY", "*")
        .env("HOME", tmp.join("home"))
        .env("XDG_CONFIG_HOME", tmp.join("home").join(".config"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.spawn().expect("start tubes")
}

/// Waits for a child to exit and collects its output; a child still running
/// after `limit` fails the test (and is killed when dropped).
async fn finish(child: Child, limit: Duration, what: &str) -> Output {
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.expect("wait for tubes"),
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_status(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit status; stderr:\n{}",
        text(&out.stderr)
    );
}

/// Checks the one-line error convention: the last line of stderr is
/// `tubes: ...` and mentions `needle`.
#[track_caller]
fn assert_error(stderr: &str, needle: &str, what: &str) {
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("tubes: ") && last.contains(needle),
        "{what}: expected a `tubes: ...{needle}...` line, stderr:\n{stderr}"
    );
}

/// Reads a pipe to its end in a task of its own.
fn collect(stderr: ChildStderr) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut stderr = stderr;
        let _ = stderr.read_to_end(&mut out).await;
        text(&out)
    })
}

/// A sender under a fresh code: the child, the code it printed, and the
/// rest of its stderr (read by a task until the child exits).
struct CodeSender {
    child: Child,
    code: String,
    log: JoinHandle<String>,
}

impl CodeSender {
    /// Starts `cmd` and reads its stderr until the `Code: ` line.
    async fn start(cmd: &mut Command) -> CodeSender {
        let mut child = spawn(cmd);
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Ends when the child closes its stderr, i.e. exits.
        let log = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut tx = Some(tx);
            let mut all = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(code) = line.strip_prefix("Code: ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(code.trim().to_owned());
                    }
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        match tokio::time::timeout(LIMIT, rx).await {
            Ok(Ok(code)) => CodeSender { child, code, log },
            _ => {
                let _ = child.start_kill();
                let log = tokio::time::timeout(LIMIT, log).await;
                panic!("the sender printed no `Code: ` line; stderr: {log:?}");
            }
        }
    }

    /// Waits for the sender to exit: its status and whole stderr.
    async fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for tubes send"),
            Err(_) => panic!("the sender did not finish within {limit:?}"),
        };
        let log = tokio::time::timeout(LIMIT, self.log)
            .await
            .expect("the sender's stderr closed")
            .expect("stderr reader");
        (status.code(), log)
    }
}

/// SHA-256 for the 1 GiB streams: ring's, which is assembly even in the
/// unoptimised test profile (about 1.5 GB/s here, where `sha2` built
/// without optimisation manages under 30 MB/s, too slow for 2 GiB hashed
/// per test within the time bound). Same digest as `sha2::Sha256`.
fn sha256() -> ring::digest::Context {
    ring::digest::Context::new(&ring::digest::SHA256)
}

/// Writes `total` bytes of [`Pattern`] to a child's stdin in 1 MiB pieces
/// and closes it; returns their SHA-256. The bytes are made and hashed on a
/// blocking thread, so the runtime hosting the server is never held up.
fn feed(stdin: ChildStdin, seed: u64, total: usize) -> JoinHandle<Result<Vec<u8>, String>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let made = tokio::task::spawn_blocking(move || {
        let mut pattern = Pattern::new(seed);
        let mut hash = sha256();
        for _ in 0..total / MIB {
            let mut piece = vec![0u8; MIB];
            pattern.fill(&mut piece);
            hash.update(&piece);
            if tx.blocking_send(piece).is_err() {
                break;
            }
        }
        hash.finish().as_ref().to_vec()
    });
    tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(piece) = rx.recv().await {
            stdin
                .write_all(&piece)
                .await
                .map_err(|e| format!("writing to the sender's stdin: {e}"))?;
        }
        drop(stdin);
        made.await.map_err(|e| e.to_string())
    })
}

/// Reads a child's stdout to its end: the byte count and SHA-256.
fn drain(stdout: ChildStdout) -> JoinHandle<(u64, Vec<u8>)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let hashed = tokio::task::spawn_blocking(move || {
        let mut hash = sha256();
        let mut count = 0u64;
        while let Some(piece) = rx.blocking_recv() {
            count += piece.len() as u64;
            hash.update(&piece);
        }
        (count, hash.finish().as_ref().to_vec())
    });
    tokio::spawn(async move {
        let mut stdout = stdout;
        loop {
            let mut piece = Vec::with_capacity(MIB);
            let mut end = false;
            while piece.len() < MIB {
                match stdout.read_buf(&mut piece).await {
                    Ok(0) | Err(_) => {
                        end = true;
                        break;
                    }
                    Ok(_) => {}
                }
            }
            if !piece.is_empty() && tx.send(piece).await.is_err() {
                break;
            }
            if end {
                break;
            }
        }
        drop(tx);
        hashed.await.expect("hashing thread")
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The names in a folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------
// A proxy that damages the server-to-client direction.

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Flips one bit of the first data byte at or after [`FAULT_AT`].
    Flip,
    /// Forwards [`FAULT_AT`] bytes, then closes both sides.
    Cut,
}

/// A TCP proxy on 127.0.0.1 in front of the server; `hits` counts the
/// connections it damaged, so a test knows its fault really happened.
struct Proxy {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet: every connection ends.
        self.task.abort();
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { return };
                        conns.spawn(forward(client, upstream, fault, Arc::clone(&counter)));
                    }
                    Some(_) = conns.join_next() => {}
                }
            }
        });
        Proxy { addr, hits, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Bytes that can belong to HTTP/1.1 chunked framing (hex sizes, CRLF): a
/// byte outside this set, past the response head, is body data.
fn maybe_framing(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b'\r' || b == b'\n'
}

async fn forward(client: TcpStream, upstream: SocketAddr, fault: Fault, hits: Arc<AtomicUsize>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
        let _ = server_tx.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = 0u64;
        let mut flipped = false;
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &mut buf[..n];
            match fault {
                Fault::Flip if !flipped => {
                    let start = FAULT_AT.saturating_sub(seen) as usize;
                    if start < n {
                        if let Some(i) = chunk[start..].iter().position(|&b| !maybe_framing(b)) {
                            chunk[start + i] ^= 0x01;
                            flipped = true;
                            hits.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                Fault::Flip => {}
                Fault::Cut => {
                    if seen + n as u64 >= FAULT_AT {
                        let keep = (FAULT_AT - seen) as usize;
                        let _ = client_tx.write_all(&chunk[..keep]).await;
                        hits.fetch_add(1, Ordering::SeqCst);
                        // Both connections close when this task ends.
                        return;
                    }
                }
            }
            seen += n as u64;
            if client_tx.write_all(chunk).await.is_err() {
                return;
            }
        }
        let _ = client_tx.shutdown().await;
    };
    tokio::pin!(up, down);
    let mut up_done = false;
    loop {
        tokio::select! {
            () = &mut up, if !up_done => up_done = true,
            () = &mut down => return,
        }
    }
}

// ---------------------------------------------------------------------
// 1 GiB streams.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_plain_through_a_path_arrives_intact() {
    let server = Server::start().await;
    let tmp = Tmp::new("plain-gib");
    let relay = server.url("");
    let path = common::path("gib");

    let mut receiver =
        spawn(tubes(&tmp).args(["recv", "--path", &path, "-o", "-", "-q", "-s", &relay]));
    let received = drain(receiver.stdout.take().expect("stdout"));
    let recv_log = collect(receiver.stderr.take().expect("stderr"));

    let mut sender = spawn(
        tubes(&tmp)
            .args(["send", "--path", &path, "-q", "-s", &relay])
            .stdin(Stdio::piped()),
    );
    let fed = feed(sender.stdin.take().expect("stdin"), 1, GIB);

    let sent = finish(sender, BIG_LIMIT, "send").await;
    assert_status(&sent, 0, "send");
    let sent_hash = tokio::time::timeout(LIMIT, fed)
        .await
        .expect("fed in time")
        .expect("feeder task")
        .expect("fed the sender");
    let status = tokio::time::timeout(BIG_LIMIT, receiver.wait())
        .await
        .expect("recv finished in time")
        .expect("wait for recv");
    let recv_log = tokio::time::timeout(LIMIT, recv_log)
        .await
        .expect("recv stderr closed")
        .expect("stderr reader");
    assert_eq!(status.code(), Some(0), "recv: stderr:\n{recv_log}");
    let (count, got_hash) = tokio::time::timeout(LIMIT, received)
        .await
        .expect("stdout read in time")
        .expect("stdout reader");
    assert_eq!(count, GIB as u64, "bytes received");
    assert_eq!(hex(&got_hash), hex(&sent_hash), "sha256 of the stream");
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_encrypted_under_a_code_arrives_intact() {
    let server = Server::start().await;
    let tmp = Tmp::new("code-gib");
    let relay = server.url("");

    let mut send_cmd = tubes(&tmp);
    send_cmd
        .args(["send", "-q", "-s", &relay])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut sender = CodeSender::start(&mut send_cmd).await;
    assert!(
        has_code_shape(&sender.code),
        "code {:?} is not like 4821-amber-lunar-velvet",
        sender.code
    );
    let fed = feed(sender.child.stdin.take().expect("stdin"), 2, GIB);

    let mut receiver =
        spawn(tubes(&tmp).args(["recv", &sender.code, "-o", "-", "-q", "-s", &relay]));
    let received = drain(receiver.stdout.take().expect("stdout"));
    let recv_log = collect(receiver.stderr.take().expect("stderr"));

    let (status, send_log) = sender.finish(BIG_LIMIT).await;
    assert_eq!(status, Some(0), "send: stderr:\n{send_log}");
    let sent_hash = tokio::time::timeout(LIMIT, fed)
        .await
        .expect("fed in time")
        .expect("feeder task")
        .expect("fed the sender");
    let status = tokio::time::timeout(BIG_LIMIT, receiver.wait())
        .await
        .expect("recv finished in time")
        .expect("wait for recv");
    let recv_log = tokio::time::timeout(LIMIT, recv_log)
        .await
        .expect("recv stderr closed")
        .expect("stderr reader");
    assert_eq!(status.code(), Some(0), "recv: stderr:\n{recv_log}");
    let (count, got_hash) = tokio::time::timeout(LIMIT, received)
        .await
        .expect("stdout read in time")
        .expect("stdout reader");
    assert_eq!(count, GIB as u64, "bytes received");
    assert_eq!(hex(&got_hash), hex(&sent_hash), "sha256 of the stream");
    server.wait_empty().await;
    server.stop().await;
}

/// `4821-amber-lunar-velvet`: a nameplate and three lowercase words.
fn has_code_shape(code: &str) -> bool {
    let parts: Vec<&str> = code.split('-').collect();
    parts.len() == 4
        && parts[0].len() == 4
        && parts[0].bytes().all(|b| b.is_ascii_digit())
        && parts[1..]
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
}

// ---------------------------------------------------------------------
// Passphrases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passphrase_reaches_two_receivers_and_a_wrong_one_is_refused() {
    let server = Server::start().await;
    let tmp = Tmp::new("pass");
    let relay = server.url("");
    let data = Pattern::new(3).bytes(3 * MIB + 12_345);
    let input = tmp.join("data.bin");
    std::fs::write(&input, &data).expect("write input");
    let path = common::path("pass");

    let receiver = || {
        spawn(tubes(&tmp).args([
            "recv", "--path", &path, "--pass", "pw", "-n", "2", "-o", "-", "-q", "-s", &relay,
        ]))
    };
    let first = receiver();
    let second = receiver();
    let sender = spawn(
        tubes(&tmp)
            .args(["send", "--path", &path, "--pass", "pw", "-n", "2", "-q"])
            .args(["-s", &relay])
            .arg(&input),
    );
    let sent = finish(sender, LIMIT, "send").await;
    assert_status(&sent, 0, "send");
    for (i, receiver) in [first, second].into_iter().enumerate() {
        let got = finish(receiver, LIMIT, "recv").await;
        assert_status(&got, 0, &format!("receiver {i}"));
        assert!(
            got.stdout == data[..],
            "receiver {i}: {} bytes, not the {} sent",
            got.stdout.len(),
            data.len()
        );
    }
    server.wait_empty().await;

    // The same with a wrong passphrase on the receiving side.
    let path = common::path("pass-wrong");
    let receiver = spawn(tubes(&tmp).args([
        "recv", "--path", &path, "--pass", "not-pw", "-o", "-", "-q", "-s", &relay,
    ]));
    let sender = spawn(
        tubes(&tmp)
            .args(["send", "--path", &path, "--pass", "pw", "-q", "-s", &relay])
            .arg(&input),
    );
    let got = finish(receiver, LIMIT, "recv with a wrong passphrase").await;
    assert_status(&got, 4, "recv with a wrong passphrase");
    assert_error(&text(&got.stderr), "wrong passphrase", "recv");
    assert!(
        got.stdout.is_empty(),
        "a wrong passphrase wrote {} bytes to stdout",
        got.stdout.len()
    );
    // Whatever the sender makes of it, it must end.
    let _ = finish(sender, LIMIT, "send to a wrong passphrase").await;
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// Folders and several files.

/// What a tree holds, as comparable values: every entry's type, file
/// contents (hashed), modes, file mtimes (seconds) and link targets.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        mtime: i64,
        sha256: String,
    },
    Link(PathBuf),
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    fn walk(root: &Path, path: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let meta = std::fs::symlink_metadata(path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        let rel = path
            .strip_prefix(root)
            .expect("inside the root")
            .to_path_buf();
        let mode = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = std::fs::read_link(path).expect("read link");
            out.insert(rel, Node::Link(target));
        } else if kind.is_dir() {
            out.insert(rel, Node::Dir { mode });
            for entry in std::fs::read_dir(path).expect("read dir") {
                walk(root, &entry.expect("entry").path(), out);
            }
        } else if kind.is_file() {
            let data = std::fs::read(path).expect("read file");
            out.insert(
                rel,
                Node::File {
                    mode,
                    mtime: meta.mtime(),
                    sha256: hex(&Sha256::digest(&data)),
                },
            );
        } else {
            panic!("unexpected file type at {}", path.display());
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn build_tree(root: &Path) {
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    fs::create_dir_all(root.join("a/b/c")).expect("mkdir");
    fs::create_dir(root.join("empty")).expect("mkdir");
    fs::create_dir(root.join("private")).expect("mkdir");
    fs::write(root.join("a/b/c/deep.txt"), "deep\n").expect("write");
    fs::write(root.join("with space.txt"), "space\n").expect("write");
    fs::write(root.join("ü €.txt"), "unicode\n").expect("write");
    fs::write(root.join("-leading-dash"), "dash\n").expect("write");
    fs::write(root.join("it's \"quoted\".txt"), "quotes\n").expect("write");
    // Longer than the 100 bytes of an old tar header's name field.
    fs::write(root.join("a/b").join("l".repeat(150)), "long\n").expect("write");
    fs::write(root.join("empty.bin"), "").expect("write");
    // Several sealed records' worth.
    fs::write(root.join("a/big.bin"), Pattern::new(4).bytes(300_000)).expect("write");
    fs::write(root.join("private/secret.txt"), "secret\n").expect("write");
    fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").expect("write");
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o751)).expect("chmod");
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o750)).expect("chmod");
    fs::write(root.join("a/old.txt"), "from 2001\n").expect("write");
    filetime::set_file_mtime(
        root.join("a/old.txt"),
        filetime::FileTime::from_unix_time(1_000_000_000, 0),
    )
    .expect("set mtime");
    symlink("a/b/c/deep.txt", root.join("link")).expect("symlink");
    symlink("../../empty", root.join("a/b/up-link")).expect("symlink");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_tree_arrives_whole_and_several_files_unpack_as_files() {
    let server = Server::start().await;
    let tmp = Tmp::new("tree");
    let relay = server.url("");
    let tree = tmp.dir("src").join("tree");
    build_tree(&tree);
    let out = tmp.join("out");

    let mut send_cmd = tubes(&tmp);
    send_cmd.args(["send", "-q", "-s", &relay]).arg(&tree);
    let sender = CodeSender::start(&mut send_cmd).await;
    let got = finish(
        spawn(
            tubes(&tmp)
                .args(["recv", &sender.code, "-q", "-s", &relay, "-o"])
                .arg(&out),
        ),
        LIMIT,
        "recv",
    )
    .await;
    assert_status(&got, 0, "recv of a folder");
    let (status, log) = sender.finish(LIMIT).await;
    assert_eq!(status, Some(0), "send of a folder: stderr:\n{log}");
    // Only the folder itself: no staging folder left beside it.
    assert_eq!(names(&out), ["tree"]);
    let want = snapshot(&tree);
    assert!(want.len() >= 18, "the source tree is incomplete: {want:#?}");
    assert_eq!(snapshot(&out.join("tree")), want);
    server.wait_empty().await;

    // Two files at once: an archive of both, unpacked as two files.
    let multi = tmp.dir("multi");
    std::fs::write(multi.join("a.txt"), "first file\n").expect("write");
    std::fs::write(multi.join("b.txt"), "second file\n").expect("write");
    let out = tmp.join("out-multi");
    let mut send_cmd = tubes(&tmp);
    send_cmd
        .args(["send", "-q", "-s", &relay])
        .arg(multi.join("a.txt"))
        .arg(multi.join("b.txt"));
    let sender = CodeSender::start(&mut send_cmd).await;
    let got = finish(
        spawn(
            tubes(&tmp)
                .args(["recv", &sender.code, "-q", "-s", &relay, "-o"])
                .arg(&out),
        ),
        LIMIT,
        "recv",
    )
    .await;
    assert_status(&got, 0, "recv of two files");
    let (status, log) = sender.finish(LIMIT).await;
    assert_eq!(status, Some(0), "send of two files: stderr:\n{log}");
    assert_eq!(names(&out), ["a.txt", "b.txt"]);
    assert_eq!(
        std::fs::read_to_string(out.join("a.txt")).expect("a.txt"),
        "first file\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("b.txt")).expect("b.txt"),
        "second file\n"
    );
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// Hostile and wrong peers.

/// A tar archive with a harmless entry, then one named `../escape.txt`
/// (written straight into the header: the tar crate's setters refuse it).
fn hostile_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut ok = tar::Header::new_gnu();
    ok.set_size(3);
    ok.set_mode(0o644);
    ok.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut ok, "ok.txt", &b"ok\n"[..])
        .expect("append ok.txt");
    let data = b"escaped!\n";
    let mut evil = tar::Header::new_gnu();
    let name = b"../escape.txt";
    evil.as_old_mut().name[..name.len()].copy_from_slice(name);
    evil.set_size(data.len() as u64);
    evil.set_mode(0o644);
    evil.set_entry_type(tar::EntryType::Regular);
    evil.set_cksum();
    builder.append(&evil, &data[..]).expect("append the entry");
    builder.into_inner().expect("tar")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_climbing_archive_entry_is_refused_and_nothing_is_written() {
    let server = Server::start().await;
    let tmp = Tmp::new("hostile");
    let relay = server.url("");
    let out = tmp.dir("out");
    let path = common::path("hostile");

    let receiver = spawn(
        tubes(&tmp)
            .args(["recv", "--path", &path, "-q", "-s", &relay, "-o"])
            .arg(&out),
    );
    let (conn, _log) = common::request(
        &server,
        Proto::Http11,
        "PUT",
        &path,
        &[("content-type", "application/x-tar")],
        common::full(hostile_tar()),
    )
    .await;
    let got = finish(receiver, LIMIT, "recv of a hostile archive").await;
    assert_status(&got, 4, "recv of a hostile archive");
    assert_error(&text(&got.stderr), "refused archive entry", "recv");
    assert_eq!(names(&out), Vec::<String>::new(), "the output folder");
    assert!(
        !tmp.join("escape.txt").exists(),
        "the entry escaped the output folder"
    );
    drop(conn);
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_code_fails_on_both_sides() {
    let server = Server::start().await;
    let tmp = Tmp::new("wrong-code");
    let relay = server.url("");
    let input = tmp.join("note.txt");
    std::fs::write(&input, "for the right receiver only\n").expect("write");
    let out = tmp.dir("out");

    let mut send_cmd = tubes(&tmp);
    send_cmd.args(["send", "-q", "-s", &relay]).arg(&input);
    let sender = CodeSender::start(&mut send_cmd).await;
    let nameplate = sender.code.split('-').next().expect("nameplate");
    let wrong = format!("{nameplate}-wrongly-typed-words");
    assert_ne!(wrong, sender.code);
    let got = finish(
        spawn(
            tubes(&tmp)
                .args(["recv", &wrong, "-q", "-s", &relay, "-o"])
                .arg(&out),
        ),
        LIMIT,
        "recv with a wrong code",
    )
    .await;
    assert_status(&got, 4, "recv with a wrong code");
    assert_error(&text(&got.stderr), "wrong code", "recv");
    let (status, log) = sender.finish(LIMIT).await;
    assert_eq!(status, Some(4), "send to a wrong code: stderr:\n{log}");
    assert_error(&log, "wrong code", "send");
    assert_eq!(names(&out), Vec::<String>::new(), "the output folder");
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// Damage on the wire.

/// Sends `data` as a file under a code (directly to the server) and
/// receives it through `proxy` into `out`; returns the receiver's output.
async fn code_transfer_through(
    tmp: &Tmp,
    server: &Server,
    proxy: &Proxy,
    data: &[u8],
    out: &Path,
) -> Output {
    let input = tmp.join("data.bin");
    std::fs::write(&input, data).expect("write input");
    let mut send_cmd = tubes(tmp);
    send_cmd
        .args(["send", "-q", "-s", &server.url("")])
        .arg(&input);
    let sender = CodeSender::start(&mut send_cmd).await;
    let got = finish(
        spawn(
            tubes(tmp)
                .args(["recv", &sender.code, "-q", "--http1", "-s", &proxy.url()])
                .arg("-o")
                .arg(out),
        ),
        LIMIT,
        "recv through the proxy",
    )
    .await;
    // Whatever the sender makes of a receiver that failed, it must end.
    let _ = sender.finish(LIMIT).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_byte_is_caught_and_leaves_no_file() {
    let server = Server::start().await;
    let tmp = Tmp::new("flip");
    let proxy = Proxy::start(server.addr, Fault::Flip).await;
    let out = tmp.dir("out");
    let data = Pattern::new(5).bytes(4 * MIB);

    let got = code_transfer_through(&tmp, &server, &proxy, &data, &out).await;
    assert_eq!(proxy.hits(), 1, "the proxy altered one connection");
    assert_status(&got, 4, "recv of an altered stream");
    assert_error(&text(&got.stderr), "altered", "recv");
    assert_eq!(names(&out), Vec::<String>::new(), "the output folder");
    drop(proxy);
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_is_reported_and_leaves_no_partial_file() {
    let server = Server::start().await;
    let tmp = Tmp::new("cut");
    let data = Pattern::new(6).bytes(4 * MIB);

    // Plain, to a path, from a file: the receiver knows the length.
    let proxy = Proxy::start(server.addr, Fault::Cut).await;
    let out = tmp.dir("out-plain");
    let input = tmp.join("known-size.bin");
    std::fs::write(&input, &data).expect("write input");
    let path = common::path("cut");
    let receiver = spawn(
        tubes(&tmp)
            .args(["recv", "--path", &path, "-q", "--http1", "-s", &proxy.url()])
            .arg("-o")
            .arg(&out),
    );
    let sender = spawn(
        tubes(&tmp)
            .args(["send", "--path", &path, "-q", "-s", &server.url("")])
            .arg(&input),
    );
    let got = finish(receiver, LIMIT, "recv of a cut plain stream").await;
    let _ = finish(sender, LIMIT, "send to a cut receiver").await;
    assert_eq!(proxy.hits(), 1, "the proxy cut one connection");
    assert_status(&got, 5, "recv of a cut plain stream");
    assert_error(&text(&got.stderr), "cut short", "recv (plain)");
    assert_eq!(names(&out), Vec::<String>::new(), "the output folder");
    drop(proxy);
    server.wait_empty().await;

    // Encrypted, under a code.
    let proxy = Proxy::start(server.addr, Fault::Cut).await;
    let out = tmp.dir("out-code");
    let got = code_transfer_through(&tmp, &server, &proxy, &data, &out).await;
    assert_eq!(proxy.hits(), 1, "the proxy cut one connection");
    assert_status(&got, 5, "recv of a cut encrypted stream");
    assert_error(&text(&got.stderr), "cut short", "recv (encrypted)");
    assert_eq!(names(&out), Vec::<String>::new(), "the output folder");
    drop(proxy);
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// No relay.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_missing_relay_is_reported() {
    let tmp = Tmp::new("no-relay");
    let runs: [&[&str]; 4] = [
        &["send", "--path", "p"],
        &["send"],
        &["recv", "--path", "p"],
        &["recv", "4821-amber-lunar-velvet"],
    ];
    for args in runs {
        let got = finish(
            spawn(tubes(&tmp).args(args).args(["-q", "-s", "127.0.0.1:1"])),
            LIMIT,
            "tubes against a closed port",
        )
        .await;
        assert_status(&got, 3, &format!("{args:?} -s 127.0.0.1:1"));
        assert_error(&text(&got.stderr), "cannot reach the relay", "unreachable");
    }

    // No --server, no TUBES_SERVER, and an empty home without a config file.
    tmp.dir("home");
    for args in runs {
        let got = finish(
            spawn(tubes(&tmp).args(args)),
            LIMIT,
            "tubes without a relay",
        )
        .await;
        assert_status(&got, 2, &format!("{args:?} without a relay"));
        assert_error(&text(&got.stderr), "--server", "no relay");
    }
}

// ---------------------------------------------------------------------
// Existing files.

/// Sends `content` as a file named `note.txt` under a code and runs
/// `tubes recv CODE` with `extra` arguments in `cwd`.
async fn receive_note(
    tmp: &Tmp,
    relay: &str,
    content: &str,
    cwd: &Path,
    extra: &[&std::ffi::OsStr],
) -> Output {
    let src = tmp.dir("src");
    std::fs::write(src.join("note.txt"), content).expect("write");
    let mut send_cmd = tubes(tmp);
    send_cmd
        .args(["send", "-q", "-s", relay])
        .arg(src.join("note.txt"));
    let sender = CodeSender::start(&mut send_cmd).await;
    let got = finish(
        spawn(
            tubes(tmp)
                .args(["recv", &sender.code, "-q", "-s", relay])
                .args(extra)
                .current_dir(cwd),
        ),
        LIMIT,
        "recv",
    )
    .await;
    let _ = sender.finish(LIMIT).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_file_is_replaced_only_with_force() {
    let server = Server::start().await;
    let tmp = Tmp::new("exists");
    let relay = server.url("");
    let here = tmp.dir("here");
    let note = here.join("note.txt");
    std::fs::write(&note, "mine\n").expect("write");

    let got = receive_note(&tmp, &relay, "theirs\n", &here, &[]).await;
    assert_status(&got, 1, "recv onto an existing file");
    assert_error(&text(&got.stderr), "--force", "recv");
    assert_eq!(std::fs::read_to_string(&note).expect("note"), "mine\n");
    assert_eq!(names(&here), ["note.txt"], "nothing else left behind");
    server.wait_empty().await;

    let got = receive_note(&tmp, &relay, "theirs\n", &here, &["-f".as_ref()]).await;
    assert_status(&got, 0, "recv -f onto an existing file");
    assert_eq!(std::fs::read_to_string(&note).expect("note"), "theirs\n");
    assert_eq!(names(&here), ["note.txt"], "nothing else left behind");
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_file_in_the_output_folder_is_replaced_only_with_force() {
    let server = Server::start().await;
    let tmp = Tmp::new("exists-dir");
    let relay = server.url("");
    let out = tmp.dir("out");
    let note = out.join("note.txt");
    std::fs::write(&note, "mine\n").expect("write");

    let got = receive_note(
        &tmp,
        &relay,
        "theirs\n",
        &tmp.0,
        &["-o".as_ref(), out.as_os_str()],
    )
    .await;
    assert_eq!(std::fs::read_to_string(&note).expect("note"), "mine\n");
    assert_status(&got, 1, "recv -o DIR onto an existing file");
    assert_error(&text(&got.stderr), "--force", "recv");
    assert_eq!(names(&out), ["note.txt"], "nothing else left behind");
    server.wait_empty().await;

    let got = receive_note(
        &tmp,
        &relay,
        "theirs\n",
        &tmp.0,
        &["-o".as_ref(), out.as_os_str(), "-f".as_ref()],
    )
    .await;
    assert_status(&got, 0, "recv -o DIR -f onto an existing file");
    assert_eq!(std::fs::read_to_string(&note).expect("note"), "theirs\n");
    server.wait_empty().await;
    server.stop().await;
}
