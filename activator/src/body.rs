//! The request body of hyper's path (buffered when routed by body, else the client's stream)
//! and the idle timer that cuts a streamed body, on either side, when it pauses longer than the
//! model's idle timeout. The answer body is in `answer`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error type of both bodies (what hyper carries when a body fails).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body paused longer than the model's idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no byte for {0:?} (idle-timeout)")]
pub struct IdleTimeout(pub Duration);

/// A timer re-armed by every frame: fires when a stream pauses longer than `idle`.
#[derive(Debug)]
pub struct IdleTimer {
    idle: Duration,
    // Created on the first pause only: a body that arrives at once costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    /// A timer for pauses longer than `idle`.
    pub fn new(idle: Duration) -> Self {
        Self { idle, sleep: None }
    }

    /// Call when a frame arrived.
    pub(crate) fn touch(&mut self) {
        if let Some(s) = &mut self.sleep {
            s.as_mut().reset(Instant::now() + self.idle);
        }
    }

    /// Call when the body is pending: ready (an error) once the pause is too long.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<IdleTimeout> {
        let idle = self.idle;
        let s = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        s.as_mut().poll(cx).map(|()| IdleTimeout(idle))
    }
}

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum ReqBody {
    /// Buffered (routing by body); `None` once sent.
    Full(Option<Bytes>),
    /// Streamed from the client.
    Stream(Incoming, IdleTimer),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream(b, timer) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(f) => {
                    timer.touch();
                    Poll::Ready(f.map(|r| r.map_err(Into::into)))
                }
                Poll::Pending => match timer.poll_expired(cx) {
                    Poll::Ready(e) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Pending => Poll::Pending,
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ReqBody::Full(None) => SizeHint::with_exact(0),
            ReqBody::Stream(b, _) => b.size_hint(),
        }
    }
}
