//! The tunnel protocol, all of it: the paths, the control message that
//! announces a connection, and the frames of a multiplexed connection's
//! streams. Limits and timings are named constants here.
//!
//! **Plain mode** carries one TCP connection at a time over two Piping
//! transfers, raw bytes with no framing, so either side can be
//! `curl | socat | curl` instead of Tubes:
//!
//! - `PATH/cs`: client to server (the side with the service receives);
//! - `PATH/sc`: server to client.
//!
//! **Multiplexed mode** (`--mux`) carries any number of connections. The
//! client announces each one with a `PUT` of one [`Open`] line to the
//! control path `PATH/mux`, one announcement at a time (the server takes
//! them with a `GET` loop). Each connection then has its own two streams,
//! `PATH/<id>/cs` and `PATH/<id>/sc`, made of [`Frame`]s: data, an explicit
//! end of one direction, a reset, heartbeats, and on `sc` first of all the
//! outcome of the server's connection to the service.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::Duration;

/// The largest payload of one data frame.
pub const MAX_DATA: usize = 64 * 1024;
/// The largest reason text of a reset or refusal.
pub const MAX_REASON: usize = 1024;
/// The largest control message.
pub const MAX_CONTROL: usize = 1024;
/// A heartbeat is sent on a stream idle for this long, so that proxies
/// which cut silent requests keep it open.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// The first wait before trying the relay again after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// The longest wait between tries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long the service side waits for the client to open its stream of
/// an announced connection (it may have given up meanwhile).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to connect to the service.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The two plain-mode paths for a tunnel named `path`.
pub fn plain_paths(path: &str) -> (String, String) {
    let p = path.trim_matches('/');
    (format!("{p}/cs"), format!("{p}/sc"))
}

/// The control path of a multiplexed tunnel.
pub fn control_path(path: &str) -> String {
    format!("{}/mux", path.trim_matches('/'))
}

/// The two streams of multiplexed connection `id`.
pub fn connection_paths(path: &str, id: &str) -> (String, String) {
    let p = path.trim_matches('/');
    (format!("{p}/{id}/cs"), format!("{p}/{id}/sc"))
}

/// A new connection, announced on the control path as one line:
/// `tubes-tunnel/1 open ID` or, for SOCKS, `tubes-tunnel/1 open ID HOST PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// Random hex, naming the connection's two streams.
    pub id: String,
    /// Where the server should connect (SOCKS); `None` means its service.
    pub target: Option<(String, u16)>,
}

const CONTROL_PREFIX: &str = "tubes-tunnel/1 open ";

impl Open {
    pub fn encode(&self) -> String {
        match &self.target {
            Some((host, port)) => format!("{CONTROL_PREFIX}{} {host} {port}\n", self.id),
            None => format!("{CONTROL_PREFIX}{}\n", self.id),
        }
    }

    /// Parses an announcement; `None` for anything malformed.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        if raw.len() > MAX_CONTROL {
            return None;
        }
        let line = std::str::from_utf8(raw).ok()?.trim_end();
        let rest = line.strip_prefix(CONTROL_PREFIX)?;
        let mut parts = rest.split(' ');
        let id = parts.next()?;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let target = match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => None,
            (Some(host), Some(port), None) if !host.is_empty() && host.len() <= 255 => {
                Some((host.to_owned(), port.parse().ok()?))
            }
            _ => return None,
        };
        Some(Self {
            id: id.to_owned(),
            target,
        })
    }
}

/// One frame of a multiplexed connection's stream: a type byte, then for
/// the types with a payload a `u32` big-endian length and the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `0x01 len bytes`: bytes of the connection (1 to [`MAX_DATA`]).
    Data(Bytes),
    /// `0x02`: this direction is finished; the reader half-closes.
    End,
    /// `0x03 len reason`: the connection failed; the reader resets it.
    Reset(String),
    /// `0x04`: a heartbeat, ignored.
    Ping,
    /// `0x05`: first frame of `sc`: the server reached the service.
    Opened,
    /// `0x06 len reason`: first frame of `sc`: it could not.
    Refused(String),
}

/// A frame stream that breaks the rules.
#[derive(Debug, thiserror::Error)]
#[error("bad tunnel frame: {0}")]
pub struct FrameError(&'static str);

impl Frame {
    pub fn encode(&self, out: &mut BytesMut) {
        let with_payload = |out: &mut BytesMut, kind: u8, payload: &[u8]| {
            out.put_u8(kind);
            out.put_u32(payload.len() as u32);
            out.put_slice(payload);
        };
        match self {
            Frame::Data(b) => with_payload(out, 1, b),
            Frame::End => out.put_u8(2),
            Frame::Reset(r) => with_payload(out, 3, truncate(r).as_bytes()),
            Frame::Ping => out.put_u8(4),
            Frame::Opened => out.put_u8(5),
            Frame::Refused(r) => with_payload(out, 6, truncate(r).as_bytes()),
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Takes one frame from the front of `buf`: `Ok(None)` if incomplete.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        let simple = match kind {
            2 => Some(Frame::End),
            4 => Some(Frame::Ping),
            5 => Some(Frame::Opened),
            1 | 3 | 6 => None,
            _ => return Err(FrameError("unknown frame type")),
        };
        if let Some(frame) = simple {
            buf.advance(1);
            return Ok(Some(frame));
        }
        if buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let max = if kind == 1 { MAX_DATA } else { MAX_REASON };
        if len > max || kind == 1 && len == 0 {
            return Err(FrameError("length out of range"));
        }
        if buf.len() < 5 + len {
            return Ok(None);
        }
        buf.advance(5);
        let payload = buf.split_to(len).freeze();
        let text = || String::from_utf8_lossy(&payload).into_owned();
        Ok(Some(match kind {
            1 => Frame::Data(payload),
            3 => Frame::Reset(text()),
            _ => Frame::Refused(text()),
        }))
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(MAX_REASON);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Exponential backoff between retries, reset after a success.
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(BACKOFF_MIN)
    }
}

impl Backoff {
    /// The wait before the next try (doubling up to [`BACKOFF_MAX`]).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }

    pub fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let frames = vec![
            Frame::Opened,
            Frame::Data(Bytes::from_static(b"hello")),
            Frame::Ping,
            Frame::End,
            Frame::Reset("gone".into()),
            Frame::Refused("no".into()),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let wire = wire.freeze();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = Frame::decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn hostile_frames_refused() {
        let mut big = BytesMut::from(&[1u8, 0, 1, 0, 1][..]);
        assert!(Frame::decode(&mut big).is_err());
        let mut empty = BytesMut::from(&[1u8, 0, 0, 0, 0][..]);
        assert!(Frame::decode(&mut empty).is_err());
        let mut unknown = BytesMut::from(&[9u8][..]);
        assert!(Frame::decode(&mut unknown).is_err());
    }

    #[test]
    fn control_lines() {
        let plain = Open {
            id: "ab12".into(),
            target: None,
        };
        assert_eq!(Open::parse(plain.encode().as_bytes()), Some(plain));
        let socks = Open {
            id: "ff".into(),
            target: Some(("example.com".into(), 443)),
        };
        assert_eq!(Open::parse(socks.encode().as_bytes()), Some(socks));
        for bad in [
            "",
            "tubes-tunnel/1 open ",
            "tubes-tunnel/1 open zz",
            "tubes-tunnel/1 open ab h",
            "x open ab",
        ] {
            assert_eq!(Open::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn backoff_grows_and_resets() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(b.next_delay() > first);
        for _ in 0..20 {
            assert!(b.next_delay() <= BACKOFF_MAX);
        }
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }
}
