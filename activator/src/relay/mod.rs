//! The relay: the HTTP/1.1 fast lane for the common request.
//!
//! Most requests to a warm model are small HTTP/1.1 requests on keep-alive connections. hyper
//! serves them correctly but spends more user-space CPU per request than the kernel's share of
//! the work: it builds a `HeaderMap` for the request and again for the response, and its client
//! runs each pod connection on its own task, so a request crosses tasks three times (request,
//! response head, response body). The relay does what nginx does instead: it reads the request
//! head into a buffer, parses it in place ([`httparse`]), routes it, writes the rewritten head
//! and the body to a pooled pod connection from the same task, and copies the response back,
//! rewriting only its head. A warm request costs four system calls and no task switch.
//!
//! Every HTTP/1 connection starts here, so every first request head is checked by the
//! forwarding policy ([`crate::forward`]) before anything else sees it: a refused, malformed or
//! oversized head is answered here (JSON, then the connection is closed), on both settings of
//! `--relay`. With the relay off ([`RelayOptions::forward`] false) the connection then goes to
//! hyper. With it on, the relay forwards a request itself when it can finish it without
//! anything hyper does better, and hands the connection to hyper ([`End::HandOff`], with the
//! bytes it has read) at the first request that is not one of these:
//! - HTTP/1.1, origin-form target, no `Upgrade`, `Expect` or `Transfer-Encoding`, body at most
//!   [`BODY_BYTES`];
//! - addressed by Host or path (not by body) to a known model;
//! - the body arrives within the header read timeout (a slow body is streamed by hyper);
//! - a pod has room now ([`Gate::try_admit`](zeroscale_gate::Gate::try_admit)): a request that
//!   must wait goes through hyper's path and its queue.
//!
//! Once a connection is hyper's it stays hyper's. Both paths forward what the policy says, retry
//! alike (another pod when nothing was written; a fresh connection when a reused one closed
//! before any byte of an answer), time out alike (`response-timeout`, `idle-timeout`), answer
//! with the same JSON errors ([`rescue`](crate::error::rescue)) and count the same metrics. Response bodies are
//! streamed: each read from the pod is written to the client at once (server-sent events flow
//! chunk by chunk); a chunked body is copied as it is while its framing is followed to find its
//! end, a body delimited by the pod closing is sent chunked.
//!
//! The parts: `request` (what the relay takes from a head, and the head the pod gets),
//! `exchange` (one request's round trip with a pod: sending, retries, copying the answer),
//! `response` (the pod's answer head checked and rewritten, body framing, local answers),
//! `client` (the client socket: reads with deadlines, noticing the client leave); chunked
//! framing is `chunked`, the hand-off to hyper `handoff`; this file is the connection loop.

mod client;
mod exchange;
#[cfg(test)]
mod fuzz;
mod request;
mod response;

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ProxyError;
use crate::forward;
use crate::metrics::Event;
use crate::peer::Peer;
use crate::table::Table;

use self::client::{Abort, Read, read_until};
use self::exchange::{Next, exchange};
pub use self::request::{Checked, Parsed, Peeked, Plan, plan};
use self::response::answer_and_close;

/// The first read of a request head reserves this much; the head may grow to
/// [`RelayOptions::max_header_bytes`].
pub const HEAD_BYTES: usize = crate::head::FIRST_HEAD_BYTES;
/// The largest request body the relay buffers; a larger one is streamed by hyper.
pub const BODY_BYTES: usize = forward::REPLAYABLE_BODY_BYTES;

/// How the relay treats a connection.
#[derive(Clone, Copy, Debug)]
pub struct RelayOptions {
    /// A request head, once its first byte arrived, must be complete within this.
    pub header_timeout: Duration,
    /// An idle connection waits this long for its next request, then is closed (not counted
    /// as a rejection).
    pub keep_alive_timeout: Duration,
    /// The longest request head; beyond it 431.
    pub max_header_bytes: usize,
    /// Forward requests itself (`--relay true`); false: check the first head, then hand the
    /// connection to hyper.
    pub forward: bool,
}

/// How a connection left the relay.
#[derive(Debug)]
pub enum End {
    /// Closed (the client left, asked for it, timed out, or the server is stopping).
    Closed,
    /// hyper serves the rest; these bytes were read from the socket and not used, starting
    /// with the head described, when it was checked.
    HandOff(Vec<u8>, Option<Checked>),
}

/// Serves requests from `client` until it closes or one needs hyper.
pub async fn serve(
    client: &mut TcpStream,
    table: &Table,
    peer: &Peer,
    opts: &RelayOptions,
    stopping: &CancellationToken,
    mut peeked: Option<Peeked>,
) -> End {
    let mut inb: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        // A connection waiting for its next request holds no buffer.
        if inb.is_empty() && peeked.is_none() {
            inb = Vec::new();
            out = Vec::new();
            tokio::select! {
                r = tokio::time::timeout(opts.keep_alive_timeout, client.readable()) => match r {
                    // Idle keep-alive: closing it is not a rejection.
                    Err(_) | Ok(Err(_)) => return End::Closed,
                    Ok(Ok(())) => {}
                },
                () = stopping.cancelled() => return End::Closed,
            }
            inb.reserve_exact(HEAD_BYTES);
        }
        let deadline = Instant::now() + opts.header_timeout;
        // The head.
        let plan = loop {
            let parsed = match peeked.take() {
                // Parsed already: read the bytes it was parsed from.
                Some(p) => match read_peeked(client, p, &mut inb, &mut out, deadline).await {
                    Some(parsed) => parsed,
                    None => return End::Closed,
                },
                None => {
                    out.clear();
                    // Room for the head the pod gets (about the client's, plus two headers) in
                    // one go.
                    out.reserve(inb.len() + 128);
                    plan(&inb, table, peer, &mut out)
                }
            };
            let refused = match parsed {
                Parsed::Plan(p) => break p,
                Parsed::HandOff(checked) => return End::HandOff(inb, checked),
                Parsed::Refuse(e) => e,
                Parsed::Partial if inb.len() >= opts.max_header_bytes => {
                    ProxyError::HeadTooLarge(opts.max_header_bytes)
                }
                Parsed::Partial => match read_until(client, &mut inb, deadline).await {
                    Read::Data => continue,
                    Read::Eof | Read::Error => return End::Closed,
                    // Woken with nothing to read: still idle, not a slow head.
                    Read::Timeout if inb.is_empty() => return End::Closed,
                    Read::Timeout => {
                        table.metrics().rejected("header_timeout");
                        return End::Closed;
                    }
                },
            };
            tracing::debug!(peer = %peer.addr(), error = %refused, "request refused");
            table.metrics().rejected(refused.reason());
            answer_and_close(client, &refused).await;
            return End::Closed;
        };
        if !opts.forward {
            return End::HandOff(inb, Some(plan.handed_off()));
        }
        // The body, whole.
        let total = plan.head_len + plan.body_len;
        while inb.len() < total {
            inb.reserve(total - inb.len());
            // A pause longer than the model's idle timeout cuts the request, as on hyper's path.
            let idle = plan.model.gate().timeouts().1;
            let paused = Instant::now() + idle;
            match read_until(client, &mut inb, deadline.min(paused)).await {
                Read::Data => {}
                Read::Eof | Read::Error => return End::Closed,
                Read::Timeout if paused <= deadline => {
                    plan.model.gate().metrics().count(Event::IdleTimeout);
                    let e = ProxyError::BodyTimeout(idle);
                    tracing::debug!(model = %plan.model.key(), error = %e, "request body cut");
                    plan.model.gate().metrics().answered(e.status().as_u16());
                    answer_and_close(client, &e).await;
                    return End::Closed;
                }
                // A slow body: hyper streams it.
                Read::Timeout => return End::HandOff(inb, Some(plan.handed_off())),
            }
        }
        let gate = plan.model.gate();
        let Some(permit) = gate.try_admit() else {
            // Every pod busy, or none ready: hyper's path queues it.
            return End::HandOff(inb, Some(plan.handed_off()));
        };
        let held = gate.metrics().integral.hold();
        out.extend_from_slice(&inb[plan.head_len..total]);
        let close = plan.close || stopping.is_cancelled();
        let outcome = exchange(client, &plan, permit, &out, close, peer.worker()).await;
        drop(held);
        if !matches!(outcome, Ok(Next::Queue)) {
            table.metrics().relayed();
        }
        match outcome {
            // Every pod with room refused a connection and nothing was sent: hyper's path
            // queues the request, whole in `inb`, until a pod can take it.
            Ok(Next::Queue) => return End::HandOff(inb, Some(plan.handed_off())),
            Ok(Next::Answered) if !close => {}
            Ok(Next::Answered) | Err(Abort) => return End::Closed,
        }
        inb.drain(..total);
    }
}

/// Reads the peeked bytes into `inb` (the buffer they were peeked into) and gives back what
/// they were parsed into; `None` when the client went away. They wait in the socket already, so
/// this is one read (the kernel returns at least what it showed the peek).
async fn read_peeked(
    client: &mut TcpStream,
    p: Peeked,
    inb: &mut Vec<u8>,
    out: &mut Vec<u8>,
    deadline: Instant,
) -> Option<Parsed> {
    *inb = p.buf;
    inb.clear();
    while inb.len() < p.len {
        match read_until(client, inb, deadline).await {
            Read::Data => {}
            Read::Eof | Read::Error | Read::Timeout => return None,
        }
    }
    *out = p.out;
    Some(p.parsed)
}
