//! A tiny HTTP/1.1 client for tests: one request per connection, whole body collected.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// A failed test HTTP request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Could not connect.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Target.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {addr}: {source}")]
    Http {
        /// Target.
        addr: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
    /// No answer in time.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// Target.
        addr: SocketAddr,
        /// Limit.
        timeout: Duration,
    },
    /// The request could not be built.
    #[error("building the request: {0}")]
    Build(#[from] http::Error),
}

/// An answer with its body read completely.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as a string, if present and valid.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request (JSON body if given) and reads the whole answer, within `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    request_with_headers(addr, method, path, &[], body, timeout).await
}

/// [`request`] with extra header lines; a `Host` among them replaces the default (`addr`).
pub async fn request_with_headers(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let fut = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| HttpError::Connect { addr, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| HttpError::Http { addr, source })?;
        let conn = tokio::spawn(conn);
        let mut builder = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            builder = builder.header(http::header::HOST, addr.to_string());
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let bytes = match body {
            Some(v) => {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = builder.body(Full::new(bytes))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| HttpError::Http { addr, source })?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|source| HttpError::Http { addr, source })?
            .to_bytes();
        conn.abort();
        Ok(HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout { addr, timeout }),
    }
}

/// `GET path` with a 10 s limit.
pub async fn get(addr: SocketAddr, path: &str) -> Result<HttpResponse, HttpError> {
    request(addr, Method::GET, path, None, Duration::from_secs(10)).await
}

/// `POST path` with a JSON body and a 10 s limit.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &Value,
) -> Result<HttpResponse, HttpError> {
    request(
        addr,
        Method::POST,
        path,
        Some(body),
        Duration::from_secs(10),
    )
    .await
}
