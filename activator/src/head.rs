//! Request heads as raw bytes: parsed in place (httparse) and checked against the forwarding
//! policy in one step, for every reader of raw heads (the parking of new connections, the
//! relay, the hand-off to hyper). What a head addresses is looked up by the caller, once, from
//! [`Head::host`] and [`Head::path`].

use crate::error::ProxyError;
use crate::forward::{self, RequestBody, RequestPlan, Version};

/// The most bytes of a connection's first request head that are read (or peeked) at once: the
/// parking of new connections looks no further, and the relay's first read reserves this much.
pub const FIRST_HEAD_BYTES: usize = 8192;
/// Header lines parsed per head (hyper's default limit).
pub const MAX_HEADERS: usize = 100;

/// A complete request head the forwarding policy accepts, borrowed from the bytes it was
/// parsed from.
#[derive(Debug)]
pub struct Head<'h> {
    /// Bytes of the head, its final empty line included.
    pub len: usize,
    /// The method.
    pub method: &'h str,
    /// The request target as sent.
    pub target: &'h str,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The header lines, in order.
    pub headers: &'h [httparse::Header<'h>],
    /// The policy's plan for it.
    pub policy: RequestPlan<'h>,
}

/// What follows a head on its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The next request head.
    Head,
    /// This many body bytes, then the next head.
    Body(u64),
    /// A chunked body, then the next head.
    Chunked,
    /// Bytes that are not HTTP/1 heads any more (an upgrade).
    Opaque,
}

impl<'h> Head<'h> {
    /// The `Host` value, when there is one and it is text.
    pub fn host(&self) -> Option<&'h str> {
        self.policy.host.and_then(|h| std::str::from_utf8(h).ok())
    }

    /// The path of an origin-form target, without its query; `""` for any other form (an
    /// absolute-form target is routed by its Host, or by hyper's path).
    pub fn path(&self) -> &'h str {
        match self.target {
            t if t.starts_with('/') => t.split_once('?').map_or(t, |(p, _)| p),
            _ => "",
        }
    }

    /// What follows this head on the connection.
    pub fn next(&self) -> Next {
        if self.policy.upgrade {
            return Next::Opaque;
        }
        match self.policy.body {
            RequestBody::None => Next::Head,
            RequestBody::Length(n) => Next::Body(n),
            RequestBody::Chunked => Next::Chunked,
        }
    }
}

/// Parses the request head at the start of `data` and checks it against the forwarding policy;
/// `then` gets the accepted head. `Ok(None)`: the head is not complete yet. `Err`: the head is
/// malformed, longer than `max_len` (checked before the policy), or refused (answered, then the
/// connection closes).
pub fn parse<R>(
    data: &[u8],
    max_len: usize,
    then: impl FnOnce(Head<'_>) -> R,
) -> Result<Option<R>, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(data) {
        Ok(httparse::Status::Complete(n)) if n > max_len => {
            return Err(ProxyError::HeadTooLarge(max_len));
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if data.len() >= max_len => {
            return Err(ProxyError::HeadTooLarge(max_len));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ProxyError::Malformed(format!(
                "more than {MAX_HEADERS} header lines"
            )));
        }
        Err(e) => return Err(ProxyError::Malformed(e.to_string())),
    };
    let (Some(method), Some(target), Some(v)) = (req.method, req.path, req.version) else {
        return Err(ProxyError::Malformed("incomplete request line".into()));
    };
    let version = if v == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    let headers: &[httparse::Header<'_>] = req.headers;
    let policy = forward::check_request(method.as_bytes(), version, || headers.iter())?;
    Ok(Some(then(Head {
        len,
        method,
        target,
        version,
        headers,
        policy,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Length, Host, path and what follows.
    type Described = (usize, Option<String>, String, Next);

    fn parsed(data: &str) -> Result<Option<Described>, ProxyError> {
        parse(data.as_bytes(), usize::MAX, |h| {
            (
                h.len,
                h.host().map(String::from),
                h.path().to_string(),
                h.next(),
            )
        })
    }

    #[test]
    fn a_head_is_parsed_checked_and_described() {
        let h =
            "POST /v1/models/m:predict?x=1 HTTP/1.1\r\nHost: m.ns\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            parsed(h).unwrap(),
            Some((
                h.len() - 2,
                Some("m.ns".into()),
                "/v1/models/m:predict".into(),
                Next::Body(2)
            ))
        );
        let h = "GET http://x/v1/models/m HTTP/1.0\r\n\r\n";
        assert_eq!(
            parsed(h).unwrap(),
            Some((h.len(), None, String::new(), Next::Head))
        );
        let h = "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(parsed(h).unwrap().unwrap().3, Next::Opaque);
        let h = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parsed(h).unwrap().unwrap().3, Next::Chunked);
    }

    #[test]
    fn incomplete_malformed_and_refused_heads() {
        assert_eq!(parsed("GET / HTTP/1.1\r\nHost: a\r\n").unwrap(), None);
        assert_eq!(parsed("").unwrap(), None);
        assert!(matches!(
            parsed("GET / HTTP/9\r\n\r\n"),
            Err(ProxyError::Malformed(_))
        ));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(
            matches!(parsed(&many), Err(ProxyError::Malformed(m)) if m.contains("header lines"))
        );
        assert!(matches!(
            parsed("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(ProxyError::Refused(_))
        ));
        // Too long, complete or not: 431 before the policy looks.
        let dup = "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        assert!(matches!(
            parse(dup.as_bytes(), 20, |_| ()),
            Err(ProxyError::HeadTooLarge(20))
        ));
        assert!(matches!(
            parse(&dup.as_bytes()[..25], 20, |_| ()),
            Err(ProxyError::HeadTooLarge(20))
        ));
    }
}
