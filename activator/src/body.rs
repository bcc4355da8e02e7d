//! Body types of the proxy: a request body (buffered when routed by body, else the client's
//! stream), and a response body that holds the request's pod slot, its pooled connection and its
//! concurrency count until its last byte is sent. Streamed bodies on both sides are cut when
//! they pause longer than the model's idle timeout.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::metrics::{Event, Held};
use crate::queue::Permit;
use crate::upstream::Conn;

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
    fn touch(&mut self) {
        if let Some(s) = &mut self.sleep {
            s.as_mut().reset(Instant::now() + self.idle);
        }
    }

    /// Call when the body is pending: ready (an error) once the pause is too long.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<IdleTimeout> {
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

/// What a forwarded request holds until its answer is complete.
#[derive(Debug)]
pub struct Guard {
    /// The connection to the pod, back to its pool first (fields drop in order), so the next
    /// request the permit's release lets through finds it.
    pub conn: Option<Conn>,
    /// The slot on the pod.
    pub permit: Permit,
    /// The request's share of the concurrency integral.
    pub held: Held,
}

/// A response body: a local answer or a backend's streamed body.
#[derive(Debug)]
pub enum RespBody {
    /// A local answer (errors, empty upgrade answers).
    Full(Option<Bytes>),
    /// The backend's body; the guard is released at its end (or when the client goes away).
    Proxied {
        /// The backend's body.
        inner: Incoming,
        /// Released at end of stream.
        guard: Option<Guard>,
        /// Cuts a stream that pauses too long.
        timer: IdleTimer,
    },
}

impl RespBody {
    /// A complete local body.
    pub fn full(b: Bytes) -> Self {
        RespBody::Full(if b.is_empty() { None } else { Some(b) })
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Proxied {
                inner,
                guard,
                timer,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(f) => {
                    if matches!(f, None | Some(Err(_))) {
                        guard.take();
                    }
                    timer.touch();
                    Poll::Ready(f.map(|r| r.map_err(Into::into)))
                }
                Poll::Pending => match timer.poll_expired(cx) {
                    Poll::Ready(e) => {
                        if let Some(g) = guard.take() {
                            let m = g.permit.metrics();
                            m.count(Event::IdleTimeout);
                            tracing::warn!(model = %m.labels.model, namespace = %m.labels.namespace, pod = %g.permit.addr(), idle = ?e.0, "answer body paused longer than idle-timeout: cut");
                        }
                        // hyper closes the client connection: a cut body is never whole.
                        Poll::Ready(Some(Err(e.into())))
                    }
                    Poll::Pending => Poll::Pending,
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Proxied { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RespBody::Full(None) => SizeHint::with_exact(0),
            RespBody::Proxied { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        // Dropped with the guard still held: the client went away before the body's end.
        if let RespBody::Proxied {
            guard: Some(g),
            inner,
            ..
        } = self
            && !inner.is_end_stream()
        {
            g.permit.metrics().count(Event::ClientGone);
        }
    }
}
