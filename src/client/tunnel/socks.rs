//! The SOCKS5 front of a SOCKS tunnel (RFC 1928): no authentication, the
//! CONNECT command only, targets by IPv4, IPv6 or host name (so
//! `curl --socks5-hostname` resolves names on the far side).

use std::net::{Ipv4Addr, Ipv6Addr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CONNECT: u8 = 1;
const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;
const REPLY_OK: u8 = 0;
const REPLY_HOST_UNREACHABLE: u8 = 4;
const REPLY_COMMAND_NOT_SUPPORTED: u8 = 7;
const REPLY_ADDRESS_NOT_SUPPORTED: u8 = 8;

/// Reads the greeting and the request; returns the target. Refusals are
/// answered on the socket before the error is returned.
pub async fn handshake<S>(stream: &mut S) -> Result<(String, u16), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = |e: std::io::Error| e.to_string();
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.map_err(io)?;
    if head[0] != VERSION {
        return Err(format!("not SOCKS5 (version byte {})", head[0]));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut methods).await.map_err(io)?;
    if !methods.contains(&NO_AUTH) {
        let _ = stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await;
        return Err("the client insists on authentication".into());
    }
    stream.write_all(&[VERSION, NO_AUTH]).await.map_err(io)?;
    let mut request = [0u8; 4];
    stream.read_exact(&mut request).await.map_err(io)?;
    if request[0] != VERSION {
        return Err("bad request version".into());
    }
    if request[1] != CONNECT {
        let _ = stream
            .write_all(&failure(REPLY_COMMAND_NOT_SUPPORTED))
            .await;
        return Err(format!(
            "command {} is not supported (CONNECT only)",
            request[1]
        ));
    }
    let host = match request[3] {
        ATYP_IPV4 => {
            let mut a = [0u8; 4];
            stream.read_exact(&mut a).await.map_err(io)?;
            Ipv4Addr::from(a).to_string()
        }
        ATYP_IPV6 => {
            let mut a = [0u8; 16];
            stream.read_exact(&mut a).await.map_err(io)?;
            Ipv6Addr::from(a).to_string()
        }
        ATYP_DOMAIN => {
            let len = stream.read_u8().await.map_err(io)?;
            let mut name = vec![0u8; usize::from(len)];
            stream.read_exact(&mut name).await.map_err(io)?;
            match String::from_utf8(name) {
                Ok(n) if !n.is_empty() && !n.contains(char::is_whitespace) => n,
                _ => {
                    let _ = stream
                        .write_all(&failure(REPLY_ADDRESS_NOT_SUPPORTED))
                        .await;
                    return Err("bad host name".into());
                }
            }
        }
        other => {
            let _ = stream
                .write_all(&failure(REPLY_ADDRESS_NOT_SUPPORTED))
                .await;
            return Err(format!("address type {other} is not supported"));
        }
    };
    let port = stream.read_u16().await.map_err(io)?;
    Ok((host, port))
}

fn failure(code: u8) -> [u8; 10] {
    [VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0]
}

/// The reply to a CONNECT once the far side answered. The bound address
/// is reported as 0.0.0.0:0: it is on the far side and means nothing here.
pub fn reply(connected: bool) -> [u8; 10] {
    failure(if connected {
        REPLY_OK
    } else {
        REPLY_HOST_UNREACHABLE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(client_bytes: &[u8]) -> (Result<(String, u16), String>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(client_bytes).await.unwrap();
        let result = handshake(&mut server).await;
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        (result, answer)
    }

    #[tokio::test]
    async fn connect_by_name_and_address() {
        let (r, answer) = run(&[
            5, 1, 0, 5, 1, 0, 3, 9, b'l', b'o', b'c', b'a', b'l', b'h', b'o', b's', b't', 0, 80,
        ])
        .await;
        assert_eq!(r.unwrap(), ("localhost".to_owned(), 80));
        assert_eq!(answer, [5, 0]);
        let (r, _) = run(&[5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90]).await;
        assert_eq!(r.unwrap(), ("127.0.0.1".to_owned(), 8080));
    }

    #[tokio::test]
    async fn refusals_are_answered() {
        let (r, answer) = run(&[5, 1, 2]).await;
        assert!(r.is_err());
        assert_eq!(answer, [5, 0xff]);
        let (r, answer) = run(&[5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 1]).await;
        assert!(r.is_err());
        assert_eq!(answer[2..4], [5, 7]);
        let (r, _) = run(&[4, 1]).await;
        assert!(r.is_err());
    }
}
