//! Server-Sent Events: a receiver that asks for `text/event-stream` (the
//! `Accept` header every `EventSource` sends, or `?sse`) gets the stream as
//! events instead of raw bytes.
//!
//! - Text (the sender's `Content-Type` is `text/*`, JSON, or absent, or
//!   `?sse=text`): one event per line, the line as `data:`.
//! - Binary (any other type, or `?sse=binary`): one `event: binary` per
//!   chunk, its bytes in standard base64 as `data:`.
//! - Every event's `id:` is the stream offset just after its bytes, so a
//!   reconnecting `EventSource` (`Last-Event-ID`) resumes a live stream
//!   exactly where it left off. The stream opens with `retry: 2000`.
//! - A comment line (`: keep-alive`) every 15 s of silence keeps proxies
//!   from closing it.
//! - `event: end` closes a complete stream, `event: abort` a cut one (the
//!   response then ends: an aborted response would lose the event on the
//!   way, and EventSource cannot tell one from a clean end anyway).

use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::HeaderMap;

use crate::relay::Head;

/// Silence after which a comment is sent.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// The reconnection delay suggested to clients, in milliseconds.
pub const RETRY_MS: u32 = 2000;
/// A line longer than this is sent as an event of its own anyway.
const MAX_LINE: usize = 64 * 1024;

/// How bytes become events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Text,
    Binary,
}

/// Whether a receiver asked for events.
pub fn wanted(headers: &HeaderMap, query: Option<&str>) -> bool {
    let accept = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with("text/event-stream"))
        });
    accept || query_value(query, "sse").is_some()
}

/// Where a reconnecting client left off (`Last-Event-ID`, or
/// `?lastEventId=` for clients that cannot set headers).
pub fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query_value(query, "lastEventId"))
        .and_then(|v| v.trim().parse().ok())
}

/// The encoding for a stream with this head.
pub fn encoding(head: &Head, query: Option<&str>) -> Encoding {
    match query_value(query, "sse").as_deref() {
        Some("binary") => return Encoding::Binary,
        Some("text") => return Encoding::Text,
        _ => {}
    }
    let Some(ct) = head.content_type.as_deref() else {
        return Encoding::Text;
    };
    let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
    let media = ct.split(';').next().unwrap_or("").trim();
    if media.starts_with("text/") || media == "application/json" || media == "application/x-ndjson"
    {
        Encoding::Text
    } else {
        Encoding::Binary
    }
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Why an event stream was cut.
#[derive(Debug, thiserror::Error)]
#[error("the stream was cut: {0}")]
pub struct Cut(pub String);

fn data_event(out: &mut BytesMut, id: u64, event: Option<&str>, data: &str) {
    if let Some(e) = event {
        out.extend_from_slice(format!("event: {e}\n").as_bytes());
    }
    out.extend_from_slice(format!("id: {id}\n").as_bytes());
    // A `data:` line cannot hold a newline: split (EventSource joins them
    // back with "\n").
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

struct Encoder {
    encoding: Encoding,
    /// Bytes of an unfinished line, and the offset just after them.
    partial: BytesMut,
    offset: u64,
}

impl Encoder {
    fn piece(&mut self, at: u64, bytes: &[u8], out: &mut BytesMut) {
        match self.encoding {
            Encoding::Binary => {
                let end = at + bytes.len() as u64;
                let text = base64::engine::general_purpose::STANDARD.encode(bytes);
                data_event(out, end, Some("binary"), &text);
                self.offset = end;
            }
            Encoding::Text => {
                if self.partial.is_empty() || at != self.offset {
                    // A gap (a live receiver skipped ahead): the unfinished
                    // line before it can never be completed; drop it.
                    self.partial.clear();
                    self.offset = at;
                }
                let mut rest = bytes;
                while let Some(i) = rest.iter().position(|b| *b == b'\n') {
                    self.partial.extend_from_slice(&rest[..i]);
                    self.offset += (i + 1) as u64;
                    self.flush_line(out);
                    rest = &rest[i + 1..];
                }
                self.partial.extend_from_slice(rest);
                self.offset += rest.len() as u64;
                if self.partial.len() >= MAX_LINE {
                    self.flush_line(out);
                }
            }
        }
    }

    fn flush_line(&mut self, out: &mut BytesMut) {
        let mut line = String::from_utf8_lossy(&self.partial).into_owned();
        if line.ends_with('\r') {
            line.pop();
        }
        data_event(out, self.offset, None, &line);
        self.partial.clear();
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if !self.partial.is_empty() {
            self.flush_line(out);
        }
    }
}

/// Turns `(offset, bytes)` pieces into an event stream. Ends with `event:
/// end`, or with `event: abort` followed by an error (the response is
/// aborted too).
pub fn events<S>(pieces: S, encoding: Encoding) -> impl Stream<Item = Result<Bytes, Cut>> + Send
where
    S: Stream<Item = Result<(u64, Bytes), Cut>> + Send + Unpin + 'static,
{
    let start = Bytes::from(format!("retry: {RETRY_MS}\n\n"));
    let encoder = Encoder {
        encoding,
        partial: BytesMut::new(),
        offset: 0,
    };
    let body = futures_util::stream::unfold(Some((pieces, encoder)), |state| async move {
        let (mut pieces, mut encoder) = state?;
        loop {
            let mut out = BytesMut::new();
            match tokio::time::timeout(HEARTBEAT, pieces.next()).await {
                Err(_) => {
                    let beat = Bytes::from_static(b": keep-alive\n\n");
                    return Some((Ok(beat), Some((pieces, encoder))));
                }
                Ok(Some(Ok((at, bytes)))) => {
                    encoder.piece(at, &bytes, &mut out);
                    if out.is_empty() {
                        continue; // half a line so far
                    }
                    return Some((Ok(out.freeze()), Some((pieces, encoder))));
                }
                Ok(None) => {
                    encoder.finish(&mut out);
                    out.extend_from_slice(b"event: end\ndata: \n\n");
                    return Some((Ok(out.freeze()), None));
                }
                Ok(Some(Err(cut))) => {
                    // The abort event ends the stream: an aborted
                    // response would lose it (and the last line) on the
                    // way, and EventSource cannot tell one from a clean
                    // end anyway.
                    encoder.finish(&mut out);
                    out.extend_from_slice(format!("event: abort\ndata: {}\n\n", cut.0).as_bytes());
                    return Some((Ok(out.freeze()), None));
                }
            }
        }
    });
    futures_util::stream::once(async move { Ok(start) }).chain(body)
}

/// A room member's messages as events: first `event: joined` with the
/// member's id (to post with `?room&from=ID`), then one event per message
/// (`event: binary` with base64 for binary ones), heartbeats while quiet.
/// The member stays in the room as long as the stream lives.
pub fn room_events(
    member: crate::relay::room::Member,
) -> impl Stream<Item = Result<Bytes, Cut>> + Send {
    let start = Bytes::from(format!(
        "retry: {RETRY_MS}\n\nevent: joined\ndata: {}\n\n",
        member.id
    ));
    let body = futures_util::stream::unfold((member, 0u64), |(mut member, seq)| async move {
        match tokio::time::timeout(HEARTBEAT, member.rx.recv()).await {
            Err(_) => Some((Ok(Bytes::from_static(b": keep-alive\n\n")), (member, seq))),
            Ok(Some(message)) => {
                let mut out = BytesMut::new();
                let seq = seq + 1;
                if message.text {
                    data_event(&mut out, seq, None, &String::from_utf8_lossy(&message.data));
                } else {
                    let text = base64::engine::general_purpose::STANDARD.encode(&message.data);
                    data_event(&mut out, seq, Some("binary"), &text);
                }
                Some((Ok(out.freeze()), (member, seq)))
            }
            Ok(None) => None,
        }
    });
    futures_util::stream::once(async move { Ok(start) }).chain(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn encode(pieces: Vec<Result<(u64, Bytes), Cut>>, enc: Encoding) -> (String, bool) {
        let stream = events(futures_util::stream::iter(pieces), enc);
        tokio::pin!(stream);
        let mut out = String::new();
        let mut failed = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(b) => out.push_str(std::str::from_utf8(&b).unwrap()),
                Err(_) => failed = true,
            }
        }
        (out, failed)
    }

    #[tokio::test]
    async fn lines_become_events_with_offsets() {
        let (out, failed) = encode(
            vec![
                Ok((0, Bytes::from_static(b"one\ntw"))),
                Ok((6, Bytes::from_static(b"o\r\nlast"))),
            ],
            Encoding::Text,
        )
        .await;
        assert!(!failed);
        assert_eq!(
            out,
            "retry: 2000\n\nid: 4\ndata: one\n\nid: 9\ndata: two\n\nid: 13\ndata: last\n\nevent: end\ndata: \n\n"
        );
    }

    #[tokio::test]
    async fn binary_chunks_are_base64() {
        let (out, _) = encode(
            vec![Ok((10, Bytes::from_static(&[0, 255, 1])))],
            Encoding::Binary,
        )
        .await;
        assert!(
            out.contains("event: binary\nid: 13\ndata: AP8B\n\n"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_cut_stream_ends_with_an_abort_event() {
        let (out, failed) = encode(
            vec![
                Ok((0, Bytes::from_static(b"a\n"))),
                Err(Cut("sender left".into())),
            ],
            Encoding::Text,
        )
        .await;
        assert!(
            out.ends_with("event: abort\ndata: sender left\n\n"),
            "{out}"
        );
        assert!(!failed);
    }

    #[tokio::test]
    async fn a_gap_drops_the_unfinished_line_and_ids_stay_offsets() {
        let (out, _) = encode(
            vec![
                Ok((0, Bytes::from_static(b"whole\nhal"))),
                Ok((100, Bytes::from_static(b"next\n"))),
            ],
            Encoding::Text,
        )
        .await;
        assert!(
            out.contains("id: 6\ndata: whole\n\nid: 105\ndata: next\n\n"),
            "{out}"
        );
        assert!(!out.contains("hal"), "{out}");
    }

    #[test]
    fn choices() {
        let mut h = HeaderMap::new();
        assert!(!wanted(&h, None));
        assert!(wanted(&h, Some("sse")));
        h.insert("accept", "text/event-stream".parse().unwrap());
        assert!(wanted(&h, None));
        h.insert("last-event-id", "42".parse().unwrap());
        assert_eq!(last_event_id(&h, None), Some(42));
        let bin = Head {
            content_type: Some(Bytes::from_static(b"image/png")),
            ..Head::default()
        };
        assert_eq!(encoding(&bin, None), Encoding::Binary);
        assert_eq!(encoding(&Head::default(), None), Encoding::Text);
        assert_eq!(
            encoding(&Head::default(), Some("sse=binary")),
            Encoding::Binary
        );
    }
}
