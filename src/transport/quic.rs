//! QUIC endpoint settings shared by the HTTP/3 server ([`super::http3`])
//! and the HTTP/3 clients: datagram sizes, and a UDP socket that keeps
//! segmentation offload within what the kernel takes.
//!
//! quinn starts every connection with 1,200-byte datagrams and by default
//! discovers the path's MTU only up to 1,452 bytes. Most of quinn's cost
//! is per datagram (building, encrypting and acknowledging each packet),
//! so on a path that carries larger ones (loopback: 65,536; jumbo-frame
//! networks: 9,000) that limit alone makes a stream several times as
//! expensive as it needs to be. Here MTU discovery searches up to the
//! largest UDP payload there is. That is safe on any path: discovery only
//! ever raises the size after a probe of that size was acknowledged, a
//! probe that is too large is simply lost (Linux refuses to send it, as
//! quinn-udp sets `IP_PMTUDISC_PROBE`), and quinn falls back to 1,200
//! bytes when packets of the discovered size stop getting through.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

/// The largest UDP payload this endpoint accepts (told to the peer, which
/// never sends larger datagrams) and the upper bound of MTU discovery:
/// the largest that QUIC allows (RFC 9000, 18.2).
///
/// quinn sizes its receive buffer by it: `min(this, 64 KiB)` times 64
/// (GRO segments) times 32 (datagrams per `recvmmsg`), 128 MiB of address
/// space, of which only what arrives is ever touched: the kernel hands
/// over at most 64 KiB per datagram (GRO included), so ~2 MiB at most.
pub const MAX_UDP_PAYLOAD: u16 = 65_527;

/// Bytes that one `sendmsg` with UDP segmentation offload (GSO) may carry:
/// the kernel refuses more than fits in one IP packet (65,535 bytes with
/// the IP and UDP headers). quinn puts up to 10 datagrams of the current
/// MTU in one GSO send, so with datagrams above ~6.5 KB its sends would
/// fail (quinn-udp drops a send that fails with `EMSGSIZE` as if it had
/// gone out: every such batch would be lost). [`BoundedGso`] splits them.
const MAX_GSO_BYTES: usize = 65_000;

/// quinn's endpoint settings with [`MAX_UDP_PAYLOAD`].
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    // Within quinn's bounds (1,200..=65,527), so never an error.
    let _ = config.max_udp_payload_size(MAX_UDP_PAYLOAD);
    config
}

/// Sets the datagram size settings of a connection: MTU discovery up to
/// [`MAX_UDP_PAYLOAD`] (see the module's doc for why that is safe).
pub fn set_mtu_discovery(transport: &mut quinn::TransportConfig) {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    transport.mtu_discovery_config(Some(mtu));
}

/// A quinn endpoint on `socket` (non-blocking or not), with
/// [`endpoint_config`] and sends bounded by [`BoundedGso`]. Must be called
/// within a tokio runtime (an error otherwise).
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    // quinn's own constructors say so instead of panicking in tokio.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other("no async runtime found"));
    }
    socket.set_nonblocking(true)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = runtime.wrap_udp_socket(socket)?;
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(),
        server,
        Arc::new(BoundedGso(socket)),
        runtime,
    )
}

/// A UDP socket that splits a GSO send larger than [`MAX_GSO_BYTES`] into
/// several sends, each of whole datagrams. Everything else is the
/// runtime's socket.
struct BoundedGso(Arc<dyn AsyncUdpSocket>);

impl fmt::Debug for BoundedGso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BoundedGso").field(&self.0).finish()
    }
}

impl AsyncUdpSocket for BoundedGso {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.0).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let size = match transmit.segment_size {
            Some(size) if size > 0 && transmit.contents.len() > MAX_GSO_BYTES => size,
            _ => return self.0.try_send(transmit),
        };
        let per_send = (MAX_GSO_BYTES / size).max(1) * size;
        for (i, part) in transmit.contents.chunks(per_send).enumerate() {
            let part = Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: part,
                segment_size: (part.len() > size).then_some(size),
                src_ip: transmit.src_ip,
            };
            match self.0.try_send(&part) {
                Ok(()) => {}
                // Some datagrams went out: count the rest as lost on the
                // way (QUIC sends them again) rather than have quinn send
                // the whole batch again, which could repeat forever if the
                // socket's buffer is smaller than the batch.
                Err(error) if i > 0 && error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}
