//! The forwarding policy: the one place that decides what of a client's request head reaches a
//! pod, what of a pod's answer head reaches the client, and which heads are refused.
//!
//! Both request paths call it: the relay (`relay`) over the bytes httparse parsed in
//! place, and hyper's path (`proxy`) over a `HeaderMap`. A head is first *checked*
//! ([`check_request`], [`check_response`]), which either refuses it or returns a plan; the plan
//! then *writes* the forwarded head into a [`Sink`]: bytes on the wire for the relay
//! ([`Wire`]), a new `HeaderMap` for hyper. Neither path decides anything about headers itself.
//!
//! The rules (RFC 9110 and 9112; `activator/README.md` lists them for users):
//! - Hop-by-hop headers ([`HOP_BY_HOP`]) and every header named in `Connection` are removed,
//!   both ways. `Content-Length`, `Transfer-Encoding` and `Host` frame or route the message and
//!   can never be removed that way: a request whose `Connection` names one is refused (400); in
//!   an answer such a listing is ignored (the answer keeps its framing).
//! - A request is refused (400) when its framing is ambiguous, the shapes of request smuggling:
//!   `Content-Length` and `Transfer-Encoding` together, more than one `Content-Length` line or
//!   a value that is not one decimal number, a `Transfer-Encoding` whose last coding is not
//!   `chunked` (or that names `chunked` twice, or comes in HTTP/1.0).
//! - An HTTP/1.1 request needs exactly one `Host` (RFC 9112 3.2): none or several is a 400.
//! - `CONNECT` is refused with 405: the activator forwards to models, it is not a tunnel.
//! - `X-Forwarded-For`: the client's values (every line, in order, empty ones skipped) followed by
//!   the peer's address; `X-Forwarded-Proto: http` unless the client sent one. Both count as
//!   the client's only when `Connection` does not name them.
//! - Pods get `Host` as the client sent it; HTTP/2 clients' `:authority`, or the pod's address
//!   for an HTTP/1.0 client without one.
//! - An answer is refused (502) when its framing is ambiguous (two different `Content-Length`s,
//!   one that is not a number) or its head is over [`RESPONSE_HEAD_BYTES`]. Nothing is added to
//!   an answer (no `Date`, no `Server`): the pod's head is passed on minus the hop-by-hop part,
//!   with one exception: an answer to a request that waited for its model to wake gets
//!   [`COLD_START_HEADER`] ([`add_cold_start`]; ConfigMap `activator-cold-start-header`).

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The header that tells a client its request waited for the model to wake, and how long
/// (`zeroscale-cold-start: 5.21s`).
pub const COLD_START_HEADER: &str = "zeroscale-cold-start";

/// Adds [`COLD_START_HEADER`] to an answer's headers: `waited` in seconds with two decimals.
/// It replaces a pod's header of that name, so the figure is always the activator's.
pub fn add_cold_start(headers: &mut HeaderMap, waited: std::time::Duration) {
    let value = format!("{:.2}s", waited.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(COLD_START_HEADER), v);
    }
}

/// Headers that concern one connection only (RFC 9110 7.6.1), never forwarded as they are.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// The longest answer head accepted from a pod, on both paths (model servers send a few hundred
/// bytes; a longer head is answered 502).
pub const RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// The largest request body read whole before it is sent (by the relay, and by hyper's path
/// once the request has its slot), so it can be sent again when a reused pod connection closes
/// under it; larger bodies are streamed.
pub const REPLAYABLE_BODY_BYTES: usize = 16 * 1024;

/// How many connection attempts a request gets when pods refuse them (each refusing pod is
/// ejected for a moment, and the request tries another pod or waits in the queue); nothing of
/// the request was sent, so trying again is always safe.
pub const MAX_CONNECT_ATTEMPTS: usize = 16;

/// How often a request is sent again on a fresh connection to the same pod after a reused one
/// closed before any byte of an answer.
pub const MAX_STALE_RETRIES: usize = 1;

/// Headers a `Connection` option can never remove: they frame or route the message.
const PROTECTED: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// The HTTP version a head came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2 (hyper's path only; its framing is HTTP/2's own).
    Http2,
}

/// One header line of a parsed head: the relay's httparse headers or a `HeaderMap` entry.
pub trait Field<'h> {
    /// The name as sent.
    fn name(&self) -> &'h [u8];
    /// The value as sent.
    fn value(&self) -> &'h [u8];
}

impl<'h> Field<'h> for &'h httparse::Header<'h> {
    fn name(&self) -> &'h [u8] {
        self.name.as_bytes()
    }
    fn value(&self) -> &'h [u8] {
        self.value
    }
}

impl<'h> Field<'h> for (&'h HeaderName, &'h HeaderValue) {
    fn name(&self) -> &'h [u8] {
        self.0.as_str().as_bytes()
    }
    fn value(&self) -> &'h [u8] {
        self.1.as_bytes()
    }
}

/// Where a forwarded head is written.
pub trait Sink<F> {
    /// Forward this header line as it is.
    fn keep(&mut self, field: &F);
    /// Add a header line of the proxy's own.
    fn add(&mut self, name: &'static str, value: &[u8]);
}

/// The relay's sink: header lines as bytes (`name: value\r\n`).
#[derive(Debug)]
pub struct Wire<'b>(pub &'b mut Vec<u8>);

impl<'h, F: Field<'h>> Sink<F> for Wire<'_> {
    fn keep(&mut self, field: &F) {
        push_header(self.0, field.name(), field.value());
    }
    fn add(&mut self, name: &'static str, value: &[u8]) {
        push_header(self.0, name.as_bytes(), value);
    }
}

impl<'h> Sink<(&'h HeaderName, &'h HeaderValue)> for HeaderMap {
    fn keep(&mut self, field: &(&'h HeaderName, &'h HeaderValue)) {
        // Clones share the parsed bytes: no allocation per header.
        self.append(field.0.clone(), field.1.clone());
    }
    fn add(&mut self, name: &'static str, value: &[u8]) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            self.append(HeaderName::from_static(name), v);
        }
    }
}

/// Appends one header line.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Why a request head is refused. Every refusal is answered, never forwarded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// HTTP/1.1 without `Host`.
    #[error("an HTTP/1.1 request needs a Host header and this one has none")]
    MissingHost,
    /// More than one `Host`.
    #[error("the request has more than one Host header; exactly one is allowed")]
    DuplicateHost,
    /// `Connection` names a header the message needs.
    #[error(
        "the Connection header names {0}, which frames or routes the message and cannot be removed by a proxy"
    )]
    ConnectionListsProtected(&'static str),
    /// `Content-Length` and `Transfer-Encoding` together.
    #[error(
        "the request has both Content-Length and Transfer-Encoding; its length would be ambiguous"
    )]
    LengthAndTransferEncoding,
    /// Several `Content-Length` lines.
    #[error("the request has more than one Content-Length header")]
    RepeatedLength,
    /// A `Content-Length` that is not one decimal number.
    #[error("the Content-Length {0:?} is not a decimal number")]
    BadLength(String),
    /// A `Transfer-Encoding` the activator does not take.
    #[error(
        "the Transfer-Encoding {0:?} is not accepted: chunked must be the last coding, once, in HTTP/1.1"
    )]
    BadTransferEncoding(String),
    /// `CONNECT`.
    #[error(
        "CONNECT is not allowed: the activator forwards requests to models and opens no tunnels"
    )]
    Connect,
}

impl Refusal {
    /// The status the refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Connect => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The machine-readable reason (metric label, JSON `type`).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Connect => "method_not_allowed",
            _ => "malformed_http",
        }
    }
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestBody {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request head the policy accepts, and what to do with it.
#[derive(Debug)]
pub struct RequestPlan<'h> {
    /// The body's framing.
    pub body: RequestBody,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// A protocol upgrade (HTTP/1.1 `Connection: upgrade` with `Upgrade`): both pass.
    pub upgrade: bool,
    /// `Expect` was sent (the relay leaves such requests to hyper).
    pub expect: bool,
    /// The `Host` value, when there is one.
    pub host: Option<&'h [u8]>,
    /// Headers named in `Connection` (other than its own options).
    listed: Vec<&'h [u8]>,
    /// The client sent an `X-Forwarded-Proto` that is forwarded.
    keeps_proto: bool,
}

/// Checks a request head: `Ok` with the plan to forward it, or the refusal to answer.
///
/// `fields` gives the head's header lines, in order, each time it is called (a check reads them
/// more than once).
pub fn check_request<'h, F, I>(
    method: &[u8],
    version: Version,
    fields: impl Fn() -> I,
) -> Result<RequestPlan<'h>, Refusal>
where
    F: Field<'h>,
    I: Iterator<Item = F>,
{
    if method == b"CONNECT" {
        return Err(Refusal::Connect);
    }
    let mut host = None;
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let mut te_lines = 0;
    let mut close = version == Version::Http10;
    let mut upgrade_token = false;
    let mut has_upgrade = false;
    let mut expect = false;
    let mut listed: Vec<&'h [u8]> = Vec::new();
    for f in fields() {
        let name = f.name();
        let value = f.value();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err(Refusal::RepeatedLength);
            }
            length = Some(
                parse_length(value)
                    .ok_or_else(|| Refusal::BadLength(String::from_utf8_lossy(value).into()))?,
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_lines += 1;
            te = Some(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if t.is_empty() {
                } else if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    upgrade_token = true;
                } else if let Some(p) = PROTECTED
                    .iter()
                    .find(|p| p.as_bytes().eq_ignore_ascii_case(t))
                {
                    return Err(Refusal::ConnectionListsProtected(p));
                } else {
                    listed.push(t);
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            has_upgrade = true;
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect = true;
        }
    }
    if hosts > 1 {
        return Err(Refusal::DuplicateHost);
    }
    if hosts == 0 && version == Version::Http11 {
        return Err(Refusal::MissingHost);
    }
    let body = match (length, te) {
        (Some(_), Some(_)) => return Err(Refusal::LengthAndTransferEncoding),
        (Some(0), None) | (None, None) => RequestBody::None,
        (Some(n), None) => RequestBody::Length(n),
        (None, Some(v)) => {
            // Several lines are one list (RFC 9110 5.3); judge the whole of it.
            let joined;
            let all: &[u8] = if te_lines > 1 {
                joined = fields()
                    .filter(|f| f.name().eq_ignore_ascii_case(b"transfer-encoding"))
                    .map(|f| f.value().to_vec())
                    .collect::<Vec<_>>()
                    .join(&b","[..]);
                &joined
            } else {
                v
            };
            if version == Version::Http10 || !chunked_last_once(all) {
                return Err(Refusal::BadTransferEncoding(
                    String::from_utf8_lossy(all).into(),
                ));
            }
            RequestBody::Chunked
        }
    };
    let upgrade = upgrade_token && has_upgrade && version == Version::Http11;
    let keeps_proto = !listed
        .iter()
        .any(|l| l.eq_ignore_ascii_case(b"x-forwarded-proto"))
        && fields().any(|f| f.name().eq_ignore_ascii_case(b"x-forwarded-proto"));
    Ok(RequestPlan {
        body,
        close,
        upgrade,
        expect,
        host,
        listed,
        keeps_proto,
    })
}

/// `chunked` is the last coding and appears once.
fn chunked_last_once(v: &[u8]) -> bool {
    let codings: Vec<&[u8]> = v
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .collect();
    let chunked = |t: &&[u8]| t.eq_ignore_ascii_case(b"chunked");
    codings.last().is_some_and(chunked) && codings.iter().filter(|t| chunked(t)).count() == 1
}

impl<'h> RequestPlan<'h> {
    /// Whether a client header line is forwarded as it is.
    pub fn keeps(&self, name: &[u8]) -> bool {
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            return false; // restated with the peer appended
        }
        if HOP_BY_HOP
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
        {
            return self.upgrade && name.eq_ignore_ascii_case(b"upgrade");
        }
        !self.listed.iter().any(|l| l.eq_ignore_ascii_case(name))
    }

    /// Writes the head's header lines the pod gets: the client's, minus what [`keeps`] drops,
    /// plus `Host` when the client sent none (`authority`: HTTP/2's `:authority`, else the
    /// pod's address), `X-Forwarded-For` (`peer_ip` appended), `X-Forwarded-Proto` and, for an
    /// upgrade, `Connection: upgrade`.
    ///
    /// [`keeps`]: RequestPlan::keeps
    pub fn forward<F, I, S>(
        &self,
        fields: impl Fn() -> I,
        peer_ip: &[u8],
        authority: &[u8],
        sink: &mut S,
    ) where
        F: Field<'h>,
        I: Iterator<Item = F>,
        S: Sink<F>,
    {
        for f in fields() {
            if self.keeps(f.name()) {
                sink.keep(&f);
            }
        }
        if self.host.is_none() {
            sink.add("host", authority);
        }
        let client_xff = !self
            .listed
            .iter()
            .any(|l| l.eq_ignore_ascii_case(b"x-forwarded-for"));
        let mut chain = fields()
            .filter(|f| client_xff && f.name().eq_ignore_ascii_case(b"x-forwarded-for"))
            .map(|f| f.value().trim_ascii())
            .filter(|v| !v.is_empty())
            .peekable();
        if chain.peek().is_none() {
            // The common case: no proxy before us; no allocation.
            sink.add("x-forwarded-for", peer_ip);
        } else {
            let mut v = Vec::with_capacity(64);
            for prev in chain {
                v.extend_from_slice(prev);
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(peer_ip);
            sink.add("x-forwarded-for", &v);
        }
        if !self.keeps_proto {
            sink.add("x-forwarded-proto", b"http");
        }
        if self.upgrade {
            sink.add("connection", b"upgrade");
        }
    }
}

/// How an answer's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// When the pod closes the connection.
    Close,
}

/// Why a pod's answer head is refused (the client gets 502).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    /// Unparseable.
    #[error("its answer head is malformed: {0}")]
    Malformed(String),
    /// Over [`RESPONSE_HEAD_BYTES`].
    #[error("its answer head is over {RESPONSE_HEAD_BYTES} bytes")]
    TooLarge,
    /// Ambiguous length.
    #[error("its Content-Length is ambiguous or not a number")]
    BadLength,
    /// `101` without an upgrade asked for.
    #[error("it switched protocols without being asked")]
    UnaskedUpgrade,
}

/// An answer head the policy accepts.
#[derive(Debug)]
pub struct ResponsePlan<'h> {
    /// How its body ends.
    pub framing: Framing,
    /// The pod keeps the connection open after it.
    pub keep_alive: bool,
    listed: Vec<&'h [u8]>,
}

/// Checks a pod's final (non-1xx) answer head. `head_method`: it answers a HEAD request.
pub fn check_response<'h, F, I>(
    status: u16,
    version: Version,
    head_method: bool,
    fields: I,
) -> Result<ResponsePlan<'h>, BadAnswer>
where
    F: Field<'h>,
    I: Iterator<Item = F>,
{
    let mut length: Option<u64> = None;
    let mut te = false;
    let mut chunked = false;
    let mut keep_alive = version != Version::Http10;
    let mut listed: Vec<&'h [u8]> = Vec::new();
    for f in fields {
        let name = f.name();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(f.value()).ok_or(BadAnswer::BadLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadAnswer::BadLength);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            // Only the last coding frames the message.
            chunked = f
                .value()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in f.value().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !t.is_empty()
                    && !PROTECTED
                        .iter()
                        .any(|p| p.as_bytes().eq_ignore_ascii_case(t))
                {
                    // Framing headers stay whatever Connection says.
                    listed.push(t);
                }
            }
        }
    }
    let framing = if head_method || status == 204 || status == 304 {
        Framing::None
    } else if te && chunked {
        Framing::Chunked
    } else if te {
        Framing::Close
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    Ok(ResponsePlan {
        framing,
        keep_alive,
        listed,
    })
}

impl<'h> ResponsePlan<'h> {
    /// Whether a pod's header line reaches the client as it is.
    pub fn keeps(&self, name: &[u8]) -> bool {
        if HOP_BY_HOP
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
        {
            return false;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            // With Transfer-Encoding the length is meaningless (RFC 9112 6.3).
            return matches!(self.framing, Framing::Length(_) | Framing::None);
        }
        !self.listed.iter().any(|l| l.eq_ignore_ascii_case(name))
    }

    /// Writes the answer's header lines the client gets (framing is the writer's to state).
    pub fn forward<F, I, S>(&self, fields: I, sink: &mut S)
    where
        F: Field<'h>,
        I: Iterator<Item = F>,
        S: Sink<F>,
    {
        for f in fields {
            if self.keeps(f.name()) {
                sink.keep(&f);
            }
        }
    }
}

/// The size of a head's header lines as they were sent (`name: value\r\n`), for a head hyper
/// parsed: its read buffer limit is not an exact bound on the head.
pub fn header_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
}

/// A `Content-Length` value: one decimal number, nothing else.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(head.as_bytes()).expect("parses");
        (
            req.method.unwrap().as_bytes().to_vec(),
            req.headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
        )
    }

    fn check(head: &str) -> Result<String, Refusal> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(head.as_bytes()).expect("parses");
        let version = if req.version == Some(0) {
            Version::Http10
        } else {
            Version::Http11
        };
        let plan = check_request(req.method.unwrap().as_bytes(), version, || {
            req.headers.iter()
        })?;
        let mut out = Vec::new();
        plan.forward(
            || req.headers.iter(),
            b"10.0.0.9",
            b"10.1.1.1:80",
            &mut Wire(&mut out),
        );
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for (head, want) in [
            (
                "POST / HTTP/1.1\r\nHost: m\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n",
                Refusal::ConnectionListsProtected("content-length"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: m\r\nConnection: keep-alive, Host\r\n\r\n",
                Refusal::ConnectionListsProtected("host"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: m\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::ConnectionListsProtected("transfer-encoding"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::LengthAndTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                Refusal::RepeatedLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: m\r\nContent-Length: 1,1\r\n\r\n",
                Refusal::BadLength("1,1".into()),
            ),
            (
                "POST / HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Refusal::BadTransferEncoding("chunked, gzip".into()),
            ),
            (
                "POST / HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::BadTransferEncoding("chunked,chunked".into()),
            ),
            (
                "POST / HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: xchunked\r\n\r\n",
                Refusal::BadTransferEncoding("xchunked".into()),
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::BadTransferEncoding("chunked".into()),
            ),
            ("GET / HTTP/1.1\r\n\r\n", Refusal::MissingHost),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Refusal::DuplicateHost,
            ),
            (
                "CONNECT m:80 HTTP/1.1\r\nHost: m:80\r\n\r\n",
                Refusal::Connect,
            ),
        ] {
            assert_eq!(check(head), Err(want), "{head:?}");
        }
        assert_eq!(Refusal::Connect.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(Refusal::MissingHost.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn forwarded_heads_drop_hop_by_hop_and_state_the_client() {
        let got = check(
            "GET / HTTP/1.1\r\nHost: m.ns\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: \r\nx-forwarded-for: 2.2.2.2\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            got,
            "Host: m.ns\r\nAccept: */*\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\nx-forwarded-proto: http\r\n"
        );
        // Connection-listed X-Forwarded-* are the previous hop's: dropped, then ours.
        let got = check(
            "GET / HTTP/1.1\r\nHost: m\r\nConnection: x-forwarded-for, X-Forwarded-Proto\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            got,
            "Host: m\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n"
        );
        // A client's X-Forwarded-Proto is kept; an HTTP/1.0 client without Host gets the pod's.
        let got = check("GET / HTTP/1.0\r\nX-Forwarded-Proto: https\r\n\r\n").unwrap();
        assert_eq!(
            got,
            "X-Forwarded-Proto: https\r\nhost: 10.1.1.1:80\r\nx-forwarded-for: 10.0.0.9\r\n"
        );
        let (_, h) = parse("GET / HTTP/1.1\r\nHost: m\r\n\r\n");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn upgrades_keep_upgrade() {
        let got = check(
            "GET /ws HTTP/1.1\r\nHost: m\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            got,
            "Host: m\r\nUpgrade: websocket\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\nconnection: upgrade\r\n"
        );
    }

    fn answer(head: &str, head_method: bool) -> Result<(Framing, bool, String), BadAnswer> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(head.as_bytes()).expect("parses");
        let v = if resp.version == Some(0) {
            Version::Http10
        } else {
            Version::Http11
        };
        let plan = check_response(resp.code.unwrap(), v, head_method, resp.headers.iter())?;
        let mut out = Vec::new();
        plan.forward(resp.headers.iter(), &mut Wire(&mut out));
        Ok((
            plan.framing,
            plan.keep_alive,
            String::from_utf8(out).unwrap(),
        ))
    }

    #[test]
    fn answers_keep_their_framing_whatever_connection_says() {
        assert_eq!(
            answer(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length, x-a\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
                false
            ),
            Ok((
                Framing::Length(5),
                true,
                "Content-Length: 5\r\nX-B: 2\r\n".into()
            ))
        );
        assert_eq!(
            answer(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nConnection: transfer-encoding\r\n\r\n",
                false
            ),
            Ok((Framing::Chunked, true, String::new()))
        );
        assert_eq!(
            answer("HTTP/1.0 200 OK\r\nDate: x\r\n\r\n", false),
            Ok((Framing::Close, false, "Date: x\r\n".into()))
        );
        assert_eq!(
            answer("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true),
            Ok((Framing::None, true, "Content-Length: 10\r\n".into()))
        );
        assert_eq!(
            answer(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Err(BadAnswer::BadLength)
        );
    }

    #[test]
    fn header_maps_get_the_same_head() {
        let head = "GET / HTTP/1.1\r\nHost: m.ns\r\nConnection: x-a\r\nX-A: 1\r\nX-B: 2\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(head.as_bytes()).unwrap();
        let mut map = HeaderMap::new();
        for h in req.headers.iter() {
            map.append(
                HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(h.value).unwrap(),
            );
        }
        let plan = check_request(b"GET", Version::Http11, || map.iter()).unwrap();
        let mut out = HeaderMap::new();
        plan.forward(|| map.iter(), b"10.0.0.9", b"pod", &mut out);
        let got: Vec<(String, String)> = out
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("host", "m.ns"),
                ("x-b", "2"),
                ("x-forwarded-for", "1.1.1.1, 10.0.0.9"),
                ("x-forwarded-proto", "http")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(parse_length(b" 42 "), Some(42));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1 2",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }
}
