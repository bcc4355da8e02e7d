//! Connections to one pod: a small LIFO pool of idle HTTP/1.1 connections on hyper's
//! connection-level client.
//!
//! Why not hyper-util's pooled `Client`: it keys its pool by scheme and authority behind one
//! mutex shared by every backend, rebuilds an absolute URI per request, and after every response
//! spawns a task that waits for the connection to become reusable. Here the pool hangs off the
//! pod itself (the `Permit` a request holds points at it), so a request
//! takes only its pod's pool lock, and a connection goes back to the pool when its response body
//! ends (see [`Conn`]).
//!
//! A pooled connection the pod has closed in the meantime is usually found out before the
//! request is written: hyper hands the untouched request back ([`SendRequest::try_send_request`])
//! and the next connection is tried. When the pod closes it just as the request goes out (a pod
//! shutting down closes its idle keep-alive connections), the exchange fails with no byte of an
//! answer: a request whose body can be sent again (buffered, or none) is then sent once more on
//! a fresh connection, as nginx and hyper-util's pool do. Otherwise a request is never re-sent
//! once any byte of it was written.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::ReqBody;
use crate::forward::RESPONSE_HEAD_BYTES;
use crate::metrics::{Event, ModelMetrics};

/// A pod that does not accept a connection within this is treated like one that refused it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections older than this are closed instead of reused (model servers commonly close
/// idle keep-alive connections after 5 s to a few minutes; a closed one costs a retry).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per pod; beyond it the oldest is closed.
pub const MAX_IDLE: usize = 512;

/// The proxy worker thread a connection is served on (0-based; see
/// `server::spawn_proxy_workers`). Each worker has its own runtime, so a pod connection is
/// reused only by the worker whose runtime drives it: every pool is split by worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkerId(pub usize);

/// One pod's connections: one idle pool per proxy worker thread.
pub struct Upstream {
    addr: SocketAddr,
    authority: Authority,
    idle: Box<[Mutex<VecDeque<Idle>>]>,
    /// The relay's connections (`relay`): plain sockets, one pool per worker.
    raw: Box<[Mutex<Vec<RawIdle>>]>,
}

struct RawIdle {
    stream: TcpStream,
    since: Instant,
}

struct Idle {
    tx: SendRequest<ReqBody>,
    since: Instant,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("idle", &self.idle_count())
            .finish()
    }
}

/// Why a request did not get a response.
#[derive(Debug)]
pub enum SendError {
    /// Nothing of the request reached the pod (no connection could be made, or the connection
    /// failed before the request was written); the request is handed back untouched.
    NotSent {
        /// What happened.
        error: String,
        /// The request, to try elsewhere.
        req: Box<Request<ReqBody>>,
    },
    /// The exchange failed after the request was handed to the connection.
    Failed(hyper::Error),
}

impl zeroscale_gate::Pool for Upstream {
    fn drop_idle(&self) {
        Upstream::drop_idle(self);
    }
}

impl Upstream {
    /// A pod at `addr`, with no connection yet, and a pool for each of `workers` proxy
    /// workers (a [`WorkerId`] beyond them shares a pool).
    pub fn new(addr: SocketAddr, workers: usize) -> Arc<Self> {
        let workers = workers.max(1);
        Arc::new(Self {
            addr,
            authority: Authority::try_from(addr.to_string().as_str())
                .expect("a socket address is a valid authority"),
            idle: (0..workers).map(|_| Mutex::new(VecDeque::new())).collect(),
            raw: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
        })
    }

    /// The pod's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The pod's address as a URI authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Idle connections in the pools now.
    pub fn idle_count(&self) -> usize {
        let hyper: usize = self
            .idle
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum();
        let raw: usize = self
            .raw
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum();
        hyper + raw
    }

    fn lock_raw(&self, worker: WorkerId) -> std::sync::MutexGuard<'_, Vec<RawIdle>> {
        let i = worker.0 % self.raw.len();
        self.raw[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The relay's most recently used idle connection that still looks open: the pod has
    /// neither closed it nor sent anything on it since its last answer.
    pub fn take_raw(&self, worker: WorkerId) -> Option<TcpStream> {
        let mut idle = self.lock_raw(worker);
        while let Some(i) = idle.pop() {
            if i.since.elapsed() < IDLE_TIMEOUT && quiet(&i.stream) {
                return Some(i.stream);
            }
        }
        None
    }

    /// Gives a relay connection whose exchange ended cleanly back to `worker`'s pool.
    pub fn put_raw(&self, stream: TcpStream, worker: WorkerId) {
        let now = Instant::now();
        let mut idle = self.lock_raw(worker);
        if idle.len() >= MAX_IDLE || idle.first().is_some_and(|i| now - i.since >= IDLE_TIMEOUT) {
            idle.remove(0);
        }
        idle.push(RawIdle { stream, since: now });
    }

    /// A new plain connection to the pod (for the relay).
    pub async fn connect_raw(&self) -> std::io::Result<TcpStream> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {CONNECT_TIMEOUT:?}"),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// `worker`'s pool.
    fn lock(&self, worker: WorkerId) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        let i = worker.0 % self.idle.len();
        self.idle[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes every idle connection (the pod is leaving: none of them may take a request).
    pub fn drop_idle(&self) {
        for pool in self.idle.iter() {
            pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        for pool in self.raw.iter() {
            pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) on a pooled connection of `worker` or a new
    /// one. The returned [`Conn`] must live as long as the response body is read: dropping it
    /// gives the connection back to the pool.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ReqBody>,
        metrics: &ModelMetrics,
        worker: WorkerId,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        while let Some(mut tx) = self.checkout(worker) {
            let replay = replayable(&req);
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.conn(tx, worker))),
                Err(mut e) => match e.take_message() {
                    // The pod closed this idle connection; nothing was written: next one.
                    Some(r) => req = r,
                    None => {
                        let error = e.into_error();
                        match replay {
                            Some(r) if closed_before_answer(&error) => {
                                tracing::debug!(pod = %self.addr, %error, "a reused connection closed before any answer: sending again on a fresh one");
                                metrics.count(Event::StaleRetry);
                                req = r;
                                // The pod is likely closing every idle connection: a fresh one.
                                break;
                            }
                            _ => return Err(SendError::Failed(error)),
                        }
                    }
                },
            }
        }
        let mut tx = match self.connect().await {
            Ok(tx) => tx,
            Err(e) => {
                return Err(SendError::NotSent {
                    error: format!("connecting to {} failed: {e}", self.addr),
                    req: Box::new(req),
                });
            }
        };
        let replay = replayable(&req);
        match tx.try_send_request(req).await {
            Ok(resp) => Ok((resp, self.conn(tx, worker))),
            Err(mut e) => match e.take_message() {
                Some(r) => Err(SendError::NotSent {
                    error: format!("the connection to {} failed: {}", self.addr, e.error()),
                    req: Box::new(r),
                }),
                None => {
                    let error = e.into_error();
                    match replay {
                        // Reset before any answer: the pod closed with the request unread (a
                        // pod shutting down resets what waits in its accept queue; one that
                        // read it and died would have closed with a FIN). Like a refused
                        // connection: the caller tries another pod or the queue.
                        Some(r) if reset(&error) => Err(SendError::NotSent {
                            error: format!("{} reset the connection unread: {error}", self.addr),
                            req: Box::new(r),
                        }),
                        _ => Err(SendError::Failed(error)),
                    }
                }
            },
        }
    }

    fn conn(self: &Arc<Self>, tx: SendRequest<ReqBody>, worker: WorkerId) -> Conn {
        Conn {
            tx: Some(tx),
            upstream: Arc::downgrade(self),
            worker,
        }
    }

    /// `worker`'s most recently used idle connection that can take a request now.
    fn checkout(&self, worker: WorkerId) -> Option<SendRequest<ReqBody>> {
        let mut idle = self.lock(worker);
        while let Some(i) = idle.pop_back() {
            if i.tx.is_ready() && i.since.elapsed() < IDLE_TIMEOUT {
                return Some(i.tx);
            }
            // Closed by the pod, or too old: dropping the sender closes the connection.
        }
        None
    }

    async fn connect(&self) -> std::io::Result<SendRequest<ReqBody>> {
        let stream = self.connect_raw().await?;
        let (tx, conn) = http1::Builder::new()
            // The same answer-head limit as the relay's (the forwarding policy's).
            .max_buf_size(RESPONSE_HEAD_BYTES)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let addr = self.addr;
        tokio::spawn(async move {
            // Upgrades (websockets) take the connection over when the response asks for it.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "connection to pod ended with an error");
            }
        });
        Ok(tx)
    }

    /// Puts a connection whose exchange is over back, once it can take a new request.
    fn put(self: Arc<Self>, mut tx: SendRequest<ReqBody>, worker: WorkerId) {
        if tx.is_ready() {
            self.push(tx, worker);
        } else if !tx.is_closed() {
            // hyper has not yet noticed the end of the response on the connection's task; wait
            // for it there (rare: usually the connection is ready when the body's end arrives).
            let up = Arc::downgrade(&self);
            tokio::spawn(async move {
                if tx.ready().await.is_ok()
                    && let Some(up) = up.upgrade()
                {
                    up.push(tx, worker);
                }
            });
        }
    }

    fn push(&self, tx: SendRequest<ReqBody>, worker: WorkerId) {
        let now = Instant::now();
        let mut idle = self.lock(worker);
        while idle
            .front()
            .is_some_and(|i| idle.len() >= MAX_IDLE || now - i.since >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        idle.push_back(Idle { tx, since: now });
    }
}

/// A copy of `req` to send again, when its body can be replayed: buffered, or none at all.
fn replayable(req: &Request<ReqBody>) -> Option<Request<ReqBody>> {
    let body = match req.body() {
        ReqBody::Full(b) => ReqBody::Full(b.clone()),
        b if hyper::body::Body::is_end_stream(b) => ReqBody::Full(None),
        _ => return None,
    };
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// The exchange failed before any answer came back: the connection closed or broke under it.
fn closed_before_answer(e: &hyper::Error) -> bool {
    e.is_incomplete_message()
        || e.is_canceled()
        || e.is_body_write_aborted()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// The pod reset the connection (an `ECONNRESET` somewhere in the error's chain).
fn reset(e: &hyper::Error) -> bool {
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// True when an idle socket has nothing to read: neither data nor the pod's close. The
/// reactor's readiness answers without a system call in the common case (tokio clears it when a
/// read leaves the socket empty); only a socket marked readable is asked with a read.
fn quiet(stream: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        std::task::Poll::Pending => true,
        std::task::Poll::Ready(Ok(())) => {
            let mut b = [0u8; 1];
            matches!(stream.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
        std::task::Poll::Ready(Err(_)) => false,
    }
}

/// A connection lent to one exchange. Dropped when the response body has been read to its end
/// (or abandoned): the connection goes back to its pod's pool if hyper can reuse it (an
/// abandoned body makes hyper close it instead).
#[derive(Debug)]
pub struct Conn {
    tx: Option<SendRequest<ReqBody>>,
    upstream: Weak<Upstream>,
    /// The pool it goes back to.
    worker: WorkerId,
}

impl Conn {
    /// Keeps the connection out of the pool (it was upgraded: another protocol owns it now).
    pub fn detach(mut self) {
        self.tx = None;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take()
            && let Some(up) = self.upstream.upgrade()
        {
            up.put(tx, self.worker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn mm() -> ModelMetrics {
        crate::Metrics::register(&mut prometheus_client::registry::Registry::default()).model(
            crate::metrics::ModelLabels {
                namespace: "ns".into(),
                deployment: "m".into(),
                model: "m".into(),
            },
        )
    }

    #[tokio::test]
    async fn a_request_on_a_connection_closed_under_it_is_sent_again() {
        // The pod answers the first request of each connection, then reads the next one and
        // closes without answering: a pod shutting down as a reused connection is written to.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.expect("accept");
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    let _ = s.read(&mut buf).await;
                    // dropped: closed with the second request unanswered
                });
            }
        });
        let up = Upstream::new(addr, 1);
        let m = mm();
        for _ in 0..3 {
            let (resp, conn) = up
                .send(get("/"), &m, WorkerId::default())
                .await
                .expect("answer");
            assert_eq!(body(resp).await, "ok");
            drop(conn);
            tokio::task::yield_now().await;
        }
        assert_eq!(m.count_of(Event::StaleRetry), 2);
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    fn get(path: &str) -> Request<ReqBody> {
        Request::builder()
            .uri(path)
            .header(http::header::HOST, "pod")
            .body(ReqBody::Full(None))
            .expect("valid request")
    }

    /// A server that answers `n` requests per connection with "ok" (keep-alive), then closes
    /// the connection; counts connections.
    async fn server(per_conn: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.expect("accept");
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..per_conn {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = s.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            got.extend_from_slice(&buf[..n]);
                        }
                        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(r).await.is_err() {
                            return;
                        }
                    }
                    // Close after `per_conn` answers (a keep-alive limit on the pod).
                });
            }
        });
        (addr, conns)
    }

    async fn body(resp: Response<Incoming>) -> Bytes {
        resp.into_body().collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (addr, conns) = server(100).await;
        let up = Upstream::new(addr, 1);
        for _ in 0..5 {
            let (resp, conn) = up
                .send(get("/"), &mm(), WorkerId::default())
                .await
                .expect("answer");
            assert_eq!(body(resp).await, "ok");
            drop(conn);
            // The connection may need its task to run once more before it is reusable.
            tokio::task::yield_now().await;
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(up.idle_count(), 1);
    }

    #[tokio::test]
    async fn each_worker_reuses_only_its_own_connections() {
        let (addr, conns) = server(100).await;
        let up = Upstream::new(addr, 2);
        let count = || conns.load(std::sync::atomic::Ordering::SeqCst);
        for (worker, expected) in [(1, 1), (0, 2), (1, 2), (0, 2), (3, 2)] {
            let (resp, conn) = up
                .send(get("/"), &mm(), WorkerId(worker))
                .await
                .expect("answer");
            assert_eq!(body(resp).await, "ok");
            drop(conn);
            tokio::task::yield_now().await;
            // Worker 3 of a pod split for 2 shares worker 1's pool.
            assert_eq!(count(), expected, "worker {worker}");
        }
        assert_eq!(up.idle_count(), 2);
    }

    #[tokio::test]
    async fn concurrent_exchanges_get_their_own_connections() {
        let (addr, conns) = server(100).await;
        let up = Upstream::new(addr, 1);
        let (r1, c1) = up
            .send(get("/a"), &mm(), WorkerId::default())
            .await
            .expect("answer");
        let (r2, c2) = up
            .send(get("/b"), &mm(), WorkerId::default())
            .await
            .expect("answer");
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(body(r1).await, "ok");
        assert_eq!(body(r2).await, "ok");
        drop((c1, c2));
        tokio::task::yield_now().await;
        assert_eq!(up.idle_count(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_pod_closed_is_skipped_without_resending() {
        // The pod answers one request per connection, then closes it.
        let (addr, conns) = server(1).await;
        let up = Upstream::new(addr, 1);
        for _ in 0..3 {
            let (resp, conn) = up
                .send(get("/"), &mm(), WorkerId::default())
                .await
                .expect("answer");
            assert_eq!(body(resp).await, "ok");
            drop(conn);
            // Let the connection task see the pod's close.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_hands_the_request_back() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let up = Upstream::new(addr, 1);
        match up.send(get("/x"), &mm(), WorkerId::default()).await {
            Err(SendError::NotSent { req, error }) => {
                assert_eq!(req.uri().path(), "/x");
                assert!(error.contains(&addr.to_string()), "{error}");
            }
            other => panic!("expected NotSent, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_abandoned_body_does_not_return_its_connection() {
        // A response whose body never ends; dropping it mid-way must not pool the connection.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let up = Upstream::new(addr, 1);
        let (resp, conn) = up
            .send(get("/"), &mm(), WorkerId::default())
            .await
            .expect("answer");
        drop(resp);
        drop(conn);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(up.idle_count(), 0);
    }
}
