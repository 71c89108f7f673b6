//! The core without sockets: rendezvous, rejections, fan-out and cleanup,
//! with in-memory senders and receivers.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::*;

/// A sender body the test feeds; `Err` cuts it.
fn body() -> (mpsc::Sender<Result<Bytes, BodyError>>, ByteStream) {
    let (tx, rx) = mpsc::channel(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (tx, Box::pin(stream))
}

fn head() -> Head {
    Head {
        content_type: Some(Bytes::from_static(b"text/plain")),
        ..Head::default()
    }
}

async fn collect(stream: ReceiverStream) -> Result<Vec<u8>, Aborted> {
    collect_pinned(std::pin::pin!(stream)).await
}

/// The rest of a stream already read from.
async fn collect_pinned(
    mut stream: std::pin::Pin<&mut ReceiverStream>,
) -> Result<Vec<u8>, Aborted> {
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        out.extend_from_slice(&item?);
    }
    Ok(out)
}

async fn lines(log: SenderLog) -> Vec<Log> {
    log.collect().await
}

/// The only receiver of `path`, once its transfer starts.
async fn started(relay: &Relay, path: &str) -> Delivery {
    relay
        .receive(path, 1)
        .expect("receiver")
        .ready()
        .await
        .expect("start")
}

async fn settle(relay: &Relay, pred: impl Fn(&Stats) -> bool) {
    let (stats, ok) = relay.wait_until(Duration::from_secs(10), pred).await;
    assert!(ok, "{stats:?}");
}

#[tokio::test]
async fn sender_first_then_receiver() {
    let relay = Relay::default();
    let (tx, b) = body();
    let log = tokio::spawn(lines(relay.send("/p", 1, head(), b).expect("sender")));
    let ticket = relay.receive("/p", 1).expect("receiver");
    let delivery = ticket.ready().await.expect("start");
    assert_eq!(delivery.head, head());
    tx.send(Ok(Bytes::from_static(b"hello")))
        .await
        .expect("feed");
    drop(tx);
    assert_eq!(collect(delivery.body).await, Ok(b"hello".to_vec()));
    assert_eq!(
        log.await.expect("log"),
        [
            Log::Waiting(1),
            Log::ReceiverConnected,
            Log::Start(1),
            Log::Sent,
            Log::AllReceived
        ]
    );
    settle(&relay, |s| *s == Stats::default()).await;
}

#[tokio::test]
async fn receivers_first_with_fan_out() {
    let relay = Relay::default();
    let a = relay.receive("/p", 2).expect("a");
    assert_eq!(
        relay.receive("/p", 3).err(),
        Some(Reject::CountMismatch {
            expected: 2,
            got: 3
        })
    );
    let b = relay.receive("/p", 2).expect("b");
    assert_eq!(relay.receive("/p", 2).err(), Some(Reject::ReceiversFull));
    let (tx, body_stream) = body();
    assert_eq!(
        relay.send("/p", 1, head(), body().1).err(),
        Some(Reject::CountMismatch {
            expected: 2,
            got: 1
        })
    );
    let log = tokio::spawn(lines(
        relay.send("/p", 2, head(), body_stream).expect("sender"),
    ));
    assert_eq!(
        relay.send("/p", 2, head(), body().1).err(),
        Some(Reject::Established("/p".into()))
    );
    let (a, b) = (a.ready().await.expect("a"), b.ready().await.expect("b"));
    let feed = tokio::spawn(async move {
        for i in 0..100u8 {
            tx.send(Ok(Bytes::from(vec![i; 1000]))).await.expect("feed");
        }
    });
    let (ra, rb) = tokio::join!(collect(a.body), collect(b.body));
    feed.await.expect("feed");
    assert_eq!(ra.expect("a").len(), 100_000);
    assert_eq!(rb.expect("b").len(), 100_000);
    let log = log.await.expect("log");
    assert_eq!(
        log[..3],
        [Log::Waiting(2), Log::ReceiversPresent(2), Log::Start(2)]
    );
    assert_eq!(log.last(), Some(&Log::AllReceived));
}

#[tokio::test]
async fn waiting_peers_that_leave_are_forgotten() {
    let relay = Relay::default();
    let ticket = relay.receive("/r", 1).expect("receiver");
    drop(ticket);
    assert_eq!(relay.stats(), Stats::default());
    let log = relay.send("/s", 1, head(), body().1).expect("sender");
    assert_eq!(
        relay.send("/s", 1, head(), body().1).err(),
        Some(Reject::AnotherSender("/s".into()))
    );
    drop(log);
    settle(&relay, |s| *s == Stats::default()).await;
    // Reused at once.
    let _log = relay.send("/s", 1, head(), body().1).expect("sender again");
}

#[tokio::test]
async fn a_sender_whose_body_fails_while_waiting_is_forgotten() {
    let relay = Relay::default();
    let (tx, b) = body();
    let _log = tokio::spawn(lines(relay.send("/s", 1, head(), b).expect("sender")));
    tx.send(Err("gone".into())).await.expect("feed");
    settle(&relay, |s| *s == Stats::default()).await;
}

#[tokio::test]
async fn a_cut_sender_aborts_every_receiver() {
    let relay = Relay::default();
    let (tx, b) = body();
    let log = tokio::spawn(lines(relay.send("/p", 2, head(), b).expect("sender")));
    let a = relay.receive("/p", 2).expect("a");
    let b = relay.receive("/p", 2).expect("b");
    let (a, b) = (a.ready().await.expect("a"), b.ready().await.expect("b"));
    tx.send(Ok(Bytes::from_static(b"part")))
        .await
        .expect("feed");
    tx.send(Err("cut".into())).await.expect("feed");
    assert_eq!(collect(a.body).await, Err(Aborted));
    assert_eq!(collect(b.body).await, Err(Aborted));
    assert_eq!(log.await.expect("log").last(), Some(&Log::SendFailed));
    settle(&relay, |s| *s == Stats::default()).await;
}

/// A sender whose connection closes once its whole upload is in (it did
/// not wait for its log) leaves a slow receiver with every byte and a
/// clean end; one that leaves before that cuts it.
#[tokio::test]
async fn a_sender_that_leaves_after_its_whole_upload_still_delivers_it() {
    for (declared, leaves_early) in [(true, false), (false, false), (true, true)] {
        let case = format!("declared length {declared}, leaves early {leaves_early}");
        let relay = Relay::new(RelayConfig {
            queue_chunks: 1,
            read_ahead: 0,
            ..RelayConfig::default()
        });
        let (tx, b) = body();
        let head = Head {
            content_length: declared.then_some(10_000),
            ..head()
        };
        // The sender's connection: it forwards its log, until it leaves.
        let mut log = relay.send("/p", 1, head, b).expect("sender");
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let connection = tokio::spawn(async move {
            while let Some(line) = log.next().await {
                let _ = lines_tx.send(line);
            }
        });
        let delivery = started(&relay, "/p").await;
        let chunks = if leaves_early { 5 } else { 10 };
        let feed = tokio::spawn(async move {
            for i in 0..chunks {
                tx.send(Ok(Bytes::from(vec![i as u8; 1000])))
                    .await
                    .expect("feed");
            }
            // Early: the sender stays connected, its upload unfinished.
            leaves_early.then_some(tx)
        });
        // The receiver reads slowly, until the relay has the whole upload
        // (or, early, half of it); then the sender's connection closes.
        let mut body = std::pin::pin!(delivery.body);
        let mut got = Vec::new();
        let mut sent_line = false;
        for _ in 0..20 {
            while let Ok(line) = lines.try_recv() {
                sent_line |= line == Log::Sent;
            }
            let read = relay.totals().bytes;
            let whole = if declared { read == 10_000 } else { sent_line };
            if whole || (leaves_early && read == 5_000) {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(10), body.next()).await {
                Ok(Some(Ok(chunk))) => got.extend_from_slice(&chunk),
                other => panic!("{case}: {other:?} before the upload was in"),
            }
        }
        connection.abort();
        let _ = connection.await;
        let rest = collect_pinned(body.as_mut()).await;
        let _still_connected = feed.await.expect("feed");
        if leaves_early {
            assert_eq!(rest, Err(Aborted), "{case}");
        } else {
            got.extend_from_slice(&rest.unwrap_or_else(|e| panic!("{case}: {e:?}")));
            assert_eq!(got.len(), 10_000, "{case}");
            assert!(
                got.chunks(1000)
                    .enumerate()
                    .all(|(i, c)| c.iter().all(|&b| b == i as u8)),
                "{case}"
            );
        }
        settle(&relay, |s| *s == Stats::default()).await;
    }
}

#[tokio::test]
async fn a_slow_receiver_holds_the_sender_back_with_bounded_memory() {
    let relay = Relay::new(RelayConfig {
        queue_chunks: 2,
        read_ahead: 0,
        ..RelayConfig::default()
    });
    let (tx, b) = body();
    let _log = tokio::spawn(lines(relay.send("/p", 1, head(), b).expect("sender")));
    let r = relay.receive("/p", 1).expect("r");
    let delivery = r.ready().await.expect("start");
    // Nobody reads: the sender gets a bounded number of chunks in (the
    // queue, the one being sent, the body channel's slot), then waits.
    let mut accepted = 0;
    for _ in 0..100 {
        let sent = tokio::time::timeout(
            Duration::from_millis(50),
            tx.send(Ok(Bytes::from_static(b"chunk"))),
        )
        .await;
        if sent.is_err() {
            break;
        }
        accepted += 1;
    }
    assert!(
        accepted <= 5,
        "accepted {accepted} chunks with nobody reading"
    );
    drop(delivery);
}

#[tokio::test]
async fn one_receiver_leaving_does_not_disturb_the_other() {
    let relay = Relay::default();
    let (tx, b) = body();
    let log = tokio::spawn(lines(relay.send("/p", 2, head(), b).expect("sender")));
    let a = relay.receive("/p", 2).expect("a").ready();
    let b = relay.receive("/p", 2).expect("b").ready();
    let (a, b) = tokio::join!(a, b);
    drop(a);
    let b = b.expect("b");
    let feed = tokio::spawn(async move {
        for _ in 0..50 {
            tx.send(Ok(Bytes::from(vec![1u8; 100])))
                .await
                .expect("feed");
        }
    });
    assert_eq!(collect(b.body).await.expect("b").len(), 5000);
    feed.await.expect("feed");
    let log = log.await.expect("log");
    assert!(log.contains(&Log::ReceiverAborted), "{log:?}");
    assert!(!log.contains(&Log::AllAborted), "{log:?}");
}

#[tokio::test]
async fn a_known_length_receiver_that_stops_polling_counts_as_complete() {
    let relay = Relay::default();
    let (tx, b) = body();
    let head = Head {
        content_length: Some(3),
        ..Head::default()
    };
    let log = tokio::spawn(lines(relay.send("/p", 1, head, b).expect("sender")));
    let delivery = started(&relay, "/p").await;
    tx.send(Ok(Bytes::from_static(b"abc"))).await.expect("feed");
    let mut stream = Box::pin(delivery.body);
    assert_eq!(stream.next().await, Some(Ok(Bytes::from_static(b"abc"))));
    assert!(stream.is_complete());
    // A transport that knows the length is done drops the stream here.
    drop(stream);
    drop(tx);
    let log = log.await.expect("log");
    assert_eq!(log.last(), Some(&Log::AllReceived), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn waiting_peers_time_out_with_a_message_and_free_the_path() {
    let relay = Relay::new(RelayConfig {
        wait_timeout: Some(Duration::from_secs(60)),
        ..RelayConfig::default()
    });
    tokio::spawn(relay.clone().expire_forever());
    let (_tx, b) = body();
    let log = lines(relay.send("/s", 1, head(), b).expect("sender")).await;
    assert_eq!(
        log.last(),
        Some(&Log::WaitTimedOut(Duration::from_secs(60)))
    );
    assert_eq!(
        log.last().map(ToString::to_string).as_deref(),
        Some("[ERROR] No receiver came within 1m.\n")
    );
    let ticket = relay.receive("/r", 1).expect("receiver");
    let waited = ticket.ready().await.err();
    assert_eq!(waited, Some(Undelivered::TimedOut(Duration::from_secs(60))));
    settle(&relay, |s| s.paths == 0).await;
}

#[tokio::test]
async fn the_path_cap_refuses_new_paths_only() {
    let relay = Relay::new(RelayConfig {
        max_paths: 2,
        ..RelayConfig::default()
    });
    let a = relay.receive("/a", 2).expect("a");
    let _b = relay.receive("/b", 1).expect("b");
    assert_eq!(relay.receive("/c", 1).err(), Some(Reject::TooManyPaths));
    assert_eq!(Reject::TooManyPaths.status(), 503);
    // Joining a path already in use is fine.
    let a2 = relay.receive("/a", 2).expect("a2");
    drop((a, a2));
    let _c = relay.receive("/c", 1).expect("room again");
}

#[tokio::test]
async fn a_transfer_over_the_byte_limit_is_aborted_and_counted() {
    let relay = Relay::new(RelayConfig {
        max_transfer_bytes: 10,
        ..RelayConfig::default()
    });
    let declared = Head {
        content_length: Some(11),
        ..head()
    };
    let (_tx, b) = body();
    assert_eq!(
        relay.send("/p", 1, declared, b).err().map(|r| r.status()),
        Some(413)
    );
    let (tx, b) = body();
    let log = tokio::spawn(lines(relay.send("/p", 1, head(), b).expect("sender")));
    let r = relay.receive("/p", 1).expect("r");
    let delivery = r.ready().await.expect("start");
    tx.send(Ok(Bytes::from_static(b"0123456789")))
        .await
        .expect("feed");
    tx.send(Ok(Bytes::from_static(b"x"))).await.expect("feed");
    assert_eq!(collect(delivery.body).await, Err(Aborted));
    assert_eq!(log.await.expect("log").last(), Some(&Log::TooLarge(10)));
    let totals = relay.totals();
    assert_eq!(
        (totals.started, totals.completed, totals.aborted),
        (1, 0, 1)
    );
    assert_eq!(totals.bytes, 11);
}

#[tokio::test]
async fn totals_count_completed_transfers_and_bytes() {
    let relay = Relay::default();
    let (tx, b) = body();
    let log = tokio::spawn(lines(relay.send("/p", 1, head(), b).expect("sender")));
    let r = relay.receive("/p", 1).expect("r");
    let delivery = r.ready().await.expect("start");
    tx.send(Ok(Bytes::from_static(b"hello")))
        .await
        .expect("feed");
    drop(tx);
    assert_eq!(collect(delivery.body).await.expect("whole"), b"hello");
    log.await.expect("log");
    let totals = relay.totals();
    assert_eq!(
        (
            totals.started,
            totals.completed,
            totals.aborted,
            totals.bytes
        ),
        (1, 1, 0, 5)
    );
    assert_eq!(totals.durations.counts.iter().sum::<u64>(), 1);
    assert_eq!(totals.waits.counts.iter().sum::<u64>(), 1);
}

/// A waiting sender whose read-ahead is full is told again that it waits,
/// so that a write notices when its connection is gone; one whose body
/// is all read ahead is not.
#[tokio::test(start_paused = true)]
async fn a_sender_past_its_read_ahead_hears_it_still_waits() {
    let relay = Relay::new(RelayConfig {
        read_ahead: 4,
        ..RelayConfig::default()
    });
    let (tx, b) = body();
    let mut log = relay.send("/p", 1, head(), b).expect("sender");
    assert_eq!(log.next().await, Some(Log::Waiting(1)));
    tx.send(Ok(Bytes::from_static(b"12345")))
        .await
        .expect("feed");
    let again = tokio::time::timeout(fanout::WAITING_HEARTBEAT * 3, log.next()).await;
    assert_eq!(again.ok().flatten(), Some(Log::Waiting(1)));
    drop(tx);

    let (tx, b) = body();
    let mut log = relay.send("/q", 1, head(), b).expect("sender");
    assert_eq!(log.next().await, Some(Log::Waiting(1)));
    tx.send(Ok(Bytes::from_static(b"12"))).await.expect("feed");
    let quiet = tokio::time::timeout(fanout::WAITING_HEARTBEAT * 3, log.next()).await;
    assert!(quiet.is_err(), "{quiet:?}");
}
