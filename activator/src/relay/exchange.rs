//! One request's round trip with a pod: written on a pooled connection (or a new one), sent
//! again on a fresh connection or another pod when nothing was answered, and the answer copied
//! back to the client as it comes, its head rewritten and its body framing followed.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::forward::{MAX_CONNECT_ATTEMPTS, MAX_STALE_RETRIES};
use crate::metrics::Event;
use crate::queue::Permit;
use crate::upstream::{Upstream, WorkerId};

use super::client::{Abort, closed, write_idle};
use super::request::Plan;
use super::response::{Body, Head, HeadError, READ_CHUNK, answer_error, read_response_head};

/// How an exchange ended.
#[derive(Debug)]
pub(super) enum Next {
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
pub(super) async fn exchange(
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
