//! The answer body of hyper's path: a local answer, or a pod's streamed body that holds the
//! request's pod slot, its pooled connection and its concurrency count ([`Guard`]) until its last
//! byte is sent, and is cut when it pauses longer than the model's idle timeout.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::body::{BoxError, IdleTimer};
use crate::metrics::{Event, Held};
use crate::queue::Permit;
use crate::upstream::Conn;

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
    /// A body made elsewhere: a held stream's heartbeats, then its pod's stream
    /// (`hold`, above this module). Boxed so that this module need not know it.
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
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
            RespBody::Boxed(b) => Pin::new(b).poll_frame(cx),
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
            RespBody::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RespBody::Full(None) => SizeHint::with_exact(0),
            RespBody::Proxied { inner, .. } => inner.size_hint(),
            RespBody::Boxed(b) => b.size_hint(),
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
