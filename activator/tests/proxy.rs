//! Component tests: the activator on real sockets in front of real local backends.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroscale_activator::server::ServerOptions;
use zeroscale_activator::table::NoWake;
use zeroscale_activator::wake::Waker;
use zeroscale_config::feed::{self, FeedPage};

const LONG: Duration = Duration::from_secs(300);

/// The activator with the relay on (the default) or off (every request through hyper).
fn opts(relay: bool) -> ServerOptions {
    ServerOptions {
        relay,
        ..ServerOptions::default()
    }
}

async fn plain(relay: bool) -> Activator {
    Activator::start(Arc::new(NoWake), opts(relay)).await
}

/// Every scenario runs on both request paths, so a difference between them fails a test.
macro_rules! on_both_paths {
    ($($name:ident),* $(,)?) => {
        mod relay {
            $(#[tokio::test] async fn $name() { super::$name(true).await })*
        }
        mod hyper_path {
            $(#[tokio::test] async fn $name() { super::$name(false).await })*
        }
    };
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

fn json(s: &str) -> Full<Bytes> {
    Full::new(Bytes::from(s.to_string()))
}

/// One model name in two namespaces: the plain name goes to the older claim, `ns/name` in the
/// OpenAI body to that namespace's model, which gets the body unchanged.
async fn a_namespace_scoped_body_name_reaches_the_other_claim(relay: bool) {
    let act = plain(relay).await;
    let (a, b) = (
        Backend::start("team-a").await,
        Backend::start("team-b").await,
    );
    let ka = act.model("team-a", "llama", 0, 10, LONG);
    let kb = act.model("team-b", "llama", 0, 10, LONG);
    act.table.set_endpoints(&ka, vec![a.endpoint()]);
    act.table.set_endpoints(&kb, vec![b.endpoint()]);
    let c = client();
    let chat = |model: &str| {
        get(&act.url("/v1/chat/completions"))
            .method(Method::POST)
            .body(json(&format!(r#"{{"model":"{model}","messages":[]}}"#)))
            .unwrap()
    };
    let plain = send(&c, chat("llama")).await;
    assert_eq!(plain.status, StatusCode::OK);
    let winner = plain.served_by().to_owned();
    let (other_ns, other_pod) = if winner == "team-a" {
        ("team-b", "team-b")
    } else {
        ("team-a", "team-a")
    };
    for (model, want) in [
        (format!("{other_ns}/llama"), other_pod),
        (format!("{winner}/llama"), winner.as_str()),
    ] {
        let a = send(&c, chat(&model)).await;
        assert_eq!(a.status, StatusCode::OK, "{model}");
        assert_eq!(a.served_by(), want, "{model}");
        assert_eq!(
            a.json()["body"],
            format!(r#"{{"model":"{model}","messages":[]}}"#)
        );
    }
    let a = send(&c, chat("team-c/llama")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{:?}", a.body);
}

async fn routes_by_host_path_and_body(relay: bool) {
    let act = plain(relay).await;
    let (b1, b2) = (Backend::start("one").await, Backend::start("two").await);
    let k1 = act.model("ns", "one", 0, 10, LONG);
    let k2 = act.model("ns", "two", 0, 10, LONG);
    act.table.set_endpoints(&k1, vec![b1.endpoint()]);
    act.table.set_endpoints(&k2, vec![b2.endpoint()]);
    let c = client();

    let cases: Vec<(http::Request<Full<Bytes>>, &str)> = vec![
        (
            get(&act.url("/anything"))
                .header("host", "one.ns")
                .body(empty())
                .unwrap(),
            "one",
        ),
        (
            get(&act.url("/v1/models/two:predict"))
                .header("host", "one.ns.svc.cluster.local:8080")
                .body(empty())
                .unwrap(),
            "one", // Host wins over the path
        ),
        (
            get(&act.url("/v1/models/two:predict"))
                .method(Method::POST)
                .body(json("{}"))
                .unwrap(),
            "two",
        ),
        (
            get(&act.url("/v1/models/one")).body(empty()).unwrap(),
            "one",
        ),
        (
            get(&act.url("/v2/models/two/infer"))
                .method(Method::POST)
                .body(json("{}"))
                .unwrap(),
            "two",
        ),
        (
            get(&act.url("/v1/chat/completions"))
                .method(Method::POST)
                .body(json(
                    r#"{"model":"two","messages":[{"role":"user","content":"hi"}]}"#,
                ))
                .unwrap(),
            "two",
        ),
        (
            get(&act.url("/v1/embeddings"))
                .method(Method::POST)
                .body(json(r#"{"model":"one","input":"x"}"#))
                .unwrap(),
            "one",
        ),
    ];
    for (req, want) in cases {
        let what = format!("{} {:?}", req.uri(), req.headers().get("host"));
        let a = send(&c, req).await;
        assert_eq!(a.status, StatusCode::OK, "{what}: {:?}", a.body);
        assert_eq!(a.served_by(), want, "{what}");
    }
    // The buffered body reaches the backend intact.
    let a = send(
        &c,
        get(&act.url("/v1/completions"))
            .method(Method::POST)
            .body(json(r#"{"model":"one","prompt":"p"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(a.json()["body"], r#"{"model":"one","prompt":"p"}"#);
    assert_eq!(a.json()["path"], "/v1/completions");
    let m1 = act.table.get(&k1).unwrap();
    assert_eq!(m1.gate().metrics().answered_count(200), 5);
}

async fn routes_kserve_host_names_headers_and_openai_prefix(relay: bool) {
    use zeroscale_activator::queue::Limits;
    use zeroscale_activator::table::{ModelKey, ModelSpec};
    let act = plain(relay).await;
    let (iris, other) = (Backend::start("iris").await, Backend::start("other").await);
    let key = ModelKey {
        namespace: "models".into(),
        deployment: "iris-predictor".into(),
    };
    act.table.upsert_model(ModelSpec {
        key: key.clone(),
        model_name: "iris".into(),
        hostnames: zeroscale_config::kserve::host_keys("iris", "models"),
        created: Some(0),
        limits: Limits::with_queue(0, 10, 1 << 20, LONG),
    });
    act.table.set_endpoints(&key, vec![iris.endpoint()]);
    let k2 = act.model("models", "other", 0, 10, LONG);
    act.table.set_endpoints(&k2, vec![other.endpoint()]);
    let c = client();
    let cases: Vec<(http::Request<Full<Bytes>>, &str)> = vec![
        (
            get(&act.url("/v2/health/ready"))
                .header("host", "iris-models.example.com")
                .body(empty())
                .unwrap(),
            "iris",
        ),
        (
            get(&act.url("/v2/health/ready"))
                .header("host", "iris-predictor-models.kserve.internal:80")
                .body(empty())
                .unwrap(),
            "iris",
        ),
        (
            get(&act.url("/v2/health/ready"))
                .header("host", "iris-predictor.models.svc.cluster.local")
                .body(empty())
                .unwrap(),
            "iris",
        ),
        (
            // The headers win over a Host naming another model.
            get(&act.url("/v2/health/ready"))
                .header("host", "other.models")
                .header("KServe-Isvc-Name", "iris")
                .header("KServe-Isvc-Namespace", "models")
                .body(empty())
                .unwrap(),
            "iris",
        ),
        (
            get(&act.url("/openai/v1/chat/completions"))
                .method(Method::POST)
                .body(json(r#"{"model":"iris","messages":[]}"#))
                .unwrap(),
            "iris",
        ),
        (
            get(&act.url("/openai/v1/embeddings"))
                .method(Method::POST)
                .body(json(r#"{"model":"other","input":"x"}"#))
                .unwrap(),
            "other",
        ),
    ];
    for (req, want) in cases {
        let what = format!("{} {:?}", req.uri(), req.headers());
        let a = send(&c, req).await;
        assert_eq!(a.status, StatusCode::OK, "{what}: {:?}", a.body);
        assert_eq!(a.served_by(), want, "{what}");
    }
    // The prefix reaches the pod as sent: KServe's runtimes serve it there.
    let a = send(
        &c,
        get(&act.url("/openai/v1/completions"))
            .method(Method::POST)
            .body(json(r#"{"model":"iris","prompt":"p"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(a.json()["path"], "/openai/v1/completions");
}

async fn bad_requests_get_clear_json_errors(relay: bool) {
    let act = plain(relay).await;
    let b = Backend::start("one").await;
    let k = act.model("ns", "one", 0, 10, LONG);
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    let c = client();

    let a = send(
        &c,
        get(&act.url("/v1/models/nope:predict"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.headers["content-type"], "application/json");
    let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("\"nope\"") && msg.contains("{model}.{namespace}"),
        "{msg}"
    );

    let a = send(
        &c,
        get(&act.url("/"))
            .header("host", "elsewhere.example")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["error"]["type"], "no_route");

    let a = send(
        &c,
        get(&act.url("/v1/chat/completions"))
            .method(Method::POST)
            .body(json("{nope"))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["type"], "invalid_json");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1")
    );

    let a = send(
        &c,
        get(&act.url("/v1/chat/completions"))
            .method(Method::POST)
            .body(json("{\"messages\":[]}"))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["type"], "missing_model");

    let a = send(
        &c,
        get(&act.url("/v1/chat/completions"))
            .method(Method::POST)
            .body(json(r#"{"model":"ghost"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    // Over the routing limit (1024 in tests): declared and streamed without a length.
    let big = format!(r#"{{"model":"one","pad":"{}"}}"#, "x".repeat(2000));
    let a = send(
        &c,
        get(&act.url("/v1/completions"))
            .method(Method::POST)
            .body(json(&big))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let chunks = futures::stream::iter((0..30).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from("x".repeat(100))))
    }));
    let streamed = http_body_util::StreamBody::new(chunks);
    let sc = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let r = sc
        .request(
            get(&act.url("/v1/completions"))
                .method(Method::POST)
                .body(streamed)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        b.count.load(Ordering::SeqCst),
        0,
        "nothing bad reached the backend"
    );
    assert_eq!(act.metrics.rejected_count("body_too_large"), 2);
    assert_eq!(act.metrics.rejected_count("invalid_json"), 1);
}

async fn queued_at_zero_wakes_and_drains_in_order(relay: bool) {
    let rec = WakeRecorder::start().await;
    let waker = Waker::new(&rec.url, Duration::from_secs(3600)).unwrap();
    let act = Activator::start(Arc::new(waker), opts(relay)).await;
    let k = act.model("models", "llama", 1, 100, LONG);
    let model = act.table.get(&k).unwrap();
    let b = Backend::start("pod").await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let c = c.clone();
        let url = act.url("/v1/models/llama:predict");
        tasks.push(tokio::spawn(async move {
            send(
                &c,
                get(&url)
                    .header("x-seq", i.to_string())
                    .body(empty())
                    .unwrap(),
            )
            .await
        }));
        let m = model.clone();
        until("request queued", || m.gate().queued() == i + 1).await;
    }
    until("one wake signal", || !rec.calls().is_empty()).await;
    let calls = rec.calls();
    assert_eq!(calls[0]["_path"], "/v1/wake");
    assert_eq!(calls[0]["namespace"], "models");
    assert_eq!(calls[0]["deployment"], "llama");
    assert!(calls[0]["queued"].as_u64().unwrap() >= 1);
    assert_eq!(b.count.load(Ordering::SeqCst), 0);

    act.table.set_endpoints(&k, vec![b.endpoint()]);
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(*b.order.lock().unwrap(), vec!["0", "1", "2", "3", "4"]);
    assert_eq!(b.max.load(Ordering::SeqCst), 1);
    // The long resend interval means exactly one signal was sent for this episode.
    assert_eq!(rec.calls().len(), 1);
    assert_eq!(model.gate().metrics().wake_signals.get(), 1);
}

async fn wake_is_retried_with_backoff_while_refused(relay: bool) {
    let rec = WakeRecorder::start().await;
    rec.fail.store(true, Ordering::SeqCst);
    let waker = Waker::new(&rec.url, Duration::from_secs(3600)).unwrap();
    let act = Activator::start(Arc::new(waker), opts(relay)).await;
    let k = act.model("models", "m", 1, 100, LONG);
    let c = client();
    let url = act.url("/v1/models/m");
    let t = tokio::spawn(async move { send(&c, get(&url).body(empty()).unwrap()).await });
    until("three attempts", || rec.calls().len() >= 3).await;
    rec.fail.store(false, Ordering::SeqCst);
    let n = rec.calls().len();
    until("accepted attempt", || rec.calls().len() > n).await;
    let m = act.table.get(&k).unwrap();
    until("failures counted", || {
        m.gate().metrics().wake_failures.get() >= 3
    })
    .await;
    let b = Backend::start("pod").await;
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    assert_eq!(t.await.unwrap().status, StatusCode::OK);
}

async fn queue_full_is_503_and_deadline_is_504(relay: bool) {
    let act = plain(relay).await;
    let k = act.model("ns", "m", 1, 2, Duration::from_millis(300));
    let model = act.table.get(&k).unwrap();
    let c = client();
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let c = c.clone();
        let url = act.url("/v1/models/m");
        waiting.push(tokio::spawn(async move {
            send(&c, get(&url).body(empty()).unwrap()).await
        }));
    }
    until("two queued", || model.gate().queued() == 2).await;
    let a = send(&c, get(&act.url("/v1/models/m")).body(empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.headers["retry-after"], "10");
    assert_eq!(a.json()["error"]["type"], "queue_full");
    for t in waiting {
        let a = t.await.unwrap();
        assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(a.json()["error"]["type"], "queue_deadline");
    }
    assert_eq!(model.gate().queued(), 0);
    assert_eq!(model.gate().metrics().answered_count(504), 2);
    assert_eq!(model.gate().metrics().answered_count(503), 1);
}

async fn client_gone_leaves_the_queue(relay: bool) {
    let act = plain(relay).await;
    let k = act.model("ns", "m", 1, 10, LONG);
    let model = act.table.get(&k).unwrap();
    let mut s = tokio::net::TcpStream::connect(act.addr).await.unwrap();
    s.write_all(b"GET /v1/models/m HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    until("queued", || model.gate().queued() == 1).await;
    drop(s);
    until("left the queue", || model.gate().queued() == 0).await;
    assert_eq!(model.gate().metrics().abandoned.get(), 1);
    // The integral stops growing: nothing is held any more.
    until("nothing held", || {
        model.gate().metrics().integral.current() == 0
    })
    .await;
    // Routed by body, the request waits on hyper's path (not parked): leaving is counted once,
    // as abandoned; client-gone counts forwarded requests only.
    let mut s = tokio::net::TcpStream::connect(act.addr).await.unwrap();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 13\r\n\r\n{\"model\":\"m\"}",
    )
    .await
    .unwrap();
    until("queued", || model.gate().queued() == 1).await;
    drop(s);
    until("left the queue", || model.gate().queued() == 0).await;
    assert_eq!(model.gate().metrics().abandoned.get(), 2);
    use zeroscale_activator::metrics::Event;
    assert_eq!(model.gate().metrics().count_of(Event::ClientGone), 0);
}

/// A new connection's first request at zero waits before hyper reads it (`park`): it must still
/// reach the pod intact (head and body, which stayed in the socket), be answered, and then the
/// connection closes (a parked connection serves one request). A connection to a model with a
/// ready pod is not parked and stays open.
async fn a_request_parked_at_zero_reaches_the_pod_intact(relay: bool) {
    let act = plain(relay).await;
    let k = act.model("ns", "m", 1, 10, LONG);
    let model = act.table.get(&k).unwrap();
    let b = Backend::start("pod").await;
    let mut s = tokio::net::TcpStream::connect(act.addr).await.unwrap();
    s.write_all(
        b"POST /v1/models/m:predict?q=1 HTTP/1.1\r\nhost: x\r\nx-seq: parked\r\n\
          content-length: 11\r\n\r\nhello world",
    )
    .await
    .unwrap();
    until("queued", || model.gate().queued() == 1).await;
    assert_eq!(model.gate().metrics().integral.current(), 1);
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("answered and closed within 10s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("x-served-by: pod"), "{answer}");
    assert!(answer.contains(r#""body":"hello world""#), "{answer}");
    assert!(
        answer.contains(r#""path":"/v1/models/m:predict?q=1""#),
        "{answer}"
    );
    assert_eq!(*b.order.lock().unwrap(), vec!["parked"]);
    assert_eq!(b.count.load(Ordering::SeqCst), 1);
    until("nothing held", || {
        model.gate().metrics().integral.current() == 0
    })
    .await;

    // With a ready pod: keep-alive, two requests on one connection.
    let mut s = tokio::net::TcpStream::connect(act.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /v1/models/m HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answered within 10s")
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
    assert_eq!(b.count.load(Ordering::SeqCst), 3);
}

async fn per_pod_concurrency_holds_under_200_concurrent_requests(relay: bool) {
    let act = plain(relay).await;
    let k = act.model("ns", "m", 2, 1000, LONG);
    let pods = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    for p in &pods {
        p.set_delay(Duration::from_millis(10));
    }
    act.table
        .set_endpoints(&k, pods.iter().map(|p| p.endpoint()).collect());
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let c = c.clone();
        let url = act.url("/v1/models/m");
        tasks.push(tokio::spawn(async move {
            send(&c, get(&url).body(empty()).unwrap()).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let mut total = 0;
    for p in &pods {
        let max = p.max.load(Ordering::SeqCst);
        assert!(max <= 2, "pod {} saw {max} concurrent requests", p.name);
        assert!(
            p.count.load(Ordering::SeqCst) > 0,
            "pod {} got no traffic",
            p.name
        );
        total += p.count.load(Ordering::SeqCst);
    }
    assert_eq!(total, 200);
    let m = act.table.get(&k).unwrap();
    assert!(m.gate().in_flight().iter().all(|(_, n)| *n == 0));
}

async fn refused_connection_is_retried_on_another_pod(relay: bool) {
    let act = plain(relay).await;
    let k = act.model("ns", "m", 0, 10, LONG);
    let good = Backend::start("good").await;
    let dead = refusing_addr().await;
    act.table
        .set_endpoints(&k, vec![ep(dead, true), good.endpoint()]);
    let c = client();
    for _ in 0..4 {
        // A streamed body too: it was never touched, so it can be sent again.
        let a = send(
            &c,
            get(&act.url("/v1/models/m:predict"))
                .method(Method::POST)
                .body(json("{\"x\":1}"))
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json()["body"], "{\"x\":1}");
    }
    assert_eq!(good.count.load(Ordering::SeqCst), 4);
}

async fn a_request_whose_pods_all_refuse_waits_for_one_that_listens(relay: bool) {
    // Pods that stopped listening stay in their EndpointSlice for a moment (a scale-down, a
    // crash). Nothing of the request was sent to them, so it waits for a pod, as it would at
    // zero, instead of failing with 502; the refusing pods are ejected meanwhile.
    let act = plain(relay).await;
    let k = act.model("ns", "m", 0, 10, LONG);
    let model = act.table.get(&k).unwrap();
    let dead: Vec<_> = [
        refusing_addr().await,
        refusing_addr().await,
        refusing_addr().await,
    ]
    .into_iter()
    .map(|a| ep(a, true))
    .collect();
    act.table.set_endpoints(&k, dead.clone());
    let c = client();
    let url = act.url("/v1/models/m:predict");
    let t = tokio::spawn(async move {
        send(
            &c,
            get(&url)
                .method(Method::POST)
                .body(json("{\"x\":1}"))
                .unwrap(),
        )
        .await
    });
    until("the request waits in the queue", || {
        model.gate().queued() == 1
    })
    .await;
    assert!(!model.gate().has_ready(), "every refusing pod is ejected");
    let good = Backend::start("good").await;
    let mut eps = dead;
    eps.push(good.endpoint());
    act.table.set_endpoints(&k, eps);
    let a = t.await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.served_by(), "good");
    assert_eq!(a.json()["body"], "{\"x\":1}");
    assert_eq!(
        model
            .gate()
            .metrics()
            .count_of(zeroscale_activator::metrics::Event::ConnectRetry),
        3
    );
}

async fn a_request_a_pod_resets_unread_goes_to_another_pod(relay: bool) {
    // A pod shutting down closes its listener; connections still in its accept queue are reset
    // with the request unread. That request was never taken: it goes to another pod (the
    // resetting one is ejected), as after a refused connection.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let resets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = resets.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            r.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // Let the request arrive, leave it unread, close with a reset.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = s.set_zero_linger();
                drop(s);
            });
        }
    });
    let act = plain(relay).await;
    let k = act.model("ns", "m", 0, 10, LONG);
    let good = Backend::start("good").await;
    act.table
        .set_endpoints(&k, vec![ep(addr, true), good.endpoint()]);
    let c = client();
    for i in 0..4 {
        let a = send(
            &c,
            get(&act.url("/v1/models/m:predict"))
                .method(Method::POST)
                .body(json("{\"x\":1}"))
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "request {i}: {:?}", a.body);
        assert_eq!(a.served_by(), "good");
    }
    assert!(
        resets.load(Ordering::SeqCst) >= 1,
        "the resetting pod got a request"
    );
    assert_eq!(good.count.load(Ordering::SeqCst), 4);
}

async fn failure_after_sending_is_502_and_not_retried(relay: bool) {
    let act = plain(relay).await;
    let k = act.model("ns", "m", 0, 10, LONG);
    let good = Backend::start("good").await;
    let (reset, accepted) = resetting_backend().await;
    act.table
        .set_endpoints(&k, vec![ep(reset, true), good.endpoint()]);
    let c = client();
    let (mut ok, mut bad) = (0, 0);
    for _ in 0..6 {
        let a = send(&c, get(&act.url("/v1/models/m")).body(empty()).unwrap()).await;
        match a.status {
            StatusCode::OK => ok += 1,
            StatusCode::BAD_GATEWAY => {
                assert_eq!(a.json()["error"]["type"], "backend_failed");
                bad += 1
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert!(bad >= 1, "the resetting pod got traffic");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        bad,
        "each failure is one attempt"
    );
    assert_eq!(
        good.count.load(Ordering::SeqCst),
        ok,
        "failed requests were not retried"
    );
}

async fn a_request_on_a_connection_the_pod_closes_is_sent_again(relay: bool) {
    // A pod shutting down closes its idle keep-alive connections, racing the next request
    // written to one: it reads that request and closes without answering. The request was
    // never answered, so it goes again on a fresh connection and the client sees a 200.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = s.read(&mut buf).await; // the next request: dropped unanswered
            });
        }
    });
    let act = plain(relay).await;
    let k = act.model("ns", "m", 0, 10, LONG);
    act.table.set_endpoints(&k, vec![ep(addr, true)]);
    let c = client();
    for i in 0..4 {
        let a = send(
            &c,
            get(&act.url("/v1/models/m:predict"))
                .method(Method::POST)
                .body(json("{\"x\":1}"))
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "request {i}: {:?}", a.body);
        assert_eq!(a.body, "ok");
    }
    let m = act.table.get(&k).unwrap();
    assert_eq!(
        m.gate()
            .metrics()
            .count_of(zeroscale_activator::metrics::Event::StaleRetry),
        3,
        "every request after the first met a connection closed under it"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 4);
}

async fn sse_chunks_flow_one_by_one(relay: bool) {
    let act = plain(relay).await;
    let k = act.model("ns", "m", 0, 10, LONG);
    let b = Backend::start("pod").await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    *b.sse.lock().unwrap() = Some(rx);
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    let c = client();
    tx.send(Bytes::from("data: one\n\n")).await.unwrap();
    let r = c
        .request(
            get(&act.url("/sse"))
                .header("host", "m.ns")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.into_body();
    for next in ["two", "three"] {
        // Each chunk arrives while the backend has not produced the next one yet.
        let f = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(f.data_ref().unwrap().starts_with(b"data: "));
        tx.send(Bytes::from(format!("data: {next}\n\n")))
            .await
            .unwrap();
    }
    let f = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(f.data_ref().unwrap(), &Bytes::from("data: three\n\n"));
    // In flight until the stream ends.
    let m = act.table.get(&k).unwrap();
    assert_eq!(m.gate().metrics().in_flight.get(), 1);
    drop(tx);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .is_none()
    );
    until("stream end releases the slot", || {
        m.gate().metrics().in_flight.get() == 0
    })
    .await;
}

async fn hop_by_hop_headers_are_removed_and_forwarded_for_is_set(relay: bool) {
    let act = plain(relay).await;
    let k = act.model("ns", "m", 0, 10, LONG);
    let b = Backend::start("pod").await;
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    let c = client();
    let a = send(
        &c,
        get(&act.url("/v1/models/m"))
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic Zm9v")
            .header("te", "trailers")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-kept", "yes")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let h = &a.json()["headers"];
    for gone in ["x-secret", "keep-alive", "proxy-authorization", "te"] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {h}");
    }
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        a.headers.get("keep-alive").is_none(),
        "response hop-by-hop header passed"
    );
}

async fn websocket_upgrade_passes_through(relay: bool) {
    let act = plain(relay).await;
    let k = act.model("ns", "m", 0, 10, LONG);
    let b = Backend::start("pod").await;
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    let mut s = tokio::net::TcpStream::connect(act.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: m.ns\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");
}

/// The binary's layout: the proxy on worker threads with their own runtimes, sharing the table.
/// Requests queued at zero from many connections (spread over both workers) are all served once
/// a pod appears; a shutdown drains a request in flight and reports it drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_share_the_queue_and_drain() {
    for relay in [true, false] {
        worker_threads_share_the_queue_and_drain_on(relay).await;
    }
}

async fn worker_threads_share_the_queue_and_drain_on(relay: bool) {
    let mut act = Activator::start_on(Arc::new(NoWake), opts(relay), 2).await;
    let k = act.model("ns", "m", 2, 100, LONG);
    let model = act.table.get(&k).unwrap();
    let b = Backend::start("pod").await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (c, url) = (c.clone(), act.url("/v1/models/m"));
        tasks.push(tokio::spawn(async move {
            send(
                &c,
                get(&url)
                    .header("x-seq", i.to_string())
                    .body(empty())
                    .unwrap(),
            )
            .await
        }));
    }
    until("all queued", || model.gate().queued() == 20).await;
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    assert!(
        b.max.load(Ordering::SeqCst) <= 2,
        "container concurrency 2 held"
    );

    b.set_delay(Duration::from_millis(300));
    let url = act.url("/v1/models/m");
    let slow = tokio::spawn(async move { send(&client(), get(&url).body(empty()).unwrap()).await });
    until("in flight", || b.current.load(Ordering::SeqCst) == 1).await;
    act.shutdown();
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    let drained = tokio::time::timeout(Duration::from_secs(10), act.done.take().unwrap())
        .await
        .expect("workers stop")
        .unwrap();
    assert!(drained, "every worker drained in time");
}

async fn h2c_clients_are_served(relay: bool) {
    let act = plain(relay).await;
    let k = act.model("ns", "m", 0, 10, LONG);
    let b = Backend::start("pod").await;
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    // No Host header in HTTP/2: the path routes, and the backend still gets a Host.
    let a = send(
        &c,
        get(&act.url("/v2/models/m/infer"))
            .method(Method::POST)
            .body(json("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["headers"]["host"], act.addr.to_string());
}

async fn graceful_shutdown_finishes_in_flight_requests(relay: bool) {
    let mut act = plain(relay).await;
    let k = act.model("ns", "m", 0, 10, LONG);
    let b = Backend::start("pod").await;
    b.set_delay(Duration::from_millis(300));
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    let c = client();
    let url = act.url("/v1/models/m");
    let t = tokio::spawn(async move { send(&c, get(&url).body(empty()).unwrap()).await });
    until("in flight", || b.current.load(Ordering::SeqCst) == 1).await;
    act.shutdown();
    assert_eq!(t.await.unwrap().status, StatusCode::OK);
    assert!(act.done.take().unwrap().await.unwrap(), "drained in time");
    assert!(
        tokio::net::TcpStream::connect(act.addr).await.is_err(),
        "no longer accepting"
    );
}

async fn admin_endpoints(relay: bool) {
    let act = plain(relay).await;
    let k = act.model("ns", "m", 0, 10, LONG);
    let b = Backend::start("pod").await;
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    let c = client();
    assert_eq!(
        send(&c, get(&act.url("/v1/models/m")).body(empty()).unwrap())
            .await
            .status,
        StatusCode::OK
    );
    let admin = |p: &str| format!("http://{}{}", act.admin, p);
    assert_eq!(
        send(&c, get(&admin("/healthz")).body(empty()).unwrap())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&c, get(&admin("/readyz")).body(empty()).unwrap())
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    act.ready.store(true, Ordering::SeqCst);
    assert_eq!(
        send(&c, get(&admin("/readyz")).body(empty()).unwrap())
            .await
            .status,
        StatusCode::OK
    );
    let m = send(&c, get(&admin("/metrics")).body(empty()).unwrap()).await;
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    let lines: Vec<_> = text.lines().map(|l| Ok(l.to_string())).collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).unwrap();
    // OpenMetrics types the family without `_total`, so prometheus-parse reads the sample as
    // untyped: take the number either way (the autoscaler does the same).
    let num = |v: &prometheus_parse::Value| match v {
        prometheus_parse::Value::Counter(x) | prometheus_parse::Value::Untyped(x) => *x,
        other => panic!("not a counter: {other:?}"),
    };
    let find = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("deployment") == Some("m"))
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
            .clone()
    };
    let req = find("zeroscale_activator_requests_total");
    assert_eq!(req.labels.get("code"), Some("200"));
    assert_eq!(num(&req.value), 1.0, "{req:?}");
    let integ = find("zeroscale_activator_request_concurrency_seconds_total");
    let v = num(&integ.value);
    assert!(v > 0.0 && v < 5.0, "{v}");
    find("zeroscale_activator_pod_requests_in_flight");
    // The stat feed: a full page without a cursor, an empty one with it while nothing changes,
    // the model again once it answers another request.
    let page = |path: String| {
        let c = c.clone();
        async move {
            let a = send(&c, get(&admin(&path)).body(empty()).unwrap()).await;
            assert_eq!(a.status, StatusCode::OK, "{path}");
            serde_json::from_slice::<FeedPage>(&a.body).unwrap()
        }
    };
    let first = page(feed::FEED_PATH.to_owned()).await;
    assert!(first.full);
    let fm = first.models.iter().find(|m| m.deployment == "m").unwrap();
    assert_eq!((fm.requests, fm.in_flight, fm.queued), (1, 0, 0));
    assert!(
        fm.concurrency_us > 0 && (fm.concurrency_us as f64 - v * 1e6).abs() <= 1.0,
        "{fm:?} vs {v}"
    );
    // Demand figures: nothing is in flight, so the one request finished (in the same count
    // as the in-flight gauge), and all its time at the pod is its service time.
    let dm = fm.demand.expect("demand figures");
    assert_eq!((dm.arrivals, dm.served), (1, 1), "{dm:?}");
    assert!(
        dm.service_us > 0 && dm.pod_us.abs_diff(dm.service_us) <= 1,
        "{dm:?}"
    );
    let idle = page(feed::query(first.instance, first.generation)).await;
    assert!(!idle.full && idle.models.is_empty(), "{idle:?}");
    assert_eq!(
        send(&c, get(&act.url("/v1/models/m")).body(empty()).unwrap())
            .await
            .status,
        StatusCode::OK
    );
    let busy = page(feed::query(idle.instance, idle.generation)).await;
    assert_eq!(busy.models.len(), 1, "{busy:?}");
    assert_eq!(busy.models[0].requests, 2);
    assert!(busy.models[0].concurrency_us > fm.concurrency_us);
    let dm2 = busy.models[0].demand.expect("demand figures");
    assert_eq!(dm2.arrivals, 2, "{dm2:?}");
    assert_eq!(dm2.served + busy.models[0].in_flight, 2, "{dm2:?}");
    assert!(dm2.pod_us > dm.pod_us, "{dm2:?}");
}

async fn drain_timeout_answers_waiting_requests_with_503(relay: bool) {
    let mut act = Activator::start(
        Arc::new(NoWake),
        ServerOptions {
            drain_timeout: Duration::from_millis(200),
            ..opts(relay)
        },
    )
    .await;
    let k = act.model("ns", "m", 1, 10, LONG);
    let model = act.table.get(&k).unwrap();
    let c = client();
    let url = act.url("/v1/models/m");
    let t = tokio::spawn(async move { send(&c, get(&url).body(empty()).unwrap()).await });
    until("queued", || model.gate().queued() == 1).await;
    act.shutdown();
    let a = t.await.unwrap();
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.headers["retry-after"], "1");
    assert!(
        !act.done.take().unwrap().await.unwrap(),
        "reported as not drained in time"
    );
}

async fn malformed_and_oversized_heads_get_4xx_and_are_counted(relay: bool) {
    let act = Activator::start(
        Arc::new(NoWake),
        ServerOptions {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_millis(300),
            ..opts(relay)
        },
    )
    .await;
    let exchange = |req: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(act.addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).to_string()
    };
    let head = exchange(b"GARBAGE\r\n\r\n".to_vec()).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // The same JSON error shape as every other answer of ours, on both paths.
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains(r#""type":"malformed_http""#), "{head}");
    let mut big = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend(b"\r\n\r\n");
    let head = exchange(big).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    assert!(head.contains(r#""type":"header_too_large""#), "{head}");
    // A slow client that never finishes its head is cut off.
    let head = exchange(b"GET / HTTP/1.1\r\nhost: x\r\n".to_vec()).await;
    assert!(!head.starts_with("HTTP/1.1 200"), "{head}");
    until("counted", || {
        act.metrics.rejected_count("malformed_http") == 1
            && act.metrics.rejected_count("header_too_large") == 1
            && act.metrics.rejected_count("header_timeout") == 1
    })
    .await;
}

async fn a_large_streamed_upload_may_wait_at_zero(relay: bool) {
    // The queue's byte bound covers what the activator holds; a streamed body stays with the
    // client while it waits, so a body larger than the bound still queues.
    let act = plain(relay).await;
    let k = act.model("ns", "m", 1, 10, LONG);
    let model = act.table.get(&k).unwrap();
    let c = client();
    let url = act.url("/v1/models/m:predict");
    let body = Bytes::from(vec![b'x'; 2 << 20]); // queue_bytes is 1 MiB in these tests
    let t = tokio::spawn(async move {
        send(
            &c,
            get(&url)
                .method(Method::POST)
                .body(Full::new(body))
                .unwrap(),
        )
        .await
    });
    until("queued", || model.gate().queued() == 1).await;
    let b = Backend::start("pod").await;
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    let a = t.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["body"].as_str().unwrap().len(), 2 << 20);
}

on_both_paths!(
    a_request_a_pod_resets_unread_goes_to_another_pod,
    a_request_whose_pods_all_refuse_waits_for_one_that_listens,
    a_request_on_a_connection_the_pod_closes_is_sent_again,
    routes_by_host_path_and_body,
    a_namespace_scoped_body_name_reaches_the_other_claim,
    routes_kserve_host_names_headers_and_openai_prefix,
    bad_requests_get_clear_json_errors,
    queued_at_zero_wakes_and_drains_in_order,
    wake_is_retried_with_backoff_while_refused,
    queue_full_is_503_and_deadline_is_504,
    client_gone_leaves_the_queue,
    a_request_parked_at_zero_reaches_the_pod_intact,
    per_pod_concurrency_holds_under_200_concurrent_requests,
    refused_connection_is_retried_on_another_pod,
    failure_after_sending_is_502_and_not_retried,
    sse_chunks_flow_one_by_one,
    hop_by_hop_headers_are_removed_and_forwarded_for_is_set,
    websocket_upgrade_passes_through,
    h2c_clients_are_served,
    graceful_shutdown_finishes_in_flight_requests,
    admin_endpoints,
    drain_timeout_answers_waiting_requests_with_503,
    malformed_and_oversized_heads_get_4xx_and_are_counted,
    a_large_streamed_upload_may_wait_at_zero,
);
