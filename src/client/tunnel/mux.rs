//! Multiplexed mode: any number of connections, each announced on the
//! control path and carried by its own pair of framed streams. Both sides
//! retry the relay with backoff, so a tunnel survives a relay restart: the
//! connections open at that moment break (each with a reset), new ones
//! work as soon as the relay is back.

use std::sync::Arc;

use bytes::Bytes;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::link::{drive, upload_framed, Ended, FramedDownload};
use super::protocol::{
    connection_paths, control_path, Backoff, Frame, Open, MAX_CONTROL, OPEN_TIMEOUT,
};
use super::seal::TunnelKey;
use super::{connect_service, socks, Local};
use crate::client::http::{read_message_at_most, Relay, Upload};
use crate::client::ClientError;

/// The wait before asking again for the control path while the relay
/// still holds the last announcement's transfer.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(2);
/// Quick retries before falling back to the ordinary backoff.
const BUSY_RETRIES: u32 = 50;

/// What the service side connects to for each announced connection.
#[derive(Clone, Debug)]
pub enum Service {
    /// One fixed service (`--host`, `--port`).
    Fixed(String, u16),
    /// Whatever the client's SOCKS request names.
    Socks,
}

/// The service side: takes announcements in a loop, forever.
pub async fn serve(
    relay: Relay,
    path: String,
    service: Service,
    key: Option<Arc<TunnelKey>>,
) -> Result<(), ClientError> {
    let control = control_path(&path);
    let mut backoff = Backoff::default();
    let mut busy_retries = 0;
    loop {
        let message = match relay.receive(&control, None).await {
            Ok(response) => read_message_at_most(response, MAX_CONTROL).await,
            Err(e) => Err(e),
        };
        let message = match (message, &key) {
            (Ok(raw), Some(key)) => match key.open_message(&control, &raw) {
                Ok(plain) => Ok(Bytes::from(plain)),
                Err(e) => {
                    tracing::warn!(
                        "tunnel: an announcement failed to decrypt (wrong passphrase?): {e}"
                    );
                    continue;
                }
            },
            (message, _) => message,
        };
        let open = match message {
            Ok(raw) => {
                backoff.reset();
                busy_retries = 0;
                match Open::parse(&raw) {
                    Some(open) => open,
                    None => {
                        tracing::warn!("tunnel: ignored a malformed announcement");
                        continue;
                    }
                }
            }
            // The relay frees the control path a moment after the last
            // announcement's transfer ended; asking again at once can meet
            // "established already". That is not the relay being away: try
            // again almost at once, without growing the backoff.
            Err(ClientError::Refused { status: 400, .. }) => {
                busy_retries += 1;
                if busy_retries > BUSY_RETRIES {
                    busy_retries = 0;
                    tokio::time::sleep(backoff.next_delay()).await;
                } else {
                    tokio::time::sleep(BUSY_RETRY).await;
                }
                continue;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!("tunnel: {e}; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        tokio::spawn(accept_one(
            relay.clone(),
            path.clone(),
            service.clone(),
            open,
            key.clone(),
        ));
    }
}

/// Connects one announced connection to its service.
async fn accept_one(
    relay: Relay,
    path: String,
    service: Service,
    open: Open,
    key: Option<Arc<TunnelKey>>,
) {
    let key = key.as_ref();
    let (cs, sc) = connection_paths(&path, &open.id);
    let target = match (&service, open.target) {
        (Service::Fixed(host, port), None) => Ok((host.clone(), *port)),
        (Service::Socks, Some(target)) => Ok(target),
        (Service::Fixed(..), Some(_)) => {
            Err("this tunnel serves one service, not SOCKS".to_owned())
        }
        (Service::Socks, None) => {
            Err("this tunnel is a SOCKS tunnel: a target is needed".to_owned())
        }
    };
    let stream = match target {
        Ok(target) => connect_service(&target).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let stream = match stream {
        Ok(s) => s,
        Err(why) => {
            tracing::warn!(id = %open.id, "tunnel: {why}");
            let refusal = Frame::Refused(why).to_bytes();
            let upload = Upload {
                length: Some(refusal.len() as u64),
                ..Upload::default()
            };
            if let Ok(log) = relay.send(&sc, refusal.into(), upload).await {
                let _ = log.finish().await;
            }
            return;
        }
    };
    tracing::info!(id = %open.id, "tunnel: connection opened");
    let (read, write) = stream.into_split();
    let (cancel, cancelled) = watch::channel(false);
    let up = upload_framed(&relay, &sc, read, Some(Frame::Opened), cancelled, key);
    let down = async {
        match tokio::time::timeout(OPEN_TIMEOUT, FramedDownload::open(&relay, &cs, key)).await {
            Ok(Ok(download)) => download.copy_to(write).await,
            Ok(Err(e)) => Ended::Broken(e.to_string()),
            Err(_) => Ended::Broken("the client never opened its stream".into()),
        }
    };
    report(&open.id, drive(up, down, cancel).await);
}

fn report(id: &str, ended: Ended) {
    match ended {
        Ended::Clean => tracing::info!(%id, "tunnel: connection closed"),
        Ended::Broken(why) => tracing::warn!(%id, "tunnel: connection broken: {why}"),
    }
}

/// What every local connection of a client needs.
struct Shared {
    relay: Relay,
    path: String,
    queue: Announcements,
    key: Option<Arc<TunnelKey>>,
}

/// Announcements waiting to be posted, one at a time, with a way to tell
/// the connection when its announcement was taken.
type Announcements = mpsc::Sender<(Open, oneshot::Sender<()>)>;

/// Posts announcements in order, retrying with backoff while the relay is
/// away; an announcement is done when the service side has read it.
async fn announcer(
    relay: Relay,
    control: String,
    mut queue: mpsc::Receiver<(Open, oneshot::Sender<()>)>,
    key: Option<Arc<TunnelKey>>,
) {
    let mut busy_retries = 0;
    let mut backoff = Backoff::default();
    while let Some((open, taken)) = queue.recv().await {
        let line = match &key {
            Some(key) => match key.seal_message(&control, open.encode().as_bytes()) {
                Ok(sealed) => Bytes::from(sealed),
                Err(e) => {
                    tracing::warn!("tunnel: cannot seal an announcement: {e}");
                    continue;
                }
            },
            None => Bytes::from(open.encode()),
        };
        loop {
            if taken.is_closed() {
                break; // the connection gave up
            }
            let upload = Upload {
                length: Some(line.len() as u64),
                ..Upload::default()
            };
            let sent = match relay.send(&control, line.clone().into(), upload).await {
                Ok(log) => log.finish().await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => {
                    backoff.reset();
                    busy_retries = 0;
                    let _ = taken.send(());
                    break;
                }
                // The path still busy with the last announcement (or
                // another client's): soon free, so ask again soon.
                Err(ClientError::Refused { status: 400, .. }) if busy_retries < BUSY_RETRIES => {
                    busy_retries += 1;
                    tokio::time::sleep(BUSY_RETRY).await;
                }
                Err(e) => {
                    busy_retries = 0;
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        "tunnel: announcing a connection: {e}; trying again in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// The client side: every local connection (or SOCKS request) becomes an
/// announced, multiplexed connection.
pub async fn client(
    relay: Relay,
    path: String,
    local: Local,
    use_socks: bool,
    key: Option<Arc<TunnelKey>>,
) -> Result<(), ClientError> {
    let (queue, pending) = mpsc::channel(64);
    tokio::spawn(announcer(
        relay.clone(),
        control_path(&path),
        pending,
        key.clone(),
    ));
    let shared = Arc::new(Shared {
        relay,
        path,
        queue,
        key,
    });
    match local {
        Local::Stdio => {
            let Shared {
                relay,
                path,
                queue,
                key,
            } = &*shared;
            let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
            match carry(relay, path, queue, io, None, false, key.as_ref()).await {
                Ended::Clean => Ok(()),
                Ended::Broken(why) => Err(ClientError::CutShort(why)),
            }
        }
        Local::Listen(listener) => serve_local(listener, shared, use_socks).await,
    }
}

async fn serve_local(
    listener: TcpListener,
    shared: Arc<Shared>,
    use_socks: bool,
) -> Result<(), ClientError> {
    loop {
        let (mut stream, peer) = listener
            .accept()
            .await
            .map_err(|e| ClientError::local("cannot accept a connection", e))?;
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Shared {
                relay,
                path,
                queue,
                key,
            } = &*shared;
            let target = if use_socks {
                match socks::handshake(&mut stream).await {
                    Ok(target) => Some(target),
                    Err(e) => {
                        tracing::info!(%peer, "socks: {e}");
                        return;
                    }
                }
            } else {
                None
            };
            let ended = carry(relay, path, queue, stream, target, use_socks, key.as_ref()).await;
            let id = peer.to_string();
            report(&id, ended);
        });
    }
}

/// Announces one connection and carries it.
/// With `socks`, the SOCKS client is answered once the far side has
/// reached the target (or not).
async fn carry<S>(
    relay: &Relay,
    path: &str,
    queue: &Announcements,
    mut stream: S,
    target: Option<(String, u16)>,
    socks: bool,
    key: Option<&Arc<TunnelKey>>,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let id = format!("{:016x}", rand::thread_rng().gen::<u64>());
    let (cs, sc) = connection_paths(path, &id);
    let (taken, _announced) = oneshot::channel();
    if queue.send((Open { id, target }, taken)).await.is_err() {
        return Ended::Broken("the announcer stopped".into());
    }
    // The first frame of `sc` says whether the far side reached the
    // service; only then does data flow.
    let mut download = match FramedDownload::open(relay, &sc, key).await {
        Ok(d) => d,
        Err(e) => return Ended::Broken(e.to_string()),
    };
    let first = download.next().await;
    let opened = match first {
        Ok(Some(Frame::Opened)) => Ok(()),
        Ok(Some(Frame::Refused(why))) => Err(why),
        Ok(other) => Err(format!("unexpected first frame {other:?}")),
        Err(e) => Err(e),
    };
    if socks {
        let reply = socks::reply(opened.is_ok());
        if let Err(e) = stream.write_all(&reply).await {
            return Ended::Broken(format!("socks reply: {e}"));
        }
    }
    if let Err(why) = opened {
        return Ended::Broken(format!("the far side could not connect: {why}"));
    }
    let (read, write) = tokio::io::split(stream);
    let (cancel, cancelled) = watch::channel(false);
    let up = upload_framed(relay, &cs, read, None, cancelled, key);
    drive(up, download.copy_to(write), cancel).await
}
