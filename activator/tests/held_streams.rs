//! Held streams (`zeroscale.dev/hold-streams`): a streamed request waiting for its model to wake
//! is answered 200 at once, kept open with SSE heartbeats, then gets its pod's stream or a final
//! `error` event. The activator is the real `App`; the pods are local hyper servers that answer
//! as each test scripts them.

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use zeroscale_activator::server::ServerOptions;
use zeroscale_activator::table::NoWake;
use zeroscale_activator::{Limits, ModelKey};

const LONG: Duration = Duration::from_secs(300);

type PodBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// How a stand-in pod answers its next request.
enum Reply {
    /// `200 text/event-stream`, then what the test sends, until it drops the sender.
    Stream(mpsc::Receiver<Bytes>),
    /// This status and body, with `content-type: application/json`.
    Status(StatusCode, &'static str),
}

/// A stand-in model server: answers requests in order as scripted, counts them.
struct Pod {
    addr: SocketAddr,
    requests: AtomicUsize,
    bodies: Mutex<Vec<Bytes>>,
    script: Mutex<VecDeque<Reply>>,
}

impl Pod {
    async fn start(script: Vec<Reply>) -> Arc<Pod> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pod = Arc::new(Pod {
            addr: l.local_addr().unwrap(),
            requests: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
            script: Mutex::new(script.into()),
        });
        let p = pod.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let p = p.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let p = p.clone();
                        async move { Ok::<_, Infallible>(p.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        pod
    }

    async fn answer(&self, req: Request<Incoming>) -> http::Response<PodBody> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let body = req.into_body().collect().await.unwrap().to_bytes();
        self.bodies.lock().unwrap().push(body);
        let reply = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted reply");
        match reply {
            Reply::Stream(rx) => {
                let chunks = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                });
                http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .header("x-pod", "yes")
                    .body(BodyExt::boxed(StreamBody::new(chunks)))
                    .unwrap()
            }
            Reply::Status(status, body) => http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("x-pod", "yes")
                .body(Full::new(Bytes::from_static(body.as_bytes())).boxed())
                .unwrap(),
        }
    }
}

/// An activator with model `llama` in `ns` (no pod yet), holding its streams after `hold`.
async fn activator(hold: Option<Duration>, deadline: Duration) -> (Activator, ModelKey) {
    let act = Activator::start(Arc::new(NoWake), ServerOptions::default()).await;
    // Short, so a test sees several heartbeats without waiting long (the ConfigMap allows 1s
    // and more; the setter takes what a test needs).
    act.proxy
        .set_stream_heartbeat_interval(Duration::from_millis(20));
    let k = act.model_with(
        "ns",
        "llama",
        Limits {
            hold_streams: hold,
            ..Limits::with_queue(0, 10, 1 << 20, deadline)
        },
    );
    (act, k)
}

const CHAT: &str = r#"{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn chat(act: &Activator, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(act.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// Reads the answer body until `text` (all of it so far) satisfies `enough`.
async fn read_until(body: &mut Incoming, text: &mut String, enough: impl Fn(&str) -> bool) {
    while !enough(text) {
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("a frame within 20s")
            .expect("the stream goes on")
            .expect("a good frame");
        if let Ok(d) = frame.into_data() {
            text.push_str(std::str::from_utf8(&d).unwrap());
        }
    }
}

/// Reads the rest of the answer body.
async fn read_to_end(body: Incoming, text: &mut String) {
    let rest = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("the end within 20s")
        .expect("a whole body")
        .to_bytes();
    text.push_str(std::str::from_utf8(&rest).unwrap());
}

fn heartbeats(text: &str) -> usize {
    text.matches(": waiting for model llama (").count()
}

/// Splits a held stream's text into its heartbeats (checked one by one) and what follows them.
fn after_heartbeats(text: &str) -> (usize, &str) {
    let mut rest = text;
    let mut n = 0;
    while let Some(r) = rest.strip_prefix(": waiting for model llama (") {
        let (secs, r) = r.split_once("s)\n\n").expect("a whole heartbeat");
        assert!(secs.parse::<u64>().is_ok(), "{secs:?} in {text:?}");
        rest = r;
        n += 1;
    }
    (n, rest)
}

#[tokio::test]
async fn a_held_stream_gets_heartbeats_then_the_pods_chunks_in_order() {
    let (act, k) = activator(Some(Duration::ZERO), LONG).await;
    let (tx, rx) = mpsc::channel(4);
    let pod = Pod::start(vec![Reply::Stream(rx)]).await;
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(chat(&act, CHAT)))
        .await
        .unwrap()
        .unwrap();
    // 200 at once, while the model has no pod at all.
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(
        resp.headers().get("x-pod").is_none(),
        "{:?}",
        resp.headers()
    );
    let mut body = resp.into_body();
    let mut text = String::new();
    read_until(&mut body, &mut text, |t| heartbeats(t) >= 3).await;
    assert_eq!(pod.requests.load(Ordering::SeqCst), 0);

    act.table.set_endpoints(&k, vec![ep(pod.addr, true)]);
    until("the pod has the request", || {
        pod.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    // Chunks with pauses longer than the heartbeat interval in between: a heartbeat would show
    // up among them if they did not stop at the pod's answer.
    for chunk in [
        "data: {\"n\":1}\n\n",
        "data: {\"n\":2}\n\n",
        "data: [DONE]\n\n",
    ] {
        tx.send(Bytes::from_static(chunk.as_bytes())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    drop(tx);
    read_to_end(body, &mut text).await;

    let (n, rest) = after_heartbeats(&text);
    assert!(n >= 3, "{text:?}");
    let rest = rest
        .strip_prefix(": zeroscale-cold-start: ")
        .unwrap_or_else(|| panic!("the cold start as a comment: {text:?}"));
    let (waited, pods) = rest.split_once("s\n\n").unwrap();
    assert_eq!(
        waited.split_once('.').map(|(_, d)| d.len()),
        Some(2),
        "{waited}"
    );
    assert_eq!(
        pods, "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n",
        "{text:?}"
    );
    // Forwarded once, with the body as the client sent it.
    assert_eq!(pod.requests.load(Ordering::SeqCst), 1);
    assert_eq!(pod.bodies.lock().unwrap()[0], CHAT.as_bytes());
    assert_eq!(act.metrics.held_streams_count("relayed"), 1);
    let m = act.table.get(&k).unwrap();
    assert_eq!(m.gate().metrics().answered_count(200), 1);
}

#[tokio::test]
async fn a_held_stream_past_its_deadline_ends_with_the_504_paths_json() {
    let (act, k) = activator(Some(Duration::ZERO), Duration::from_millis(300)).await;
    // Addressed by Host, streamed by Accept: the relay and parking hand it to hyper's path.
    let req = Request::get(act.url("/v1/models/llama:predict"))
        .header("host", "llama.ns")
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut text = String::new();
    read_to_end(resp.into_body(), &mut text).await;
    let (n, rest) = after_heartbeats(&text);
    assert!(n >= 1, "{text:?}");
    let data = rest
        .strip_prefix("event: error\ndata: ")
        .and_then(|r| r.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("one final error event: {text:?}"));
    let held: serde_json::Value = serde_json::from_str(data).unwrap();

    // The same request, not streamed: the plain 504 and its JSON.
    let plain = send(
        &client(),
        Request::get(act.url("/v1/models/llama:predict"))
            .header("host", "llama.ns")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(plain.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(held, plain.json());
    assert_eq!(held["error"]["type"], "queue_deadline");
    assert_eq!(act.metrics.held_streams_count("queue_deadline"), 1);
    let m = act.table.get(&k).unwrap();
    assert_eq!(m.gate().queued(), 0);

    // HTTP/2 (h2c), routed by the body's `"stream": true`: the same events in DATA frames.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let resp = h2.request(chat(&act, CHAT)).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let mut text = String::new();
    read_to_end(resp.into_body(), &mut text).await;
    let (n, rest) = after_heartbeats(&text);
    assert!(n >= 1, "{text:?}");
    assert_eq!(rest, format!("event: error\ndata: {data}\n\n"), "{text:?}");
    assert_eq!(act.metrics.held_streams_count("queue_deadline"), 2);
}

#[tokio::test]
async fn a_pods_error_answer_becomes_the_final_error_event() {
    // Held after a delay this time (the others hold at once).
    let (act, k) = activator(Some(Duration::from_millis(50)), LONG).await;
    let pod = Pod::start(vec![Reply::Status(
        StatusCode::INTERNAL_SERVER_ERROR,
        r#"{"error":{"message":"CUDA out of memory"}}"#,
    )])
    .await;
    let resp = client().request(chat(&act, CHAT)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut text = String::new();
    read_until(&mut body, &mut text, |t| heartbeats(t) >= 1).await;
    act.table.set_endpoints(&k, vec![ep(pod.addr, true)]);
    read_to_end(body, &mut text).await;
    let (_, rest) = after_heartbeats(&text);
    let data = rest
        .strip_prefix("event: error\ndata: ")
        .and_then(|r| r.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("one final error event: {text:?}"));
    let e: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(e["error"]["code"], 500);
    assert_eq!(e["error"]["type"], "model_server_status");
    assert_eq!(
        e["error"]["body"],
        r#"{"error":{"message":"CUDA out of memory"}}"#
    );
    assert_eq!(pod.requests.load(Ordering::SeqCst), 1, "never sent twice");
    assert_eq!(act.metrics.held_streams_count("pod_error"), 1);
}

#[tokio::test]
async fn a_client_that_leaves_during_heartbeats_leaves_the_queue() {
    let (act, k) = activator(Some(Duration::ZERO), LONG).await;
    let m = act.table.get(&k).unwrap();
    // A new connection whose first request is addressed by Host with Accept: parking must
    // not keep it (it could not be held), so hyper's path holds it.
    let mut s = TcpStream::connect(act.addr).await.unwrap();
    s.write_all(
        b"GET /v2/models/llama/generate_stream HTTP/1.1\r\nhost: llama.ns\r\naccept: text/event-stream\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(": waiting for model llama (") {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("a heartbeat within 20s")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert_eq!(m.gate().queued(), 1);
    drop(s);
    until("the held request left the queue", || m.gate().queued() == 0).await;
    until("counted as abandoned", || {
        m.gate().metrics().abandoned.get() == 1
    })
    .await;
    until("and as a held stream whose client left", || {
        act.metrics.held_streams_count("client_gone") == 1
    })
    .await;
    // A pod now gets nothing: the request is gone.
    let pod = Pod::start(vec![]).await;
    act.table.set_endpoints(&k, vec![ep(pod.addr, true)]);
    tokio::task::yield_now().await;
    assert_eq!(pod.requests.load(Ordering::SeqCst), 0);
}

/// What a request that waited for the wake and was answered as usual looks like: the pod's
/// own status and headers, the cold-start header, no heartbeat.
async fn answered_as_usual(act: &Activator, k: &ModelKey, req: Request<Full<Bytes>>) {
    let (tx, rx) = mpsc::channel(1);
    let pod = Pod::start(vec![Reply::Stream(rx)]).await;
    let m = act.table.get(k).unwrap();
    let queued = m.gate().queued();
    let c = client();
    let answer = tokio::spawn(async move { send(&c, req).await });
    until("queued", || m.gate().queued() == queued + 1).await;
    // Longer than several heartbeat intervals: a held stream would have had its 200 by now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    act.table.set_endpoints(k, vec![ep(pod.addr, true)]);
    tx.send(Bytes::from_static(b"data: pod\n\n")).await.unwrap();
    drop(tx);
    let a = answer.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers["x-pod"], "yes",
        "the pod's own headers: {:?}",
        a.headers
    );
    assert!(
        a.headers.contains_key("zeroscale-cold-start"),
        "{:?}",
        a.headers
    );
    assert_eq!(a.body, "data: pod\n\n");
    act.table.set_endpoints(k, vec![]);
}

#[tokio::test]
async fn requests_that_are_not_held_are_answered_as_before() {
    // A model that holds streams: a request that asks for no stream is not held.
    let (act, k) = activator(Some(Duration::ZERO), LONG).await;
    answered_as_usual(&act, &k, chat(&act, r#"{"model":"llama","stream":false}"#)).await;
    // Nor is a stream whose pod comes within the model's delay.
    let (act, k) = activator(Some(Duration::from_secs(3600)), LONG).await;
    answered_as_usual(&act, &k, chat(&act, CHAT)).await;
    // A model that opted out (the default): streams are answered as before.
    let (act, k) = activator(None, LONG).await;
    answered_as_usual(&act, &k, chat(&act, CHAT)).await;
    let accept = Request::get(act.url("/v1/models/llama:predict"))
        .header("host", "llama.ns")
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    answered_as_usual(&act, &k, accept).await;
    assert_eq!(act.metrics.held_streams_count("relayed"), 0);
}
