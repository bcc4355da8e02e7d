//! Parking the first request of a new HTTP/1 connection while its model has no ready pod.
//!
//! Once hyper has read a request from an HTTP/1 connection, that connection holds two 8 KiB
//! buffers, and the request's header values keep the first one alive: a request waiting in a
//! model's queue costs about 16 KiB of resident memory before anything of ours (BENCHMARKS.md,
//! "Activator"). A model at zero collects a burst of requests during its cold start, usually one
//! connection each, so before a new connection is handed to hyper its first request head is
//! *peeked* (read into a short-lived buffer; the bytes stay in the kernel's socket buffer),
//! parsed and routed the way the relay does it ([`relay::plan`]), and, when the model has no
//! ready pod, the connection waits in the model's queue as it is: a task, a queue entry and no
//! buffer. When a pod has room, the connection goes to hyper, which reads the request as usual
//! and forwards it on the slot already taken.
//!
//! Everything else goes on to the relay, with the peeked head's outcome when the head was
//! complete (so the relay does not parse or route it again): HTTP/2, heads that are incomplete,
//! malformed or larger than [`PEEK_BYTES`], routing by body, unknown models, and models with a
//! ready pod. A parked connection is served without keep-alive (one request, then
//! closed): it cannot be watched for graceful shutdown before hyper has read its request (an
//! idle HTTP/1 connection is closed at once on shutdown), so the server holds its place in the
//! drain itself.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::metrics::Held;
use crate::peer::Peer;
use crate::queue::{Admit, Permit, QueueError};
use crate::relay::{self, Peeked};
use crate::table::{Model, Table};

/// The most bytes of a first request head looked at; a longer head is not parked.
pub const PEEK_BYTES: usize = crate::head::FIRST_HEAD_BYTES;

/// What became of a parked request, for hyper's first request on the connection.
#[derive(Debug)]
pub struct Parked {
    /// The model the peeked head addressed.
    pub model: Arc<Model>,
    /// Its share of the concurrency integral, held since it arrived.
    pub held: Held,
    /// A slot on a pod, or why there was none.
    pub outcome: Result<Permit, QueueError>,
}

/// How a new connection goes on.
#[derive(Debug)]
pub enum Parking {
    /// The relay serves it (and hands it to hyper when it must); its first request head, when
    /// the peek saw all of it, comes parsed.
    Relay(TcpStream, Option<Peeked>),
    /// hyper serves it: its first request was parked, this is what became of it.
    Parked(TcpStream, Parked),
    /// The client sent nothing in time, or went away while parked: close it.
    Gone(GoneReason),
}

/// Why a connection was closed before hyper saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoneReason {
    /// No byte arrived within the keep-alive timeout (an idle connection, not a rejection).
    Idle,
    /// The client closed the connection (before sending, or while its request was parked).
    Closed,
    /// The server is shutting down and no request had arrived.
    Stopping,
}

/// Looks at the first request head of `stream` and parks it while its model has no ready pod.
/// While no request has arrived, `stopping` (the server shutting down) closes the connection;
/// a request already parked keeps waiting for its slot (the drain lets it finish).
pub async fn park(
    stream: TcpStream,
    table: &Table,
    peer: &Peer,
    idle_timeout: Duration,
    stopping: &CancellationToken,
) -> Parking {
    tokio::select! {
        r = tokio::time::timeout(idle_timeout, stream.readable()) => match r {
            Err(_) => return Parking::Gone(GoneReason::Idle),
            Ok(Err(_)) => return Parking::Gone(GoneReason::Closed),
            Ok(Ok(())) => {}
        },
        () = stopping.cancelled() => return Parking::Gone(GoneReason::Stopping),
    }
    let peeked = match peek(&stream, table, peer).await {
        Ok(p) => p,
        Err(_) => return Parking::Gone(GoneReason::Closed),
    };
    // Freed (end of the block) before the request waits: a parked connection holds no buffer.
    let model = {
        let peeked = peeked;
        match peeked.as_ref().and_then(|p| addressed(&p.parsed)) {
            Some(m) if !m.gate().has_ready() => m.clone(),
            _ => return Parking::Relay(stream, peeked),
        }
    };
    let held = model.gate().metrics().integral.hold();
    let (stream, outcome) = match table.admit(&model, 0) {
        Ok(Admit::Ready(p)) => (stream, Ok(p)),
        Err(e) => (stream, Err(e)),
        Ok(Admit::Queued(t)) => {
            let outcome = tokio::select! {
                r = t.wait() => r,
                // Dropping the ticket takes it out of the queue and counts it abandoned.
                () = client_gone(&stream) => return Parking::Gone(GoneReason::Closed),
            };
            match rearm(stream) {
                Ok(s) => (s, outcome),
                // Dropping the permit (if any) frees the slot for the next waiter.
                Err(_) => return Parking::Gone(GoneReason::Closed),
            }
        }
    };
    Parking::Parked(
        stream,
        Parked {
            model,
            held,
            outcome,
        },
    )
}

/// Peeks at the first request head and parses it the way the relay does ([`relay::plan`]): once,
/// for both the parking decision and the relay. `None` when the head is not all there (the
/// relay reads it as usual). Errors: the client closed or reset the connection.
async fn peek(stream: &TcpStream, table: &Table, peer: &Peer) -> io::Result<Option<Peeked>> {
    let mut buf = Vec::with_capacity(PEEK_BYTES);
    let mut rb = ReadBuf::uninit(buf.spare_capacity_mut());
    let n = std::future::poll_fn(|cx| stream.poll_peek(cx, &mut rb)).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    // Room for the head the pod gets in one go, as the relay reserves it.
    let mut out = Vec::with_capacity(n + 128);
    let parsed = relay::plan(rb.filled(), table, peer, &mut out);
    if matches!(parsed, relay::Parsed::Partial) {
        return Ok(None);
    }
    Ok(Some(Peeked {
        parsed,
        len: n,
        buf,
        out,
    }))
}

/// The routed model a first head addresses by Host or path, if it may be parked for it: a
/// complete head the policy accepts. Unknown models, routing by body, refused, malformed and
/// HTTP/2 heads are not parked (the relay or hyper's path answers them at once).
fn addressed(parsed: &relay::Parsed) -> Option<&Arc<Model>> {
    match parsed {
        relay::Parsed::Plan(p) => Some(p.model()),
        // hyper's path holds it (module `hold`), which needs hyper to have read it.
        relay::Parsed::HandOff(Some(c)) if c.held_stream => None,
        relay::Parsed::HandOff(Some(c)) => c.model.as_ref(),
        relay::Parsed::HandOff(None) | relay::Parsed::Partial | relay::Parsed::Refuse(_) => None,
    }
}

/// Completes when the client closes or resets the connection. The request head still sits
/// unread in the socket, so readability says nothing: this waits for the peer's FIN
/// (EPOLLRDHUP) or an error, clearing the readiness that data sets. Clearing it means hyper
/// would wait for an event that never comes for the head it must read, so [`rearm`] registers
/// the socket anew before it is handed over.
async fn client_gone(stream: &TcpStream) {
    loop {
        match stream.ready(Interest::READABLE).await {
            Ok(r) if r.is_read_closed() || r.is_error() => return,
            Ok(_) => {
                // Data (the head, a body, a pipelined request): not a close. Clear and wait.
                let _ = stream.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                });
            }
            Err(_) => return,
        }
    }
}

/// Registers the socket with the reactor again: a fresh registration reports the data already
/// waiting (epoll checks readiness when a descriptor is added).
fn rearm(stream: TcpStream) -> io::Result<TcpStream> {
    TcpStream::from_std(stream.into_std()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::queue::Limits;
    use crate::table::{ModelKey, ModelSpec, NoWake};
    use prometheus_client::registry::Registry;

    fn table() -> Table {
        let t = Table::new(
            Metrics::register(&mut Registry::default()),
            Arc::new(NoWake),
        );
        t.upsert_model(ModelSpec {
            key: ModelKey {
                namespace: "ns".into(),
                deployment: "llama".into(),
            },
            model_name: "llama".into(),
            hostnames: vec![],
            created: Some(1),
            limits: Limits::with_queue(0, 10, 1000, Duration::from_secs(300)),
        });
        t
    }

    fn routed(head: &str) -> Option<String> {
        let peer = Peer::new("10.0.0.1:1234".parse().unwrap(), Default::default());
        let parsed = relay::plan(head.as_bytes(), &table(), &peer, &mut Vec::new());
        addressed(&parsed).map(|m| m.name())
    }

    #[test]
    fn complete_heads_route_by_host_then_path() {
        assert_eq!(
            routed("GET / HTTP/1.1\r\nHost: llama.ns.example.com\r\n\r\n").as_deref(),
            Some("llama")
        );
        assert_eq!(
            routed("POST /v1/models/llama:predict?x=1 HTTP/1.1\r\nhost: act\r\n\r\n").as_deref(),
            Some("llama")
        );
        assert_eq!(
            routed("GET /v2/models/llama/ready HTTP/1.0\r\n\r\n").as_deref(),
            Some("llama")
        );
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for head in [
            // routing by body needs the body: hyper's path
            "POST /v1/chat/completions HTTP/1.1\r\nhost: act\r\n\r\n",
            // unknown model: hyper's path answers 404
            "GET /v1/models/nope HTTP/1.1\r\nhost: act\r\n\r\n",
            // incomplete head
            "GET /v1/models/llama HTTP/1.1\r\nhost: act\r\n",
            // malformed
            "GET /v1/models/llama HTTP/9\r\n\r\n",
            // absolute-form target
            "GET http://x/v1/models/llama HTTP/1.1\r\n\r\n",
            // HTTP/2 prior knowledge
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            // refused by the forwarding policy: answered at once, not parked
            "GET /v1/models/llama HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            "GET /v1/models/llama HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(routed(head), None, "{head:?}");
        }
    }
}
