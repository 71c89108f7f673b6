//! The one response body type of the HTTP transport: a fixed page or
//! message, the sender's live log, or a receiver's stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::{Frame, SizeHint};

use crate::relay::{ReceiverStream, SenderLog};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum Body {
    /// A complete body, taken on the first poll.
    Full(Option<Bytes>),
    /// The sender's log, one line per frame, as it happens.
    Log(SenderLog),
    /// The bytes of a transfer; an error aborts the response.
    Stream(ReceiverStream),
    /// Any other stream (live streams, events); an error aborts it.
    Boxed(BoxStream),
}

/// A boxed body stream.
pub type BoxStream = Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, BoxError>> + Send>>;

impl Body {
    /// See [`ReceiverStream::delivered_elsewhere`].
    pub fn delivered_elsewhere(&mut self, bytes: u64) {
        if let Body::Stream(stream) = self {
            stream.delivered_elsewhere(bytes);
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        Body::Full(None)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Log(log) => log
                .poll_next_unpin(cx)
                .map(|line| line.map(|line| Ok(Frame::data(Bytes::from(line.to_string()))))),
            Body::Stream(stream) => stream
                .poll_next_unpin(cx)
                .map(|item| item.map(|chunk| chunk.map(Frame::data).map_err(Into::into))),
            Body::Boxed(stream) => stream
                .poll_next_unpin(cx)
                .map(|item| item.map(|chunk| chunk.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Log(_) | Body::Boxed(_) => false,
            Body::Stream(stream) => stream.is_complete(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
