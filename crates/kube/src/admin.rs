//! The small HTTP/1 server of the admin ports (`/metrics`, `/healthz`, `/readyz`) and the
//! autoscaler's wake API: one copy of the rules every such port keeps.
//!
//! - Routes are declared with their methods: an unknown path is 404, a known path with
//!   another method 405 with an `Allow` header; a `GET` route also answers `HEAD`.
//! - A client must send its request head within the header-read timeout.
//! - A request body over the limit is 413; the handler gets the whole body, already read.
//! - On shutdown the listener closes, idle connections close at once, and requests in flight
//!   get up to the drain timeout to finish.

use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// `GET` (and with it `HEAD`).
pub const GET: &[Method] = &[Method::GET, Method::HEAD];
/// `POST` only.
pub const POST: &[Method] = &[Method::POST];

/// The admin port's routes, the same in both binaries: `/metrics`, `/healthz`, `/readyz`.
pub const ADMIN_ROUTES: &[Route] = &[
    Route {
        path: "/metrics",
        methods: GET,
    },
    Route {
        path: "/healthz",
        methods: GET,
    },
    Route {
        path: "/readyz",
        methods: GET,
    },
];

/// The `/metrics` answer: every metric of `registry` in the OpenMetrics text format.
pub fn metrics(registry: &prometheus_client::registry::Registry) -> Response<Full<Bytes>> {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding metrics failed: {e}\n"),
        ),
    }
}

/// The answer of an [`ADMIN_ROUTES`] path: `/metrics` from `registry`, `/healthz` always
/// `ok`, `/readyz` `ready` (200) when `not_ready` gives no reason, else 503 with one reason a
/// line (so a probe's log shows them all). `not_ready` runs only for `/readyz`.
pub fn admin_answer(
    path: &str,
    registry: &prometheus_client::registry::Registry,
    not_ready: impl FnOnce() -> Vec<String>,
) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => metrics(registry),
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            let reasons = not_ready();
            if reasons.is_empty() {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                let mut body = String::new();
                for r in &reasons {
                    body.push_str(r);
                    body.push('\n');
                }
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
            }
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves [`ADMIN_ROUTES`] with [`admin_answer`] on `listener` until `shutdown` resolves.
pub async fn serve_admin<R>(
    listener: TcpListener,
    registry: std::sync::Arc<prometheus_client::registry::Registry>,
    not_ready: R,
    shutdown: impl Future<Output = ()>,
) where
    R: Fn() -> Vec<String> + Clone + Send + Sync + 'static,
{
    serve(
        listener,
        ADMIN_ROUTES,
        Options::default(),
        move |req: Request<Bytes>| {
            let answer = admin_answer(req.uri().path(), &registry, not_ready.clone());
            async move { answer }
        },
        shutdown,
    )
    .await;
}

/// One path and the methods it answers.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// The exact path.
    pub path: &'static str,
    /// The methods allowed on it.
    pub methods: &'static [Method],
}

/// How the server's own answers (404, 405, 413, 400) are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorFormat {
    /// `text/plain`, one line.
    Text,
    /// `application/json`, `{"error": "..."}`.
    Json,
}

/// The server's limits.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// A client must send its whole request head within this.
    pub header_read_timeout: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// On shutdown, how long requests in flight may take to finish.
    pub drain_timeout: Duration,
    /// How the server's own answers are written.
    pub errors: ErrorFormat,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_body_bytes: 16 * 1024,
            drain_timeout: Duration::from_secs(5),
            errors: ErrorFormat::Text,
        }
    }
}

/// When the request head was read, in the request's extensions (latency measured from
/// receipt, not from the end of the body).
#[derive(Clone, Copy, Debug)]
pub struct Received(pub Instant);

/// A response with `status`, `content_type` and `body`.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn error(format: ErrorFormat, status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    match format {
        ErrorFormat::Text => respond(status, "text/plain", format!("{message}\n")),
        ErrorFormat::Json => respond(
            status,
            "application/json",
            format!("{{\"error\":{}}}", json_string(message)),
        ),
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn methods_list(methods: &[Method]) -> String {
    methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks `req` against `routes` and reads its body: the request for the handler, or the
/// server's own answer.
async fn admit(
    req: Request<Incoming>,
    routes: &[Route],
    opts: &Options,
) -> Result<Request<Bytes>, Response<Full<Bytes>>> {
    let received = Instant::now();
    let Some(route) = routes.iter().find(|r| r.path == req.uri().path()) else {
        let message = match opts.errors {
            ErrorFormat::Text => "not found".to_owned(),
            ErrorFormat::Json => {
                let known: Vec<String> = routes
                    .iter()
                    .map(|r| format!("{} {}", methods_list(r.methods), r.path))
                    .collect();
                format!("not found; {}", known.join(", "))
            }
        };
        return Err(error(opts.errors, StatusCode::NOT_FOUND, &message));
    };
    if !route.methods.contains(req.method()) {
        let allow = methods_list(route.methods);
        let message = match opts.errors {
            ErrorFormat::Text => format!("method not allowed; use {allow}"),
            ErrorFormat::Json => format!("use {allow}"),
        };
        let mut r = error(opts.errors, StatusCode::METHOD_NOT_ALLOWED, &message);
        if let Ok(v) = HeaderValue::from_str(&allow) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return Err(r);
    }
    let (mut parts, body) = req.into_parts();
    let body = match Limited::new(body, opts.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let message = format!("request body over {} bytes", opts.max_body_bytes);
            return Err(error(opts.errors, StatusCode::PAYLOAD_TOO_LARGE, &message));
        }
        Err(e) => {
            let message = format!("could not read the request body: {e}");
            return Err(error(opts.errors, StatusCode::BAD_REQUEST, &message));
        }
    };
    parts.extensions.insert(Received(received));
    Ok(Request::from_parts(parts, body))
}

/// Serves `routes` on `listener` with `handler` until `shutdown` resolves, then drains (see
/// the module doc). The handler sees only requests for a declared route and method, with
/// their whole body.
pub async fn serve<H, F>(
    listener: TcpListener,
    routes: &'static [Route],
    opts: Options,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Bytes>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let handler = handler.clone();
            async move {
                Ok::<_, Infallible>(match admit(req, routes, &opts).await {
                    Ok(req) => handler(req).await,
                    Err(answer) => answer,
                })
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(opts.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(drain_timeout = ?opts.drain_timeout, "requests still open at the end of the drain");
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;

    const ROUTES: &[Route] = &[
        Route {
            path: "/metrics",
            methods: GET,
        },
        Route {
            path: "/v1/wake",
            methods: POST,
        },
    ];

    async fn start(
        opts: Options,
    ) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            ROUTES,
            opts,
            |req: Request<Bytes>| async move {
                assert!(req.extensions().get::<Received>().is_some());
                if req.uri().path() == "/v1/wake" {
                    // Slow enough for a drain to have something to wait for.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                respond(
                    StatusCode::OK,
                    "text/plain",
                    format!("{} {} bytes", req.method(), req.body().len()),
                )
            },
            async move {
                let _ = stopped.await;
            },
        ));
        (addr, stop, task)
    }

    /// Sends `raw` and reads the answer until the server closes (requests say `close`).
    async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn routes_methods_and_bodies_are_checked_before_the_handler() {
        let (addr, _stop, _task) = start(Options {
            max_body_bytes: 8,
            errors: ErrorFormat::Json,
            ..Options::default()
        })
        .await;
        let ok = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("GET 0 bytes"), "{ok}");
        let head = exchange(
            addr,
            b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let wrong = exchange(
            addr,
            b"GET /v1/wake HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(wrong.starts_with("HTTP/1.1 405"), "{wrong}");
        assert!(
            wrong.to_ascii_lowercase().contains("\r\nallow: post\r\n"),
            "{wrong}"
        );
        assert!(wrong.ends_with(r#"{"error":"use POST"}"#), "{wrong}");
        let post = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(
            post.to_ascii_lowercase()
                .contains("\r\nallow: get, head\r\n"),
            "{post}"
        );
        let missing = exchange(
            addr,
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(
            missing.ends_with(r#"{"error":"not found; GET, HEAD /metrics, POST /v1/wake"}"#),
            "{missing}"
        );
        let small = exchange(addr, b"POST /v1/wake HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 8\r\n\r\n12345678").await;
        assert!(small.ends_with("POST 8 bytes"), "{small}");
        let big = exchange(addr, b"POST /v1/wake HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 9\r\n\r\n123456789").await;
        assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    }

    #[tokio::test]
    async fn text_errors_are_one_line() {
        let (addr, _stop, _task) = start(Options::default()).await;
        let missing = exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(missing.ends_with("\r\n\r\nnot found\n"), "{missing}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_head_is_cut_off() {
        let (addr, _stop, _task) = start(Options {
            header_read_timeout: Duration::from_secs(2),
            ..Options::default()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let mut buf = Vec::new();
        // The paused clock moves on while everything waits: the timeout fires, the server
        // closes (hyper may answer 408 first).
        let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server did not close a slow head");
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn shutdown_lets_a_request_in_flight_finish_and_refuses_new_connections() {
        let (addr, stop, task) = start(Options::default()).await;
        let inflight = tokio::spawn(exchange(
            addr,
            b"POST /v1/wake HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(()).unwrap();
        task.await.unwrap();
        let answer = inflight.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn the_admin_port_answers_metrics_health_and_readiness_with_reasons() {
        let mut registry = prometheus_client::registry::Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("test_things", "Things", counter.clone());
        counter.inc();
        let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let flag = ready.clone();
        tokio::spawn(serve_admin(
            listener,
            std::sync::Arc::new(registry),
            move || {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    Vec::new()
                } else {
                    vec!["watches not synced".into(), "not leading".into()]
                }
            },
            std::future::pending(),
        ));
        let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let m = exchange(addr, get("/metrics").as_bytes()).await;
        assert!(m.contains("test_things_total 1"), "{m}");
        assert!(m.contains("application/openmetrics-text"), "{m}");
        let h = exchange(addr, get("/healthz").as_bytes()).await;
        assert!(h.starts_with("HTTP/1.1 200") && h.ends_with("ok\n"), "{h}");
        let r = exchange(addr, get("/readyz").as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(
            r.ends_with("\r\n\r\nwatches not synced\nnot leading\n"),
            "{r}"
        );
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        let r = exchange(addr, get("/readyz").as_bytes()).await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("ready\n"),
            "{r}"
        );
    }
}
