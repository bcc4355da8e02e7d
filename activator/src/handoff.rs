//! The hand-off: a client connection given to hyper, with the bytes already read from it in
//! front, whose every request head passes the forwarding policy before hyper reads it.
//!
//! The relay checks each head it reads ([`crate::relay`]), but once a connection is hyper's,
//! hyper parses the heads that follow, and what it refuses itself gets its own empty 400. So
//! [`HandOff`] sits between the socket and hyper and follows the stream's framing (heads,
//! `Content-Length` and chunked bodies): each head is parsed and checked first, and only then
//! given to hyper. A head the policy refuses never reaches hyper: it is replaced by a one-line
//! request (`Connection: close`) that the connection's service answers with the refusal, in
//! order behind any answer still being written, and the connection ends there. The same check
//! bounds a head that starts but does not finish (`--header-read-timeout`); hyper's own timer
//! only bounds the wait for the next request (`--keep-alive-timeout`). After an upgrade, and for
//! HTTP/2, bytes pass as they are.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::chunked::Chunks;
use crate::error::ProxyError;
use crate::head::{self, Next};
use crate::metrics::Metrics;

/// What hyper reads in place of a refused head; the service answers it from [`Refused`].
const REFUSED_REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nhost: refused.zeroscale\r\nconnection: close\r\n\r\n";

/// The refusal of the head hyper is about to read, for the connection's service to answer.
pub type Refused = Arc<Mutex<Option<ProxyError>>>;

/// What the hand-off checks heads against.
#[derive(Clone, Debug)]
pub struct Checks {
    /// Counts refusals and slow heads.
    pub metrics: Arc<Metrics>,
    /// The longest head; beyond it 431.
    pub max_header_bytes: usize,
    /// A head whose first byte arrived must be complete within this.
    pub header_timeout: Duration,
}

#[derive(Debug)]
enum State {
    /// The next bytes start a request head.
    Head,
    /// This many bytes of a body before the next head.
    Body(u64),
    /// A chunked body.
    Chunked(Chunks),
    /// Bytes pass as they are (HTTP/2, an upgrade, a body the check cannot follow).
    Opaque,
    /// A refusal was handed over: hyper reads nothing more (the stream stays silent).
    Done,
}

impl State {
    /// The state after a head that `next` follows.
    fn after(next: Next) -> Self {
        match next {
            Next::Head => State::Head,
            Next::Body(n) => State::Body(n),
            Next::Chunked => State::Chunked(Chunks::default()),
            Next::Opaque => State::Opaque,
        }
    }
}

/// A client connection for hyper; see the module docs.
pub struct HandOff {
    stream: TcpStream,
    /// Bytes read from the client, not yet given to hyper.
    pending: BytesMut,
    /// Of those, how many are checked and may go to hyper as they are.
    approved: usize,
    state: State,
    checks: Checks,
    refused: Refused,
    /// Runs while a head is arriving.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for HandOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandOff")
            .field("state", &self.state)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl HandOff {
    /// `stream`, whose next bytes are `prefix` (what the relay read and did not use). When the
    /// relay checked the head at the front of `prefix` already, `checked` says how long it is
    /// and what follows it: it passes without being parsed again.
    pub fn new(
        prefix: Vec<u8>,
        stream: TcpStream,
        checks: Checks,
        checked: Option<(usize, Next)>,
    ) -> (Self, Refused) {
        let (approved, state) = match checked {
            // A head over the limit is left to the check, which refuses it (431).
            Some((len, next)) if len <= checks.max_header_bytes && len <= prefix.len() => {
                (len, State::after(next))
            }
            _ if prefix.starts_with(b"PRI * HTTP/2.0") => (0, State::Opaque),
            _ => (0, State::Head),
        };
        let refused = Refused::default();
        let h = Self {
            stream,
            pending: BytesMut::from(&prefix[..]),
            approved,
            state,
            checks,
            refused: refused.clone(),
            deadline: None,
        };
        (h, refused)
    }

    fn avail(&self) -> &[u8] {
        &self.pending
    }

    /// Reads more from the client into `pending`; `Ok(0)` at its end.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.pending.reserve(8192);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.pending)
    }

    /// Checks the head at the front of `pending`: `Ok(None)` when it is not complete yet.
    fn check_head(&mut self) -> Result<Option<(usize, State)>, ProxyError> {
        let checked = head::parse(&self.pending, self.checks.max_header_bytes, |h| {
            (h.len, h.next())
        })?;
        Ok(checked.map(|(len, next)| (len, State::after(next))))
    }

    /// Replaces the refused head (and everything after it) with the request the service answers.
    fn refuse(&mut self, e: ProxyError) {
        tracing::debug!(error = %e, "request refused");
        self.checks.metrics.rejected(e.reason());
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        self.pending.clear();
        self.pending.extend_from_slice(REFUSED_REQUEST);
        self.approved = REFUSED_REQUEST.len();
        self.state = State::Done;
        self.deadline = None;
    }
}

impl AsyncRead for HandOff {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.approved > 0 {
                let n = this.approved.min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                this.approved -= n;
                return Poll::Ready(Ok(()));
            }
            match &mut this.state {
                // Not the end of the stream: hyper takes a client's end right after a request
                // for the client leaving and drops the answer. The stand-in asked to close, so
                // hyper ends the connection once the refusal is written.
                State::Done => return Poll::Pending,
                State::Opaque => {
                    if !this.avail().is_empty() {
                        this.approved = this.avail().len();
                        continue;
                    }
                    return Pin::new(&mut this.stream).poll_read(cx, buf);
                }
                State::Body(0) => this.state = State::Head,
                State::Body(n) => {
                    let n = *n;
                    if this.avail().is_empty() && ready!(this.fill(cx))? == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let k = n.min(this.avail().len() as u64);
                    this.state = State::Body(n - k);
                    this.approved = k as usize;
                }
                State::Chunked(c) => {
                    if this.pending.is_empty() {
                        if ready!(this.fill(cx))? == 0 {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    match c.feed(&this.pending) {
                        Ok(Some(end)) => {
                            this.approved = end;
                            this.state = State::Head;
                        }
                        Ok(None) => this.approved = this.pending.len(),
                        // hyper answers a broken body; nothing after it can be followed.
                        Err(()) => {
                            this.approved = this.pending.len();
                            this.state = State::Opaque;
                        }
                    }
                }
                State::Head => {
                    if !this.avail().is_empty() {
                        match this.check_head() {
                            Ok(Some((len, next))) => {
                                this.approved = len;
                                this.state = next;
                                this.deadline = None;
                                continue;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                this.refuse(e);
                                continue;
                            }
                        }
                    }
                    match this.fill(cx) {
                        Poll::Ready(Ok(0)) => {
                            // The client's end; a cut head is hyper's to report.
                            this.approved = this.avail().len();
                            this.state = State::Opaque;
                            if this.approved == 0 {
                                return Poll::Ready(Ok(()));
                            }
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            if this.avail().is_empty() {
                                return Poll::Pending;
                            }
                            let t = this.checks.header_timeout;
                            let d = this
                                .deadline
                                .get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
                            ready!(d.as_mut().poll(cx));
                            this.checks.metrics.rejected("header_timeout");
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "the request head did not arrive within the header read timeout",
                            )));
                        }
                    }
                }
            }
        }
    }
}

impl AsyncWrite for HandOff {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward;
    use prometheus_client::registry::Registry;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A hand-off over a loopback connection whose client wrote `sent` (and keeps it open).
    async fn handoff(prefix: &[u8], sent: &[u8]) -> (HandOff, Refused, TcpStream, Arc<Metrics>) {
        handoff_checked(prefix, sent, None).await
    }

    /// [`handoff`] whose first head the relay checked already (`checked`).
    async fn handoff_checked(
        prefix: &[u8],
        sent: &[u8],
        checked: Option<(usize, Next)>,
    ) -> (HandOff, Refused, TcpStream, Arc<Metrics>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        client.write_all(sent).await.unwrap();
        let metrics = Metrics::register(&mut Registry::default());
        let (h, r) = HandOff::new(
            prefix.to_vec(),
            server,
            Checks {
                metrics: metrics.clone(),
                max_header_bytes: 4096,
                header_timeout: Duration::from_millis(200),
            },
            checked,
        );
        (h, r, client, metrics)
    }

    /// What hyper would read until the stream ends or pauses for 300 ms.
    async fn drain(h: &mut HandOff) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 7]; // small reads: heads and bodies cross read boundaries
        loop {
            match tokio::time::timeout(Duration::from_millis(300), h.read(&mut buf)).await {
                Err(_) => return Ok(out),
                Ok(Ok(0)) => return Ok(out),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    const GOOD: &[u8] = b"POST /a HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /c HTTP/1.1\r\nHost: m\r\n\r\n";

    #[tokio::test]
    async fn checked_requests_pass_as_they_are() {
        let (mut h, refused, _c, _) = handoff(&GOOD[..20], &GOOD[20..]).await;
        assert_eq!(drain(&mut h).await.unwrap(), GOOD);
        assert!(refused.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_head_the_relay_checked_is_not_parsed_again() {
        // Stand-in for a checked head: one the policy would refuse (two Hosts), 5 body bytes.
        let first = b"POST /a HTTP/1.1\r\nHost: m\r\nHost: n\r\n\r\n";
        let prefix = [&first[..], b"hello"].concat();
        let checked = Some((first.len(), Next::Body(5)));
        let then = b"GET /c HTTP/1.1\r\nHost: m\r\n\r\n";
        let (mut h, refused, _c, _) = handoff_checked(&prefix, then, checked).await;
        // It passes with its body; what follows is checked as ever.
        assert_eq!(
            drain(&mut h).await.unwrap(),
            [&prefix[..], &then[..]].concat()
        );
        assert!(refused.lock().unwrap().is_none());
        let (mut h, refused, _c, _) = handoff_checked(&prefix, first, checked).await;
        assert_eq!(
            drain(&mut h).await.unwrap(),
            [&prefix[..], REFUSED_REQUEST].concat()
        );
        assert!(refused.lock().unwrap().is_some());
        // Longer than the limit: checked again, and refused.
        let big = [
            &b"GET / HTTP/1.1\r\nHost: m\r\nx: "[..],
            &[b'a'; 5000],
            b"\r\n\r\n",
        ]
        .concat();
        let checked = Some((big.len(), Next::Head));
        let (mut h, refused, _c, _) = handoff_checked(&big, b"", checked).await;
        assert_eq!(drain(&mut h).await.unwrap(), REFUSED_REQUEST);
        assert!(matches!(
            refused.lock().unwrap().take(),
            Some(ProxyError::HeadTooLarge(4096))
        ));
    }

    #[tokio::test]
    async fn a_refused_head_is_replaced_and_nothing_follows() {
        let bad =
            b"GET /d HTTP/1.1\r\nHost: m\r\nHost: n\r\n\r\nGET /e HTTP/1.1\r\nHost: m\r\n\r\n";
        let sent = [GOOD, &bad[..]].concat();
        let (mut h, refused, _c, metrics) = handoff(b"", &sent).await;
        let got = drain(&mut h).await.unwrap();
        assert_eq!(got, [GOOD, REFUSED_REQUEST].concat());
        assert!(matches!(
            refused.lock().unwrap().take(),
            Some(ProxyError::Refused(forward::Refusal::DuplicateHost))
        ));
        assert_eq!(metrics.rejected_count("malformed_http"), 1);
        // A smuggled body after Connection: content-length never reaches hyper either.
        let smuggle = b"POST / HTTP/1.1\r\nHost: m\r\nConnection: content-length\r\nContent-Length: 29\r\n\r\nGET /x HTTP/1.1\r\nHost: m\r\n\r\n";
        let (mut h, refused, _c, _) = handoff(b"", smuggle).await;
        assert_eq!(drain(&mut h).await.unwrap(), REFUSED_REQUEST);
        assert!(refused.lock().unwrap().is_some());
    }

    #[tokio::test]
    async fn malformed_and_oversized_heads_are_refused() {
        let (mut h, refused, _c, _) =
            handoff(b"", b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").await;
        assert_eq!(drain(&mut h).await.unwrap(), REFUSED_REQUEST);
        assert!(matches!(
            refused.lock().unwrap().take(),
            Some(ProxyError::Malformed(_))
        ));
        let big = [&b"GET / HTTP/1.1\r\nHost: m\r\nx: "[..], &[b'a'; 5000]].concat();
        let (mut h, refused, _c, _) = handoff(b"", &big).await;
        assert_eq!(drain(&mut h).await.unwrap(), REFUSED_REQUEST);
        assert!(matches!(
            refused.lock().unwrap().take(),
            Some(ProxyError::HeadTooLarge(4096))
        ));
    }

    #[tokio::test]
    async fn a_head_that_stalls_times_out_and_idle_waits_do_not() {
        // Idle between requests: no timer, no error (hyper's keep-alive timer decides).
        let (mut h, _, _c, metrics) = handoff(b"", b"GET / HTTP/1.1\r\nHost: m\r\n\r\n").await;
        assert!(drain(&mut h).await.is_ok());
        assert_eq!(metrics.rejected_count("header_timeout"), 0);
        // Half a head: cut after the header timeout and counted.
        let (mut h, _, _c, metrics) = handoff(b"", b"GET / HTTP/1.1\r\nHo").await;
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(2), h.read(&mut buf)).await;
        assert_eq!(
            r.expect("within the timeout").unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        assert_eq!(metrics.rejected_count("header_timeout"), 1);
    }

    #[tokio::test]
    async fn http2_and_upgrades_pass_untouched() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00garbage";
        let (mut h, _, _c, _) = handoff(h2, b"").await;
        assert_eq!(drain(&mut h).await.unwrap(), h2);
        let up = b"GET /ws HTTP/1.1\r\nHost: m\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello not http";
        let (mut h, refused, _c, _) = handoff(b"", up).await;
        assert_eq!(drain(&mut h).await.unwrap(), up);
        assert!(refused.lock().unwrap().is_none());
    }
}
