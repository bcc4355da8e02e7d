//! The request path, top to bottom: route, count, admit (or queue), forward, stream back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{self, HeaderMap};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::answer::{Guard, RespBody};
use crate::body::{IdleTimeout, IdleTimer, ReqBody};
use crate::error::{ProxyError, rescue};
use crate::forward;
use crate::hold;
use crate::metrics::{Event, Held, Metrics, ModelMetrics};
use crate::park::Parked;
use crate::peer::Peer;
use crate::queue::{Admit, Permit};
use crate::route;
use crate::table::{Addressed, Model, Table};
use crate::upstream::SendError;

/// The proxy: shared by every connection.
pub struct Proxy {
    table: Arc<Table>,
    metrics: Arc<Metrics>,
    max_routing_body_bytes: AtomicUsize,
    /// Answers to requests that waited for a wake say so ([`forward::COLD_START_HEADER`]).
    cold_start_header: AtomicBool,
    /// Time between a held stream's heartbeats, in nanoseconds ([`hold`]).
    stream_heartbeat_interval: AtomicU64,
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
            cold_start_header: AtomicBool::new(
                zeroscale_config::ActivatorConfig::default().cold_start_header,
            ),
            stream_heartbeat_interval: AtomicU64::new(nanos(
                zeroscale_config::ActivatorConfig::default().stream_heartbeat_interval,
            )),
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

    /// Turns the cold-start header on or off (ConfigMap `activator-cold-start-header`).
    pub fn set_cold_start_header(&self, on: bool) {
        self.cold_start_header.store(on, Ordering::Relaxed);
    }

    /// Changes the time between a held stream's heartbeats (ConfigMap
    /// `activator-stream-heartbeat-interval`; at least a millisecond).
    pub fn set_stream_heartbeat_interval(&self, every: Duration) {
        let every = nanos(every).max(1_000_000);
        self.stream_heartbeat_interval
            .store(every, Ordering::Relaxed);
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
        self.respond(req, peer, None, None)
    }

    /// Answers a request whose head the relay already routed to `model` (it handed the
    /// connection over with the head unread by hyper): no second lookup.
    pub fn handle_routed(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        model: Option<Arc<Model>>,
    ) -> impl Future<Output = Response<RespBody>> + Send + 'static {
        self.respond(req, peer, None, model)
    }

    /// Answers the first request of a connection that waited in its model's queue before hyper
    /// read it ([`crate::park`]): the slot (or the reason there is none) comes with it.
    pub fn handle_parked(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        parked: Parked,
    ) -> impl Future<Output = Response<RespBody>> + Send + 'static {
        self.respond(req, peer, Some(parked), None)
    }

    // One async fn from route to answer: every layer of async fn keeps its arguments (the
    // request among them) for its whole life, and a request waiting in a queue pays for each.
    async fn respond(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        parked: Option<Parked>,
        routed: Option<Arc<Model>>,
    ) -> Response<RespBody> {
        // The same policy the relay applies, over hyper's parse (it catches what hyper lets
        // through: a second Host, Connection naming a framing header, CONNECT, ...).
        if let Err(r) = forward::check_request(
            req.method().as_str().as_bytes(),
            version(req.version()),
            || req.headers().iter(),
        ) {
            let e = ProxyError::from(r);
            tracing::debug!(peer = %peer.addr(), error = %e, "request refused");
            self.metrics.rejected(e.reason());
            return rescue(&e);
        }
        // Boxed: routing (which may collect a body) is short, but its state would otherwise be
        // part of what every queued request carries (1,632 bytes with it boxed, 2,264 without).
        let (model, req, bytes, key, body_streams) = match Box::pin(self.route(req, routed)).await {
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
        // Admission and the wait in the queue are here, not in a nested async fn: every layer
        // of async fn keeps its own copy of its arguments' space, and a waiting request pays
        // for each. What follows admission is boxed (`send`), so a waiting request carries
        // none of it.
        let admitted = match admitted {
            Some(outcome) => outcome.map_err(ProxyError::from),
            None => match self.table.admit_keyed(&model, bytes, key) {
                Ok(Admit::Ready(p)) => Ok(p),
                // A streamed request of a model that holds streams waits as long as the
                // model's delay, then gets its 200 and waits on inside the answer's body.
                Ok(Admit::Queued(t)) => match model.gate().hold_streams() {
                    Some(after) if body_streams || asks_for_events(req.headers()) => {
                        let since = tokio::time::Instant::now();
                        match Box::pin(hold::wait_or_hold(t, after)).await {
                            hold::Held::Waited(r) => r.map_err(ProxyError::from),
                            hold::Held::Hold(wait) => {
                                model.gate().metrics().answered(StatusCode::OK.as_u16());
                                return self.hold(model, req, bytes, peer, held, since, wait);
                            }
                        }
                    }
                    _ => t.wait().await.map_err(ProxyError::from),
                },
                Err(e) => Err(e.into()),
            },
        };
        let sent = match admitted {
            Ok(permit) => {
                // Counts the client leaving while the pod works (hyper drops this future then);
                // one that leaves while queued is counted as abandoned by its ticket.
                let watch = ClientGone(Some(model.gate().metrics()));
                let send = Box::pin(self.send(&model, req, bytes, peer, held, permit));
                let sent = send.await;
                watch.disarm();
                sent
            }
            Err(e) => Err(e),
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(model = %model.key(), error = %e, "request failed");
                rescue(&e)
            }
        };
        model.gate().metrics().answered(resp.status().as_u16());
        resp
    }

    /// Answers a held streamed request at once ([`hold`]): its wait for a slot and its exchange
    /// with the pod go on inside the answer's body, which hyper drops if the client leaves
    /// (taking the request out of the queue, or away from the pod, as for any request).
    #[allow(clippy::too_many_arguments)]
    fn hold(
        self: Arc<Self>,
        model: Arc<Model>,
        req: Request<ReqBody>,
        bytes: u64,
        peer: Peer,
        held: Held,
        since: tokio::time::Instant,
        wait: hold::Wait,
    ) -> Response<RespBody> {
        let every = Duration::from_nanos(self.stream_heartbeat_interval.load(Ordering::Relaxed));
        let metrics = self.metrics.clone();
        let name = model.name();
        tracing::debug!(model = %model.key(), "streamed request held open while its model wakes");
        let exchange: hold::Exchange = Box::pin(async move {
            let permit = wait.await?;
            // As in `respond`: a client that leaves while the pod works is counted.
            let watch = ClientGone(Some(model.gate().metrics()));
            let sent = self.send(&model, req, bytes, peer, held, permit).await;
            watch.disarm();
            sent
        });
        hold::answer(name, since, every, exchange, metrics)
    }

    /// Finds the model; returns the request with its body ready to send, the bytes it
    /// accounts for in the queue: the buffered body when routing by body, else 0 (a streamed
    /// body is not read while the request waits: it stays with the client, held back by TCP
    /// flow control, so only the queue's count bounds it), and its prompt's prefix key when
    /// the model balances by prefix (the body is then read even when the Host or the path
    /// named the model), and whether a body read for routing asked for a stream
    /// (`"stream": true`; a body not read says nothing: then only `Accept` does).
    /// A head the relay routed already comes with its model (`routed`).
    async fn route(
        &self,
        req: Request<Incoming>,
        routed: Option<Arc<Model>>,
    ) -> Result<(Arc<Model>, Request<ReqBody>, u64, Option<u64>, bool), ProxyError> {
        let declared = content_length(req.headers());
        let addressed = match routed {
            Some(m) => Addressed::Model(m),
            None => {
                let host = req
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| req.uri().authority().map(|a| a.as_str()));
                let isvc =
                    route::isvc_headers(|name| req.headers().get(name).map(|v| v.as_bytes()));
                self.table.addressed_with_isvc(isvc, host, req.uri().path())
            }
        };
        let limit = self.max_routing_body_bytes.load(Ordering::Relaxed);
        match addressed {
            Addressed::Model(m)
                if m.gate().prefix_chars() > 0
                    && declared <= limit as u64
                    && route::classify_path(req.uri().path()) == route::PathRoute::Body =>
            {
                let (parts, bytes) = read_body(req, limit).await?;
                // The model is named already: a body that is not OpenAI JSON is the pod's to
                // judge, and goes by least requests.
                let (key, streams) = match route::route_body(&bytes) {
                    Ok((b, _)) => (b.prefix_key(m.gate().prefix_chars()), b.streams()),
                    Err(_) => (None, false),
                };
                let n = bytes.len() as u64;
                let req = Request::from_parts(parts, ReqBody::Full(Some(bytes)));
                Ok((m, req, n, key, streams))
            }
            Addressed::Model(m) => {
                let idle = IdleTimer::new(m.gate().timeouts().1);
                Ok((m, req.map(|b| ReqBody::Stream(b, idle)), 0, None, false))
            }
            Addressed::Unknown(name) => Err(ProxyError::UnknownModel(name)),
            Addressed::Body => {
                if declared > limit as u64 {
                    return Err(ProxyError::BodyTooLarge(limit));
                }
                let (parts, bytes) = read_body(req, limit).await?;
                let (body, name) = route::route_body(&bytes)?;
                let m = self
                    .table
                    .by_name(&name)
                    .ok_or(ProxyError::UnknownModel(name))?;
                let chars = m.gate().prefix_chars();
                let key = (chars > 0).then(|| body.prefix_key(chars)).flatten();
                let streams = body.streams();
                let n = bytes.len() as u64;
                let req = Request::from_parts(parts, ReqBody::Full(Some(bytes)));
                Ok((m, req, n, key, streams))
            }
            Addressed::Nothing => Err(ProxyError::NoRoute),
        }
    }

    /// Sends an admitted request to its pod and returns the pod's answer.
    async fn send(
        &self,
        model: &Arc<Model>,
        req: Request<ReqBody>,
        bytes: u64,
        peer: Peer,
        held: Held,
        mut permit: Permit,
    ) -> Result<Response<RespBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        // Checked in `respond`: this cannot fail, but a refusal is answered, never forwarded.
        let plan = forward::check_request(
            parts.method.as_str().as_bytes(),
            version(parts.version),
            || parts.headers.iter(),
        )?;
        let upgrade = plan.upgrade;
        let client_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        // The client's extensions mean nothing to the pod's connection.
        parts.extensions.clear();
        // HTTP/2 clients send :authority instead of Host; an HTTP/1.0 client may send neither.
        let authority = parts
            .uri
            .authority()
            .map_or_else(|| permit.pool().authority().as_str(), |a| a.as_str())
            .as_bytes();
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
        plan.forward(
            || parts.headers.iter(),
            peer.ip_bytes(),
            authority,
            &mut headers,
        );
        drop(plan);
        parts.headers = headers;
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
        let metrics = model.gate().metrics();
        let (response_timeout, idle_timeout) = model.gate().timeouts();
        // A small body is read whole before it is sent, as the relay does: then it can be sent
        // again if the pod closes a reused connection under it. (Not before the slot: a waiting
        // request's body stays with the client.)
        let body = match body {
            ReqBody::Stream(b, timer)
                if hyper::body::Body::size_hint(&b)
                    .exact()
                    .is_some_and(|n| n > 0 && n <= forward::REPLAYABLE_BODY_BYTES as u64) =>
            {
                // Boxed, like every await after the queue: inline, each would make every
                // request waiting in a queue as big as one being sent.
                let collect = Box::pin(ReqBody::Stream(b, timer).collect());
                match collect.await {
                    Ok(c) => ReqBody::Full(Some(c.to_bytes())),
                    Err(e) => {
                        if let Some(t) = e.downcast_ref::<IdleTimeout>() {
                            metrics.count(Event::IdleTimeout);
                            return Err(ProxyError::BodyTimeout(t.0));
                        }
                        return Err(ProxyError::ClientBody(e.to_string()));
                    }
                }
            }
            b => b,
        };
        let mut out = Request::from_parts(parts, body);

        let mut deadline = tokio::time::Instant::now() + response_timeout;
        let mut tried = Vec::new();
        let (mut resp, conn) = loop {
            // Boxed: inline, this future would make every request waiting in a queue as big
            // as one being sent (measured: +1.3 KiB per queued HTTP/2 request).
            let sending = Box::pin(tokio::time::timeout_at(
                deadline,
                permit.pool().send(out, metrics, peer.worker()),
            ));
            let sent = sending.await;
            match sent {
                Ok(Ok(r)) => break r,
                Err(_) => {
                    metrics.count(Event::ResponseTimeout);
                    tracing::warn!(model = %model.key(), pod = %permit.addr(), ?response_timeout, "no answer within response-timeout: 504");
                    return Err(ProxyError::ResponseTimeout(response_timeout));
                }
                // Nothing of the request reached the pod (a pod that stopped listening is still
                // in its EndpointSlice for a moment): eject it, and try another pod or wait in
                // the queue for one, as a request that just arrived would.
                Ok(Err(SendError::NotSent { error, req }))
                    if tried.len() + 1 < forward::MAX_CONNECT_ATTEMPTS =>
                {
                    permit.eject();
                    tried.push(permit.addr());
                    metrics.count(Event::ConnectRetry);
                    out = *req;
                    permit = match permit.try_other(&tried) {
                        Some(p) => {
                            tracing::debug!(model = %model.key(), failed = %permit.addr(), next = %p.addr(), %error, "connect failed, retrying on another pod");
                            p
                        }
                        None => {
                            tracing::debug!(model = %model.key(), failed = %permit.addr(), %error, "connect failed and no other pod has room: back to the queue");
                            drop(permit);
                            let p = match self.table.admit(model, bytes)? {
                                Admit::Ready(p) => p,
                                Admit::Queued(t) => {
                                    let wait = Box::pin(t.wait());
                                    wait.await?
                                }
                            };
                            deadline = tokio::time::Instant::now() + response_timeout;
                            p
                        }
                    };
                }
                Ok(Err(SendError::NotSent { error, .. })) => {
                    return Err(backend_failed(model, &permit, error));
                }
                Ok(Err(SendError::Failed(e))) => {
                    if let Some(t) = find_source::<IdleTimeout>(&e) {
                        metrics.count(Event::IdleTimeout);
                        tracing::debug!(model = %model.key(), idle = ?t.0, "request body paused longer than idle-timeout: 408");
                        return Err(ProxyError::BodyTimeout(t.0));
                    }
                    return Err(backend_failed(model, &permit, error_chain(&e)));
                }
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
        let (mut parts, inner) = resp.into_parts();
        if forward::header_bytes(&parts.headers) > forward::RESPONSE_HEAD_BYTES {
            let e = forward::BadAnswer::TooLarge.to_string();
            return Err(backend_failed(model, &permit, e));
        }
        let answer = forward::check_response(
            parts.status.as_u16(),
            version(parts.version),
            false,
            parts.headers.iter(),
        );
        let answer = match answer {
            Ok(a) => a,
            Err(e) => return Err(backend_failed(model, &permit, e.to_string())),
        };
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
        answer.forward(parts.headers.iter(), &mut headers);
        drop(answer);
        if let Some(waited) = permit.cold_wait()
            && self.cold_start_header.load(Ordering::Relaxed)
        {
            forward::add_cold_start(&mut headers, waited);
        }
        parts.headers = headers;
        Ok(Response::from_parts(
            parts,
            RespBody::Proxied {
                inner,
                guard: Some(Guard {
                    conn: Some(conn),
                    permit,
                    held,
                }),
                timer: IdleTimer::new(idle_timeout),
            },
        ))
    }
}

/// Counts the client leaving while its request is with the pod, unless disarmed.
struct ClientGone<'a>(Option<&'a ModelMetrics>);

impl ClientGone<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for ClientGone<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            m.count(Event::ClientGone);
        }
    }
}

/// A 502, logged with the model and the pod (the answer itself names neither).
fn backend_failed(model: &Model, permit: &Permit, error: String) -> ProxyError {
    tracing::warn!(model = %model.key(), pod = %permit.addr(), %error, "request failed: 502");
    ProxyError::Backend(error)
}

fn find_source<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

/// Reads a body routing needs, up to `limit` bytes (413 beyond).
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
) -> Result<(http::request::Parts, bytes::Bytes), ProxyError> {
    let (parts, body) = req.into_parts();
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok((parts, c.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge(limit))
        }
        Err(e) => Err(ProxyError::ClientBody(e.to_string())),
    }
}

fn version(v: Version) -> forward::Version {
    match v {
        Version::HTTP_10 | Version::HTTP_09 => forward::Version::Http10,
        Version::HTTP_11 => forward::Version::Http11,
        _ => forward::Version::Http2,
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

/// The request asks for server-sent events by its `Accept` header ([`route::accepts_event_stream`]).
fn asks_for_events(h: &HeaderMap) -> bool {
    h.get_all(header::ACCEPT)
        .iter()
        .any(|v| route::accepts_event_stream(v.as_bytes()))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn content_length(h: &HeaderMap) -> u64 {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
