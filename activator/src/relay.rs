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
//! with the same JSON errors ([`rescue`]) and count the same metrics. Response bodies are
//! streamed: each read from the pod is written to the client at once (server-sent events flow
//! chunk by chunk); a chunked body is copied as it is while its framing is followed to find its
//! end, a body delimited by the pod closing is sent chunked.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::answer::RespBody;
use crate::chunked::Chunks;
use crate::error::{ProxyError, rescue};
use crate::forward::{self, BadAnswer, Framing, RequestBody, Version, Wire};
use crate::forward::{MAX_CONNECT_ATTEMPTS, MAX_STALE_RETRIES};
use crate::head;
use crate::metrics::Event;
use crate::peer::Peer;
use crate::queue::Permit;
use crate::table::{Addressed, Model, Table};
use crate::upstream::{Upstream, WorkerId};

/// The first read of a request head reserves this much; the head may grow to
/// [`RelayOptions::max_header_bytes`].
pub const HEAD_BYTES: usize = crate::head::FIRST_HEAD_BYTES;
/// The largest request body the relay buffers; a larger one is streamed by hyper.
pub const BODY_BYTES: usize = forward::REPLAYABLE_BODY_BYTES;
/// Header lines parsed per answer head (hyper's default limit).
const MAX_HEADERS: usize = head::MAX_HEADERS;
/// Bytes read from a pod per system call.
const READ_CHUNK: usize = 16 * 1024;

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

/// A request the relay takes.
#[derive(Debug)]
pub struct Plan {
    model: Arc<Model>,
    head_len: usize,
    body_len: usize,
    /// The client sent `Connection: close`.
    close: bool,
    /// A HEAD request: the answer has no body whatever its headers say.
    head_method: bool,
    /// hyper's path would route this head to the same model (see [`Checked::for_hyper`]).
    for_hyper: bool,
}

impl Plan {
    /// The model the head addresses.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The head as hyper gets it when the relay hands the request over after all.
    fn handed_off(self) -> Checked {
        Checked {
            len: self.head_len,
            next: match self.body_len {
                0 => head::Next::Head,
                n => head::Next::Body(n as u64),
            },
            model: Some(self.model),
            for_hyper: self.for_hyper,
        }
    }
}

/// A checked request head the relay leaves to hyper: at the front of the bytes it hands over.
#[derive(Debug)]
pub struct Checked {
    /// Bytes of the head.
    pub len: usize,
    /// What follows it.
    pub next: head::Next,
    /// The routed model it addresses by Host or path, if any (looked up once, here).
    pub model: Option<Arc<Model>>,
    /// hyper's path, which reads `Host` through `HeaderValue::to_str`, routes this head as
    /// the relay did: its Host is absent, ASCII, or not text at all.
    pub for_hyper: bool,
}

/// What a request head at the front of a buffer is to the relay.
#[derive(Debug)]
pub enum Parsed {
    /// The relay forwards it.
    Plan(Plan),
    /// Not complete yet.
    Partial,
    /// hyper serves it; `None` when it is not an HTTP/1 head (HTTP/2 prior knowledge).
    HandOff(Option<Checked>),
    /// Answered with this, then the connection is closed.
    Refuse(ProxyError),
}

/// A first request head that was peeked (and so parsed) before the relay got the connection
/// (by `park`): its bytes are still unread in the socket.
#[derive(Debug)]
pub struct Peeked {
    /// The head's outcome ([`plan`] over the peeked bytes); never [`Parsed::Partial`].
    pub parsed: Parsed,
    /// Bytes peeked (the head is among them).
    pub len: usize,
    /// The empty buffer they were peeked into: the relay reads into it.
    pub buf: Vec<u8>,
    /// What [`plan`] wrote: the head the pod gets, for a [`Parsed::Plan`].
    pub out: Vec<u8>,
}

/// Parses the request head at the start of `inb` ([`head::parse`]: parsed and checked once),
/// looks up what it addresses (once) and, when the relay takes it, writes the head the pod gets
/// into `out`.
pub fn plan(inb: &[u8], table: &Table, peer: &Peer, out: &mut Vec<u8>) -> Parsed {
    if inb.starts_with(b"PRI * HTTP/2.0") {
        return Parsed::HandOff(None); // HTTP/2 prior knowledge: hyper's
    }
    // The relay bounds a head as it reads it (431 once `max_header_bytes` are read).
    let planned = head::parse(inb, usize::MAX, |h| {
        let model = match table.addressed(h.host(), h.path()) {
            Addressed::Model(m) => Some(m),
            // Unknown models and routing by body: hyper's path answers them.
            Addressed::Unknown(_) | Addressed::Body | Addressed::Nothing => None,
        };
        // hyper's path reads Host as visible ASCII only (else it routes without it).
        let for_hyper = h
            .policy
            .host
            .is_none_or(|v| v.is_ascii() || std::str::from_utf8(v).is_err());
        let body_len = match h.policy.body {
            RequestBody::None => Some(0),
            RequestBody::Length(n) if n <= BODY_BYTES as u64 => Some(n as usize),
            // Streamed bodies are hyper's.
            RequestBody::Length(_) | RequestBody::Chunked => None,
        };
        let takes = h.version == Version::Http11
            && h.target.starts_with('/')
            && !h.policy.upgrade
            && !h.policy.expect
            && h.host().is_some();
        let (Some(model), Some(body_len), true) = (model.clone(), body_len, takes) else {
            return Parsed::HandOff(Some(Checked {
                len: h.len,
                next: h.next(),
                model,
                for_hyper,
            }));
        };
        out.extend_from_slice(h.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(h.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        // Host is present (checked above), so no fallback authority is needed.
        h.policy
            .forward(|| h.headers.iter(), peer.ip_bytes(), b"", &mut Wire(out));
        out.extend_from_slice(b"\r\n");
        Parsed::Plan(Plan {
            model,
            head_len: h.len,
            body_len,
            close: h.policy.close,
            head_method: h.method == "HEAD",
            for_hyper,
        })
    });
    match planned {
        Ok(Some(p)) => p,
        Ok(None) => Parsed::Partial,
        Err(e) => Parsed::Refuse(e),
    }
}

/// The relay gave up on the connection (the client left, or a pod failed mid-answer).
#[derive(Debug)]
struct Abort;

/// How an exchange ended.
#[derive(Debug)]
enum Next {
    /// The client has its answer.
    Answered,
    /// No pod took a connection and nothing was sent: the request must wait in the queue.
    Queue,
}

/// Why no answer head came back.
enum Failed {
    /// Answer the client with this.
    Answer(ProxyError),
    /// No pod could be reached and nothing was sent: queue the request.
    Queue,
}

/// Sends `req` (head and body) to the permit's pod and copies the answer to the client.
async fn exchange(
    client: &mut TcpStream,
    plan: &Plan,
    mut permit: Permit,
    req: &[u8],
    close: bool,
    worker: WorkerId,
) -> Result<Next, Abort> {
    let gate = plan.model.gate();
    let metrics = gate.metrics();
    let (response_timeout, idle_timeout) = gate.timeouts();
    let started = tokio::select! {
        r = start(plan, &mut permit, req, response_timeout, worker) => r,
        // Nothing is waiting for the answer any more; the pod connection is dropped with it.
        () = closed(client) => {
            metrics.count(Event::ClientGone);
            return Err(Abort);
        }
    };
    let (mut pod, head, mut buf) = match started {
        Ok(x) => x,
        Err(Failed::Answer(e)) => {
            answer_error(client, plan, e, close).await?;
            return Ok(Next::Answered);
        }
        Err(Failed::Queue) => return Ok(Next::Queue),
    };
    metrics.answered(head.status);

    // The head and what came with it, in one write.
    let mut out = head.rewritten;
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut body = Body::new(head.framing);
    let rest = &buf[head.len..];
    let (used, mut finished) = body.advance(rest).map_err(|_| Abort)?;
    body.frame(&rest[..used], &mut out);
    let mut reusable = head.keep_alive && used == rest.len();
    write_idle(client, &out, idle_timeout).await?;
    let mut framed = out;
    while !finished {
        buf.clear();
        buf.reserve(READ_CHUNK);
        let n = tokio::select! {
            r = tokio::time::timeout(idle_timeout, pod.read_buf(&mut buf)) => match r {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return Err(Abort),
                Err(_) => {
                    metrics.count(Event::IdleTimeout);
                    tracing::warn!(model = %plan.model.key(), pod = %permit.addr(), ?idle_timeout, "answer body paused longer than idle-timeout: cut");
                    return Err(Abort);
                }
            },
            () = closed(client) => {
                metrics.count(Event::ClientGone);
                return Err(Abort);
            }
        };
        if n == 0 {
            if !body.eof_ends() {
                // The pod closed mid-body: the client must not take a cut body for a whole one.
                return Err(Abort);
            }
            write_idle(client, b"0\r\n\r\n", idle_timeout).await?;
            reusable = false;
            break;
        }
        let (used, done) = body.advance(&buf).map_err(|_| Abort)?;
        if used < n {
            reusable = false; // bytes after the answer: the pod is out of step
        }
        if body.eof_ends() {
            framed.clear();
            body.frame(&buf[..used], &mut framed);
            write_idle(client, &framed, idle_timeout).await?;
        } else {
            write_idle(client, &buf[..used], idle_timeout).await?;
        }
        finished = done;
    }
    if reusable && !body.eof_ends() {
        permit.pool().put_raw(pod, worker);
    }
    Ok(Next::Answered)
}

/// Writes to a client that must take the bytes within `idle` (a client that stops reading
/// would otherwise hold the pod slot).
async fn write_idle(client: &mut TcpStream, data: &[u8], idle: Duration) -> Result<(), Abort> {
    // Nearly always the socket takes it all at once: no timer for that.
    let sent = match client.try_write(data) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(_) => return Err(Abort),
    };
    if sent == data.len() {
        return Ok(());
    }
    match tokio::time::timeout(idle, client.write_all(&data[sent..])).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Abort),
    }
}

/// Sends the request and reads the answer head: on another pod while no byte could be written
/// (connect failures), again on a fresh connection when a reused one closed before any byte of
/// an answer came back (a pod shutting down closes its idle keep-alive connections: that race
/// must not cost the request), and 504 when no head comes within `response_timeout`.
async fn start(
    plan: &Plan,
    permit: &mut Permit,
    req: &[u8],
    response_timeout: Duration,
    worker: WorkerId,
) -> Result<(TcpStream, Head, Vec<u8>), Failed> {
    let metrics = plan.model.gate().metrics();
    let deadline = Instant::now() + response_timeout;
    let mut tried = Vec::new();
    let mut stale = 0;
    loop {
        let (mut pod, reused) = match send(permit.pool(), req, stale > 0, worker).await {
            Ok(x) => x,
            // A reused connection broke while the request was written: the pod never got it
            // whole. Again on a fresh connection, like a stale one.
            Err(SendFail::Broken(error)) if stale < MAX_STALE_RETRIES => {
                tracing::debug!(model = %plan.model.key(), pod = %permit.addr(), %error, "a reused connection broke under the request: sending again on a fresh one");
                metrics.count(Event::StaleRetry);
                stale += 1;
                continue;
            }
            Err(SendFail::Broken(error)) => {
                tracing::warn!(model = %plan.model.key(), pod = %permit.addr(), %error, "request failed: 502");
                return Err(Failed::Answer(ProxyError::Backend(error)));
            }
            Err(SendFail::Connect(error)) => {
                // Nothing was sent: another pod, or the queue (hyper's path does the same).
                other_pod(plan, permit, &mut tried, error)?;
                stale = 0;
                continue;
            }
        };
        let mut buf = Vec::with_capacity(READ_CHUNK);
        let head = tokio::time::timeout_at(
            deadline,
            read_response_head(&mut pod, &mut buf, plan.head_method),
        )
        .await;
        match head {
            Ok(Ok(h)) => return Ok((pod, h, buf)),
            Err(_) => {
                metrics.count(Event::ResponseTimeout);
                tracing::warn!(model = %plan.model.key(), pod = %permit.addr(), ?response_timeout, "no answer within response-timeout: 504");
                return Err(Failed::Answer(ProxyError::ResponseTimeout(
                    response_timeout,
                )));
            }
            Ok(Err(HeadError::Closed(error) | HeadError::Reset(error)))
                if reused && buf.is_empty() && stale < MAX_STALE_RETRIES =>
            {
                tracing::debug!(model = %plan.model.key(), pod = %permit.addr(), %error, "a reused connection closed before any answer: sending again on a fresh one");
                metrics.count(Event::StaleRetry);
                stale += 1;
            }
            // Reset before any byte of an answer: the pod closed with the request unread (a
            // pod shutting down resets what waits in its accept queue; one that read the
            // request and died would have closed with a FIN). Like a refused connection.
            Ok(Err(HeadError::Reset(error))) if buf.is_empty() => {
                other_pod(plan, permit, &mut tried, error)?;
                stale = 0;
            }
            Ok(Err(e)) => {
                tracing::warn!(model = %plan.model.key(), pod = %permit.addr(), error = %e, "request failed: 502");
                return Err(Failed::Answer(ProxyError::Backend(format!(
                    "{}: {e}",
                    permit.addr()
                ))));
            }
        }
    }
}

/// The pod did not take the request (refused the connection, or reset it unread): ejects it
/// and moves `permit` to another pod with room. `Failed::Queue` when none has room (the request
/// waits in the queue), a 502 when the attempts are used up.
fn other_pod(
    plan: &Plan,
    permit: &mut Permit,
    tried: &mut Vec<std::net::SocketAddr>,
    error: String,
) -> Result<(), Failed> {
    permit.eject();
    tried.push(permit.addr());
    plan.model.gate().metrics().count(Event::ConnectRetry);
    if tried.len() >= MAX_CONNECT_ATTEMPTS {
        tracing::warn!(model = %plan.model.key(), pod = %permit.addr(), %error, "request failed: 502");
        return Err(Failed::Answer(ProxyError::Backend(error)));
    }
    match permit.try_other(tried) {
        Some(p) => {
            tracing::debug!(model = %plan.model.key(), failed = %permit.addr(), next = %p.addr(), %error, "the pod did not take the request, trying another");
            *permit = p;
            Ok(())
        }
        None => {
            tracing::debug!(model = %plan.model.key(), failed = %permit.addr(), %error, "the pod did not take the request and no other pod has room: to the queue");
            Err(Failed::Queue)
        }
    }
}

/// Why a request could not be written.
enum SendFail {
    /// No connection took any of it (refused, timed out, closed at once): the pod is not
    /// listening.
    Connect(String),
    /// A connection broke partway through the request.
    Broken(String),
}

/// Writes `req` on a pooled connection of `worker` (unless `fresh`) or a new one; true when it
/// was reused. A pooled connection that fails before any byte is written is dropped and the
/// next one tried.
async fn send(
    up: &Arc<Upstream>,
    req: &[u8],
    fresh: bool,
    worker: WorkerId,
) -> Result<(TcpStream, bool), SendFail> {
    while let Some(mut s) = if fresh { None } else { up.take_raw(worker) } {
        match write_first(&mut s, req).await {
            Ok(()) => return Ok((s, true)),
            Err(Sent::Nothing) => continue,
            Err(Sent::Partly(e)) => {
                return Err(SendFail::Broken(format!(
                    "writing to {} failed: {e}",
                    up.addr()
                )));
            }
        }
    }
    let mut s = up
        .connect_raw()
        .await
        .map_err(|e| SendFail::Connect(format!("connecting to {} failed: {e}", up.addr())))?;
    match write_first(&mut s, req).await {
        Ok(()) => Ok((s, false)),
        Err(Sent::Nothing) => Err(SendFail::Connect(format!(
            "the connection to {} failed",
            up.addr()
        ))),
        Err(Sent::Partly(e)) => Err(SendFail::Broken(format!(
            "writing to {} failed: {e}",
            up.addr()
        ))),
    }
}

enum Sent {
    Nothing,
    Partly(io::Error),
}

async fn write_first(s: &mut TcpStream, mut req: &[u8]) -> Result<(), Sent> {
    let mut first = true;
    while !req.is_empty() {
        match s.write(req).await {
            Ok(0) if first => return Err(Sent::Nothing),
            Ok(0) => return Err(Sent::Partly(io::ErrorKind::WriteZero.into())),
            Ok(n) => req = &req[n..],
            Err(_) if first => return Err(Sent::Nothing),
            Err(e) => return Err(Sent::Partly(e)),
        }
        first = false;
    }
    Ok(())
}

/// Answers an error of our own before a pod was chosen, then the connection closes.
async fn answer_and_close(client: &mut TcpStream, err: &ProxyError) {
    let _ = client
        .write_all(&encode_local(rescue(err), false, true).await)
        .await;
}

/// Answers a request the relay could not forward, the way the hyper path does.
async fn answer_error(
    client: &mut TcpStream,
    plan: &Plan,
    err: ProxyError,
    close: bool,
) -> Result<(), Abort> {
    let resp = rescue(&err);
    plan.model.gate().metrics().answered(resp.status().as_u16());
    let out = encode_local(resp, plan.head_method, close).await;
    client.write_all(&out).await.map_err(|_| Abort)
}

/// A local answer as HTTP/1.1 bytes.
async fn encode_local(resp: Response<RespBody>, head_method: bool, close: bool) -> Vec<u8> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    let mut closing = false;
    for (n, v) in &parts.headers {
        closing |= n == http::header::CONNECTION;
        forward::push_header(&mut out, n.as_str().as_bytes(), v.as_bytes());
    }
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    if close && !closing {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_method {
        out.extend_from_slice(&body);
    }
    out
}

/// A parsed answer head.
struct Head {
    /// Bytes of the head in the buffer (interim 1xx answers included).
    len: usize,
    status: u16,
    framing: Framing,
    /// The pod keeps the connection open after this answer.
    keep_alive: bool,
    /// The head the client gets, without its final empty line.
    rewritten: Vec<u8>,
}

/// Why no answer head was read.
#[derive(Debug, thiserror::Error)]
enum HeadError {
    /// The connection closed or failed (nothing may have been read).
    #[error("{0}")]
    Closed(String),
    /// The pod reset the connection.
    #[error("{0}")]
    Reset(String),
    /// The pod's head is refused.
    #[error(transparent)]
    Bad(#[from] BadAnswer),
}

/// Reads and parses the pod's answer head into `buf`, skipping interim (1xx) answers.
async fn read_response_head(
    pod: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_method: bool,
) -> Result<Head, HeadError> {
    let mut skipped = 0;
    loop {
        if buf.len() > skipped {
            match parse_response(&buf[skipped..], head_method)? {
                Some(ParsedHead::Interim(n)) => {
                    skipped += n;
                    continue;
                }
                Some(ParsedHead::Final(mut h)) => {
                    h.len += skipped;
                    return Ok(h);
                }
                None if buf.len() - skipped >= forward::RESPONSE_HEAD_BYTES => {
                    return Err(BadAnswer::TooLarge.into());
                }
                None => {}
            }
        }
        buf.reserve(READ_CHUNK);
        match pod.read_buf(buf).await {
            Ok(0) => {
                return Err(HeadError::Closed(
                    "the connection closed before an answer".into(),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(HeadError::Reset(format!("reading its answer failed: {e}")));
            }
            Err(e) => return Err(HeadError::Closed(format!("reading its answer failed: {e}"))),
        }
    }
}

enum ParsedHead {
    Interim(usize),
    Final(Head),
}

fn parse_response(data: &[u8], head_method: bool) -> Result<Option<ParsedHead>, BadAnswer> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(BadAnswer::Malformed(e.to_string())),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(BadAnswer::Malformed("incomplete status line".into()));
    };
    if status == 101 {
        return Err(BadAnswer::UnaskedUpgrade);
    }
    if (100..200).contains(&status) {
        return Ok(Some(ParsedHead::Interim(len)));
    }
    let version = if version == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    let policy = forward::check_response(status, version, head_method, resp.headers.iter())?;
    let mut out = Vec::with_capacity(len + 32);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_slice());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    policy.forward(resp.headers.iter(), &mut Wire(&mut out));
    // The relay states the framing itself.
    if matches!(policy.framing, Framing::Chunked | Framing::Close) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    Ok(Some(ParsedHead::Final(Head {
        len,
        status,
        framing: policy.framing,
        keep_alive: policy.keep_alive,
        rewritten: out,
    })))
}

fn itoa3(n: u16) -> [u8; 3] {
    [
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

/// Follows an answer body as it is copied.
struct Body {
    framing: Framing,
    left: u64,
    chunks: Chunks,
}

impl Body {
    fn new(framing: Framing) -> Self {
        Self {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunks: Chunks::default(),
        }
    }

    /// The pod closing the connection ends this body (rather than cutting it).
    fn eof_ends(&self) -> bool {
        self.framing == Framing::Close
    }

    /// Takes the body's bytes from the front of `data`: how many belong to it, and whether
    /// it ended with them.
    fn advance(&mut self, data: &[u8]) -> Result<(usize, bool), ()> {
        match self.framing {
            Framing::None => Ok((0, true)),
            Framing::Length(_) => {
                let n = (self.left.min(data.len() as u64)) as usize;
                self.left -= n as u64;
                Ok((n, self.left == 0))
            }
            Framing::Chunked => Ok(match self.chunks.feed(data)? {
                Some(end) => (end, true),
                None => (data.len(), false),
            }),
            Framing::Close => Ok((data.len(), false)),
        }
    }

    /// Appends body bytes to `out` as the client gets them: as they are, or as one chunk for a
    /// body that ends when the pod closes.
    fn frame(&self, data: &[u8], out: &mut Vec<u8>) {
        if self.framing != Framing::Close {
            out.extend_from_slice(data);
        } else if !data.is_empty() {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
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

enum Read {
    Data,
    Eof,
    Error,
    Timeout,
}

/// Reads more of a request into `inb` before `deadline`.
async fn read_until(client: &mut TcpStream, inb: &mut Vec<u8>, deadline: Instant) -> Read {
    if inb.capacity() == inb.len() {
        inb.reserve(HEAD_BYTES);
    }
    let room = inb.capacity() - inb.len();
    // The first read of a request usually finds its whole head waiting: no timer for it.
    let n = match client.try_read_buf(inb) {
        Ok(n) => n,
        Err(_) => match tokio::time::timeout_at(deadline, client.read_buf(inb)).await {
            Err(_) => return Read::Timeout,
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Read::Error,
        },
    };
    if n == 0 {
        return Read::Eof;
    }
    if n < room {
        drained(client);
    }
    Read::Data
}

/// Marks the client socket as read to its end, after a read that returned less than it had
/// room for (a short read empties the receive queue: nginx relies on the same). The reactor
/// otherwise keeps the socket "readable" until a read fails with `WouldBlock`, and waiting for
/// the client to leave ([`closed`]) would need a system call per request to find out. Safe
/// within the task's poll that read: data arriving afterwards is a new epoll edge, reported at
/// the runtime's next turn.
fn drained(client: &TcpStream) {
    let _ = client.try_io(Interest::READABLE, || {
        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
    });
}

/// Completes when the client closes or resets the connection; when it sends more instead (a
/// pipelined request), never: that data stays where it is for the next request. The close comes
/// as an epoll event (EPOLLRDHUP) once the request was read to the end ([`drained`]); readiness
/// left over from a read that filled the buffer would say "readable" forever and hide it (the
/// client's socket then sat in CLOSE-WAIT while the pod worked), so then a peek looks.
async fn closed(client: &TcpStream) {
    match client.ready(Interest::READABLE).await {
        Ok(r) if r.is_read_closed() || r.is_error() => return,
        Err(_) => return,
        Ok(_) => {}
    }
    let mut b = [0u8; 1];
    match client.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_heads_are_framed_and_stripped() {
        let h = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Model: m\r\n\r\nhello";
        let Ok(Some(ParsedHead::Final(head))) = parse_response(h, false) else {
            panic!("a final head")
        };
        assert_eq!(head.len, h.len() - 5);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(
            String::from_utf8(head.rewritten).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Model: m\r\n"
        );

        let h = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n";
        let Ok(Some(ParsedHead::Final(head))) = parse_response(h, false) else {
            panic!("a final head")
        };
        assert_eq!(head.framing, Framing::Chunked);
        assert_eq!(
            String::from_utf8(head.rewritten).unwrap(),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
        );

        // HTTP/1.0 without a length: ends at close, not reusable; sent chunked.
        let Ok(Some(ParsedHead::Final(head))) = parse_response(b"HTTP/1.0 200 OK\r\n\r\n", false)
        else {
            panic!("a final head")
        };
        assert_eq!(head.framing, Framing::Close);
        assert!(!head.keep_alive);

        // A HEAD answer and a 204 have no body whatever they say.
        for (h, head_method) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"[..], true),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
                false,
            ),
        ] {
            let Ok(Some(ParsedHead::Final(head))) = parse_response(h, head_method) else {
                panic!("a final head")
            };
            assert_eq!(head.framing, Framing::None);
        }

        assert!(matches!(
            parse_response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", false),
            Ok(Some(ParsedHead::Interim(25)))
        ));
        assert!(parse_response(b"HTTP/1.1 101 Switching\r\n\r\n", false).is_err());
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).is_err());
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Len", false),
            Ok(None)
        ));
    }

    #[test]
    fn a_close_delimited_body_is_sent_chunked() {
        let mut b = Body::new(Framing::Close);
        let mut out = Vec::new();
        assert_eq!(b.advance(b"data: 1\n\n"), Ok((9, false)));
        b.frame(b"data: 1\n\n", &mut out);
        assert_eq!(out, b"9\r\ndata: 1\n\n\r\n");
        // Other framings: as they are.
        let mut out = Vec::new();
        Body::new(Framing::Length(3)).frame(b"abc", &mut out);
        assert_eq!(out, b"abc");
    }

    /// Fuzzing of the three parsers the relay runs on untrusted bytes, as property tests so CI
    /// runs them (bounded: `ZEROSCALE_FUZZ_CASES`, default 512 per target). Inputs are random
    /// bytes and mutated valid messages; a failure is kept by proptest in
    /// `proptest-regressions/` and replayed first on every later run.
    mod fuzz {
        use super::*;
        use crate::metrics::Metrics;
        use crate::queue::Limits;
        use crate::table::{ModelKey, ModelSpec, NoWake, Table};
        use prometheus_client::registry::Registry;
        use proptest::prelude::*;

        fn cases() -> u32 {
            std::env::var("ZEROSCALE_FUZZ_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(512)
        }

        fn table() -> Table {
            let metrics = Metrics::register(&mut Registry::default());
            let table = Table::new(metrics, Arc::new(NoWake));
            table.upsert_model(ModelSpec {
                key: ModelKey {
                    namespace: "ns".into(),
                    deployment: "m".into(),
                },
                model_name: "m".into(),
                hostnames: vec![],
                created: Some(1),
                limits: Limits::with_queue(0, 10, 1000, Duration::from_secs(60)),
            });
            table
        }

        /// Valid messages, then mutated: bytes replaced, inserted, deleted, or the message cut.
        fn mutated(seeds: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
            let edit = (any::<u16>(), any::<u8>(), 0u8..4);
            (
                prop::sample::select(seeds),
                prop::collection::vec(edit, 0..6),
            )
                .prop_map(|(seed, edits)| {
                    let mut m = seed.to_vec();
                    for (at, b, op) in edits {
                        let i = usize::from(at) % (m.len() + 1);
                        match op {
                            0 if i < m.len() => m[i] = b,
                            1 => m.insert(i, b),
                            2 if i < m.len() => {
                                m.remove(i);
                            }
                            _ => m.truncate(i),
                        }
                    }
                    m
                })
        }

        const REQUESTS: &[&[u8]] = &[
            b"GET /v1/models/m HTTP/1.1\r\nHost: m.ns\r\n\r\n",
            b"POST /v1/models/m:predict HTTP/1.1\r\nHost: m.ns\r\nContent-Length: 2\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n{}",
            b"POST / HTTP/1.1\r\nHost: m.ns\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"GET /v2/models/m/ready HTTP/1.0\r\n\r\n",
        ];

        const ANSWERS: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\n\r\ndata",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
        ];

        fn input(seeds: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![prop::collection::vec(any::<u8>(), 0..600), mutated(seeds)]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(cases()))]

            /// Any bytes: no panic; a head the relay forwards is one valid HTTP/1.1 head with
            /// exactly one Host, no hop-by-hop header and the length the relay will send.
            #[test]
            fn request_heads(data in input(REQUESTS)) {
                let table = table();
                let peer = Peer::new("10.0.0.1:1234".parse().unwrap(), WorkerId::default());
                let mut out = Vec::new();
                if let Parsed::Plan(p) = plan(&data, &table, &peer, &mut out) {
                    let mut h = [httparse::EMPTY_HEADER; 128];
                    let mut req = httparse::Request::new(&mut h);
                    prop_assert_eq!(req.parse(&out), Ok(httparse::Status::Complete(out.len())));
                    prop_assert_eq!(req.version, Some(1));
                    let count = |n: &str| req.headers.iter().filter(|x| x.name.eq_ignore_ascii_case(n)).count();
                    prop_assert_eq!(count("host"), 1);
                    for hop in forward::HOP_BY_HOP {
                        prop_assert_eq!(count(hop), 0, "{} forwarded", hop);
                    }
                    let cl: Vec<_> = req.headers.iter()
                        .filter(|x| x.name.eq_ignore_ascii_case("content-length"))
                        .map(|x| forward::parse_length(x.value))
                        .collect();
                    match p.body_len {
                        0 => prop_assert!(cl.iter().all(|l| *l == Some(0)) && cl.len() <= 1),
                        n => prop_assert_eq!(cl, vec![Some(n as u64)]),
                    }
                }
            }

            /// Any bytes, fed whole or split anywhere: the same outcome, and never past the end.
            #[test]
            fn chunked_bodies(data in input(&[b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nt: 1\r\n\r\nnext"]), cut in any::<u16>()) {
                let mut whole = Chunks::default();
                let a = whole.feed(&data);
                let i = usize::from(cut) % (data.len() + 1);
                let mut split = Chunks::default();
                let b = match split.feed(&data[..i]) {
                    Ok(Some(end)) => Ok(Some(end)),
                    Ok(None) => split.feed(&data[i..]).map(|r| r.map(|e| e + i)),
                    Err(()) => Err(()),
                };
                prop_assert_eq!(a, b);
                if let Ok(Some(end)) = a {
                    prop_assert!(end <= data.len());
                }
            }

            /// Any bytes: no panic; an accepted answer head is rewritten into a valid head with
            /// no hop-by-hop header, and framing that matches what the relay states.
            #[test]
            fn response_heads(data in input(ANSWERS), head_method in any::<bool>()) {
                if let Ok(Some(ParsedHead::Final(h))) = parse_response(&data, head_method) {
                    let mut out = h.rewritten.clone();
                    out.extend_from_slice(b"\r\n");
                    let mut hs = [httparse::EMPTY_HEADER; 128];
                    let mut resp = httparse::Response::new(&mut hs);
                    prop_assert_eq!(resp.parse(&out), Ok(httparse::Status::Complete(out.len())));
                    let te = resp.headers.iter().filter(|x| x.name.eq_ignore_ascii_case("transfer-encoding")).count();
                    prop_assert_eq!(te, usize::from(matches!(h.framing, Framing::Chunked | Framing::Close)));
                    for hop in forward::HOP_BY_HOP.iter().filter(|n| **n != "transfer-encoding") {
                        prop_assert!(!resp.headers.iter().any(|x| x.name.eq_ignore_ascii_case(hop)), "{} passed", hop);
                    }
                    if te > 0 {
                        prop_assert!(!resp.headers.iter().any(|x| x.name.eq_ignore_ascii_case("content-length")));
                    }
                }
            }
        }
    }
}
