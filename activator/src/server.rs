//! Listeners: the proxy port (HTTP/1.1 and h2c) with graceful drain, and the admin port
//! (`/metrics`, `/healthz`, `/readyz`, and the autoscaler's stat feed `/v1/feed`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use tokio_util::sync::CancellationToken;
use zeroscale_config::feed;
use zeroscale_kube::admin;

use crate::error::rescue;
use crate::handoff::{Checks, HandOff};
use crate::park::{GoneReason, Parking, park};
use crate::peer::Peer;
use crate::proxy::Proxy;
use crate::relay::{self, RelayOptions};
use crate::stat_feed::StatFeed;
use crate::upstream::WorkerId;

/// Options of the proxy listener.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// A client must send its complete request head within this once its first byte arrived
    /// (slow-client protection; counted as `rejected_requests_total{reason="header_timeout"}`).
    pub header_read_timeout: Duration,
    /// An idle client connection waits this long for its next request, then is closed (not a
    /// rejection). On connections hyper serves, hyper has one timer for both, so this one
    /// bounds their slow heads too.
    pub keep_alive_timeout: Duration,
    /// Max bytes of a request head (HTTP/1 buffer, HTTP/2 header list); beyond it 431.
    pub max_header_bytes: usize,
    /// On shutdown, how long queued and in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// Serve plain HTTP/1.1 requests to models with room through the relay
    /// ([`crate::relay`]) instead of hyper.
    pub relay: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
            relay: true,
        }
    }
}

/// The proxy listener running on worker threads; see [`spawn_proxy_workers`].
#[derive(Debug)]
pub struct ProxyWorkers {
    done: Vec<tokio::sync::oneshot::Receiver<bool>>,
}

impl ProxyWorkers {
    /// Waits until every worker has stopped (after `stop`) and drained; true when all of them
    /// finished their open requests in time.
    pub async fn wait(self) -> bool {
        let mut all = true;
        for rx in self.done {
            // A worker that could not start or panicked reports nothing: not drained.
            all &= rx.await.unwrap_or(false);
        }
        all
    }
}

/// Serves the proxy on `workers` threads, each with its own single-threaded tokio runtime and
/// accepting from the same listening socket (the nginx and Envoy layout): a connection, its
/// requests, and the pod connections they use stay on one thread, with no hand-offs between
/// threads per request. What is shared (routing table, per-model gates, metrics) is built for
/// it. `stop` starts the drain on every worker.
pub fn spawn_proxy_workers(
    listener: std::net::TcpListener,
    workers: usize,
    proxy: Arc<Proxy>,
    opts: ServerOptions,
    stop: CancellationToken,
) -> std::io::Result<ProxyWorkers> {
    let workers = workers.max(1);
    listener.set_nonblocking(true)?;
    proxy.table().set_proxy_workers(workers);
    let mut done = Vec::with_capacity(workers);
    for i in 0..workers {
        let listener = listener.try_clone()?;
        let (proxy, opts, stop) = (proxy.clone(), opts.clone(), stop.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("proxy-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(worker = i, error = %e, "starting a proxy worker failed");
                        return;
                    }
                };
                let drained = rt.block_on(async move {
                    // hyper arms a header-read timer for every request head. tokio wakes its
                    // driver (an eventfd write, a syscall) whenever a new timer is due before
                    // every timer it knew of at its last park, which with no other timer is
                    // almost every request. A timer always due sooner than any header timeout
                    // keeps those insertions silent (measured: 0.7 eventfd writes per request
                    // without it, BENCHMARKS.md "Activator").
                    tokio::spawn(async {
                        loop {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    });
                    match TcpListener::from_std(listener) {
                        Ok(l) => {
                            serve_worker(l, proxy, opts, stop.cancelled_owned(), WorkerId(i)).await
                        }
                        Err(e) => {
                            tracing::error!(worker = i, error = %e, "proxy worker cannot listen");
                            false
                        }
                    }
                });
                let _ = tx.send(drained);
            })?;
        done.push(rx);
    }
    Ok(ProxyWorkers { done })
}

/// Serves the proxy on `listener` until `shutdown` completes, then stops accepting and waits
/// up to the drain timeout for open requests (queued ones included) to finish. Returns true
/// when everything finished in time.
pub async fn serve_proxy(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> bool {
    serve_worker(listener, proxy, opts, shutdown, WorkerId::default()).await
}

/// [`serve_proxy`] as proxy worker `worker`: its connections use that worker's pod pools.
async fn serve_worker(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()>,
    worker: WorkerId,
) -> bool {
    let builder = proxy_builder(&opts, true);
    // A parked connection serves the one request it waited with (see `crate::park`).
    let parked_builder = proxy_builder(&opts, false);
    let graceful = GracefulShutdown::new();
    let stopping = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let peer = Peer::new(remote, worker);
        let (builder, parked_builder) = (builder.clone(), parked_builder.clone());
        // Held from accept on, so a drain waits for parked requests too.
        let watcher = graceful.watcher();
        let stopping = stopping.clone();
        let relay_opts = RelayOptions {
            header_timeout: opts.header_read_timeout,
            keep_alive_timeout: opts.keep_alive_timeout,
            max_header_bytes: opts.max_header_bytes,
            forward: opts.relay,
        };
        tokio::spawn(async move {
            let metrics = proxy.metrics().clone();
            let mut handed_off = false;
            let res = match park(
                stream,
                proxy.table(),
                &peer,
                relay_opts.keep_alive_timeout,
                &stopping,
            )
            .await
            {
                Parking::Gone(GoneReason::Idle | GoneReason::Closed | GoneReason::Stopping) => {
                    return;
                }
                Parking::Relay(mut stream, peeked) => {
                    // Every first head is checked here, relay on or off (one policy, one
                    // error shape); with the relay on, it forwards what it can.
                    let (prefix, checked) = match Box::pin(relay::serve(
                        &mut stream,
                        proxy.table(),
                        &peer,
                        &relay_opts,
                        &stopping,
                        peeked,
                    ))
                    .await
                    {
                        relay::End::Closed => return,
                        relay::End::HandOff(prefix, checked) => (prefix, checked),
                    };
                    // The head at the front was parsed, checked and routed by the relay: hyper's
                    // path takes its model instead of looking it up again.
                    let (approved, routed) = match checked {
                        Some(c) => (Some((c.len, c.next)), c.model.filter(|_| c.for_hyper)),
                        None => (None, None),
                    };
                    let routed = std::cell::Cell::new(routed);
                    // hyper serves the rest, each head checked before hyper reads it; a refused
                    // one comes to the service as a stand-in request and is answered here.
                    let checks = Checks {
                        metrics: metrics.clone(),
                        max_header_bytes: relay_opts.max_header_bytes,
                        header_timeout: relay_opts.header_timeout,
                    };
                    let (stream, refused) = HandOff::new(prefix, stream, checks, approved);
                    handed_off = true;
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (proxy, peer) = (proxy.clone(), peer.clone());
                        let refusal = refused.lock().unwrap_or_else(|e| e.into_inner()).take();
                        // Only the first request is the head the relay routed (a refusal takes
                        // its place when the hand-off refused it after all).
                        let routed = routed.take();
                        async move {
                            Ok::<_, Infallible>(match refusal {
                                Some(e) => rescue(&e),
                                None => proxy.handle_routed(req, peer, routed).await,
                            })
                        }
                    });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    // Boxed here, so a parked connection's task does not carry hyper's
                    // connection state inline while it waits.
                    Box::pin(watcher.watch(conn.into_owned())).await
                }
                Parking::Parked(stream, p) => {
                    let first = std::sync::Mutex::new(Some(p));
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (proxy, peer) = (proxy.clone(), peer.clone());
                        let p = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                        async move {
                            Ok::<_, Infallible>(match p {
                                Some(p) => proxy.handle_parked(req, peer, p).await,
                                None => proxy.handle(req, peer).await,
                            })
                        }
                    });
                    let res = Box::pin(
                        parked_builder.serve_connection_with_upgrades(TokioIo::new(stream), svc),
                    )
                    .await;
                    drop(watcher);
                    res
                }
            };
            if let Err(e) = res {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
                // hyper answered these itself (400, 431) or closed the connection (slow client):
                // count them, as the service never saw the request.
                if let Some(h) = e.downcast_ref::<hyper::Error>() {
                    if h.is_parse_too_large() {
                        metrics.rejected("header_too_large");
                    } else if h.is_parse() {
                        metrics.rejected("malformed_http");
                    } else if h.is_timeout() && !handed_off {
                        // On a handed-off connection the hand-off counts slow heads itself and
                        // hyper's timer only ends idle keep-alive waits: not a rejection.
                        metrics.rejected("header_timeout");
                    }
                }
            }
        });
    }
    stopping.cancel();
    drop(listener);
    tracing::info!("draining open requests");
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    if tokio::time::timeout(opts.drain_timeout, &mut drained)
        .await
        .is_ok()
    {
        return true;
    }
    // Requests still waiting for a pod get a clear 503 instead of a reset connection.
    let failed = proxy.table().fail_waiting();
    tracing::warn!(
        failed,
        "drain timeout passed; answered waiting requests with 503"
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
    false
}

/// The proxy listener's connection builder; `keep_alive` false serves one request and closes.
fn proxy_builder(opts: &ServerOptions, keep_alive: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's timer covers the wait for a keep-alive connection's next request as well as
        // its head: the idle allowance bounds both (the first head of a connection gets the
        // shorter header timeout in the relay).
        .header_read_timeout(opts.keep_alive_timeout.max(opts.header_read_timeout))
        .max_buf_size(opts.max_header_bytes.max(8192))
        // The pod's answer is passed on; the proxy adds no Date of its own (nor does the relay).
        .auto_date_header(false)
        .keep_alive(keep_alive);
    builder
        .http2()
        .timer(TokioTimer::new())
        .auto_date_header(false)
        .max_header_list_size(opts.max_header_bytes as u32);
    builder
}

/// What the admin port serves.
#[derive(Clone, Debug)]
pub struct Admin {
    /// The metrics registry.
    pub registry: Arc<Registry>,
    /// `/readyz` answers 200 while true.
    pub ready: Arc<AtomicBool>,
    /// The stat feed (`/v1/feed`).
    pub feed: Arc<StatFeed>,
}

/// The admin port's routes: the shared ones and the stat feed.
pub const ADMIN_ROUTES: &[admin::Route] = &[
    admin::ADMIN_ROUTES[0],
    admin::ADMIN_ROUTES[1],
    admin::ADMIN_ROUTES[2],
    admin::Route {
        path: feed::FEED_PATH,
        methods: admin::GET,
    },
];

/// The answer of `GET /v1/feed?instance=I&since=G` (or a status read, `?ns=N&dep=D`): one
/// page as JSON.
pub fn feed_answer(
    feed: &StatFeed,
    query: Option<&str>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let now = tokio::time::Instant::now();
    let page = match feed::FeedFilter::parse(query) {
        Some(filter) => feed.read_filtered(&filter, now),
        None => feed.read(feed::parse_query(query), now),
    };
    match serde_json::to_vec(&page) {
        Ok(body) => admin::respond(http::StatusCode::OK, "application/json", body),
        Err(e) => admin::respond(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding the feed failed: {e}\n"),
        ),
    }
}

/// Serves the admin endpoints until `shutdown` completes, on the shared admin server
/// (`zeroscale_kube::admin`: methods checked, header-read timeout, body limit).
pub async fn serve_admin(listener: TcpListener, admin: Admin, shutdown: impl Future<Output = ()>) {
    let Admin {
        registry,
        ready,
        feed,
    } = admin;
    let not_ready = move || {
        if ready.load(Ordering::Relaxed) {
            Vec::new()
        } else {
            vec!["not ready".to_owned()]
        }
    };
    admin::serve(
        listener,
        ADMIN_ROUTES,
        admin::Options::default(),
        move |req: Request<bytes::Bytes>| {
            let answer = if req.uri().path() == feed::FEED_PATH {
                feed_answer(&feed, req.uri().query())
            } else {
                admin::admin_answer(req.uri().path(), &registry, not_ready.clone())
            };
            async move { answer }
        },
        shutdown,
    )
    .await;
}
