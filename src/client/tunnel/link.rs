//! Moving one direction of a TCP connection through the relay: raw bytes
//! (plain mode) or frames (multiplexed mode), uploads as a `PUT` whose
//! body is read from the socket, downloads as a `GET` whose body is
//! written to it.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::protocol::{Frame, HEARTBEAT, MAX_DATA};
use super::seal::TunnelKey;
use crate::client::http::{Body, Relay, Response, Upload};
use crate::client::ClientError;

/// How one direction ended.
#[derive(Debug)]
pub enum Ended {
    /// All bytes through and an orderly end.
    Clean,
    /// Failed or reset; the connection must be torn down.
    Broken(String),
}

/// Uploads what `reader` yields, as it is, to `path`; ends when the reader
/// does (a clean end) or fails (the request aborts).
pub async fn upload_raw<R>(
    relay: &Relay,
    path: &str,
    reader: R,
    key: Option<&Arc<TunnelKey>>,
) -> Ended
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let body = tokio_util::io::ReaderStream::with_capacity(reader, MAX_DATA);
    upload(relay, path, body, key).await
}

/// `PUT`s a body (sealed when there is a key) and reads the relay's log.
async fn upload<S>(relay: &Relay, path: &str, body: S, key: Option<&Arc<TunnelKey>>) -> Ended
where
    S: futures_util::Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
{
    let body = match key {
        Some(key) => Body::stream(key.seal(path, body)),
        None => Body::stream(body),
    };
    let result = async {
        relay
            .send(path, body, Upload::default())
            .await?
            .finish()
            .await
    }
    .await;
    match result {
        Ok(()) => Ended::Clean,
        Err(e) => Ended::Broken(e.to_string()),
    }
}

/// A response body as plaintext chunks: opened when there is a key.
fn plaintext(response: Response, path: &str, key: Option<&Arc<TunnelKey>>) -> Plaintext {
    let body = response.bytes_stream().map(|r| r.map_err(|e| e.0));
    match key {
        Some(key) => key.open(path, body).boxed(),
        None => body.boxed(),
    }
}

/// Plaintext chunks of a download, or the reason it broke.
type Plaintext = futures_util::stream::BoxStream<'static, Result<Bytes, String>>;

/// Downloads `path` into `writer`, then shuts the writer down.
pub async fn download_raw<W>(
    relay: &Relay,
    path: &str,
    writer: W,
    key: Option<&Arc<TunnelKey>>,
) -> Ended
where
    W: AsyncWrite + Unpin,
{
    match relay.receive(path, None).await {
        Ok(response) => copy_response(response, path, writer, key).await,
        Err(e) => Ended::Broken(e.to_string()),
    }
}

/// Copies a response's body into `writer`, then shuts the writer down.
pub async fn copy_response<W>(
    response: Response,
    path: &str,
    mut writer: W,
    key: Option<&Arc<TunnelKey>>,
) -> Ended
where
    W: AsyncWrite + Unpin,
{
    let mut body = plaintext(response, path, key);
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Ended::Broken(e),
        };
        // Flushed at once: stdout (an ssh ProxyCommand) buffers otherwise.
        if let Err(e) = write_now(&mut writer, &chunk).await {
            return Ended::Broken(format!("local write: {e}"));
        }
    }
    let _ = writer.shutdown().await;
    Ended::Clean
}

async fn write_now<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// The frames of an upload, produced by a task reading the socket: data
/// as it comes, heartbeats when idle, `End` at end of file, `Reset` when
/// the reader fails or `cancel` fires.
fn frames_from<R>(
    mut reader: R,
    first: Option<Frame>,
    mut cancel: watch::Receiver<bool>,
) -> mpsc::Receiver<io::Result<Bytes>>
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        if let Some(f) = first {
            if tx.send(Ok(f.to_bytes())).await.is_err() {
                return;
            }
        }
        let mut buf = BytesMut::with_capacity(MAX_DATA);
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        loop {
            buf.reserve(MAX_DATA);
            let frame = tokio::select! {
                read = reader.read_buf(&mut buf) => match read {
                    Ok(0) => Frame::End,
                    Ok(_) => {
                        heartbeat.reset();
                        Frame::Data(buf.split().freeze())
                    }
                    Err(e) => Frame::Reset(format!("local read: {e}")),
                },
                _ = heartbeat.tick() => Frame::Ping,
                _ = cancel.wait_for(|c| *c) => Frame::Reset("the other direction failed".into()),
            };
            let last = matches!(frame, Frame::End | Frame::Reset(_));
            if tx.send(Ok(frame.to_bytes())).await.is_err() || last {
                return;
            }
        }
    });
    rx
}

/// Uploads `reader` to `path` as frames (see `frames_from`).
pub async fn upload_framed<R>(
    relay: &Relay,
    path: &str,
    reader: R,
    first: Option<Frame>,
    cancel: watch::Receiver<bool>,
    key: Option<&Arc<TunnelKey>>,
) -> Ended
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let rx = frames_from(reader, first, cancel);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    upload(relay, path, body.boxed(), key).await
}

/// A framed download after its first frame was read.
pub struct FramedDownload {
    body: Plaintext,
    buf: BytesMut,
}

impl FramedDownload {
    /// Starts receiving `path`; returns once the other side is sending.
    pub async fn open(
        relay: &Relay,
        path: &str,
        key: Option<&Arc<TunnelKey>>,
    ) -> Result<Self, ClientError> {
        let response = relay.receive(path, None).await?;
        Ok(Self {
            body: plaintext(response, path, key),
            buf: BytesMut::new(),
        })
    }

    /// The next frame; `Ok(None)` when the stream ended (with no `End`).
    pub async fn next(&mut self) -> Result<Option<Frame>, String> {
        loop {
            if let Some(f) = Frame::decode(&mut self.buf).map_err(|e| e.to_string())? {
                return Ok(Some(f));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            }
        }
    }

    /// Writes data frames to `writer` until `End` (then shuts it down).
    pub async fn copy_to<W>(mut self, mut writer: W) -> Ended
    where
        W: AsyncWrite + Unpin,
    {
        loop {
            match self.next().await {
                Ok(Some(Frame::Data(bytes))) => {
                    if let Err(e) = write_now(&mut writer, &bytes).await {
                        return Ended::Broken(format!("local write: {e}"));
                    }
                }
                Ok(Some(Frame::Ping)) => {}
                Ok(Some(Frame::End)) => {
                    let _ = writer.shutdown().await;
                    // Read the stream to its end: leaving before it ends
                    // would look to the relay like a receiver that aborted,
                    // and the other side would tear the connection down.
                    return match self.next().await {
                        Ok(None) => Ended::Clean,
                        Ok(Some(other)) => {
                            Ended::Broken(format!("a frame after the end: {other:?}"))
                        }
                        Err(e) => Ended::Broken(e),
                    };
                }
                Ok(Some(Frame::Reset(why))) => {
                    return Ended::Broken(format!("reset by the other side: {why}"))
                }
                Ok(Some(other)) => return Ended::Broken(format!("unexpected frame {other:?}")),
                Ok(None) => return Ended::Broken("the stream was cut".into()),
                Err(e) => return Ended::Broken(e),
            }
        }
    }
}

/// How long a failed direction waits for the other to send its reset.
const RESET_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs both directions of a connection. When one breaks, the other is
/// told (`cancel`, so an upload sends its `Reset`) and given a moment, then
/// dropped: no half-open connection is left behind.
pub async fn drive<U, D>(up: U, down: D, cancel: watch::Sender<bool>) -> Ended
where
    U: std::future::Future<Output = Ended>,
    D: std::future::Future<Output = Ended>,
{
    tokio::pin!(up, down);
    let (mut up_ended, mut down_ended) = (false, false);
    while !(up_ended && down_ended) {
        tokio::select! {
            ended = &mut up, if !up_ended => {
                if let Ended::Broken(why) = ended {
                    return Ended::Broken(why);
                }
                up_ended = true;
            }
            ended = &mut down, if !down_ended => {
                if let Ended::Broken(why) = ended {
                    let _ = cancel.send(true);
                    if !up_ended {
                        let _ = tokio::time::timeout(RESET_GRACE, &mut up).await;
                    }
                    return Ended::Broken(why);
                }
                down_ended = true;
            }
        }
    }
    Ended::Clean
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn frame(rx: &mut mpsc::Receiver<io::Result<Bytes>>) -> Frame {
        let bytes = rx.recv().await.expect("a frame").expect("no error");
        let mut buf = BytesMut::from(&bytes[..]);
        let f = Frame::decode(&mut buf).unwrap().expect("a whole frame");
        assert!(buf.is_empty());
        f
    }

    #[tokio::test(start_paused = true)]
    async fn idle_uploads_send_heartbeats_then_data_then_end() {
        let (mut local, socket) = tokio::io::duplex(1024);
        let (_cancel, cancelled) = watch::channel(false);
        let mut rx = frames_from(socket, Some(Frame::Opened), cancelled);
        assert_eq!(frame(&mut rx).await, Frame::Opened);
        let start = tokio::time::Instant::now();
        assert_eq!(frame(&mut rx).await, Frame::Ping);
        assert!(start.elapsed() >= HEARTBEAT);
        assert_eq!(frame(&mut rx).await, Frame::Ping);
        local.write_all(b"hi").await.unwrap();
        assert_eq!(frame(&mut rx).await, Frame::Data(Bytes::from_static(b"hi")));
        drop(local);
        assert_eq!(frame(&mut rx).await, Frame::End);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn cancel_sends_a_reset() {
        let (_local, socket) = tokio::io::duplex(1024);
        let (cancel, cancelled) = watch::channel(false);
        let mut rx = frames_from(socket, None, cancelled);
        cancel.send(true).unwrap();
        assert!(matches!(frame(&mut rx).await, Frame::Reset(_)));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_broken_download_cancels_the_upload_and_waits_for_its_reset() {
        let (cancel, mut cancelled) = watch::channel(false);
        let up = async move {
            let _ = cancelled.wait_for(|c| *c).await;
            Ended::Clean
        };
        let down = async { Ended::Broken("cut".into()) };
        assert!(matches!(drive(up, down, cancel).await, Ended::Broken(_)));
    }

    #[tokio::test]
    async fn both_clean_is_clean() {
        let (cancel, _) = watch::channel(false);
        let ended = drive(async { Ended::Clean }, async { Ended::Clean }, cancel).await;
        assert!(matches!(ended, Ended::Clean));
    }
}
