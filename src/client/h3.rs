//! HTTP/3 to the relay (`--http3`): quinn and h3, one QUIC connection per
//! relay shared by all requests, opened on first use and again after it
//! fails. Bodies stream both ways as with the other versions.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::mpsc;

use super::http::{Body, BodyError, Response};
use super::ClientError;

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// Receive window of one stream and of the connection.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// An HTTP/3 client for one relay.
pub struct H3Client {
    endpoint: quinn::Endpoint,
    host: String,
    port: u16,
    /// The live connection's request sender; cloned out, never held
    /// across an await.
    sender: Mutex<Option<Sender>>,
}

/// INSECURE: accepts any server certificate for any name (`-k`, for a
/// relay with a self-signed certificate). The handshake signatures are
/// still verified against that certificate, so the server must hold its
/// key, but anyone can make such a certificate.
#[derive(Debug)]
pub struct AcceptAny(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn setup_error(e: impl std::fmt::Display) -> ClientError {
    ClientError::local("cannot set up HTTP/3", e)
}

impl H3Client {
    pub fn new(server: &reqwest::Url, insecure: bool) -> Result<Self, ClientError> {
        if server.scheme() != "https" {
            return Err(ClientError::Usage(
                "--http3 needs an https:// relay URL".into(),
            ));
        }
        let host = server
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_owned();
        let port = server.port_or_known_default().unwrap_or(443);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(setup_error)?;
        let mut tls = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth()
        } else {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(setup_error)?
                .with_no_client_auth()
        };
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(setup_error)?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW))
            .receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW))
            .keep_alive_interval(Some(std::time::Duration::from_secs(10)));
        crate::transport::quic::set_mtu_discovery(&mut transport);
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        // As `quinn::Endpoint::client` does it (IPv6 and IPv4 if the system
        // has IPv6), with our datagram sizes and bounded GSO sends.
        let local: SocketAddr = ([0, 0, 0, 0, 0, 0, 0, 0], 0).into();
        let socket = std::net::UdpSocket::bind(local)
            .or_else(|_| std::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))))
            .map_err(setup_error)?;
        let mut endpoint = crate::transport::quic::endpoint(socket, None).map_err(setup_error)?;
        endpoint.set_default_client_config(config);
        Ok(Self {
            endpoint,
            host,
            port,
            sender: Mutex::new(None),
        })
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable {
            url: format!("https://{}:{} (HTTP/3)", self.host, self.port),
            reason: reason.to_string(),
        }
    }

    async fn sender(&self) -> Result<Sender, ClientError> {
        if let Some(s) = self
            .sender
            .lock()
            .map_err(|_| self.unreachable("poisoned"))?
            .clone()
        {
            return Ok(s);
        }
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| self.unreachable(e))?
            .next()
            .ok_or_else(|| self.unreachable("no address"))?;
        let addr = match addr {
            // The endpoint is dual-stack; map IPv4 for it.
            SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            v6 => v6,
        };
        let connecting = self
            .endpoint
            .connect(addr, &self.host)
            .map_err(|e| self.unreachable(e))?;
        let conn = connecting.await.map_err(|e| self.unreachable(e))?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        if let Ok(mut slot) = self.sender.lock() {
            *slot = Some(sender.clone());
        }
        Ok(sender)
    }

    fn forget_connection(&self) {
        if let Ok(mut slot) = self.sender.lock() {
            *slot = None;
        }
    }

    /// Sends one request and returns once the response head is in; the
    /// request body streams on in a task of its own.
    pub async fn request(
        &self,
        req: http::Request<()>,
        body: Body,
    ) -> Result<Response, ClientError> {
        let mut sender = self.sender().await?;
        let stream = match sender.send_request(req).await {
            Ok(s) => s,
            Err(e) => {
                self.forget_connection();
                return Err(self.unreachable(e));
            }
        };
        let (mut send, mut recv) = stream.split();
        tokio::spawn(async move {
            let mut body = body.into_stream();
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(bytes) if bytes.is_empty() => {}
                    Ok(bytes) => {
                        if send.send_data(bytes).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => {
                        // An aborted body must look aborted: reset the stream.
                        send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                        return;
                    }
                }
            }
            let _ = send.finish().await;
        });
        let head = recv
            .recv_response()
            .await
            .map_err(|e| self.unreachable(e))?;
        // The body is read in a task that owns the stream; dropping the
        // response only closes the channel.
        let (tx, rx) = mpsc::channel::<Result<Bytes, BodyError>>(8);
        tokio::spawn(async move {
            loop {
                let item = match recv.recv_data().await {
                    Ok(Some(mut data)) => Ok(data.copy_to_bytes(data.remaining())),
                    Ok(None) => return,
                    Err(e) => Err(BodyError(e.to_string())),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let (parts, ()) = head.into_parts();
        Ok(Response::new(parts.status, parts.headers, body.boxed()))
    }
}
