//! The request path, top to bottom: route, count, admit (or queue), forward, stream back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{Guard, ReqBody, RespBody};
use crate::error::{ProxyError, rescue};
use crate::metrics::{Held, Metrics};
use crate::park::Parked;
use crate::queue::{Admit, Permit, QueueError};
use crate::route;
use crate::table::{Addressed, Model, Table};
use crate::upstream::SendError;

/// How many other pods a request whose connection failed is tried on.
pub(crate) const MAX_CONNECT_RETRIES: usize = 2;

/// The client end of a connection, as the proxy tells pods about it (`X-Forwarded-For`);
/// made once per connection.
#[derive(Clone, Debug)]
pub struct Peer {
    addr: SocketAddr,
    ip: HeaderValue,
}

impl Peer {
    /// The client at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self { addr, ip }
    }

    /// The client's IP address as text.
    pub fn ip_bytes(&self) -> &[u8] {
        self.ip.as_bytes()
    }
}

/// The proxy: shared by every connection.
pub struct Proxy {
    table: Arc<Table>,
    metrics: Arc<Metrics>,
    max_routing_body_bytes: AtomicUsize,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("table", &self.table).finish()
    }
}

impl Proxy {
    /// A proxy over `table`. `max_routing_body_bytes` bounds bodies buffered to read `model`.
    pub fn new(
        table: Arc<Table>,
        metrics: Arc<Metrics>,
        max_routing_body_bytes: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            table,
            metrics,
            max_routing_body_bytes: AtomicUsize::new(max_routing_body_bytes),
        })
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The routing table.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// Changes the body-routing limit (ConfigMap reload).
    pub fn set_max_routing_body_bytes(&self, n: usize) {
        self.max_routing_body_bytes.store(n, Ordering::Relaxed);
    }

    /// Answers one request. Never fails: every error becomes an answer in [`rescue`].
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> impl Future<Output = Response<RespBody>> + Send + 'static {
        self.respond(req, peer, None)
    }

    /// Answers the first request of a connection that waited in its model's queue before hyper
    /// read it ([`crate::park`]): the slot (or the reason there is none) comes with it.
    pub fn handle_parked(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        parked: Parked,
    ) -> impl Future<Output = Response<RespBody>> + Send + 'static {
        self.respond(req, peer, Some(parked))
    }

    // One async fn from route to answer: every layer of async fn keeps its arguments (the
    // request among them) for its whole life, and a request waiting in a queue pays for each.
    async fn respond(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        parked: Option<Parked>,
    ) -> Response<RespBody> {
        let (model, req, bytes) = match self.route(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "request rejected");
                self.metrics.rejected(e.reason());
                return rescue(&e);
            }
        };
        let (held, admitted) = match parked {
            // The head hyper read is the one that was peeked, so this is the same model.
            Some(p) if Arc::ptr_eq(&model, &p.model) => (p.held, Some(p.outcome)),
            _ => (model.gate().metrics().integral.hold(), None),
        };
        let resp = match self.forward(&model, req, bytes, peer, held, admitted).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(model = %model.key(), error = %e, "request failed");
                rescue(&e)
            }
        };
        model.gate().metrics().answered(resp.status().as_u16());
        resp
    }

    /// Finds the model; returns the request with its body ready to send and the bytes it
    /// accounts for in the queue: the buffered body when routing by body, else 0 (a streamed
    /// body is not read while the request waits: it stays with the client, held back by TCP
    /// flow control, so only the queue's count bounds it).
    async fn route(
        &self,
        req: Request<Incoming>,
    ) -> Result<(Arc<Model>, Request<ReqBody>, u64), ProxyError> {
        let declared = content_length(req.headers());
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        match self.table.addressed(host, req.uri().path()) {
            Addressed::Model(m) => Ok((m, req.map(ReqBody::Stream), 0)),
            Addressed::Unknown(name) => Err(ProxyError::UnknownModel(name)),
            Addressed::Body => {
                let limit = self.max_routing_body_bytes.load(Ordering::Relaxed);
                if declared > limit as u64 {
                    return Err(ProxyError::BodyTooLarge(limit));
                }
                let (parts, body) = req.into_parts();
                let bytes = match Limited::new(body, limit).collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return Err(ProxyError::BodyTooLarge(limit));
                    }
                    Err(e) => return Err(ProxyError::ClientBody(e.to_string())),
                };
                let name = route::model_from_body(&bytes)?;
                let m = self
                    .table
                    .by_name(&name)
                    .ok_or(ProxyError::UnknownModel(name))?;
                let n = bytes.len() as u64;
                Ok((m, Request::from_parts(parts, ReqBody::Full(Some(bytes))), n))
            }
            Addressed::Nothing => Err(ProxyError::NoRoute),
        }
    }

    async fn forward(
        &self,
        model: &Arc<Model>,
        req: Request<ReqBody>,
        bytes: u64,
        peer: Peer,
        held: Held,
        admitted: Option<Result<Permit, QueueError>>,
    ) -> Result<Response<RespBody>, ProxyError> {
        let mut permit = match admitted {
            Some(outcome) => outcome?,
            None => match model.gate().admit(bytes)? {
                Admit::Ready(p) => p,
                Admit::Queued(t) => {
                    if t.needs_wake() {
                        self.table.wake_sink().wake(model);
                    }
                    t.wait().await?
                }
            },
        };

        let (mut parts, body) = req.into_parts();
        let upgrade = is_upgrade(&parts.headers) && parts.version == Version::HTTP_11;
        let client_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        // The client's extensions mean nothing to the pod's connection.
        parts.extensions.clear();
        prepare_request_headers(
            &mut parts.headers,
            &parts.uri,
            &peer,
            upgrade,
            permit.authority(),
        );
        // Pods get origin-form (`/path?query`); HTTP/2 clients and proxies send absolute URIs.
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            parts.uri = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
                .into();
        }
        parts.version = Version::HTTP_11;
        let mut out = Request::from_parts(parts, body);

        let mut tried = Vec::new();
        let (mut resp, conn) = loop {
            // Boxed: inline, this future would make every request waiting in a queue as big
            // as one being sent (measured: +1.3 KiB per queued HTTP/2 request).
            match Box::pin(permit.upstream().send(out)).await {
                Ok(r) => break r,
                // Nothing of the request reached the pod: another pod may take it.
                Err(SendError::NotSent { error, req }) if tried.len() < MAX_CONNECT_RETRIES => {
                    tried.push(permit.addr());
                    match permit.try_other(&tried) {
                        Some(p) => {
                            tracing::debug!(model = %model.key(), failed = %permit.addr(), next = %p.addr(), %error, "connect failed, retrying on another pod");
                            permit = p;
                            out = *req;
                        }
                        None => return Err(ProxyError::Backend(error)),
                    }
                }
                Err(SendError::NotSent { error, .. }) => return Err(ProxyError::Backend(error)),
                Err(SendError::Failed(e)) => return Err(ProxyError::Backend(error_chain(&e))),
            }
        };

        if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            // The connection belongs to the upgraded protocol now.
            conn.detach();
            let guard = Guard {
                conn: None,
                permit,
                held,
            };
            if let Some(client_upgrade) = client_upgrade {
                tokio::spawn(async move {
                    let (c, b) = tokio::join!(client_upgrade, backend_upgrade);
                    if let (Ok(c), Ok(b)) = (c, b) {
                        let mut c = TokioIo::new(c);
                        let mut b = TokioIo::new(b);
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                    }
                    // The pod slot is busy while the upgraded connection lives.
                    drop(guard);
                });
            }
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, RespBody::Full(None)));
        }
        strip_hop_by_hop(resp.headers_mut(), false);
        Ok(resp.map(|inner| RespBody::Proxied {
            inner,
            guard: Some(Guard {
                conn: Some(conn),
                permit,
                held,
            }),
        }))
    }
}

/// `Connection: upgrade` with an `Upgrade` header (websocket and friends).
fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Headers that concern one connection only (RFC 9110 7.6.1), never forwarded as they are; the
/// relay uses the same list.
pub(crate) const HOP_BY_HOP: [&str; 9] = [
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

/// Removes hop-by-hop headers (RFC 9110 7.6.1), including those named in `Connection`. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive so the backend sees the upgrade.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    if h.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in listed {
            if !(keep_upgrade && n == header::UPGRADE) {
                h.remove(n);
            }
        }
    }
    for n in HOP_BY_HOP {
        if n != "upgrade" {
            h.remove(n);
        }
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

/// `pod` is the Host of last resort (an HTTP/1.0 client without one).
fn prepare_request_headers(
    h: &mut HeaderMap,
    uri: &Uri,
    peer: &Peer,
    upgrade: bool,
    pod: &Authority,
) {
    strip_hop_by_hop(h, upgrade);
    // HTTP/2 clients send :authority instead of Host; backends speak HTTP/1.1 and need Host.
    if !h.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(uri.authority().unwrap_or(pod).as_str())
    {
        h.insert(header::HOST, v);
    }
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", peer.addr.ip())).ok()
        }
        // The common case: no proxy before us; the connection's value, no allocation.
        _ => Some(peer.ip.clone()),
    };
    if let Some(v) = xff {
        h.insert("x-forwarded-for", v);
    }
    if !h.contains_key("x-forwarded-proto") {
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn content_length(h: &HeaderMap) -> u64 {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
