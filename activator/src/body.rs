//! Body types of the proxy: a request body that can be taken back when the backend was never
//! reached (to retry on another pod), and a response body that holds the request's pod slot and
//! concurrency count until its last byte is sent.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::metrics::Held;
use crate::queue::Permit;

/// Shared by the request sent to a backend and the proxy, so the body can be reused when the
/// connection failed before any of it was read.
#[derive(Clone, Debug)]
pub struct Rewind {
    inner: Arc<Mutex<Option<Incoming>>>,
    polled: Arc<AtomicBool>,
}

impl Rewind {
    /// Wraps a client's body.
    pub fn new(body: Incoming) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Some(body))),
            polled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The body again, for a new attempt, if no byte of it was read.
    pub fn rewind(&self) -> Option<Rewind> {
        if self.polled.load(Ordering::Acquire) {
            return None;
        }
        let b = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        Some(Rewind::new(b))
    }
}

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum ReqBody {
    /// Buffered (routing by body); `None` once sent.
    Full(Option<Bytes>),
    /// Streamed from the client.
    Stream(Rewind),
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
            ReqBody::Stream(r) => {
                r.polled.store(true, Ordering::Release);
                let mut g = r.inner.lock().unwrap_or_else(|e| e.into_inner());
                match g.as_mut() {
                    Some(b) => Pin::new(b).poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream(r) => r
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ReqBody::Full(None) => SizeHint::with_exact(0),
            ReqBody::Stream(r) => r
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map_or(SizeHint::with_exact(0), |b| b.size_hint()),
        }
    }
}

/// What a forwarded request holds until its answer is complete.
#[derive(Debug)]
pub struct Guard {
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
