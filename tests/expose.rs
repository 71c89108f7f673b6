//! `tubes expose` as users run it: the real binary as child processes
//! around the real server started in-process, a local HTTP server of the
//! test's own (hyper) and OpenSSH behind the exposed host, curl, ssh and
//! a WebSocket client (tungstenite) in front of the relay.
//!
//! - an HTTP server exposed by name, fetched through the relay by path
//!   and by sub-domain: 100 requests in flight at once, a 32 MiB streamed
//!   response (SHA-256), a response read while it is being written, a
//!   streamed upload echoed back, WebSocket echoes (HTTP/1.1 upgrade);
//! - sshd exposed with `--tcp`, reached with `ssh` through `tubes tunnel
//!   client --exposed` as a ProxyCommand and on a local port (two
//!   sessions at once, an 8 MiB scp);
//! - the control connection cut: the host comes back and keeps its name,
//!   a request made meanwhile waits for it and is served, and a wrong
//!   secret can take the name neither while it is held nor during the
//!   grace period; after the grace period the name is free.
//!
//! Needs Debian's `curl`, `openssh-server` and `openssh-client`
//! (`scripts/test.sh` installs them); a missing tool fails the test with
//! the package's name. Run with `cargo test --test expose`;
//! `TEST_CHILD_LOG=tubes=debug` puts the children's debug logs into the
//! failure messages.

mod children;
mod common;

use std::convert::Infallible;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use children::*;
use common::{Pattern, Server};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tubes::relay::names::NamesConfig;
use tubes::relay::RelayConfig;
use tubes::transport::expose::protocol::{FromHost, ToHost};

/// Bound for anything a test waits on.
const LIMIT: Duration = Duration::from_secs(30);
/// Requests in flight at once through the relay.
const PARALLEL: usize = 100;
/// The streamed response.
const BIG: usize = 32 << 20;
/// The sub-domain routing domain of the test relays.
const DOMAIN: &str = "relay.test";
const SSHD: &str = "/usr/sbin/sshd";

/// The output of a command that must succeed.
#[track_caller]
fn success(result: Result<Output, String>, what: &str, context: &dyn Fn() -> String) -> Vec<u8> {
    let out = result.unwrap_or_else(|e| panic!("{what}: {e}\n{}", context()));
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}\n{}",
        out.status,
        text(&out.stdout).chars().take(2000).collect::<String>(),
        text(&out.stderr),
        context()
    );
    out.stdout
}

fn curl(tmp: &Tmp) -> Command {
    let mut cmd = command(need("curl", "curl"), tmp);
    cmd.args(["-sS", "--max-time", "60"]);
    cmd
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// A relay with sub-domain routing under [`DOMAIN`] and names as given.
async fn relay(names: NamesConfig) -> Server {
    Server::start_with(RelayConfig {
        names: NamesConfig {
            domain: Some(DOMAIN.into()),
            ..names
        },
        ..RelayConfig::default()
    })
    .await
}

/// `tubes expose ARGS... -s RELAY`, once it has registered; with the
/// secret it printed when `secret` (the relay made one).
async fn expose(tmp: &Tmp, relay: &str, args: &[&str], secret: bool) -> (Proc, Option<String>) {
    let mut all = vec!["expose"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-s", relay]);
    let host = Proc::start(tubes(tmp, &all), "tubes expose");
    host.line_with("Exposed as '").await;
    let secret = match secret {
        true => Some(
            host.expect_line("the secret", |l| {
                let l = l.trim();
                (l.len() == 32 && l.bytes().all(|b| b.is_ascii_hexdigit())).then(|| l.to_owned())
            })
            .await,
        ),
        false => None,
    };
    (host, secret)
}

// ---------------------------------------------------------------------
// The local HTTP server behind the exposed host.

type LocalBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What the local server's handlers share with the test.
struct LocalState {
    /// Requests of `/n/*` in flight now, and the most ever at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// How many `/n/*` requests have arrived (they wait for all).
    arrived: watch::Sender<usize>,
    /// Lets `/stream` send its second part.
    release: Notify,
    big: Bytes,
}

struct Local {
    addr: SocketAddr,
    state: Arc<LocalState>,
    _task: Task,
}

fn full(text: impl Into<Bytes>) -> LocalBody {
    Full::new(text.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// Serves the local routes on 127.0.0.1:0 (HTTP/1.1, with upgrades):
///
/// - `/hello`: what the request looked like here (path, `Host`, and the
///   `X-Forwarded-Prefix` and `X-Forwarded-Proto` the relay added);
/// - `/n/I`: waits until [`PARALLEL`] of these are in flight at once (or
///   10 s), then answers `n=I`;
/// - `/big`: [`BIG`] bytes, streamed in 64 KiB chunks, no length;
/// - `/stream`: `first`, then `second` once the test releases it;
/// - `/echo`: the request body, streamed back as it comes;
/// - `/ws`: a WebSocket that echoes every message.
async fn local_server() -> Local {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let state = Arc::new(LocalState {
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        arrived: watch::channel(0).0,
        release: Notify::new(),
        big: Pattern::new(7).bytes(BIG),
    });
    let shared = Arc::clone(&state);
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            while conns.try_join_next().is_some() {}
            let state = Arc::clone(&shared);
            conns.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(route(req, state).await) }
                });
                // Half-closes allowed: a client may end its direction and
                // still want the reply (hyper closes at once otherwise).
                let _ = hyper::server::conn::http1::Builder::new()
                    .half_close(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Local {
        addr,
        state,
        _task: Task(task),
    }
}

async fn route(mut req: Request<Incoming>, state: Arc<LocalState>) -> Response<LocalBody> {
    let path = req.uri().path().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    if path == "/hello" {
        let target = req.uri().path_and_query().map_or("", |p| p.as_str());
        let body = format!(
            "hello path={target} host={} prefix={} proto={}\n",
            header("host"),
            header("x-forwarded-prefix"),
            header("x-forwarded-proto"),
        );
        return Response::new(full(body));
    }
    if let Some(i) = path.strip_prefix("/n/") {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        state.arrived.send_modify(|n| *n += 1);
        let mut arrived = state.arrived.subscribe();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            arrived.wait_for(|n| *n >= PARALLEL),
        )
        .await;
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
        return Response::new(full(format!("n={i}\n")));
    }
    if path == "/big" {
        let big = state.big.clone();
        let chunks = futures_util::stream::iter(
            (0..big.len())
                .step_by(64 * 1024)
                .map(move |at| Ok(Frame::data(big.slice(at..(at + 64 * 1024).min(big.len()))))),
        );
        return Response::new(StreamBody::new(chunks).boxed_unsync());
    }
    if path == "/stream" {
        let parts = futures_util::stream::unfold(0, move |step| {
            let state = Arc::clone(&state);
            async move {
                match step {
                    0 => Some((Ok(Frame::data(Bytes::from("first\n"))), 1)),
                    1 => {
                        let _ = tokio::time::timeout(LIMIT, state.release.notified()).await;
                        Some((Ok(Frame::data(Bytes::from("second\n"))), 2))
                    }
                    _ => None,
                }
            }
        });
        return Response::new(StreamBody::new(parts).boxed_unsync());
    }
    if path == "/echo" {
        return Response::new(req.into_body().map_err(Into::into).boxed_unsync());
    }
    if path == "/ws" {
        let key = req
            .headers()
            .get(http::header::SEC_WEBSOCKET_KEY)
            .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()));
        let Some(accept) = key else {
            let mut response = Response::new(full("not a websocket\n"));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        };
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            while let Some(Ok(message)) = socket.next().await {
                if message.is_close() {
                    break;
                }
                if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err()
                {
                    break;
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(full(""))
            .expect("101");
    }
    let mut response = Response::new(full("no such page\n"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// A WebSocket through the relay to the local `/ws`, which must echo a
/// text and a binary message.
async fn websocket_echo(url: &str, host: Option<&str>) -> Result<(), String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(host) = host {
        let value = host.parse().map_err(|e| format!("{e}"))?;
        request.headers_mut().insert("host", value);
    }
    let (mut socket, _) = tokio::time::timeout(LIMIT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| "the handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let binary = Pattern::new(3).bytes(100_000);
    let sent = [
        Message::text("hello through the relay"),
        Message::Binary(binary),
    ];
    for message in &sent {
        socket
            .send(message.clone())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let echo = tokio::time::timeout(LIMIT, socket.next())
            .await
            .map_err(|_| "no echo in time".to_string())?;
        match echo {
            Some(Ok(echo)) if &echo == message => {}
            other => return Err(format!("expected the echo of {message:?}, got {other:?}")),
        }
    }
    socket
        .close(None)
        .await
        .map_err(|e| format!("close: {e}"))?;
    Ok(())
}

// ---------------------------------------------------------------------
// HTTP through the relay.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_http_server_is_reached_through_the_relay() {
    let server = relay(NamesConfig::default()).await;
    let local = local_server().await;
    let tmp = Tmp::new("http");
    let base = server.url("");
    let port = local.addr.port().to_string();
    let (mut host, secret) = expose(
        &tmp,
        &base,
        &[&port, "--name", "web", "--host", "127.0.0.1"],
        true,
    )
    .await;
    let context = || host.log();
    let printed = host.line_with("/-/host/web/").await;
    assert!(
        printed.starts_with(&format!("{base}/-/host/web/")),
        "{printed}"
    );
    host.line_with(&format!("http://web.{DOMAIN}:{}/", server.addr.port()))
        .await;
    assert!(secret.is_some(), "no secret printed\n{}", context());
    server
        .wait_for("the host registered", |s| s.names_held == 1)
        .await;

    // Path routing: the local server sees the path below the prefix.
    let out = run(
        {
            let mut c = curl(&tmp);
            c.arg(format!("{base}/-/host/web/hello?x=1"));
            c
        },
        LIMIT,
    )
    .await;
    let hello = text(&success(out, "curl /-/host/web/hello", &context));
    assert_eq!(
        hello,
        format!(
            "hello path=/hello?x=1 host={} prefix=/-/host/web proto=http\n",
            server.addr
        )
    );
    // Sub-domain routing, over HTTP/1.1 and h2c.
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let mut c = curl(&tmp);
        c.args([version, "-H", &format!("Host: web.{DOMAIN}")])
            .arg(format!("{base}/hello"));
        let hello = text(&success(run(c, LIMIT).await, version, &context));
        assert_eq!(
            hello,
            format!("hello path=/hello host=web.{DOMAIN} prefix=- proto=http\n"),
            "{version}"
        );
    }
    // The bare name redirects to its folder; unknown names are 404s.
    let mut c = curl(&tmp);
    c.args(["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"])
        .arg(format!("{base}/-/host/web?q=1"));
    let redirect = text(&success(run(c, LIMIT).await, "redirect", &context));
    assert_eq!(redirect, format!("308 {base}/-/host/web/?q=1"));
    let mut c = curl(&tmp);
    c.args(["-w", "%{http_code}"])
        .arg(format!("{base}/-/host/nobody/hello"));
    let missing = text(&success(run(c, LIMIT).await, "unknown name", &context));
    assert_eq!(missing, "[ERROR] No host is registered as 'nobody'.\n404");
    // The rest of /-/ is reserved: no Piping sender there.
    let mut c = curl(&tmp);
    c.args(["-w", "%{http_code}", "--data-binary", "x"])
        .arg(format!("{base}/-/mine"));
    let refused = text(&success(run(c, LIMIT).await, "POST /-/mine", &context));
    assert_eq!(
        refused,
        "[ERROR] Cannot send to the reserved path '/-/mine'. (e.g. '/mypath123')\n400"
    );

    // 100 requests in flight at once, each on its own channel.
    let dir = tmp.join("parallel");
    std::fs::create_dir(&dir).expect("mkdir");
    let mut c = curl(&tmp);
    c.args(["-Z", "--parallel-immediate", "--parallel-max"])
        .arg(PARALLEL.to_string())
        .arg("-o")
        .arg(dir.join("n#1"))
        .arg(format!("{base}/-/host/web/n/[1-{PARALLEL}]"));
    let started = std::time::Instant::now();
    success(run(c, LIMIT).await, "100 parallel curls", &context);
    for i in 1..=PARALLEL {
        let got = std::fs::read_to_string(dir.join(format!("n{i}"))).unwrap_or_default();
        assert_eq!(got, format!("n={i}\n"), "response {i}\n{}", context());
    }
    let most = local.state.max_in_flight.load(Ordering::SeqCst);
    assert_eq!(
        most,
        PARALLEL,
        "requests in flight at once at the local server\n{}",
        context()
    );
    eprintln!(
        "{PARALLEL} parallel requests through the relay in {:.2?}",
        started.elapsed()
    );
    server
        .wait_for("the parallel channels closed", |s| s.name_channels == 0)
        .await;

    // A large streamed response, over HTTP/1.1 and h2c.
    let expected = sha256(&local.state.big);
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let started = std::time::Instant::now();
        let mut c = curl(&tmp);
        c.arg(version).arg(format!("{base}/-/host/web/big"));
        let body = success(run(c, LIMIT).await, "curl /big", &context);
        assert_eq!(body.len(), BIG, "{version}: length of /big");
        assert!(sha256(&body) == expected, "{version}: /big differs");
        eprintln!(
            "{BIG} bytes streamed {version} in {:.2?}",
            started.elapsed()
        );
    }

    // A response reaches the client while the local server is still
    // writing it: the second part is only written once the first arrived.
    let mut c = curl(&tmp);
    c.arg("-N")
        .arg(format!("{base}/-/host/web/stream"))
        .stdout(Stdio::piped());
    let (mut child, _group) = spawn_group(&mut c, "curl /stream");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    let read = tokio::time::timeout(LIMIT, out.read_line(&mut first)).await;
    assert!(
        matches!(read, Ok(Ok(_))) && first == "first\n",
        "the first part of /stream: {read:?} {first:?}\n{}",
        context()
    );
    local.state.release.notify_one();
    let mut rest = String::new();
    let read = tokio::time::timeout(LIMIT, out.read_to_string(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(_))) && rest == "second\n",
        "the rest of /stream: {read:?} {rest:?}"
    );
    let status = tokio::time::timeout(LIMIT, child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "{status:?}");

    // A streamed upload, echoed back as it comes.
    let upload = Pattern::new(11).bytes(8 << 20);
    let file = tmp.join("upload.bin");
    std::fs::write(&file, &upload).expect("write the upload");
    let mut c = curl(&tmp);
    c.arg("-T")
        .arg(&file)
        .arg(format!("{base}/-/host/web/echo"));
    let echoed = success(run(c, LIMIT).await, "curl -T /echo", &context);
    assert!(
        echoed.len() == upload.len() && echoed == upload[..],
        "the echo of 8 MiB ({} bytes came back)",
        echoed.len()
    );

    // WebSocket echoes through the exposed server, by path and sub-domain.
    let ws = format!("ws://{}/-/host/web/ws", server.addr);
    if let Err(e) = websocket_echo(&ws, None).await {
        panic!("WebSocket by path: {e}\n{}", context());
    }
    let ws = format!("ws://{}/ws", server.addr);
    if let Err(e) = websocket_echo(&ws, Some(&format!("web.{DOMAIN}"))).await {
        panic!("WebSocket by sub-domain: {e}\n{}", context());
    }

    host.kill().await;
    server
        .wait_for("the host gone, every channel closed", |s| {
            s.names_held == 0 && s.name_channels == 0
        })
        .await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// OpenSSH through an exposed TCP port.

/// OpenSSH's sshd on 127.0.0.1:0, one `sshd -i` per connection, with keys
/// and a config of its own in a temp folder (as in tests/tunnel.rs).
struct Sshd {
    addr: SocketAddr,
    user: String,
    key: PathBuf,
    log: Arc<Mutex<String>>,
    _accept: Task,
}

impl Sshd {
    async fn start(tmp: &Tmp) -> Sshd {
        need(SSHD, "openssh-server");
        let keygen = need("ssh-keygen", "openssh-client");
        need("ssh", "openssh-client");
        need("scp", "openssh-client");
        let mut id = Command::new("id");
        id.arg("-un").kill_on_drop(true);
        let id = run(id, LIMIT).await.expect("id -un");
        let user = text(&id.stdout).trim().to_owned();
        assert!(!user.is_empty(), "no user name from `id -un`");
        if !Path::new("/run/sshd").is_dir() {
            std::fs::create_dir_all("/run/sshd").unwrap_or_else(|e| {
                panic!("sshd needs the folder /run/sshd and it cannot be made ({e}): create it as root")
            });
        }
        let dir = tmp.join("sshd");
        std::fs::create_dir(&dir).expect("create the sshd folder");
        for name in ["host_key", "client_key"] {
            let mut cmd = Command::new(&keygen);
            cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "tubes-test", "-f"])
                .arg(dir.join(name))
                .stdin(Stdio::null())
                .kill_on_drop(true);
            let out = run(cmd, LIMIT).await.expect("ssh-keygen");
            assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))
            .expect("authorized_keys");
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "HostKey \"{}\"\nAuthorizedKeysFile \"{}\"\nPermitRootLogin yes\nStrictModes no\n\
                 UsePAM no\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPidFile none\nSubsystem sftp internal-sftp\n\
                 LogLevel ERROR\n",
                dir.join("host_key").display(),
                dir.join("authorized_keys").display(),
            ),
        )
        .expect("write sshd_config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sshd");
        let addr = listener.local_addr().expect("sshd address");
        let log = Arc::new(Mutex::new(String::new()));
        let accept = tokio::spawn(serve_sshd(listener, config, Arc::clone(&log)));
        Sshd {
            addr,
            user,
            key: dir.join("client_key"),
            log,
            _accept: Task(accept),
        }
    }

    fn log(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        format!("--- sshd stderr:\n{log}")
    }

    fn options(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-F".into(), "/dev/null".into(), "-i".into()];
        args.push(self.key.clone().into());
        for option in [
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "LogLevel=ERROR",
        ] {
            args.push("-o".into());
            args.push(option.into());
        }
        args
    }
}

/// Runs `sshd -i` on each connection accepted; ends with its task.
async fn serve_sshd(listener: TcpListener, config: PathBuf, log: Arc<Mutex<String>>) {
    let mut sessions = JoinSet::new();
    let note = |log: &Mutex<String>, what: String| {
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(&what);
    };
    while let Ok((stream, _)) = listener.accept().await {
        while sessions.try_join_next().is_some() {}
        let fds = stream.into_std().and_then(|s| {
            s.set_nonblocking(false)?;
            let input = OwnedFd::from(s);
            let output = input.try_clone()?;
            Ok((input, output))
        });
        let Ok((input, output)) = fds else {
            note(&log, "test: cannot hand a socket to sshd\n".into());
            continue;
        };
        let mut cmd = Command::new(SSHD);
        cmd.args(["-i", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::from(input))
            .stdout(Stdio::from(output))
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(mut child) => {
                let log = Arc::clone(&log);
                sessions.spawn(async move {
                    let mut err = Vec::new();
                    if let Some(mut stderr) = child.stderr.take() {
                        let _ = stderr.read_to_end(&mut err).await;
                    }
                    let status = child.wait().await;
                    note(&log, format!("{}[sshd: {status:?}]\n", text(&err)));
                });
            }
            Err(e) => note(&log, format!("test: cannot start sshd: {e}\n")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_exposed_with_tcp_is_reached_by_ssh() {
    let server = relay(NamesConfig::default()).await;
    let tmp = Tmp::new("ssh");
    let sshd = Sshd::start(&tmp).await;
    let base = server.url("");
    let port = sshd.addr.port().to_string();
    let (mut host, _) = expose(
        &tmp,
        &base,
        &["--tcp", &port, "--name", "box", "--host", "127.0.0.1"],
        false,
    )
    .await;
    let printed = host.line_with("ProxyCommand=").await;
    assert!(printed.contains("--exposed --stdio box"), "{printed}");
    let context = || format!("{}\n{}", host.log(), sshd.log());

    // ssh with the ProxyCommand the host printed (with this binary).
    let proxy = format!(
        "{} tunnel client --exposed --stdio box -s {base}",
        quote(env!("CARGO_BIN_EXE_tubes"))
    );
    let mut ssh = command("ssh", &tmp);
    ssh.args(sshd.options())
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg(format!("{}@box", sshd.user))
        .arg("echo through-expose");
    let out = success(run(ssh, LIMIT).await, "ssh with a ProxyCommand", &context);
    assert_eq!(text(&out), "through-expose\n");

    // A local port: a session that stays open while another runs and an
    // 8 MiB scp goes through.
    let mut client = Proc::start(
        tubes(
            &tmp,
            &[
                "tunnel",
                "client",
                "--exposed",
                "--port",
                "0",
                "box",
                "-s",
                &base,
            ],
        ),
        "tubes tunnel client --exposed",
    );
    let local = client.listening().await;
    let context = || format!("{}\n{}\n{}", host.log(), client.log(), sshd.log());
    let ssh_to = |remote: &str| {
        let mut cmd = command("ssh", &tmp);
        cmd.args(sshd.options())
            .arg("-p")
            .arg(local.port().to_string())
            .arg(format!("{}@127.0.0.1", sshd.user))
            .arg(remote);
        cmd
    };
    let mut a = ssh_to("echo a-ready; read line; echo \"a-$line\"");
    a.stdin(Stdio::piped()).stdout(Stdio::piped());
    let (mut a, _a_group) = spawn_group(&mut a, "ssh session A");
    let mut a_out = BufReader::new(a.stdout.take().expect("stdout"));
    let mut line = String::new();
    let read = tokio::time::timeout(LIMIT, a_out.read_line(&mut line)).await;
    assert!(
        matches!(read, Ok(Ok(_))) && line == "a-ready\n",
        "session A: {read:?} {line:?}\n{}",
        context()
    );
    let out = success(run(ssh_to("echo b-ok"), LIMIT).await, "session B", &context);
    assert_eq!(text(&out), "b-ok\n");
    let from = tmp.join("file.bin");
    let to = tmp.join("copy.bin");
    let data = Pattern::new(5).bytes(8 << 20);
    std::fs::write(&from, &data).expect("write");
    let mut scp = command("scp", &tmp);
    scp.args(sshd.options())
        .arg("-P")
        .arg(local.port().to_string())
        .arg(&from)
        .arg(format!("{}@127.0.0.1:{}", sshd.user, to.display()));
    success(run(scp, LIMIT).await, "scp of 8 MiB", &context);
    let copy = std::fs::read(&to).expect("the copy");
    assert!(copy == data[..], "the copy differs ({} bytes)", copy.len());
    {
        use tokio::io::AsyncWriteExt;
        let mut a_in = a.stdin.take().expect("stdin");
        a_in.write_all(b"done\n").await.expect("write to A");
    }
    let mut rest = String::new();
    let read = tokio::time::timeout(LIMIT, a_out.read_to_string(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(_))) && rest == "a-done\n",
        "session A at the end: {read:?} {rest:?}\n{}",
        context()
    );

    client.kill().await;
    host.kill().await;
    server
        .wait_for("every channel closed", |s| {
            s.names_held == 0 && s.name_channels == 0
        })
        .await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// Control connections cut, names kept and taken.

/// A TCP forwarder to `to` whose connections the test can cut, and which
/// can be paused (new connections are closed at once).
struct Cutter {
    addr: SocketAddr,
    cut: watch::Sender<u64>,
    paused: watch::Sender<bool>,
    _task: Task,
}

impl Cutter {
    async fn start(to: SocketAddr) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (cut, cuts) = watch::channel(0u64);
        let (paused, pause) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                if *pause.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                conns.spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {} // dropping both ends cuts them
                    }
                });
            }
        });
        Cutter {
            addr,
            cut,
            paused,
            _task: Task(task),
        }
    }

    /// Cuts every connection open now.
    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// Registers on the relay with a WebSocket of the test's own; returns
/// the relay's answer and the socket (the name is held while it lives).
async fn register(
    addr: SocketAddr,
    name: &str,
    secret: &str,
) -> (
    ToHost,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) {
    let url = format!("ws://{addr}/-/expose");
    let (mut socket, _) = tokio::time::timeout(LIMIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("the control handshake in time")
        .expect("a control connection");
    let register = FromHost::Register {
        name: Some(name.into()),
        secret: Some(secret.into()),
        services: vec!["http".into()],
    };
    let text = serde_json::to_string(&register).expect("json");
    socket.send(Message::text(text)).await.expect("send");
    let answer = loop {
        match tokio::time::timeout(LIMIT, socket.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                break serde_json::from_str::<ToHost>(t.as_str()).expect("a control message")
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no answer to register: {other:?}"),
        }
    };
    (answer, socket)
}

fn assert_taken(answer: &ToHost, name: &str) {
    assert_eq!(
        answer,
        &ToHost::Error {
            message: format!("[ERROR] The name '{name}' is held with another secret.")
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_control_connection_comes_back_and_keeps_its_name() {
    let server = relay(NamesConfig::default()).await;
    let local = local_server().await;
    let cutter = Cutter::start(server.addr).await;
    let tmp = Tmp::new("cut");
    let secret = "the-right-secret-0123456789";
    let port = local.addr.port().to_string();
    let via = format!("http://{}", cutter.addr);
    let (host, _) = expose(
        &tmp,
        &via,
        &[
            &port,
            "--name",
            "home",
            "--secret",
            secret,
            "--host",
            "127.0.0.1",
        ],
        false,
    )
    .await;
    let context = || host.log();
    let base = server.url("");
    let hello = |tmp: &Tmp| {
        let mut c = curl(tmp);
        c.arg(format!("{base}/-/host/home/hello"));
        c
    };
    success(
        run(hello(&tmp), LIMIT).await,
        "curl before the cut",
        &context,
    );

    // A wrong secret cannot take the name while it is held.
    let (answer, _) = register(server.addr, "home", "a-wrong-secret-0123456789").await;
    assert_taken(&answer, "home");

    // Cut the host's connections and keep it from coming back for now.
    cutter.paused.send_replace(true);
    cutter.cut_all();
    server
        .wait_for("the control connection gone", |s| s.names_held == 0)
        .await;
    assert_eq!(server.relay.stats().names, 1, "the name is kept meanwhile");
    // Nor during the grace period.
    let (answer, _) = register(server.addr, "home", "a-wrong-secret-0123456789").await;
    assert_taken(&answer, "home");
    // A request made now waits for the host.
    let waiting = tokio::spawn(run(hello(&tmp), LIMIT));
    server
        .wait_for("the request waiting for the host", |s| s.name_channels == 1)
        .await;

    // The host comes back by itself, with its name.
    cutter.paused.send_replace(false);
    host.line_with("registered again").await;
    server
        .wait_for("the host back", |s| s.names_held == 1)
        .await;
    let out = waiting.await.expect("the waiting curl");
    let body = text(&success(out, "the request made during the cut", &context));
    assert!(body.starts_with("hello path=/hello "), "{body}");
    success(
        run(hello(&tmp), LIMIT).await,
        "curl after the cut",
        &context,
    );
    let (answer, _) = register(server.addr, "home", "a-wrong-secret-0123456789").await;
    assert_taken(&answer, "home");

    drop(host);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_free_once_its_grace_period_is_over() {
    let server = relay(NamesConfig {
        grace: Duration::from_secs(1),
        ..NamesConfig::default()
    })
    .await;
    let tmp = Tmp::new("grace");
    let base = server.url("");
    // A random name and a secret made by the relay, both printed.
    let (mut host, secret) = expose(&tmp, &base, &["8", "-q"], true).await;
    let secret = secret.unwrap_or_else(|| panic!("no secret printed\n{}", host.log()));
    let printed = host.line_with("Exposed as '").await;
    let name = printed
        .split('\'')
        .nth(1)
        .unwrap_or_else(|| panic!("no name in {printed:?}"))
        .to_owned();
    // Its secret holds it: a second control connection with it replaces
    // the first, which then stops.
    let (answer, socket) = register(server.addr, &name, &secret).await;
    assert!(
        matches!(&answer, ToHost::Registered { resumed: true, .. }),
        "{answer:?}"
    );
    host.line_with("took over the name").await;
    let status = host.exit(LIMIT).await;
    assert!(
        !status.success(),
        "the replaced host: {status:?}\n{}",
        host.log()
    );
    // When the last holder goes, the name outlives it by the grace period
    // only; then anyone may take it.
    drop(socket);
    server.wait_for("the name released", |s| s.names == 0).await;
    let (answer, _) = register(server.addr, &name, "someone-else-0123456789").await;
    assert!(
        matches!(&answer, ToHost::Registered { resumed: false, .. }),
        "{answer:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_limits_open_timeouts_and_silent_hosts() {
    let server = relay(NamesConfig {
        control_idle: Duration::from_millis(1500),
        open_timeout: Duration::from_secs(2),
        max_channels_per_name: 2,
        ..NamesConfig::default()
    })
    .await;
    // A host that registers, then never reads again: it answers no ping
    // and opens no channel.
    let (answer, _silent) = register(server.addr, "mute", "the-mute-secret-0123456789").await;
    assert!(matches!(answer, ToHost::Registered { .. }), "{answer:?}");
    let connect = |addr: SocketAddr| async move {
        let url = format!("ws://{addr}/-/connect/mute");
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => Err("a channel opened with no host to open it".to_owned()),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Ok((
                response.status().as_u16(),
                text(response.body().as_deref().unwrap_or_default()),
            )),
            Err(e) => Err(e.to_string()),
        }
    };
    let first = tokio::spawn(connect(server.addr));
    let second = tokio::spawn(connect(server.addr));
    server
        .wait_for("two channels asked for", |s| s.name_channels == 2)
        .await;
    // A third is refused at once: two is the most per name here.
    let third = tokio::time::timeout(LIMIT, connect(server.addr))
        .await
        .expect("the refusal in time");
    assert_eq!(
        third,
        Ok((
            429,
            "[ERROR] The host 'mute' has as many channels as it allows; try again later.\n"
                .to_owned()
        ))
    );
    // The two waiting ones give up after the open timeout.
    for waiting in [first, second] {
        let got = tokio::time::timeout(LIMIT, waiting)
            .await
            .expect("the timeout in time")
            .expect("the task");
        assert_eq!(
            got,
            Ok((
                504,
                "[ERROR] The host 'mute' did not open the channel within 2 s.\n".to_owned()
            ))
        );
    }
    // The silent control connection is dropped; the name waits out its
    // grace period.
    server
        .wait_for("the silent host dropped", |s| {
            s.names_held == 0 && s.name_channels == 0
        })
        .await;
    assert_eq!(server.relay.stats().names, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_over_plain_http_serves_http_and_tcp() {
    let server = relay(NamesConfig::default()).await;
    let local = local_server().await;
    let tmp = Tmp::new("plain");
    let base = server.url("");
    let port = local.addr.port().to_string();
    // A port bound but not listening: connections to it are refused, and
    // while it is held no other socket gets it (nor a connection to it
    // connects to itself).
    let held = tokio::net::TcpSocket::new_v4().expect("a socket");
    held.bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let closed = held.local_addr().expect("address").port().to_string();
    let (mut host, _) = expose(
        &tmp,
        &base,
        &[
            &port,
            "--tcp",
            &port,
            "--tcp",
            &closed,
            "--name",
            "plain",
            "--http-only",
            "--host",
            "127.0.0.1",
        ],
        true,
    )
    .await;
    let context = || host.log();

    // HTTP, a large streamed response and a WebSocket, over the host's
    // two HTTP streams per channel.
    let mut c = curl(&tmp);
    c.arg(format!("{base}/-/host/plain/hello"));
    let hello = text(&success(run(c, LIMIT).await, "curl /hello", &context));
    assert!(hello.starts_with("hello path=/hello "), "{hello}");
    let mut c = curl(&tmp);
    c.arg(format!("{base}/-/host/plain/big"));
    let body = success(run(c, LIMIT).await, "curl /big", &context);
    assert!(
        body.len() == BIG && sha256(&body) == sha256(&local.state.big),
        "/big: {} bytes, or other bytes",
        body.len()
    );
    let ws = format!("ws://{}/-/host/plain/ws", server.addr);
    if let Err(e) = websocket_echo(&ws, None).await {
        panic!("WebSocket through a plain-HTTP host: {e}\n{}", context());
    }

    // Raw TCP, half-closed by the client: the request, then the reply.
    let mut c = tubes(
        &tmp,
        &[
            "tunnel",
            "client",
            "--exposed",
            "--stdio",
            "plain",
            "-s",
            &base,
        ],
    );
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let (mut child, _group) = spawn_group(&mut c, "tubes tunnel client --exposed --stdio");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"GET /hello HTTP/1.0\r\n\r\n")
            .await
            .expect("write the request");
    } // stdin closed: the end of the client's direction
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("the reply in time")
        .expect("the client's output");
    let reply = text(&out.stdout);
    assert!(
        out.status.success()
            && reply.contains(" 200 OK")
            && reply.ends_with("hello path=/hello host=- prefix=- proto=-\n"),
        "{}: {reply:?} {}\n{}",
        out.status,
        text(&out.stderr),
        context()
    );

    // A service that is down is refused at once (not after the open
    // timeout).
    let service = format!("tcp/{closed}");
    let started = std::time::Instant::now();
    let refused = run(
        tubes(
            &tmp,
            &[
                "tunnel",
                "client",
                "--exposed",
                "--stdio",
                "--service",
                &service,
                "plain",
                "-s",
                &base,
            ],
        ),
        LIMIT,
    )
    .await
    .expect("the refused client ends");
    let stderr = text(&refused.stderr);
    assert!(
        refused.status.code() == Some(3)
            && stderr.contains("502")
            && stderr.contains("could not serve this"),
        "{}: {stderr}\n{}",
        refused.status,
        context()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the refusal took {:?}",
        started.elapsed()
    );

    host.kill().await;
    server
        .wait_for("the host gone, every channel closed", |s| {
            s.names_held == 0 && s.name_channels == 0
        })
        .await;
    server.stop().await;
}
