//! What the relay takes from a request head: parsed, checked and routed once
//! ([`head::parse`]), and, when the relay forwards it, the head the pod gets.

use std::sync::Arc;

use crate::error::ProxyError;
use crate::forward::{RequestBody, Version, Wire};
use crate::head;
use crate::peer::Peer;
use crate::route;
use crate::table::{Addressed, Model, Table};

use super::BODY_BYTES;

/// A request the relay takes.
#[derive(Debug)]
pub struct Plan {
    pub(super) model: Arc<Model>,
    pub(super) head_len: usize,
    pub(super) body_len: usize,
    /// The client sent `Connection: close`.
    pub(super) close: bool,
    /// A HEAD request: the answer has no body whatever its headers say.
    pub(super) head_method: bool,
    /// hyper's path would route this head to the same model (see [`Checked::for_hyper`]).
    for_hyper: bool,
}

impl Plan {
    /// The model the head addresses.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The head as hyper gets it when the relay hands the request over after all.
    pub(super) fn handed_off(self) -> Checked {
        Checked {
            len: self.head_len,
            next: match self.body_len {
                0 => head::Next::Head,
                n => head::Next::Body(n as u64),
            },
            model: Some(self.model),
            for_hyper: self.for_hyper,
            // A held stream is never planned for the relay (see `plan`).
            held_stream: false,
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
    /// A request for server-sent events (`Accept`) to a model that holds streams while it wakes
    /// ([`crate::hold`]): hyper's path serves it, and it is never parked (the hold answers
    /// while the request waits, which parking, before hyper reads the request, cannot).
    pub held_stream: bool,
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
        let isvc = route::isvc_headers(|name| {
            h.headers
                .iter()
                .find(|x| x.name.eq_ignore_ascii_case(name))
                .map(|x| x.value)
        });
        let model = match table.addressed_with_isvc(isvc, h.host(), h.path()) {
            // A model balancing by prompt prefix is routed to a pod by its body: hyper's path
            // reads it (and neither the relay nor parking, which do not, may take it).
            Addressed::Model(m)
                if m.gate().prefix_chars() > 0
                    && route::classify_path(h.path()) == route::PathRoute::Body =>
            {
                None
            }
            Addressed::Model(m) => Some(m),
            // Unknown models and routing by body: hyper's path answers them.
            Addressed::Unknown(_) | Addressed::Body | Addressed::Nothing => None,
        };
        // Only the Accept header: the relay and parking never read bodies, so a body's
        // `"stream": true` is seen by hyper's path only when it reads the body to route.
        let held_stream = model
            .as_ref()
            .is_some_and(|m| m.gate().hold_streams().is_some())
            && h.headers.iter().any(|x| {
                x.name.eq_ignore_ascii_case("accept") && route::accepts_event_stream(x.value)
            });
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
        let (model, body_len) = match (model, body_len) {
            (Some(model), Some(body_len)) if takes && !held_stream => (model, body_len),
            (model, _) => {
                return Parsed::HandOff(Some(Checked {
                    len: h.len,
                    next: h.next(),
                    model,
                    for_hyper,
                    held_stream,
                }));
            }
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
