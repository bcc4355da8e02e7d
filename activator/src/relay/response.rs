//! The pod's side of an exchange as the client sees it: the answer head read, checked by the
//! forwarding policy and rewritten ([`parse_response`]), the body's framing followed as it is
//! copied ([`Body`]), and the proxy's own answers encoded as HTTP/1.1 bytes ([`encode_local`]).

use std::io;

use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::answer::RespBody;
use crate::chunked::Chunks;
use crate::error::{ProxyError, rescue};
use crate::forward::{self, BadAnswer, Framing, Version, Wire};
use crate::head;

use super::client::Abort;
use super::request::Plan;

/// Header lines parsed per answer head (hyper's default limit).
const MAX_HEADERS: usize = head::MAX_HEADERS;
/// Bytes read from a pod per system call.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// Answers an error of our own before a pod was chosen, then the connection closes.
pub(super) async fn answer_and_close(client: &mut TcpStream, err: &ProxyError) {
    let _ = client
        .write_all(&encode_local(rescue(err), false, true).await)
        .await;
}

/// Answers a request the relay could not forward, the way the hyper path does.
pub(super) async fn answer_error(
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
pub(super) struct Head {
    /// Bytes of the head in the buffer (interim 1xx answers included).
    pub(super) len: usize,
    pub(super) status: u16,
    pub(super) framing: Framing,
    /// The pod keeps the connection open after this answer.
    pub(super) keep_alive: bool,
    /// The head the client gets, without its final empty line.
    pub(super) rewritten: Vec<u8>,
}

/// Why no answer head was read.
#[derive(Debug, thiserror::Error)]
pub(super) enum HeadError {
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
pub(super) async fn read_response_head(
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

pub(super) enum ParsedHead {
    Interim(usize),
    Final(Head),
}

pub(super) fn parse_response(
    data: &[u8],
    head_method: bool,
) -> Result<Option<ParsedHead>, BadAnswer> {
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
pub(super) struct Body {
    framing: Framing,
    left: u64,
    chunks: Chunks,
}

impl Body {
    pub(super) fn new(framing: Framing) -> Self {
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
    pub(super) fn eof_ends(&self) -> bool {
        self.framing == Framing::Close
    }

    /// Takes the body's bytes from the front of `data`: how many belong to it, and whether
    /// it ended with them.
    pub(super) fn advance(&mut self, data: &[u8]) -> Result<(usize, bool), ()> {
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
    pub(super) fn frame(&self, data: &[u8], out: &mut Vec<u8>) {
        if self.framing != Framing::Close {
            out.extend_from_slice(data);
        } else if !data.is_empty() {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
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
}
