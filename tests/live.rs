//! Live broadcast (`?live`, `src/relay/live.rs`) and Server-Sent Events
//! (`src/transport/sse.rs`) through real sockets: receivers joining a live
//! stream at any moment get whole lines (or whole multipart parts) from
//! where the stream is; a stalled receiver slows no one and is skipped
//! ahead (framed) or dropped (unframed); SSE ids are offsets that resume a
//! live stream exactly; SSE of ordinary transfers ends with `end` or
//! `abort`; waiting receivers clean up; live and plain paths do not meet.
//!
//! The server runs in-process on `127.0.0.1:0` (`tests/common`); the
//! clients are hyper (HTTP/1.1, h2c, h2, HTTP/3) and real curl. curl must
//! be installed (`scripts/test.sh` installs it): without it the curl test
//! fails and says so, it never skips.
//!
//! ```sh
//! cargo test --test live
//! ```
//!
//! The six bugs these tests found are fixed and their tests run. The SSE
//! heartbeat (`: keep-alive` after 15 s of silence) is not tested here:
//! it would take 15 s of wall time, and `tokio::time::pause` needs a
//! current-thread runtime.
//!
//! Nothing here sleeps to let something happen: a test waits for data, for
//! a count published by another task or for the relay's registry to reach
//! a state, and every wait is bounded by [`WAIT`]; every loop has a bound.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use common::{Conn, Proto, RespBody, Server, Target};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tubes::relay::live::LIVE_WINDOW;

/// The bound of every wait (debug builds on a busy two-core machine).
const WAIT: Duration = Duration::from_secs(60);

/// More pieces (or lines, events, parts) than any test reads from one
/// body: the bound of every read loop.
const MAX_PIECES: usize = 10_000_000;

const LIVE_STARTED: &str = "[INFO] Live: receivers may join at any time.\n";

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
async fn within<T>(what: impl std::fmt::Display, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Deterministic pseudo-random numbers (xorshift64*): the join moments,
/// how long receivers stay and where the sender's pieces are cut.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------
// Reading responses
// ---------------------------------------------------------------------

/// One read from a response body.
#[derive(Debug)]
enum Piece {
    Data(Bytes),
    /// The body's clean end.
    End,
    /// The body was cut short (an aborted response).
    Cut(String),
}

/// A response body that is leaked, not dropped, while its thread panics:
/// the HTTP/3 body of `tests/common` calls h3-quinn's `stop_sending` when
/// dropped before its end, which panics if a read is in flight (h3-quinn
/// 0.0.10 unwraps), and a panic during a failing test's unwinding aborts
/// the whole test binary instead of reporting the failure.
struct Body(Option<RespBody>);

impl Body {
    fn new(body: RespBody) -> Self {
        Body(Some(body))
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(body) = self.0.take() {
                std::mem::forget(body);
            }
        }
    }
}

/// The next data of a body (empty frames and trailers are skipped).
async fn piece(body: &mut Body) -> Piece {
    let body = body.0.as_mut().expect("a body");
    for _ in 0..1000 {
        match within("response data", body.frame()).await {
            None => return Piece::End,
            Some(Err(e)) => return Piece::Cut(e.to_string()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        return Piece::Data(data);
                    }
                }
            }
        }
    }
    panic!("a thousand empty frames in a row");
}

/// A whole body and how it ended: `Ok` for a clean end, `Err` for a cut.
async fn read_all(body: RespBody) -> (Vec<u8>, Result<(), String>) {
    let mut body = Body::new(body);
    let mut got = Vec::new();
    for _ in 0..MAX_PIECES {
        match piece(&mut body).await {
            Piece::Data(d) => got.extend_from_slice(&d),
            Piece::End => return (got, Ok(())),
            Piece::Cut(e) => return (got, Err(e)),
        }
    }
    panic!("more than {MAX_PIECES} pieces in one body");
}

/// What a line reader gives.
#[derive(Debug)]
enum Line {
    /// A line with its `\n` (at the body's end, what is left without one).
    Text(Bytes),
    End,
    Cut(String),
}

/// A body read line by line.
struct Lines {
    body: Body,
    buf: BytesMut,
    /// How much of `buf` is known to hold no `\n` (so each byte is
    /// searched once).
    searched: usize,
    ended: Option<Result<(), String>>,
    /// Bytes read so far.
    bytes: u64,
}

impl Lines {
    fn new(body: RespBody) -> Self {
        Lines {
            body: Body::new(body),
            buf: BytesMut::new(),
            searched: 0,
            ended: None,
            bytes: 0,
        }
    }

    async fn next(&mut self) -> Line {
        for _ in 0..MAX_PIECES {
            if let Some(i) = self.buf[self.searched..].iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(self.searched + i + 1).freeze();
                self.searched = 0;
                return Line::Text(line);
            }
            self.searched = self.buf.len();
            match &self.ended {
                Some(_) if !self.buf.is_empty() => {
                    self.searched = 0;
                    return Line::Text(self.buf.split().freeze());
                }
                Some(Ok(())) => return Line::End,
                Some(Err(e)) => return Line::Cut(e.clone()),
                None => {}
            }
            match piece(&mut self.body).await {
                Piece::Data(d) => {
                    self.bytes += d.len() as u64;
                    self.buf.extend_from_slice(&d);
                }
                Piece::End => self.ended = Some(Ok(())),
                Piece::Cut(e) => self.ended = Some(Err(e)),
            }
        }
        panic!("more than {MAX_PIECES} pieces for one line");
    }
}

// ---------------------------------------------------------------------
// Numbered lines
// ---------------------------------------------------------------------

/// The shape of the numbered lines a text sender writes:
/// `seq-` + the number on `digits` digits (+ `-` and `pad` × `x`) + `\n`.
#[derive(Debug, Clone, Copy)]
struct Seq {
    digits: usize,
    pad: usize,
}

/// `seq-000000\n`: 11 bytes.
const SHORT: Seq = Seq { digits: 6, pad: 0 };
/// `seq-00000000-xxx…x\n`: 65 bytes (odd, so buffer sizes do not fall on line ends).
const LONG: Seq = Seq { digits: 8, pad: 51 };

impl Seq {
    fn len(self) -> usize {
        4 + self.digits + if self.pad > 0 { 1 + self.pad } else { 0 } + 1
    }

    fn line(self, i: u64) -> String {
        let mut s = format!("seq-{i:0width$}", width = self.digits);
        if self.pad > 0 {
            s.push('-');
            s.extend(std::iter::repeat_n('x', self.pad));
        }
        s.push('\n');
        s
    }

    /// The lines `from..to`, concatenated.
    fn lines(self, from: u64, to: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity((to - from) as usize * self.len());
        for i in from..to {
            out.extend_from_slice(self.line(i).as_bytes());
        }
        out
    }

    /// The number of a whole line of this shape, or `None` if `line` is
    /// anything else (cut, glued to another, not a line).
    fn parse(self, line: &[u8]) -> Option<u64> {
        if line.len() != self.len() || !line.starts_with(b"seq-") || line.last() != Some(&b'\n') {
            return None;
        }
        let digits = &line[4..4 + self.digits];
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        if self.pad > 0 {
            let pad = &line[4 + self.digits..line.len() - 1];
            if pad[0] != b'-' || !pad[1..].iter().all(|b| *b == b'x') {
                return None;
            }
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
}

/// Feeds `data` to a request body in pieces of pseudo-random sizes
/// (`1..=max`), so lines and boundaries are cut across pieces.
async fn feed(
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    rng: &mut Rng,
    data: &[u8],
    max: usize,
) {
    let mut at = 0;
    // Bounded: `at` grows by at least one each time.
    while at < data.len() {
        let n = (1 + rng.below(max as u64) as usize).min(data.len() - at);
        within(
            "the relay to take the sender's bytes",
            tx.send(Ok(Bytes::copy_from_slice(&data[at..at + n]))),
        )
        .await
        .expect("the sender's body is still being read");
        at += n;
    }
}

// ---------------------------------------------------------------------
// Live senders and receivers
// ---------------------------------------------------------------------

/// A live sender (`PUT path?live` with a body the test writes) and the
/// task reading its log.
struct LiveSender {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    log: tokio::task::JoinHandle<(Vec<u8>, Result<(), String>)>,
    /// Bytes handed to the body so far.
    sent: u64,
    _conn: Conn,
}

impl LiveSender {
    async fn open(server: &Server, proto: Proto, path: &str, content_type: Option<&str>) -> Self {
        let (tx, body) = common::streaming();
        let mut conn = Conn::open(server, proto).await;
        let mut req = conn.request("PUT", &format!("{path}?live"));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let response = within(
            "the live sender's response head",
            conn.send(req.body(body).expect("request")),
        )
        .await
        .expect("the live sender's response");
        assert_eq!(response.status(), 200, "live sender on {path}");
        let log = tokio::spawn(read_all(response.into_body()));
        LiveSender {
            tx,
            log,
            sent: 0,
            _conn: conn,
        }
    }

    async fn feed(&mut self, rng: &mut Rng, data: &[u8], max: usize) {
        feed(&self.tx, rng, data, max).await;
        self.sent += data.len() as u64;
    }

    /// Ends the body cleanly and returns the whole log.
    async fn finish(self) -> String {
        let LiveSender { tx, log, _conn, .. } = self;
        drop(tx);
        let (log, end) = within("the live sender's log", log)
            .await
            .expect("log task");
        assert_eq!(end, Ok(()), "the live sender's log ends cleanly");
        String::from_utf8(log).expect("a text log")
    }

    /// Cuts the body (the client aborts its request).
    async fn cut(self) {
        within(
            "the relay to take the cut",
            self.tx.send(Err(std::io::Error::other("cut by the test"))),
        )
        .await
        .expect("the sender's body is still being read");
    }
}

/// A GET sent on its own connection whose response head may not have come
/// yet (a live receiver waits for its sender): the request is out, the
/// head arrives in the background.
struct Pending {
    conn: Conn,
    reply: std::pin::Pin<Box<dyn std::future::Future<Output = common::Reply> + Send>>,
}

impl Pending {
    async fn get(
        target: impl Into<Target>,
        proto: Proto,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Self {
        let mut conn = Conn::open(target, proto).await;
        let mut req = conn.request("GET", path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let reply = Box::pin(conn.send(req.body(common::empty()).expect("request")));
        Pending { conn, reply }
    }

    /// The client goes away before the head came: its connection closes,
    /// then the request ends in an error. (Dropping the request first
    /// would make tests/common cancel an HTTP/3 request whose head is
    /// being read, and h3-quinn 0.0.10 panics on that.)
    async fn leave(self) {
        let Pending { conn, reply } = self;
        drop(conn);
        let reply = within("the abandoned request to fail", reply).await;
        assert!(reply.is_err(), "no response once the client has left");
    }

    /// The response head; keeps the connection open for its body.
    async fn head(self) -> (Conn, http::Response<RespBody>) {
        let response = within("a receiver's response head", self.reply)
            .await
            .expect("a receiver's response");
        (self.conn, response)
    }
}

// ---------------------------------------------------------------------
// 1. Fifty receivers joining a live text stream at random moments
// ---------------------------------------------------------------------

/// What one joining receiver saw.
#[derive(Debug)]
struct Seen {
    id: usize,
    proto: Proto,
    join_at: u64,
    first: u64,
    last: u64,
    lines: u64,
    /// Whether it saw the clean end (else it left first).
    ended: bool,
}

/// One sender writes `seq-000000\n` … `seq-199999\n` in pieces cut
/// anywhere. An anchor receiver joined before the sender sees every line
/// from 0 and publishes how many lines have gone through the relay; 50
/// receivers (HTTP/1.1, h2c, h2, HTTP/3 in turn) each join when that count
/// passes their pseudo-random moment, read a while and leave, or stay to
/// the end. The sender waits at each batch of lines for the receivers due
/// by then to have joined, so the joins are spread over the whole sending
/// without any sleep. Each receiver must see a contiguous run of whole
/// lines starting no earlier than the line the relay was at when it joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_receivers_join_a_live_text_stream_at_random_moments() {
    const LINES: u64 = 200_000;
    const BATCH: u64 = 1_000;
    const RECEIVERS: usize = 50;
    let server = Server::start().await;
    let path = common::path("live-lines");
    let live = format!("{path}?live");

    // The anchor: joined before the sender, so it gets everything.
    let anchor = Pending::get(&server, Proto::Http11, &live, &[]).await;
    server
        .wait_for("the anchor waits for a sender", |s| {
            s.live_paths == 1 && s.live_receivers == 1
        })
        .await;
    let (seen_tx, seen) = watch::channel(0u64);
    let anchor = tokio::spawn(async move {
        let (_conn, response) = anchor.head().await;
        assert_eq!(response.status(), 200);
        let mut lines = Lines::new(response.into_body());
        let mut n = 0u64;
        for _ in 0..=LINES {
            match lines.next().await {
                Line::Text(line) => {
                    assert_eq!(
                        SHORT.parse(&line),
                        Some(n),
                        "the anchor's line {n}: {line:?}"
                    );
                    n += 1;
                    seen_tx.send_replace(n);
                }
                Line::End => return n,
                Line::Cut(e) => panic!("the anchor was cut after {n} lines: {e}"),
            }
        }
        panic!("the anchor got more than {LINES} lines");
    });

    // The plan: when each receiver joins, how long it stays, its protocol.
    let mut rng = Rng::new(1);
    let protos = [Proto::Http11, Proto::H2c, Proto::H2, Proto::H3];
    let plans: Vec<(u64, Option<u64>, Proto)> = (0..RECEIVERS)
        .map(|i| {
            let join_at = 1 + rng.below(LINES * 9 / 10);
            let proto = protos[i % protos.len()];
            // HTTP/3 receivers stay to the end: the test client's HTTP/3
            // body (tests/common, h3-quinn 0.0.10) panics when dropped
            // with a read in flight, a client-side bug.
            let stay = if rng.below(3) == 0 || proto == Proto::H3 {
                None
            } else {
                Some(1 + rng.below(20_000))
            };
            (join_at, stay, proto)
        })
        .collect();
    let (joined_tx, mut joined) = watch::channel(0usize);
    let target = Target::from(&server);
    let mut receivers = Vec::new();
    for (id, &(join_at, stay, proto)) in plans.iter().enumerate() {
        let mut seen = seen.clone();
        let joined_tx = joined_tx.clone();
        let target = target.clone();
        let live = live.clone();
        receivers.push(tokio::spawn(async move {
            within(
                format!("receiver {id}'s moment (line {join_at})"),
                seen.wait_for(|&n| n >= join_at),
            )
            .await
            .expect("the anchor is alive");
            let (conn, response) =
                common::request(target, proto, "GET", &live, &[], common::empty()).await;
            assert_eq!(response.status(), 200, "receiver {id}");
            joined_tx.send_modify(|n| *n += 1);
            let mut lines = Lines::new(response.into_body());
            let mut got = Seen {
                id,
                proto,
                join_at,
                first: 0,
                last: 0,
                lines: 0,
                ended: false,
            };
            for _ in 0..=LINES {
                if stay == Some(got.lines) {
                    break; // leaves: the body and the connection are dropped
                }
                match lines.next().await {
                    Line::Text(line) => {
                        let Some(n) = SHORT.parse(&line) else {
                            panic!("receiver {id} ({proto:?}): not a whole line after {} lines: {line:?}", got.lines);
                        };
                        if got.lines == 0 {
                            got.first = n;
                        } else {
                            assert_eq!(
                                n,
                                got.last + 1,
                                "receiver {id} ({proto:?}): a gap or a repeat"
                            );
                        }
                        got.last = n;
                        got.lines += 1;
                    }
                    Line::End => {
                        got.ended = true;
                        break;
                    }
                    Line::Cut(e) => panic!("receiver {id} ({proto:?}) was cut: {e}"),
                }
            }
            drop(lines);
            drop(conn);
            got
        }));
    }
    drop(joined_tx);

    let mut sender = LiveSender::open(&server, Proto::Http11, &path, None).await;
    let started = Instant::now();
    for batch in 0..LINES / BATCH {
        let data = SHORT.lines(batch * BATCH, (batch + 1) * BATCH);
        sender.feed(&mut rng, &data, 2_000).await;
        let sent = (batch + 1) * BATCH;
        let due = plans.iter().filter(|p| p.0 <= sent).count();
        within(
            format!("{due} receivers to have joined by line {sent}"),
            joined.wait_for(|&n| n >= due),
        )
        .await
        .expect("receivers are alive");
    }
    let log = sender.finish().await;
    let elapsed = started.elapsed();
    let total = LINES * SHORT.len() as u64;
    assert_eq!(
        log,
        format!("{LIVE_STARTED}[INFO] Live stream ended after {total} bytes.\n")
    );
    assert_eq!(
        within("the anchor", anchor).await.expect("anchor task"),
        LINES
    );

    let mut stayed = 0;
    let mut behind = Vec::new();
    for (receiver, &(_, stay, _)) in receivers.into_iter().zip(&plans) {
        let got = within("a receiver", receiver).await.expect("receiver task");
        assert!(
            got.lines > 0,
            "receiver {} ({:?}) got no line: {got:?}",
            got.id,
            got.proto
        );
        // The relay had at least `join_at` whole lines when it joined: it
        // starts at the newest line with data, never earlier than the
        // last of those.
        assert!(
            got.first + 1 >= got.join_at,
            "receiver {} started before the live point: {got:?}",
            got.id
        );
        behind.push(got.first + 1 - got.join_at);
        match stay {
            None => {
                stayed += 1;
                assert_eq!(
                    (got.last, got.ended),
                    (LINES - 1, true),
                    "receiver {} stays to the end: {got:?}",
                    got.id
                );
            }
            Some(n) => assert!(
                got.lines == n || (got.ended && got.last == LINES - 1),
                "receiver {} reads {n} lines then leaves: {got:?}",
                got.id
            ),
        }
    }
    behind.sort_unstable();
    println!(
        "{RECEIVERS} receivers ({stayed} to the end) on {LINES} lines ({total} bytes) in {elapsed:?}: \
         {:.1} MiB/s sent; first line minus the anchor's count at the join: median {}, max {}",
        total as f64 / elapsed.as_secs_f64() / (1 << 20) as f64,
        behind[behind.len() / 2],
        behind[behind.len() - 1]
    );
    server.wait_empty().await;
    server.stop().await;
}

/// A receiver joining while the first line is still coming starts at the
/// start of that line (offset 0 is a line start too), not in its middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_joiner_during_the_first_line_gets_it_whole() {
    let server = Server::start().await;
    let path = common::path("live-first-line");
    let live = format!("{path}?live");
    let anchor = Pending::get(&server, Proto::Http11, &live, &[]).await;
    server
        .wait_for("the anchor waits", |s| s.live_receivers == 1)
        .await;
    let mut sender = LiveSender::open(&server, Proto::Http11, &path, Some("text/plain")).await;
    let mut rng = Rng::new(9);
    sender.feed(&mut rng, b"seq-00", 100).await;
    let (anchor_conn, response) = anchor.head().await;
    let mut anchor = Lines::new(response.into_body());
    // Receivers of a text stream get whole lines only: the joiner's start
    // is the start of the first line, whether or not "seq-00" is in yet.
    let (late_conn, response) =
        common::request(&server, Proto::Http11, "GET", &live, &[], common::empty()).await;
    let mut late = Lines::new(response.into_body());
    sender.feed(&mut rng, b"0000\nseq-000001\n", 100).await;
    let log = sender.finish().await;
    assert_eq!(sender_bytes(&log), 22);
    for (who, lines) in [("late joiner", &mut late), ("anchor", &mut anchor)] {
        let first = lines.next().await;
        assert!(
            matches!(&first, Line::Text(l) if &l[..] == b"seq-000000\n"),
            "the {who}'s first line: {first:?}"
        );
    }
    drop((anchor, anchor_conn, late, late_conn));
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// 2. A stalled receiver slows no one
// ---------------------------------------------------------------------

/// How far the sender may run ahead of the fast receiver: well inside the
/// window, so the fast receiver never falls out of it.
const LEAD: u64 = (LIVE_WINDOW / 4) as u64;

/// A server whose live sender has finished, and the stalled receiver it
/// went past, still unread.
struct StallSetup {
    server: Server,
    stalled: Pending,
    /// Bytes sent.
    total: u64,
}

/// Opens a fast and a stalled receiver on a live path (both before the
/// sender, so both start at offset 0), then sends `total` bytes made by
/// `make(from, to)`: the fast one is checked by `check` as it reads and
/// paces the sender at most [`LEAD`] bytes ahead (so it can keep up on any
/// machine); the stalled one never reads. Returns the stalled receiver,
/// unread, once the sender has finished.
async fn send_past_a_stalled_receiver(
    name: &str,
    content_type: &str,
    stalled_headers: &[(&str, &str)],
    total: u64,
    batch: u64,
    make: impl Fn(u64, u64) -> Vec<u8>,
    check: impl FnMut(&[u8]) + Send + 'static,
) -> StallSetup {
    let server = Server::start().await;
    let path = common::path(name);
    let live = format!("{path}?live");
    let fast = Pending::get(&server, Proto::Http11, &live, &[]).await;
    let stalled = Pending::get(&server, Proto::Http11, &live, stalled_headers).await;
    server
        .wait_for("two receivers wait for the sender", |s| {
            s.live_receivers == 2
        })
        .await;
    let (read_tx, read) = watch::channel(0u64);
    let fast = tokio::spawn(async move {
        let mut check = check;
        let (_conn, response) = fast.head().await;
        assert_eq!(response.status(), 200);
        let mut body = Body::new(response.into_body());
        let mut n = 0u64;
        for _ in 0..MAX_PIECES {
            match piece(&mut body).await {
                Piece::Data(d) => {
                    check(&d);
                    n += d.len() as u64;
                    read_tx.send_replace(n);
                }
                Piece::End => return n,
                Piece::Cut(e) => panic!("the fast receiver was cut after {n} bytes: {e}"),
            }
        }
        panic!("more than {MAX_PIECES} pieces");
    });

    let mut rng = Rng::new(2);
    let mut sender = LiveSender::open(&server, Proto::Http11, &path, Some(content_type)).await;
    let started = Instant::now();
    // The sender must get everything through and finish while the stalled
    // receiver holds what it holds: the relay never waits for it. Each
    // step is bounded by WAIT, and so is the whole.
    let log = within(
        "the sender to push everything past the stalled receiver",
        async {
            let mut from = 0;
            // Bounded: `from` grows by `batch` each time.
            while from < total {
                let to = (from + batch).min(total);
                let data = make(from, to);
                let sent = sender.sent;
                let mut read = read.clone();
                within(
                    "the fast receiver to come within LEAD of the sender",
                    read.wait_for(|&r| sent <= r + LEAD),
                )
                .await
                .expect("the fast receiver is alive");
                sender.feed(&mut rng, &data, 64 << 10).await;
                from = to;
            }
            sender.finish().await
        },
    )
    .await;
    let elapsed = started.elapsed();
    let bytes = sender_bytes(&log);
    assert_eq!(
        log,
        format!("{LIVE_STARTED}[INFO] Live stream ended after {total} bytes.\n")
    );
    assert_eq!(bytes, total);
    println!(
        "{name}: the sender pushed {:.1} MiB ({:.1} windows) past a stalled receiver in {elapsed:?}: {:.1} MiB/s",
        total as f64 / (1 << 20) as f64,
        total as f64 / LIVE_WINDOW as f64,
        total as f64 / elapsed.as_secs_f64() / (1 << 20) as f64
    );
    let fast_read = within("the fast receiver", fast).await.expect("fast task");
    assert_eq!(fast_read, total, "the fast receiver got every byte");
    server
        .wait_for("the live stream has ended", |s| s.live_paths == 0)
        .await;
    StallSetup {
        server,
        stalled,
        total,
    }
}

/// The byte count in a live sender's log.
fn sender_bytes(log: &str) -> u64 {
    log.lines()
        .find_map(|l| l.strip_prefix("[INFO] Live stream ended after "))
        .and_then(|l| l.strip_suffix(" bytes."))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no end in the log: {log:?}"))
}

/// The fast receiver's check for [`LONG`] lines: every line, in order.
fn every_long_line() -> impl FnMut(&[u8]) + Send + 'static {
    let mut next = 0u64;
    let mut partial = Vec::new();
    move |piece: &[u8]| {
        partial.extend_from_slice(piece);
        let whole = partial.len() - partial.len() % LONG.len();
        for line in partial[..whole].chunks(LONG.len()) {
            assert_eq!(
                LONG.parse(line),
                Some(next),
                "the fast receiver's line {next}"
            );
            next += 1;
        }
        partial.drain(..whole);
    }
}

/// Sends 4.5 windows of [`LONG`] lines past a stalled receiver (with
/// `stalled_headers`); returns the setup and the number of lines.
async fn lines_past_a_stalled_receiver(
    name: &str,
    stalled_headers: &[(&str, &str)],
) -> (StallSetup, u64) {
    let lines = (4 * LIVE_WINDOW + LIVE_WINDOW / 2) as u64 / LONG.len() as u64;
    let setup = send_past_a_stalled_receiver(
        name,
        "text/plain",
        stalled_headers,
        lines * LONG.len() as u64,
        4096 * LONG.len() as u64,
        |from, to| LONG.lines(from / LONG.len() as u64, to / LONG.len() as u64),
        every_long_line(),
    )
    .await;
    (setup, lines)
}

/// Text: the stalled receiver, when it finally reads, has its first lines
/// from 0 (what the sockets held), then is skipped ahead to a line start
/// and reads whole lines on to the end. With `strict`, every line must
/// be whole; without, the line it was in when it fell out of the window
/// may come cut short and glued to the line it skipped to (see
/// [`a_skipped_text_receiver_gets_only_whole_lines`]).
async fn stalled_text(strict: bool) {
    let (setup, lines) = lines_past_a_stalled_receiver("stalled-text", &[]).await;
    let (conn, response) = setup.stalled.head().await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        common::header(&response, "content-type"),
        Some("text/plain")
    );
    let mut body = Lines::new(response.into_body());
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut glued = Vec::new();
    for _ in 0..=lines {
        let line = match body.next().await {
            Line::Text(line) => line,
            Line::End => break,
            Line::Cut(e) => panic!("the stalled receiver of a text stream was cut: {e}"),
        };
        let n = match LONG.parse(&line) {
            Some(n) => n,
            None => {
                // A cut line glued to a whole one: the cut part must be
                // the start of the line after the current run.
                let text = String::from_utf8_lossy(&line).into_owned();
                let (head, tail) = line.split_at(line.len().saturating_sub(LONG.len()));
                let next = runs.last().map_or(0, |r| r.1 + 1);
                let expected = LONG.line(next);
                match LONG.parse(tail) {
                    Some(n) if !head.is_empty() && expected.as_bytes().starts_with(head) => {
                        glued.push(text);
                        n
                    }
                    _ => panic!("not a line, nor a cut line glued to one: {text:?}; runs {runs:?}"),
                }
            }
        };
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == n => *last = n,
            _ => runs.push((n, n)),
        }
    }
    let read = body.bytes;
    println!(
        "the stalled receiver read {read} of {} bytes, in runs {runs:?}, cut lines {glued:?}",
        setup.total
    );
    assert_eq!(
        runs.first().map(|r| r.0),
        Some(0),
        "it joined before the sender"
    );
    assert!(runs.len() >= 2, "it was skipped ahead: {runs:?}");
    assert!(
        runs.windows(2).all(|w| w[1].0 > w[0].1 + 1),
        "skips only go forward: {runs:?}"
    );
    assert_eq!(
        runs.last().map(|r| r.1),
        Some(lines - 1),
        "it reads to the end"
    );
    assert!(read < setup.total, "it lost what fell out of the window");
    if strict {
        assert!(glued.is_empty(), "lines cut and glued to others: {glued:?}");
    }
    drop(conn);
    setup.server.wait_empty().await;
    setup.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_receiver_slows_no_one_and_skips_ahead_to_a_line_start() {
    stalled_text(false).await;
}

/// The lines before and after a skip are whole: the line a receiver was
/// in when it fell out of the window is not cut short and glued to the
/// next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_skipped_text_receiver_gets_only_whole_lines() {
    stalled_text(true).await;
}

/// SSE on a stalled text receiver: after the skip, each event is still a
/// whole line and its id the offset just after that line, so a
/// `Last-Event-ID` resumes at the right place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn sse_ids_stay_offsets_after_a_skip() {
    let (setup, lines) =
        lines_past_a_stalled_receiver("stalled-sse", &[("accept", "text/event-stream")]).await;
    let (conn, response) = setup.stalled.head().await;
    let mut events = Events::new(response);
    events.opening().await;
    let mut previous = None;
    let mut skips = 0;
    for _ in 0..=lines {
        let ev = match events.next().await {
            Ev::Event(ev) => ev,
            other => panic!("the stalled SSE receiver: {other:?}"),
        };
        if ev.event.as_deref() == Some("end") {
            break;
        }
        let data = ev.data.clone().unwrap_or_default();
        let n = LONG
            .parse(format!("{data}\n").as_bytes())
            .unwrap_or_else(|| panic!("not a whole line after line {previous:?}: {ev:?}"));
        assert_eq!(
            ev.id,
            Some(((n + 1) * LONG.len() as u64).to_string()),
            "the id of line {n} (after line {previous:?})"
        );
        if previous.is_some_and(|p| p + 1 != n) {
            skips += 1;
        }
        previous = Some(n);
    }
    assert!(skips >= 1, "it was skipped ahead");
    assert_eq!(previous, Some(lines - 1));
    assert!(matches!(events.next().await, Ev::End));
    drop(conn);
    setup.server.wait_empty().await;
    setup.server.stop().await;
}

/// Receivers still reading what is left of an ended live stream are live
/// receivers: the registry counts them until they leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn receivers_still_reading_an_ended_live_stream_are_counted() {
    let (setup, _) = lines_past_a_stalled_receiver("stalled-count", &[]).await;
    // The sender has ended; the stalled receiver has read nothing yet
    // and is still connected and served.
    assert_eq!(setup.server.relay.stats().live_receivers, 1);
    let (conn, response) = setup.stalled.head().await;
    let _ = read_all(response.into_body()).await;
    drop(conn);
    setup.server.wait_empty().await;
    setup.server.stop().await;
}

/// Unframed (`application/octet-stream`): a hole would corrupt the
/// stream, so the stalled receiver gets what it held, an intact prefix,
/// then an aborted response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_receiver_of_an_unframed_stream_is_dropped() {
    let total = (4 * LIVE_WINDOW + LIVE_WINDOW / 2) as u64;
    let make = |from: u64, to: u64| pattern(7, from, to);
    let mut at = 0u64;
    let check = move |piece: &[u8]| {
        assert!(
            piece == pattern(7, at, at + piece.len() as u64).as_slice(),
            "the fast receiver's bytes at {at}"
        );
        at += piece.len() as u64;
    };
    let setup = send_past_a_stalled_receiver(
        "stalled-bytes",
        "application/octet-stream",
        &[],
        total,
        256 << 10,
        make,
        check,
    )
    .await;
    let (conn, response) = setup.stalled.head().await;
    assert_eq!(response.status(), 200);
    let (got, end) = read_all(response.into_body()).await;
    println!(
        "the stalled receiver of an unframed stream read {} of {} bytes, then {end:?}",
        got.len(),
        setup.total
    );
    assert!(
        end.is_err(),
        "the stalled receiver is dropped with an aborted response"
    );
    assert!((got.len() as u64) < setup.total);
    assert!(
        got == pattern(7, 0, got.len() as u64),
        "what it got is an intact prefix"
    );
    drop(conn);
    setup.server.wait_empty().await;
    setup.server.stop().await;
}

/// Bytes `from..to` of an endless deterministic stream (4-byte blocks of
/// a hash of the block number), cheap to check anywhere.
fn pattern(seed: u64, from: u64, to: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((to - from) as usize);
    for at in from..to {
        let block = at / 4;
        let word = (block ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        out.push((word >> (8 * (at % 4))) as u8);
    }
    out
}

// ---------------------------------------------------------------------
// 3. multipart/x-mixed-replace: late joiners start at a part
// ---------------------------------------------------------------------

const BOUNDARY: &[u8] = b"--frame\r\n";

/// Part `i`: its 8-byte number then pseudo-random bytes with no `-` (so
/// no payload holds the boundary), 500 to 20 499 bytes.
fn payload(i: u64) -> Vec<u8> {
    let n = 500 + (i * 7919) % 20_000;
    let mut out = i.to_be_bytes().to_vec();
    out.extend(
        common::Pattern::new(i + 1)
            .bytes(n as usize - 8)
            .iter()
            .map(|&b| if b == b'-' { b'+' } else { b }),
    );
    out
}

fn part(i: u64) -> Vec<u8> {
    let body = payload(i);
    let mut out = format!(
        "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads whole parts off a body: `Ok(Some(i))` a whole part `i`,
/// `Ok(None)` the clean end, `Err` anything else.
struct Parts {
    body: Body,
    buf: BytesMut,
    ended: Option<Result<(), String>>,
}

impl Parts {
    fn new(body: RespBody) -> Self {
        Parts {
            body: Body::new(body),
            buf: BytesMut::new(),
            ended: None,
        }
    }

    /// Makes `n` bytes available; `false` if the body ended first.
    async fn fill(&mut self, n: usize) -> bool {
        for _ in 0..MAX_PIECES {
            if self.buf.len() >= n {
                return true;
            }
            if self.ended.is_some() {
                return false;
            }
            match piece(&mut self.body).await {
                Piece::Data(d) => self.buf.extend_from_slice(&d),
                Piece::End => self.ended = Some(Ok(())),
                Piece::Cut(e) => self.ended = Some(Err(e)),
            }
        }
        panic!("more than {MAX_PIECES} pieces");
    }

    async fn next(&mut self) -> Result<Option<u64>, String> {
        if !self.fill(1).await {
            return match &self.ended {
                Some(Err(e)) => Err(format!("cut: {e}")),
                _ => Ok(None),
            };
        }
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 4096 || !self.fill(self.buf.len() + 1).await {
                return Err(format!(
                    "no part head in {:?}",
                    &self.buf[..self.buf.len().min(80)]
                ));
            }
        };
        let head = self.buf.split_to(head_end);
        let text = String::from_utf8_lossy(&head).into_owned();
        let length = text
            .strip_prefix("--frame\r\nContent-Type: image/jpeg\r\nContent-Length: ")
            .and_then(|rest| rest.strip_suffix("\r\n\r\n"))
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| format!("not a part head: {text:?}"))?;
        if !self.fill(length + 2).await {
            return Err(format!("a part cut short: {length} bytes announced"));
        }
        let body = self.buf.split_to(length + 2);
        let i = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
        if body[..length] != payload(i)[..] || &body[length..] != b"\r\n" {
            return Err(format!("part {i} is not whole"));
        }
        Ok(Some(i))
    }
}

/// A sender of `multipart/x-mixed-replace; boundary=frame` parts cut
/// anywhere (boundaries split across pieces); an anchor joined before it
/// gets every part from 0; six late joiners (HTTP/1.1, h2c, HTTP/3) join
/// as the anchor's count passes their moment. Each late joiner's first
/// bytes are exactly `--frame\r\n`, and every part it gets is whole and in
/// order to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiners_of_a_multipart_stream_start_at_a_part() {
    const PARTS: u64 = 400;
    const JOINERS: u64 = 6;
    let server = Server::start().await;
    let path = common::path("live-parts");
    let live = format!("{path}?live");
    let anchor = Pending::get(&server, Proto::Http11, &live, &[]).await;
    server
        .wait_for("the anchor waits", |s| s.live_receivers == 1)
        .await;
    let (seen_tx, seen) = watch::channel(0u64);
    let anchor = tokio::spawn(async move {
        let (_conn, response) = anchor.head().await;
        assert_eq!(
            common::header(&response, "content-type"),
            Some("multipart/x-mixed-replace; boundary=frame")
        );
        let mut parts = Parts::new(response.into_body());
        for n in 0..=PARTS {
            match parts.next().await {
                Ok(Some(i)) => {
                    assert_eq!(i, n, "the anchor's parts are all there, in order");
                    seen_tx.send_replace(n + 1);
                }
                Ok(None) => return n,
                Err(e) => panic!("the anchor, part {n}: {e}"),
            }
        }
        panic!("more than {PARTS} parts");
    });

    let protos = [Proto::Http11, Proto::H2c, Proto::H3];
    let (joined_tx, mut joined) = watch::channel(0u64);
    let target = Target::from(&server);
    let joiners: Vec<_> = (0..JOINERS)
        .map(|k| {
            let join_at = 1 + k * PARTS / (JOINERS + 1) + k * 13;
            let proto = protos[k as usize % protos.len()];
            let mut seen = seen.clone();
            let joined_tx = joined_tx.clone();
            let target = target.clone();
            let live = live.clone();
            let task = tokio::spawn(async move {
                within("the joiner's moment", seen.wait_for(|&n| n >= join_at))
                    .await
                    .expect("the anchor is alive");
                let (_conn, response) =
                    common::request(target, proto, "GET", &live, &[], common::empty()).await;
                assert_eq!(response.status(), 200);
                joined_tx.send_modify(|n| *n += 1);
                let mut parts = Parts::new(response.into_body());
                assert!(parts.fill(BOUNDARY.len()).await, "joiner {k}: no data");
                assert_eq!(
                    &parts.buf[..BOUNDARY.len()],
                    BOUNDARY,
                    "joiner {k} ({proto:?}) starts exactly at a part boundary"
                );
                let mut got: Vec<u64> = Vec::new();
                for _ in 0..=PARTS {
                    match parts.next().await {
                        Ok(Some(i)) => {
                            if let Some(last) = got.last() {
                                assert_eq!(i, last + 1, "joiner {k} ({proto:?}): parts in order");
                            }
                            got.push(i);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            panic!("joiner {k} ({proto:?}) after parts {:?}: {e}", got.last())
                        }
                    }
                }
                (join_at, got)
            });
            (join_at, task)
        })
        .collect();
    drop(joined_tx);

    let mut sender = LiveSender::open(
        &server,
        Proto::H2c,
        &path,
        Some("multipart/x-mixed-replace; boundary=frame"),
    )
    .await;
    let mut rng = Rng::new(3);
    let mut total = 0;
    for i in 0..PARTS {
        let data = part(i);
        total += data.len() as u64;
        sender.feed(&mut rng, &data, 3_000).await;
        let due = joiners.iter().filter(|(at, _)| *at <= i + 1).count() as u64;
        within(
            format!("{due} joiners to have joined by part {i}"),
            joined.wait_for(|&n| n >= due),
        )
        .await
        .expect("joiners are alive");
    }
    let log = sender.finish().await;
    assert_eq!(
        log,
        format!("{LIVE_STARTED}[INFO] Live stream ended after {total} bytes.\n")
    );
    assert_eq!(
        within("the anchor", anchor).await.expect("anchor task"),
        PARTS
    );
    for (_, task) in joiners {
        let (join_at, got) = within("a joiner", task).await.expect("joiner task");
        assert!(!got.is_empty());
        assert!(
            got[0] + 1 >= join_at,
            "joined at part {join_at}, started at {}",
            got[0]
        );
        assert_eq!(got.last(), Some(&(PARTS - 1)), "reads to the end");
    }
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// 4. SSE on a live stream: ids are offsets, Last-Event-ID resumes exactly
// ---------------------------------------------------------------------

/// One Server-Sent Event (or comment, or `retry`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Event {
    event: Option<String>,
    id: Option<String>,
    /// The `data:` lines joined by `\n`.
    data: Option<String>,
    retry: Option<String>,
    comment: Option<String>,
}

#[derive(Debug)]
enum Ev {
    Event(Event),
    End,
    Cut(String),
}

/// A body read event by event.
struct Events {
    body: Body,
    buf: BytesMut,
    ended: Option<Result<(), String>>,
}

impl Events {
    fn new(response: http::Response<RespBody>) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(
            common::header(&response, "content-type"),
            Some("text/event-stream")
        );
        assert_eq!(common::header(&response, "cache-control"), Some("no-cache"));
        Events {
            body: Body::new(response.into_body()),
            buf: BytesMut::new(),
            ended: None,
        }
    }

    async fn next(&mut self) -> Ev {
        for _ in 0..MAX_PIECES {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = self.buf.split_to(i + 2);
                let text = std::str::from_utf8(&block[..i]).expect("UTF-8 events");
                let mut ev = Event::default();
                for line in text.split('\n') {
                    if let Some(comment) = line.strip_prefix(':') {
                        ev.comment = Some(comment.trim_start().to_owned());
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    match field {
                        "event" => ev.event = Some(value),
                        "id" => ev.id = Some(value),
                        "retry" => ev.retry = Some(value),
                        "data" => {
                            ev.data = Some(match ev.data.take() {
                                Some(d) => format!("{d}\n{value}"),
                                None => value,
                            })
                        }
                        other => panic!("unknown field {other:?} in {text:?}"),
                    }
                }
                return Ev::Event(ev);
            }
            match &self.ended {
                Some(_) if !self.buf.is_empty() => {
                    panic!("the event stream ended inside an event: {:?}", self.buf)
                }
                Some(Ok(())) => return Ev::End,
                Some(Err(e)) => return Ev::Cut(e.clone()),
                None => {}
            }
            match piece(&mut self.body).await {
                Piece::Data(d) => self.buf.extend_from_slice(&d),
                Piece::End => self.ended = Some(Ok(())),
                Piece::Cut(e) => self.ended = Some(Err(e)),
            }
        }
        panic!("more than {MAX_PIECES} pieces for one event");
    }

    async fn event(&mut self, what: &str) -> Event {
        match self.next().await {
            Ev::Event(ev) => ev,
            other => panic!("{what}: expected an event, got {other:?}"),
        }
    }

    /// The `retry: 2000` every event stream opens with.
    async fn opening(&mut self) {
        let ev = self.event("the opening").await;
        assert_eq!(
            ev,
            Event {
                retry: Some("2000".into()),
                ..Event::default()
            }
        );
    }

    /// The next line event: `(id, data)`.
    async fn line(&mut self, what: &str) -> (u64, String) {
        let ev = self.event(what).await;
        assert_eq!(
            (&ev.event, &ev.retry, &ev.comment),
            (&None, &None, &None),
            "{what}: {ev:?}"
        );
        let id = ev.id.as_deref().and_then(|i| i.parse().ok());
        match (id, ev.data) {
            (Some(id), Some(data)) => (id, data),
            _ => panic!("{what}: not a data event with an id"),
        }
    }

    /// Every event up to the body's end: the events, then `Ok` for a
    /// clean end or `Err` for a cut.
    async fn rest(&mut self) -> (Vec<Event>, Result<(), String>) {
        let mut got = Vec::new();
        for _ in 0..MAX_PIECES {
            match self.next().await {
                Ev::Event(ev) => got.push(ev),
                Ev::End => return (got, Ok(())),
                Ev::Cut(e) => return (got, Err(e)),
            }
        }
        panic!("more than {MAX_PIECES} events");
    }

    /// `event: end` then the body's clean end.
    async fn end(&mut self, what: &str) {
        let ev = self.event(what).await;
        assert_eq!(
            (ev.event.as_deref(), ev.data.as_deref()),
            (Some("end"), Some("")),
            "{what}: {ev:?}"
        );
        assert!(
            matches!(self.next().await, Ev::End),
            "{what}: a clean end after `end`"
        );
    }
}

/// The line event for line `i` of [`SHORT`] lines: its id is the offset
/// just after the line.
fn short_event(i: u64) -> (u64, String) {
    let len = SHORT.len() as u64;
    let line = SHORT.line(i);
    ((i + 1) * len, line.trim_end().to_owned())
}

/// Text: an `EventSource`-like receiver (Accept: text/event-stream) joined
/// before the sender gets one event per line with the offset after it as
/// id; it leaves after K events, the stream moves on, and it comes back
/// with `Last-Event-ID`: the next event is exactly the next line, from the
/// window, though the live edge is far ahead. `?lastEventId=` does the
/// same without headers; a new joiner with no id starts at the newest
/// line; all end with `event: end`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_on_a_live_text_stream_resumes_at_the_last_event_id() {
    const K: u64 = 700;
    let server = Server::start().await;
    let path = common::path("live-sse");
    let live = format!("{path}?live");
    let sse = [("accept", "text/event-stream")];
    let first = Pending::get(&server, Proto::H2c, &live, &sse).await;
    server
        .wait_for("the SSE receiver waits", |s| s.live_receivers == 1)
        .await;
    let mut sender = LiveSender::open(&server, Proto::Http11, &path, Some("text/plain")).await;
    let mut rng = Rng::new(4);
    sender.feed(&mut rng, &SHORT.lines(0, 2_000), 700).await;

    let (conn, response) = first.head().await;
    let mut events = Events::new(response);
    events.opening().await;
    let mut last_id = 0;
    for i in 0..K {
        let (id, data) = events.line("the first receiver").await;
        assert_eq!((id, data), short_event(i), "event {i}");
        last_id = id;
    }
    // Leaves; the stream moves on without it.
    drop(events);
    drop(conn);
    server
        .wait_for("the SSE receiver left", |s| s.live_receivers == 0)
        .await;
    sender.feed(&mut rng, &SHORT.lines(2_000, 4_000), 700).await;

    let last = last_id.to_string();
    let (conn, response) = common::request(
        &server,
        Proto::Http11,
        "GET",
        &live,
        &[("accept", "text/event-stream"), ("last-event-id", &last)],
        common::empty(),
    )
    .await;
    let mut resumed = Events::new(response);
    resumed.opening().await;
    for i in K..4_000 {
        let got = resumed.line("the resumed receiver").await;
        assert_eq!(
            got,
            short_event(i),
            "resumed at id {last_id}: no gap, no repeat"
        );
    }
    // The same with the query instead of headers.
    let (conn2, response) = common::request(
        &server,
        Proto::H3,
        "GET",
        &format!("{live}&sse&lastEventId={}", short_event(1499).0),
        &[],
        common::empty(),
    )
    .await;
    let mut by_query = Events::new(response);
    by_query.opening().await;
    assert_eq!(by_query.line("?lastEventId").await, short_event(1500));
    // A new joiner without an id starts at the newest line: the relay has
    // lines up to 3 999 (the resumed receiver read them) and no more.
    let (conn3, response) =
        common::request(&server, Proto::H2c, "GET", &live, &sse, common::empty()).await;
    let mut fresh = Events::new(response);
    fresh.opening().await;
    assert_eq!(fresh.line("a fresh joiner").await, short_event(3_999));

    sender.feed(&mut rng, &SHORT.lines(4_000, 4_100), 700).await;
    let log = sender.finish().await;
    assert_eq!(sender_bytes(&log), 4_100 * SHORT.len() as u64);
    for i in 4_000..4_100 {
        assert_eq!(resumed.line("the resumed receiver").await, short_event(i));
    }
    resumed.end("the resumed receiver").await;
    for i in 1501..4_100 {
        assert_eq!(by_query.line("?lastEventId").await, short_event(i));
    }
    by_query.end("?lastEventId").await;
    for i in 4_000..4_100 {
        assert_eq!(fresh.line("the fresh joiner").await, short_event(i));
    }
    fresh.end("the fresh joiner").await;
    drop((conn, conn2, conn3));
    server.wait_empty().await;
    server.stop().await;
}

/// Binary: `?sse=binary` on an `application/octet-stream` live stream gives
/// `event: binary` events whose base64 decodes to the bytes, each id the
/// offset after them; a receiver resuming with `Last-Event-ID` in the
/// middle continues at exactly that byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_binary_on_a_live_stream_decodes_to_the_bytes_and_resumes() {
    const TOTAL: u64 = 1 << 20;
    let server = Server::start().await;
    let path = common::path("live-sse-bin");
    let data = pattern(11, 0, TOTAL);
    let first = Pending::get(
        &server,
        Proto::Http11,
        &format!("{path}?live&sse=binary"),
        &[],
    )
    .await;
    server
        .wait_for("the SSE receiver waits", |s| s.live_receivers == 1)
        .await;
    let mut sender = LiveSender::open(
        &server,
        Proto::Http11,
        &path,
        Some("application/octet-stream"),
    )
    .await;
    let mut rng = Rng::new(5);
    sender
        .feed(&mut rng, &data[..TOTAL as usize / 2], 10_000)
        .await;

    let b64 = base64::engine::general_purpose::STANDARD;
    let (conn, response) = first.head().await;
    let mut events = Events::new(response);
    events.opening().await;
    let mut got = Vec::new();
    let mut ids = 0;
    // Read events until a quarter has come, then leave.
    for _ in 0..MAX_PIECES {
        if got.len() >= TOTAL as usize / 4 {
            break;
        }
        let ev = events.event("a binary event").await;
        assert_eq!(ev.event.as_deref(), Some("binary"), "{ev:?}");
        let bytes = b64
            .decode(ev.data.as_deref().expect("data"))
            .expect("base64");
        got.extend_from_slice(&bytes);
        assert_eq!(
            ev.id,
            Some(got.len().to_string()),
            "the id is the offset after the bytes"
        );
        ids += 1;
    }
    assert!(
        got == data[..got.len()],
        "the decoded bytes are the sent bytes"
    );
    let resume_at = got.len();
    drop(events);
    drop(conn);
    server
        .wait_for("the SSE receiver left", |s| s.live_receivers == 0)
        .await;

    let (conn, response) = common::request(
        &server,
        Proto::H2,
        "GET",
        &format!("{path}?live"),
        &[
            ("accept", "text/event-stream"),
            ("last-event-id", &resume_at.to_string()),
        ],
        common::empty(),
    )
    .await;
    // An octet-stream is binary without asking.
    let mut resumed = Events::new(response);
    resumed.opening().await;
    let feeding = tokio::spawn(async move {
        sender
            .feed(&mut rng, &data[TOTAL as usize / 2..], 10_000)
            .await;
        sender.finish().await
    });
    let mut at = resume_at;
    for _ in 0..MAX_PIECES {
        match resumed.next().await {
            Ev::Event(ev) if ev.event.as_deref() == Some("binary") => {
                let bytes = b64
                    .decode(ev.data.as_deref().expect("data"))
                    .expect("base64");
                assert!(
                    bytes == pattern(11, at as u64, (at + bytes.len()) as u64),
                    "resumed bytes at {at}"
                );
                at += bytes.len();
                assert_eq!(ev.id, Some(at.to_string()));
            }
            Ev::Event(ev) => {
                assert_eq!(
                    (ev.event.as_deref(), ev.data.as_deref()),
                    (Some("end"), Some(""))
                );
                break;
            }
            other => panic!("the resumed binary receiver: {other:?}"),
        }
    }
    assert!(matches!(resumed.next().await, Ev::End));
    assert_eq!(
        at as u64, TOTAL,
        "resumed at {resume_at} and read to the end"
    );
    let log = within("the sender", feeding).await.expect("sender task");
    assert_eq!(sender_bytes(&log), TOTAL);
    println!("binary SSE: {ids} events for the first {resume_at} bytes, resumed there");
    drop(conn);
    server.wait_empty().await;
    server.stop().await;
}

// ---------------------------------------------------------------------
// 5. SSE on ordinary transfers
// ---------------------------------------------------------------------

/// `curl` with no proxy and a bound on its run time.
fn curl(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--noproxy", "*", "--max-time", "60"])
        .args(args)
        .env_remove("CURL_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `seq 1 5 | curl -T - URL` (real curl, a chunked upload of unknown
/// size) to a receiver with `Accept: text/event-stream` waiting first: five
/// events with the offsets after each line, then `event: end`; the sender
/// gets its ordinary Piping log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_on_an_ordinary_transfer_from_curl() {
    let server = Server::start().await;
    let path = common::path("sse-plain");
    let receiver = Pending::get(
        &server,
        Proto::Http11,
        &path,
        &[("accept", "text/event-stream")],
    )
    .await;
    server
        .wait_for("the SSE receiver waits", |s| s.waiting_receivers == 1)
        .await;
    let mut child = match curl(&["-T", "-", &server.url(&path)]).spawn() {
        Ok(child) => child,
        Err(e) => panic!(
            "cannot start curl: {e}; install the `curl` package (scripts/test.sh does), \
             this test never skips"
        ),
    };
    let mut stdin = child.stdin.take().expect("curl's stdin");
    within("curl's stdin", stdin.write_all(b"1\n2\n3\n4\n5\n"))
        .await
        .expect("write to curl");
    drop(stdin);
    let (conn, response) = receiver.head().await;
    let mut events = Events::new(response);
    events.opening().await;
    for i in 1..=5u64 {
        assert_eq!(events.line("curl's lines").await, (2 * i, i.to_string()));
    }
    events.end("curl's transfer").await;
    let out = within("curl", child.wait_with_output())
        .await
        .expect("curl ran");
    assert!(
        out.status.success(),
        "curl: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("[INFO] Sent successfully!\n")
            && log.ends_with("[INFO] All receiver(s) was/were received successfully.\n"),
        "curl's log: {log}"
    );
    drop(conn);
    server.wait_empty().await;
    server.stop().await;
}

/// A sender cut in the middle of an ordinary transfer: the `?sse`
/// receiver (HTTP/1.1, then h2c) gets the events so far, then an aborted
/// response; with `want_abort_event` the unfinished line and
/// `event: abort` before it.
async fn ordinary_cut(want_abort_event: bool) {
    let server = Server::start().await;
    for proto in [Proto::Http11, Proto::H2c] {
        let path = common::path("sse-cut");
        let receiver = Pending::get(&server, proto, &format!("{path}?sse"), &[]).await;
        server
            .wait_for("the SSE receiver waits", |s| s.waiting_receivers == 1)
            .await;
        let (tx, body) = common::streaming();
        let mut sender = Conn::open(&server, Proto::Http11).await;
        let sent = sender.send(sender.request("POST", &path).body(body).expect("request"));
        let _sent = tokio::spawn(sent);
        let (conn, response) = receiver.head().await;
        let mut events = Events::new(response);
        events.opening().await;
        within(
            "the sender's body",
            tx.send(Ok(Bytes::from_static(b"one\ntwo\nthr"))),
        )
        .await
        .expect("send");
        assert_eq!(events.line("before the cut").await, (4, "one".into()));
        assert_eq!(events.line("before the cut").await, (8, "two".into()));
        // The client fails its body and goes away.
        within(
            "the sender's body",
            tx.send(Err(std::io::Error::other("cut by the test"))),
        )
        .await
        .expect("cut");
        drop(sender);
        let (got, end) = events.rest().await;
        // The stream ends after `event: abort` (an aborted response could
        // lose the event on the way; EventSource cannot tell one anyway).
        assert!(
            end.is_ok(),
            "{proto:?}: the response ends after `event: abort`, got {got:?} then {end:?}"
        );
        let thr = Event {
            id: Some("11".into()),
            data: Some("thr".into()),
            ..Event::default()
        };
        if want_abort_event {
            assert_eq!(
                got.len(),
                2,
                "{proto:?}: the unfinished line and `abort`: {got:?}"
            );
            assert_eq!(got[0], thr, "{proto:?}");
            assert_eq!(got[1].event.as_deref(), Some("abort"), "{proto:?}: {got:?}");
        } else {
            assert!(
                got.iter()
                    .all(|e| *e == thr || e.event.as_deref() == Some("abort")),
                "{proto:?}: {got:?}"
            );
        }
        drop(conn);
        server.wait_empty().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_on_an_ordinary_transfer_whose_sender_is_cut() {
    ordinary_cut(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn sse_on_an_ordinary_transfer_whose_sender_is_cut_sends_event_abort() {
    ordinary_cut(true).await;
}

// ---------------------------------------------------------------------
// 6. Cleanup, refusals, separate registries
// ---------------------------------------------------------------------

/// Receivers waiting on a live path with no sender (HTTP/1.1, h2c,
/// HTTP/3) leave: the path is gone from the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_live_receivers_that_leave_are_forgotten() {
    let server = Server::start().await;
    let path = common::path("live-wait");
    let mut waiting = Vec::new();
    for proto in [Proto::Http11, Proto::H2c, Proto::H3] {
        waiting.push(Pending::get(&server, proto, &format!("{path}?live"), &[]).await);
    }
    waiting.push(
        Pending::get(
            &server,
            Proto::Http11,
            &format!("{path}?live"),
            &[("accept", "text/event-stream")],
        )
        .await,
    );
    server
        .wait_for("four live receivers wait", |s| {
            s.live_paths == 1 && s.live_receivers == 4
        })
        .await;
    waiting.remove(0).leave().await;
    server
        .wait_for("one left", |s| s.live_paths == 1 && s.live_receivers == 3)
        .await;
    for pending in waiting {
        pending.leave().await;
    }
    server.wait_empty().await;
    server.stop().await;
}

/// One live sender per path: a second gets 400 with the Piping message;
/// once the first has ended the path takes a new live stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_sender_is_refused() {
    let server = Server::start().await;
    let path = common::path("live-two");
    let first = LiveSender::open(&server, Proto::Http11, &path, None).await;
    server
        .wait_for("the live stream is open", |s| s.live_paths == 1)
        .await;
    for proto in [Proto::Http11, Proto::H2c] {
        let (_c, response) = common::request(
            &server,
            proto,
            "POST",
            &format!("{path}?live"),
            &[],
            common::full("second"),
        )
        .await;
        assert_eq!(response.status(), 400, "{proto:?}");
        assert_eq!(
            common::header(&response, "content-type"),
            Some("text/plain")
        );
        let body = common::read_body(response).await.expect("body");
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("[ERROR] Another sender has been connected on '{path}'.\n")
        );
    }
    assert_eq!(
        first.finish().await,
        format!("{LIVE_STARTED}[INFO] Live stream ended after 0 bytes.\n")
    );
    server.wait_empty().await;
    // The path is free again.
    let mut again = LiveSender::open(&server, Proto::H2c, &path, None).await;
    let (conn, response) = common::request(
        &server,
        Proto::Http11,
        "GET",
        &format!("{path}?live"),
        &[],
        common::empty(),
    )
    .await;
    let mut lines = Lines::new(response.into_body());
    again.feed(&mut Rng::new(6), b"again\n", 10).await;
    assert!(matches!(lines.next().await, Line::Text(l) if &l[..] == b"again\n"));
    assert!(again.finish().await.ends_with("ended after 6 bytes.\n"));
    assert!(matches!(lines.next().await, Line::End));
    drop(conn);
    server.wait_empty().await;
    server.stop().await;
}

/// A plain Piping transfer on the path of a live stream is its own
/// business: a plain receiver waiting there is not served by the live
/// sender, a plain sender then serves it exactly, and the live receiver
/// goes on unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_transfer_on_a_live_path_is_unaffected() {
    let server = Server::start().await;
    let path = common::path("live-and-plain");
    let plain_receiver = Pending::get(&server, Proto::Http11, &path, &[]).await;
    server
        .wait_for("the plain receiver waits", |s| s.waiting_receivers == 1)
        .await;
    let mut live = LiveSender::open(&server, Proto::Http11, &path, None).await;
    let (live_conn, response) = common::request(
        &server,
        Proto::H2c,
        "GET",
        &format!("{path}?live"),
        &[],
        common::empty(),
    )
    .await;
    let mut lines = Lines::new(response.into_body());
    let mut rng = Rng::new(7);
    live.feed(&mut rng, &SHORT.lines(0, 10), 5).await;
    for i in 0..10 {
        match lines.next().await {
            Line::Text(l) => assert_eq!(SHORT.parse(&l), Some(i)),
            other => panic!("live line {i}: {other:?}"),
        }
    }
    server
        .wait_for("both registries hold the path", |s| {
            s.waiting_receivers == 1
                && s.live_paths == 1
                && s.live_receivers == 1
                && s.transfers == 0
        })
        .await;
    let (_sc, sent) = common::request(
        &server,
        Proto::H2c,
        "PUT",
        &path,
        &[("content-type", "text/plain")],
        common::full("plain body"),
    )
    .await;
    assert_eq!(sent.status(), 200);
    let (_pc, received) = plain_receiver.head().await;
    assert_eq!(received.status(), 200);
    assert_eq!(common::header(&received, "content-length"), Some("10"));
    let body = common::read_body(received).await.expect("the plain body");
    assert_eq!(&body[..], b"plain body");
    let log = common::read_body(sent)
        .await
        .expect("the plain sender's log");
    assert!(
        String::from_utf8_lossy(&log).contains("[INFO] Sent successfully!\n"),
        "{}",
        String::from_utf8_lossy(&log)
    );
    live.feed(&mut rng, &SHORT.lines(10, 20), 5).await;
    let log = live.finish().await;
    assert_eq!(sender_bytes(&log), 20 * SHORT.len() as u64);
    for i in 10..20 {
        match lines.next().await {
            Line::Text(l) => assert_eq!(SHORT.parse(&l), Some(i)),
            other => panic!("live line {i}: {other:?}"),
        }
    }
    assert!(matches!(lines.next().await, Line::End));
    drop(live_conn);
    server.wait_empty().await;
    server.stop().await;
}

/// A live sender cut short: raw receivers (HTTP/1.1, h2c, HTTP/3) that
/// have read everything get an aborted response; SSE receivers (HTTP/1.1,
/// h2c, HTTP/3) get an aborted response too, and with `want_abort_event`
/// the `event: abort` before it.
async fn cut_live_sender(want_abort_event: bool) {
    let server = Server::start().await;
    let path = common::path("live-cut");
    let live = format!("{path}?live");
    let protos = [Proto::Http11, Proto::H2c, Proto::H3];
    let mut raw = Vec::new();
    let mut sse = Vec::new();
    for proto in protos {
        raw.push((proto, Pending::get(&server, proto, &live, &[]).await));
        sse.push((
            proto,
            Pending::get(&server, proto, &live, &[("accept", "text/event-stream")]).await,
        ));
    }
    server
        .wait_for("six receivers wait", |s| s.live_receivers == 6)
        .await;
    let mut sender = LiveSender::open(&server, Proto::Http11, &path, None).await;
    sender.feed(&mut Rng::new(8), b"one\ntwo\n", 3).await;
    let mut readers = Vec::new();
    for (proto, pending) in raw {
        let (conn, response) = pending.head().await;
        let mut lines = Lines::new(response.into_body());
        for want in [&b"one\n"[..], b"two\n"] {
            let got = lines.next().await;
            assert!(
                matches!(&got, Line::Text(l) if &l[..] == want),
                "{proto:?}: {got:?}"
            );
        }
        readers.push((proto, conn, lines));
    }
    let mut watchers = Vec::new();
    for (proto, pending) in sse {
        let (conn, response) = pending.head().await;
        let mut events = Events::new(response);
        events.opening().await;
        assert_eq!(events.line("before the cut").await, (4, "one".into()));
        assert_eq!(events.line("before the cut").await, (8, "two".into()));
        watchers.push((proto, conn, events));
    }
    sender.cut().await;
    for (proto, _conn, lines) in &mut readers {
        let end = lines.next().await;
        assert!(
            matches!(end, Line::Cut(_)),
            "{proto:?}: the raw receiver is aborted, got {end:?}"
        );
    }
    for (proto, _conn, events) in &mut watchers {
        let (got, end) = events.rest().await;
        assert!(
            end.is_ok(),
            "{proto:?}: the SSE response ends after `event: abort`, got {got:?} then {end:?}"
        );
        let abort: Vec<_> = got.iter().map(|e| e.event.as_deref()).collect();
        if want_abort_event {
            assert_eq!(
                abort,
                [Some("abort")],
                "{proto:?}: `event: abort` then the abort: {got:?}"
            );
        } else {
            assert!(
                abort.iter().all(|e| *e == Some("abort")),
                "{proto:?}: {got:?}"
            );
        }
    }
    drop((readers, watchers));
    server.wait_empty().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_live_sender_aborts_its_receivers() {
    cut_live_sender(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_cut_live_sender_sends_event_abort() {
    cut_live_sender(true).await;
}
