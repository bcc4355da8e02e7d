//! A sample model server: speaks the HTTP APIs model servers speak, with a tunable load delay,
//! service time and concurrency limit, so tests exercise the activator and autoscaler against
//! something that behaves like a real predictor.
//!
//! Routes:
//! - KServe v1: `POST /v1/models/{m}:predict`, `POST /v1/models/{m}:explain`, `GET /v1/models/{m}`
//! - KServe v2: `POST /v2/models/{m}/infer` (also `/v2/models/{m}/versions/{v}/infer`),
//!   `GET /v2/health/ready`, `GET /v2/health/live`
//! - OpenAI style: `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings` (also under
//!   KServe's `/openai` prefix: `/openai/v1/chat/completions`, ...); with
//!   `"stream": true` the answer is `text/event-stream`: `stream_chunks` `data: {...}` events, one
//!   per `chunk_interval`, then `data: [DONE]`.
//! - `GET /healthz`: 503 until `load_delay` has passed since start, then 200.
//! - `GET /metrics`: Prometheus text, `sample_model_requests_in_flight`,
//!   `sample_model_requests_total`, `sample_model_requests_rejected_total`.
//!
//! Every answer carries `x-pod-name` and `x-served-by` (the listen address) so a test can tell
//! which backend served it. Inference requests wait `service_time` (for a stream: before the first
//! chunk), count as in flight until their body is complete, and get 429 when `max_concurrency`
//! requests are already in flight. A model name that is not ours (path or OpenAI `model` field)
//! gets 404, as real servers do, which makes misrouting visible in tests.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Response body type of the sample model.
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How the sample model behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The model name this server answers for.
    pub model_name: String,
    /// Time from start until `/healthz` answers 200 and inference is accepted.
    pub load_delay: Duration,
    /// Time each inference request takes (for a stream: before the first chunk).
    pub service_time: Duration,
    /// Inference requests served at once; more get 429. 0 means unlimited.
    pub max_concurrency: usize,
    /// Number of events in a streamed answer (and tokens in a non-streamed completion).
    pub stream_chunks: usize,
    /// Time between two streamed events.
    pub chunk_interval: Duration,
    /// Value of the `x-pod-name` header.
    pub pod_name: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            model_name: "sample".to_owned(),
            load_delay: Duration::ZERO,
            service_time: Duration::ZERO,
            max_concurrency: 0,
            stream_chunks: 4,
            chunk_interval: Duration::from_millis(10),
            pod_name: default_pod_name(),
        }
    }
}

/// `POD_NAME` from the environment (set by the kubelet), else the host name.
pub fn default_pod_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "sample-model".to_owned())
}

/// Shared state of one server.
struct State {
    opts: Options,
    served_by: String,
    started: Instant,
    in_flight: AtomicUsize,
    total: AtomicU64,
    rejected: AtomicU64,
    next_id: AtomicU64,
}

/// Counts a request in flight until dropped (the guard travels with a streamed body).
struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.total.fetch_add(1, Ordering::SeqCst);
    }
}

/// Serves until the returned future is dropped (e.g. its task aborted).
pub async fn serve(listener: TcpListener, opts: Options) -> std::io::Result<()> {
    serve_with_shutdown(listener, opts, std::future::pending()).await
}

/// Serves until `shutdown` completes, then stops accepting and waits for the requests in flight
/// (including streams) to finish: what the binary does on SIGTERM.
pub async fn serve_with_shutdown(
    listener: TcpListener,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let served_by = listener.local_addr()?.to_string();
    let state = Arc::new(State {
        opts,
        served_by,
        started: Instant::now(),
        in_flight: AtomicUsize::new(0),
        total: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
    });
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Transient (e.g. out of file descriptors): back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let svc = service_fn(move |req| handle(state.clone(), req));
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut resp = route(&state, req).await;
    let headers = resp.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(&state.opts.pod_name) {
        headers.insert("x-pod-name", v);
    }
    if let Ok(v) = header::HeaderValue::from_str(&state.served_by) {
        headers.insert("x-served-by", v);
    }
    Ok(resp)
}

/// What an inference request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    V1Predict,
    V1Explain,
    V2Infer,
    ChatCompletions,
    Completions,
    Embeddings,
}

async fn route(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let loaded = state.started.elapsed() >= state.opts.load_delay;
    match (&method, segs.as_slice()) {
        (&Method::GET, ["healthz"]) | (&Method::GET, ["v2", "health", "ready"]) => {
            if loaded {
                json_response(
                    StatusCode::OK,
                    json!({"status": "ok", "model": state.opts.model_name}),
                )
            } else {
                loading(state)
            }
        }
        (&Method::GET, ["v2", "health", "live"]) => {
            json_response(StatusCode::OK, json!({"live": true}))
        }
        (&Method::GET, ["metrics"]) => metrics(state),
        (&Method::GET, ["v1", "models", m]) => {
            if *m != state.opts.model_name {
                return unknown_model(m);
            }
            json_response(StatusCode::OK, json!({"name": m, "ready": loaded}))
        }
        (&Method::POST, ["v1", "models", m_verb]) => match m_verb.split_once(':') {
            Some((m, "predict")) => infer(state, req, Api::V1Predict, Some(m.to_owned())).await,
            Some((m, "explain")) => infer(state, req, Api::V1Explain, Some(m.to_owned())).await,
            _ => not_found(&path),
        },
        (&Method::POST, ["v2", "models", m, "infer"])
        | (&Method::POST, ["v2", "models", m, "versions", _, "infer"]) => {
            let m = (*m).to_owned();
            infer(state, req, Api::V2Infer, Some(m)).await
        }
        // Also under `/openai`, where KServe's runtimes serve them.
        (&Method::POST, ["v1", "chat", "completions"])
        | (&Method::POST, ["openai", "v1", "chat", "completions"]) => {
            infer(state, req, Api::ChatCompletions, None).await
        }
        (&Method::POST, ["v1", "completions"])
        | (&Method::POST, ["openai", "v1", "completions"]) => {
            infer(state, req, Api::Completions, None).await
        }
        (&Method::POST, ["v1", "embeddings"]) | (&Method::POST, ["openai", "v1", "embeddings"]) => {
            infer(state, req, Api::Embeddings, None).await
        }
        _ => not_found(&path),
    }
}

async fn infer(
    state: &Arc<State>,
    req: Request<Incoming>,
    api: Api,
    path_model: Option<String>,
) -> Response<Body> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body: {e}"),
            );
        }
    };
    let parsed: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("the request body is not JSON: {e}"),
                );
            }
        }
    };
    let model = match path_model {
        Some(m) => m,
        // OpenAI requests name the model in the body; no name means "the one you serve".
        None => parsed
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(&state.opts.model_name)
            .to_owned(),
    };
    if model != state.opts.model_name {
        return unknown_model(&model);
    }
    if state.started.elapsed() < state.opts.load_delay {
        return loading(state);
    }
    let prev = state.in_flight.fetch_add(1, Ordering::SeqCst);
    if state.opts.max_concurrency > 0 && prev >= state.opts.max_concurrency {
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
        state.rejected.fetch_add(1, Ordering::SeqCst);
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "model {model} is at its concurrency limit ({})",
                state.opts.max_concurrency
            ),
        );
    }
    let guard = InFlight(state.clone());
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    if !state.opts.service_time.is_zero() {
        tokio::time::sleep(state.opts.service_time).await;
    }
    let stream = parsed
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let openai = matches!(
        api,
        Api::ChatCompletions | Api::Completions | Api::Embeddings
    );
    if stream && openai {
        return stream_response(guard, api, id);
    }
    let answer = answer(&state.opts, api, id, &parsed);
    drop(guard);
    json_response(StatusCode::OK, answer)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn tokens(n: usize) -> String {
    (0..n)
        .map(|i| format!("tok{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn answer(opts: &Options, api: Api, id: u64, req: &Value) -> Value {
    let m = &opts.model_name;
    match api {
        Api::V1Predict | Api::V1Explain => {
            let n = req
                .get("instances")
                .and_then(Value::as_array)
                .map_or(1, Vec::len);
            let key = if api == Api::V1Predict {
                "predictions"
            } else {
                "explanations"
            };
            json!({"model_name": m, "id": id.to_string(), key: vec![0.5; n]})
        }
        Api::V2Infer => json!({
            "model_name": m,
            "model_version": "1",
            "id": id.to_string(),
            "outputs": [{"name": "output-0", "shape": [1], "datatype": "FP32", "data": [0.5]}],
        }),
        Api::ChatCompletions => json!({
            "id": format!("chatcmpl-{id}"),
            "object": "chat.completion",
            "created": unix_now(),
            "model": m,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": tokens(opts.stream_chunks)},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 1, "completion_tokens": opts.stream_chunks, "total_tokens": opts.stream_chunks + 1},
        }),
        Api::Completions => json!({
            "id": format!("cmpl-{id}"),
            "object": "text_completion",
            "created": unix_now(),
            "model": m,
            "choices": [{"index": 0, "text": tokens(opts.stream_chunks), "finish_reason": "stop"}],
        }),
        Api::Embeddings => json!({
            "object": "list",
            "model": m,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
        }),
    }
}

/// One server-sent event of a stream.
fn chunk(opts: &Options, api: Api, id: u64, i: usize, last: bool) -> Value {
    let m = &opts.model_name;
    let finish = if last { json!("stop") } else { Value::Null };
    match api {
        Api::Completions => json!({
            "id": format!("cmpl-{id}"), "object": "text_completion", "created": unix_now(), "model": m,
            "choices": [{"index": 0, "text": format!("tok{i} "), "finish_reason": finish}],
        }),
        Api::Embeddings => json!({
            "object": "embedding.chunk", "model": m, "index": i, "embedding": [0.1, 0.2, 0.3],
        }),
        _ => json!({
            "id": format!("chatcmpl-{id}"), "object": "chat.completion.chunk", "created": unix_now(), "model": m,
            "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": finish}],
        }),
    }
}

fn stream_response(guard: InFlight, api: Api, id: u64) -> Response<Body> {
    let n = guard.0.opts.stream_chunks;
    // State: (next event index, guard). The guard is dropped with the stream, so an aborted
    // client stops counting as in flight too.
    let events = futures::stream::unfold((0usize, Some(guard)), move |(i, guard)| async move {
        let guard = guard?;
        if i > n {
            return None;
        }
        if i == n {
            let done = Bytes::from_static(b"data: [DONE]\n\n");
            drop(guard);
            return Some((Ok::<_, Infallible>(Frame::data(done)), (i + 1, None)));
        }
        if i > 0 {
            tokio::time::sleep(guard.0.opts.chunk_interval).await;
        }
        let ev = chunk(&guard.0.opts, api, id, i, i + 1 == n);
        let data = Bytes::from(format!("data: {ev}\n\n"));
        Some((Ok(Frame::data(data)), (i + 1, Some(guard))))
    });
    let mut resp = Response::new(UnsyncBoxBody::new(StreamBody::new(events)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

fn metrics(state: &State) -> Response<Body> {
    let m = &state.opts.model_name;
    let text = format!(
        "# HELP sample_model_requests_in_flight Inference requests being served.\n\
         # TYPE sample_model_requests_in_flight gauge\n\
         sample_model_requests_in_flight{{model=\"{m}\"}} {}\n\
         # HELP sample_model_requests_total Inference requests answered.\n\
         # TYPE sample_model_requests_total counter\n\
         sample_model_requests_total{{model=\"{m}\"}} {}\n\
         # HELP sample_model_requests_rejected_total Inference requests rejected with 429.\n\
         # TYPE sample_model_requests_rejected_total counter\n\
         sample_model_requests_rejected_total{{model=\"{m}\"}} {}\n",
        state.in_flight.load(Ordering::SeqCst),
        state.total.load(Ordering::SeqCst),
        state.rejected.load(Ordering::SeqCst),
    );
    let mut resp = Response::new(full(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn full(b: impl Into<Bytes>) -> Body {
    UnsyncBoxBody::new(Full::new(b.into()))
}

fn json_response(status: StatusCode, v: Value) -> Response<Body> {
    let mut resp = Response::new(full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, msg: &str) -> Response<Body> {
    json_response(status, json!({"error": msg}))
}

fn loading(state: &State) -> Response<Body> {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": format!("model {} is loading", state.opts.model_name), "model": state.opts.model_name}),
    )
}

fn unknown_model(m: &str) -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": format!("model {m} is not served here"), "model": m}),
    )
}

fn not_found(path: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, &format!("no route for {path}"))
}

/// Parses durations as given on the command line: `250ms`, `2s`, `1.5s`, `1m`, or a bare number
/// of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 250ms, 2s, 1.5s or 1m"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!(
            "invalid duration {s:?}: must be a non-negative number"
        ));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Listen address for the binary: `--listen` if given, else `$POD_IP:$PORT` with defaults
/// `0.0.0.0` and `8080` (each pod of the process kubelet binds its own pod IP).
pub fn listen_addr(
    flag: Option<&str>,
    pod_ip: Option<&str>,
    port: Option<&str>,
) -> Result<SocketAddr, String> {
    let s = match flag {
        Some(f) if !f.is_empty() => f.to_owned(),
        _ => {
            let ip = pod_ip.filter(|s| !s.is_empty()).unwrap_or("0.0.0.0");
            let port = port.filter(|s| !s.is_empty()).unwrap_or("8080");
            if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            }
        }
    };
    s.parse()
        .map_err(|e| format!("invalid listen address {s:?}: {e}"))
}

#[cfg(test)]
mod tests;
