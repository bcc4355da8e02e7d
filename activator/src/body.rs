//! Body types of the proxy: a request body (buffered when routed by body, else the client's
//! stream), and a response body that holds the request's pod slot, its pooled connection and its
//! concurrency count until its last byte is sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::metrics::Held;
use crate::queue::Permit;
use crate::upstream::Conn;

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum ReqBody {
    /// Buffered (routing by body); `None` once sent.
    Full(Option<Bytes>),
    /// Streamed from the client.
    Stream(Incoming),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ReqBody::Full(None) => SizeHint::with_exact(0),
            ReqBody::Stream(b) => b.size_hint(),
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Proxied { inner, guard } => {
                let p = Pin::new(inner).poll_frame(cx);
                if matches!(p, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    guard.take();
                }
                p
            }
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
