//! The Piping protocol's vocabulary, free of HTTP: what a sender declares
//! about its stream, why a peer is turned away, and the lines of the
//! sender's live log. Every message string here is part of the wire
//! contract (`shared/spec/piping-protocol.md`); users and scripts grep for
//! them, so they are spelled exactly as the spec spells them.

use std::fmt;

use bytes::Bytes;

/// What a sender declares about its stream; forwarded to every receiver.
///
/// Values are kept as the raw bytes the sender sent (they need not be
/// UTF-8), in the order they were sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// Exact length of the stream, when the sender knows it.
    pub content_length: Option<u64>,
    /// Media type, already made safe by [`safe_content_type`].
    pub content_type: Option<Bytes>,
    pub content_disposition: Option<Bytes>,
    /// Every `X-Piping` value of the sender, in order.
    pub x_piping: Vec<Bytes>,
    /// What the sender's transport offers the receiving one beyond bytes
    /// (the HTTP/1 transport: its socket, to splice from). The core only
    /// carries it; a transport that does not know it ignores it.
    pub offer: Option<Offer>,
}

/// An offer from one transport to another, opaque to the core (see
/// [`Head::offer`]).
#[derive(Clone)]
pub struct Offer(pub std::sync::Arc<dyn std::any::Any + Send + Sync>);

impl fmt::Debug for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Offer")
    }
}

impl PartialEq for Offer {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Offer {}

/// A media type that is exactly `text/html` becomes `text/plain`, with its
/// parameters kept, so a transfer can never be served as a page of the
/// relay's origin. Anything else is returned unchanged.
pub fn safe_content_type(value: &[u8]) -> Bytes {
    let start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    let rest = &value[start..];
    let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
    let media = trim_ascii_end(&rest[..end]);
    if media.eq_ignore_ascii_case(b"text/html") {
        let mut out = b"text/plain".to_vec();
        out.extend_from_slice(&rest[media.len()..]);
        Bytes::from(out)
    } else {
        Bytes::copy_from_slice(value)
    }
}

fn trim_ascii_end(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &s[..end]
}

/// The number of receivers of a transfer (`?n=`), at least 1.
pub type Count = u32;

/// Reads the `n` query value the way the reference server does (JavaScript
/// `parseInt(v, 10)`: leading whitespace, a sign, then leading digits;
/// anything after them is ignored), then checks that it is positive.
/// A missing value means 1.
pub fn parse_count(value: Option<&str>) -> Result<Count, Reject> {
    let Some(value) = value else { return Ok(1) };
    let s = value.trim_start();
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let len = digits.bytes().take_while(u8::is_ascii_digit).count();
    if len == 0 {
        return Err(Reject::InvalidCount);
    }
    let digits = digits[..len].trim_start_matches('0');
    if negative || digits.is_empty() {
        // Zero or below; JavaScript prints -0 as 0, and so do we.
        let shown = if digits.is_empty() {
            "0".to_string()
        } else {
            format!("-{digits}")
        };
        return Err(Reject::NonPositiveCount(shown));
    }
    digits.parse::<Count>().map_err(|_| Reject::InvalidCount)
}

/// Why a sender or receiver is turned away. The transport maps every
/// variant to a `400` with the [`Display`](fmt::Display) text as the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("[ERROR] Invalid \"n\" query parameter\n")]
    InvalidCount,
    #[error("[ERROR] n should > 0, but n = {0}.\n")]
    NonPositiveCount(String),
    #[error("[ERROR] Connection on '{0}' has been established already.\n")]
    Established(String),
    #[error("[ERROR] Another sender has been connected on '{0}'.\n")]
    AnotherSender(String),
    #[error("[ERROR] The number of receivers should be {expected} but {got}.\n")]
    CountMismatch { expected: Count, got: Count },
    #[error("[ERROR] The number of receivers has reached limits.\n")]
    ReceiversFull,
    /// Not in the Piping spec: the operator's cap on paths in use.
    #[error("[ERROR] The server is busy: too many paths are in use. Try again later.\n")]
    TooManyPaths,
    /// Not in the Piping spec: the operator's cap on bytes per transfer.
    #[error("[ERROR] A transfer may carry at most {0} bytes on this server.\n")]
    TooLarge(u64),
}

impl Reject {
    /// The HTTP status a transport gives this refusal: 400, except for the
    /// server's own limits.
    pub fn status(&self) -> u16 {
        match self {
            Reject::TooManyPaths => 503,
            Reject::TooLarge(_) => 413,
            _ => 400,
        }
    }
}

/// One line of the sender's live log (its response body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    Waiting(Count),
    ReceiversPresent(usize),
    ReceiverConnected,
    Start(Count),
    Sent,
    AllReceived,
    ReceiverAborted,
    AllAborted,
    SendFailed,
    /// Not in the Piping spec: no peers came within the wait limit.
    WaitTimedOut(std::time::Duration),
    /// Not in the Piping spec: the body went over the bytes limit.
    TooLarge(u64),
    /// Not in the Piping spec: the server stops before a receiver came.
    ShuttingDown,
}

impl fmt::Display for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Log::Waiting(n) => writeln!(f, "[INFO] Waiting for {n} receiver(s)..."),
            Log::ReceiversPresent(k) => {
                writeln!(f, "[INFO] {k} receiver(s) has/have been connected.")
            }
            Log::ReceiverConnected => writeln!(f, "[INFO] A receiver was connected."),
            Log::Start(n) => writeln!(f, "[INFO] Start sending to {n} receiver(s)!"),
            Log::Sent => writeln!(f, "[INFO] Sent successfully!"),
            Log::AllReceived => {
                writeln!(f, "[INFO] All receiver(s) was/were received successfully.")
            }
            Log::ReceiverAborted => writeln!(f, "[INFO] A receiver aborted."),
            Log::AllAborted => writeln!(f, "[INFO] All receiver(s) was/were aborted halfway."),
            Log::SendFailed => writeln!(f, "[ERROR] Failed to send."),
            Log::WaitTimedOut(after) => writeln!(
                f,
                "[ERROR] No receiver came within {}.",
                humantime::format_duration(*after)
            ),
            Log::ShuttingDown => {
                writeln!(f, "[ERROR] The server is shutting down; try again.")
            }
            Log::TooLarge(max) => writeln!(
                f,
                "[ERROR] A transfer may carry at most {max} bytes on this server; every receiver was aborted."
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_follows_parse_int() {
        assert_eq!(parse_count(None), Ok(1));
        assert_eq!(parse_count(Some("3")), Ok(3));
        assert_eq!(parse_count(Some(" 3abc")), Ok(3));
        assert_eq!(parse_count(Some("2.9")), Ok(2));
        assert_eq!(parse_count(Some("+4")), Ok(4));
        assert_eq!(parse_count(Some("")), Err(Reject::InvalidCount));
        assert_eq!(parse_count(Some("abc")), Err(Reject::InvalidCount));
        assert_eq!(parse_count(Some("-")), Err(Reject::InvalidCount));
        assert_eq!(
            parse_count(Some("0")),
            Err(Reject::NonPositiveCount("0".into()))
        );
        assert_eq!(
            parse_count(Some("-007")),
            Err(Reject::NonPositiveCount("-7".into()))
        );
        assert_eq!(
            parse_count(Some("99999999999999999999")),
            Err(Reject::InvalidCount)
        );
    }

    #[test]
    fn html_becomes_plain_text() {
        assert_eq!(&safe_content_type(b"text/html")[..], b"text/plain");
        assert_eq!(
            &safe_content_type(b"text/html; charset=utf-8")[..],
            b"text/plain; charset=utf-8"
        );
        assert_eq!(&safe_content_type(b"TEXT/HTML")[..], b"text/plain");
        assert_eq!(&safe_content_type(b"text/htmlx")[..], b"text/htmlx");
        assert_eq!(&safe_content_type(b"image/png")[..], b"image/png");
    }

    #[test]
    fn messages_are_exact() {
        assert_eq!(
            Reject::CountMismatch {
                expected: 2,
                got: 3
            }
            .to_string(),
            "[ERROR] The number of receivers should be 2 but 3.\n"
        );
        assert_eq!(
            Log::ReceiversPresent(2).to_string(),
            "[INFO] 2 receiver(s) has/have been connected.\n"
        );
    }
}
