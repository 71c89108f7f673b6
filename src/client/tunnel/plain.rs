//! Plain mode: one TCP connection at a time over `PATH/cs` and `PATH/sc`,
//! raw bytes, so that either side may be `curl | socat | curl`.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::link::{download_raw, upload_raw, Ended};
use super::protocol::Backoff;
use super::seal::TunnelKey;
use super::{connect_service, Local, Paths};
use crate::client::http::Relay;
use crate::client::ClientError;

/// The service side: for each connection the client opens, connect to the
/// service and join the two.
pub async fn serve(
    relay: Relay,
    paths: Paths,
    service: (String, u16),
    key: Option<Arc<TunnelKey>>,
) -> Result<(), ClientError> {
    let key = key.as_ref();
    let mut backoff = Backoff::default();
    loop {
        // Wait for the client's bytes before touching the service.
        let response = match relay.receive(&paths.cs, None).await {
            Ok(r) => r,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!("tunnel: {e}; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        backoff.reset();
        let stream = match connect_service(&service).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("tunnel: {e}");
                // Close the client's stream: it sees its connection end.
                drop(response);
                continue;
            }
        };
        tracing::info!("tunnel: connection opened");
        let (read, write) = stream.into_split();
        let up = upload_raw(&relay, &paths.sc, read, key);
        let down = super::link::copy_response(response, &paths.cs, write, key);
        let (cancel, _) = tokio::sync::watch::channel(false);
        report(super::link::drive(up, down, cancel).await);
    }
}

fn report(ended: Ended) {
    match ended {
        Ended::Clean => tracing::info!("tunnel: connection closed"),
        Ended::Broken(why) => tracing::warn!("tunnel: connection broken: {why}"),
    }
}

/// The client side: each local connection in turn is carried to the
/// service side.
pub async fn client(
    relay: Relay,
    paths: Paths,
    local: Local,
    key: Option<Arc<TunnelKey>>,
) -> Result<(), ClientError> {
    let key = key.as_ref();
    match local {
        Local::Stdio => {
            let up = upload_raw(&relay, &paths.cs, tokio::io::stdin(), key);
            let down = download_raw(&relay, &paths.sc, tokio::io::stdout(), key);
            let (cancel, _) = tokio::sync::watch::channel(false);
            match super::link::drive(up, down, cancel).await {
                Ended::Clean => Ok(()),
                Ended::Broken(why) => Err(ClientError::CutShort(why)),
            }
        }
        Local::Listen(listener) => loop {
            let (stream, peer) = accept(&listener).await?;
            tracing::info!(%peer, "tunnel: connection accepted");
            carry(&relay, &paths, stream, key).await;
        },
    }
}

async fn accept(listener: &TcpListener) -> Result<(TcpStream, std::net::SocketAddr), ClientError> {
    listener
        .accept()
        .await
        .map_err(|e| ClientError::local("cannot accept a connection", e))
}

async fn carry(relay: &Relay, paths: &Paths, stream: TcpStream, key: Option<&Arc<TunnelKey>>) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let up = upload_raw(relay, &paths.cs, read, key);
    let down = download_raw(relay, &paths.sc, write, key);
    let (cancel, _) = tokio::sync::watch::channel(false);
    report(super::link::drive(up, down, cancel).await);
}
