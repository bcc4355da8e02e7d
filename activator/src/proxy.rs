//! The request path, top to bottom: route, count, admit (or queue), forward, stream back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::body::{Guard, ReqBody, RespBody, Rewind};
use crate::error::{ProxyError, rescue};
use crate::metrics::{Held, Metrics};
use crate::queue::Admit;
use crate::route::{self, PathRoute};
use crate::table::{Model, Table};

/// How many other pods a request whose connection failed is tried on.
const MAX_CONNECT_RETRIES: usize = 2;

/// The proxy: shared by every connection.
pub struct Proxy {
    table: Arc<Table>,
    metrics: Arc<Metrics>,
    client: Client<HttpConnector, ReqBody>,
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
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        // A pod that does not accept within this is treated like a refused connection.
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn);
        Arc::new(Self {
            table,
            metrics,
            client,
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
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<RespBody> {
        let (model, req, bytes) = match self.route(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "request rejected");
                self.metrics.rejected(e.reason());
                return rescue(&e);
            }
        };
        let held = model.gate().metrics().integral.hold();
        let resp = match self.forward(&model, req, bytes, remote, held).await {
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
        if let Some(m) = host.and_then(|h| self.table.by_host(h)) {
            return Ok((m, req.map(|b| ReqBody::Stream(Rewind::new(b))), 0));
        }
        match route::classify_path(req.uri().path()) {
            PathRoute::Named(name) => {
                let m = self
                    .table
                    .by_name(name)
                    .ok_or_else(|| ProxyError::UnknownModel(name.to_string()))?;
                Ok((m, req.map(|b| ReqBody::Stream(Rewind::new(b))), 0))
            }
            PathRoute::Body => {
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
            PathRoute::None => Err(ProxyError::NoRoute),
        }
    }

    async fn forward(
        &self,
        model: &Arc<Model>,
        req: Request<ReqBody>,
        bytes: u64,
        remote: SocketAddr,
        held: Held,
    ) -> Result<Response<RespBody>, ProxyError> {
        let mut permit = match model.gate().admit(bytes)? {
            Admit::Ready(p) => p,
            Admit::Queued(t) => {
                if t.needs_wake() {
                    self.table.wake_sink().wake(model);
                }
                t.wait().await?
            }
        };

        let (mut parts, mut body) = req.into_parts();
        let upgrade = is_upgrade(&parts.headers) && parts.version == Version::HTTP_11;
        let client_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        prepare_request_headers(&mut parts.headers, &parts.uri, remote, upgrade);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();

        let mut tried = Vec::new();
        let mut resp = loop {
            let uri = Uri::builder()
                .scheme("http")
                .authority(permit.authority().clone())
                .path_and_query(path.as_str())
                .build()
                .map_err(|e| ProxyError::Backend(e.to_string()))?;
            let mut out = Request::new(body);
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = uri;
            *out.version_mut() = Version::HTTP_11;
            *out.headers_mut() = parts.headers.clone();
            let keep = match out.body() {
                ReqBody::Full(b) => ReqBody::Full(b.clone()),
                ReqBody::Stream(r) => ReqBody::Stream(r.clone()),
            };
            match self.client.request(out).await {
                Ok(r) => break r,
                Err(e) if e.is_connect() && tried.len() < MAX_CONNECT_RETRIES => {
                    tried.push(permit.addr());
                    // Retry only when no byte of the request left: the body must be untouched.
                    let again = match keep {
                        ReqBody::Full(b) => Some(ReqBody::Full(b)),
                        ReqBody::Stream(r) => r.rewind().map(ReqBody::Stream),
                    };
                    let next = again.and_then(|b| permit.try_other(&tried).map(|p| (b, p)));
                    match next {
                        Some((b, p)) => {
                            tracing::debug!(model = %model.key(), failed = %permit.addr(), next = %p.addr(), error = %error_chain(&e), "connect failed, retrying on another pod");
                            body = b;
                            permit = p;
                        }
                        None => return Err(ProxyError::Backend(error_chain(&e))),
                    }
                }
                Err(e) => return Err(ProxyError::Backend(error_chain(&e))),
            }
        };

        if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            let guard = Guard { permit, held };
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
            guard: Some(Guard { permit, held }),
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
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

fn prepare_request_headers(h: &mut HeaderMap, uri: &Uri, remote: SocketAddr, upgrade: bool) {
    strip_hop_by_hop(h, upgrade);
    // HTTP/2 clients send :authority instead of Host; backends speak HTTP/1.1 and need Host.
    if !h.contains_key(header::HOST)
        && let Some(a) = uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        h.insert(header::HOST, v);
    }
    let ip = remote.ip().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
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
