//! Component tests against the testkit's sample model server: a real predictor speaking
//! KServe v1/v2 and OpenAI APIs, which answers 404 for a model that is not its own (so
//! misrouting shows) and 429 beyond its concurrency limit (so overload shows).

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use support::*;
use tokio::net::TcpListener;
use zeroscale_activator::queue::Balance;
use zeroscale_activator::server::ServerOptions;
use zeroscale_activator::table::NoWake;
use zeroscale_activator::wake::Waker;
use zeroscale_activator::{Limits, ModelKey};
use zeroscale_testkit::sample_model::{self, Options};

const LONG: Duration = Duration::from_secs(300);

async fn model_server(name: &str, opts: Options) -> zeroscale_activator::Endpoint {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let opts = Options {
        model_name: name.into(),
        pod_name: format!("{name}-{}", addr.port()),
        ..opts
    };
    tokio::spawn(sample_model::serve(l, opts));
    ep(addr, true)
}

fn json(s: &str) -> Full<Bytes> {
    Full::new(Bytes::from(s.to_string()))
}

fn post(url: &str) -> http::request::Builder {
    get(url).method(Method::POST)
}

#[tokio::test]
async fn all_three_routing_methods_reach_the_right_model() {
    let act = Activator::start(Arc::new(NoWake), ServerOptions::default()).await;
    let iris = act.model("ns", "iris", 0, 10, LONG);
    let llama = act.model("ns", "llama", 0, 10, LONG);
    act.table
        .set_endpoints(&iris, vec![model_server("iris", Options::default()).await]);
    act.table.set_endpoints(
        &llama,
        vec![model_server("llama", Options::default()).await],
    );
    let c = client();

    let a = send(
        &c,
        post(&act.url("/v1/models/iris:predict"))
            .body(json(r#"{"instances":[[1,2]]}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.json()["model_name"], "iris");

    let a = send(
        &c,
        post(&act.url("/v2/models/iris/infer"))
            .body(json(r#"{"inputs":[]}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.json()["model_name"], "iris");

    // Host routing: the path names nothing, the Host names the model.
    let a = send(
        &c,
        post(&act.url("/v1/chat/completions"))
            .header("host", "llama.ns")
            .body(json(
                r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#,
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.json()["model"], "llama");

    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
        let a = send(
            &c,
            post(&act.url(path))
                .body(json(
                    r#"{"model":"llama","prompt":"x","input":"x","messages":[]}"#,
                ))
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {:?}", a.body);
        assert_eq!(a.json()["model"], "llama", "{path}");
    }
}

#[tokio::test]
async fn openai_stream_flows_as_events() {
    let act = Activator::start(Arc::new(NoWake), ServerOptions::default()).await;
    let k = act.model("ns", "llama", 0, 10, LONG);
    let opts = Options {
        stream_chunks: 5,
        chunk_interval: Duration::from_millis(50),
        ..Options::default()
    };
    act.table
        .set_endpoints(&k, vec![model_server("llama", opts).await]);
    let c = client();
    let r = c
        .request(
            post(&act.url("/v1/chat/completions"))
                .body(json(r#"{"model":"llama","stream":true,"messages":[]}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.into_body();
    let mut events = Vec::new();
    let mut arrivals = Vec::new();
    let start = std::time::Instant::now();
    while let Some(f) = body.frame().await {
        let f = f.unwrap();
        if let Some(d) = f.data_ref() {
            arrivals.push(start.elapsed());
            events.push(String::from_utf8_lossy(d).to_string());
        }
    }
    let all = events.concat();
    assert_eq!(all.matches("data: ").count(), 6, "{all}");
    assert!(all.ends_with("data: [DONE]\n\n"));
    // Not buffered: the events came in several frames spread over the stream's lifetime.
    assert!(events.len() >= 3, "{events:?}");
    assert!(arrivals.last().unwrap() > arrivals.first().unwrap());
}

#[tokio::test]
async fn cold_start_wakes_and_serves_200_requests_within_pod_limits() {
    let rec = WakeRecorder::start().await;
    let waker = Waker::new(&rec.url, Duration::from_secs(3600)).unwrap();
    let act = Activator::start(Arc::new(waker), ServerOptions::default()).await;
    // Each pod takes 4 at once and answers 429 beyond: any overload would show as a 429.
    let k = act.model("ns", "iris", 4, 1000, LONG);
    let model = act.table.get(&k).unwrap();
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let c = c.clone();
        let url = act.url("/v1/models/iris:predict");
        tasks.push(tokio::spawn(async move {
            send(&c, post(&url).body(json(r#"{"instances":[[1]]}"#)).unwrap()).await
        }));
    }
    until("all queued", || model.gate().queued() == 200).await;
    until("wake sent", || !rec.calls().is_empty()).await;
    assert_eq!(rec.calls()[0]["deployment"], "iris");
    let opts = Options {
        max_concurrency: 4,
        service_time: Duration::from_millis(5),
        ..Options::default()
    };
    let pods = vec![
        model_server("iris", opts.clone()).await,
        model_server("iris", opts.clone()).await,
        model_server("iris", opts).await,
    ];
    act.table.set_endpoints(&k, pods);
    let mut served_by = std::collections::HashSet::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        served_by.insert(a.served_by());
    }
    assert_eq!(served_by.len(), 3, "all pods took part");
    assert_eq!(model.gate().metrics().answered_count(200), 200);
    assert_eq!(model.gate().metrics().answered_count(429), 0);
}

/// A chat body for `model` whose prompt starts with `system`.
fn chat(model: &str, system: &str, user: &str) -> Full<Bytes> {
    json(&format!(
        r#"{{"model":"{model}","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{user}"}}]}}"#
    ))
}

/// Sends `n` requests for `key`'s model while it has no pod, waits until all are queued, then
/// gives it three pods at once: the gate serves the whole queue in that instant, so where each
/// request went is the balancing rule's choice at those loads. Returns the requests per pod,
/// largest first.
async fn queued_then_served(
    act: &Activator,
    key: &ModelKey,
    n: usize,
    body: impl Fn(usize) -> Full<Bytes>,
) -> Vec<usize> {
    let model = act.table.get(key).unwrap();
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (c, req) = (
            c.clone(),
            post(&act.url("/v1/chat/completions"))
                .body(body(i))
                .unwrap(),
        );
        tasks.push(tokio::spawn(async move { send(&c, req).await }));
    }
    until("all queued", || model.gate().queued() == n).await;
    let opts = Options {
        service_time: Duration::from_millis(100),
        ..Options::default()
    };
    let mut pods = Vec::new();
    for _ in 0..3 {
        pods.push(model_server(&key.deployment, opts.clone()).await);
    }
    act.table.set_endpoints(key, pods);
    let mut per_pod = std::collections::HashMap::<String, usize>::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        *per_pod.entry(a.served_by()).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_pod.into_values().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    counts
}

#[tokio::test]
async fn prefix_hash_keeps_a_prefix_on_one_pod_until_the_bound() {
    let act = Activator::start(Arc::new(NoWake), ServerOptions::default()).await;
    let prefix = |name| {
        let limits = Limits {
            balance: Balance::PrefixHash {
                prefix_chars: 16,
                load_factor: 1.25,
            },
            ..Limits::with_queue(0, 100, 1 << 20, LONG)
        };
        act.model_with("ns", name, limits)
    };

    // One at a time (no load): one prefix, one pod, whatever follows the prefix and whether
    // the Host (relay, handed to hyper for the body) or the body names the model.
    let k = prefix("llama");
    let mut pods = Vec::new();
    for _ in 0..3 {
        pods.push(model_server("llama", Options::default()).await);
    }
    act.table.set_endpoints(&k, pods);
    let c = client();
    let mut served = std::collections::HashSet::new();
    for i in 0..12 {
        let mut req = post(&act.url("/v1/chat/completions"));
        if i % 2 == 0 {
            req = req.header("host", "llama.ns");
        }
        let a = send(
            &c,
            req.body(chat(
                "llama",
                "You are a terse bot.",
                &format!("question {i}"),
            ))
            .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(a.json()["model"], "llama");
        served.insert(a.served_by());
    }
    assert_eq!(served.len(), 1, "one prefix went to {served:?}");
    // Different prefixes are spread: 24 of them over 3 pods do not all hash to one. They
    // differ in their first characters: the key is the first 16 (a suffix after them, as in
    // "persona number 07", would make only 3 keys, all on one pod 1 run in 9).
    let mut served = std::collections::HashSet::new();
    for i in 0..24 {
        let req = post(&act.url("/v1/chat/completions"));
        let a = send(
            &c,
            req.body(chat("llama", &format!("{i:02} persona"), "hi"))
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        served.insert(a.served_by());
    }
    assert!(served.len() > 1, "24 prefixes all went to {served:?}");

    // A hot prefix: 12 requests with one prefix meet 3 idle pods at once. The pod the prefix
    // ranks first takes them while it stays within ceil(1.25 x mean): the r-th request's cap is
    // ceil(1.25 r / 3), which lets the first pod take requests 1, 3, 5, 8, 10 (5 = the cap at
    // r = 12), the second 2, 4, 6, 9, 11 and the third only 7 and 12 - never above the bound.
    let hot = prefix("hot");
    let counts = queued_then_served(&act, &hot, 12, |i| {
        chat("hot", "You are a terse bot.", &format!("q{i}"))
    })
    .await;
    assert_eq!(counts, vec![5, 5, 2]);
    // Least-request on the same burst: an even spread.
    let even = act.model("ns", "even", 0, 100, LONG);
    let counts = queued_then_served(&act, &even, 12, |i| {
        chat("even", "You are a terse bot.", &format!("q{i}"))
    })
    .await;
    assert_eq!(counts, vec![4, 4, 4]);
    // Prefix-hash, requests without a prompt: least-request too.
    let bare = prefix("bare");
    let counts = queued_then_served(&act, &bare, 12, |_| {
        json(r#"{"model":"bare","prompt":[1,2,3]}"#)
    })
    .await;
    assert_eq!(counts, vec![4, 4, 4]);
}

/// The `zeroscale_activator_cold_start_seconds_count` sample of model `iris`, from `/metrics`.
async fn cold_starts_counted(act: &Activator) -> Option<String> {
    metrics_text(act)
        .await
        .lines()
        .find(|l| {
            l.starts_with("zeroscale_activator_cold_start_seconds_count{")
                && l.contains("deployment=\"iris\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
}

#[tokio::test]
async fn answers_to_requests_that_waited_for_a_wake_say_how_long() {
    let rec = WakeRecorder::start().await;
    let waker = Waker::new(&rec.url, Duration::from_secs(3600)).unwrap();
    let act = Activator::start(Arc::new(waker), ServerOptions::default()).await;
    let k = act.model("ns", "iris", 0, 100, LONG);
    let model = act.table.get(&k).unwrap();
    let c = client();
    let predict = |c: &hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>| {
        let (c, url) = (c.clone(), act.url("/v1/models/iris:predict"));
        tokio::spawn(async move {
            send(&c, post(&url).body(json(r#"{"instances":[[1]]}"#)).unwrap()).await
        })
    };
    // A model that never went cold has no cold-start series.
    assert_eq!(cold_starts_counted(&act).await, None);
    let tasks: Vec<_> = (0..3).map(|_| predict(&c)).collect();
    until("all queued", || model.gate().queued() == 3).await;
    until("wake sent", || !rec.calls().is_empty()).await;
    // They wait at least this long, whatever the machine's speed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    act.table
        .set_endpoints(&k, vec![model_server("iris", Options::default()).await]);
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        let v = a.headers["zeroscale-cold-start"]
            .to_str()
            .unwrap()
            .to_string();
        let secs = v.strip_suffix('s').expect("seconds");
        assert_eq!(secs.split_once('.').map(|(_, d)| d.len()), Some(2), "{v}");
        assert!(secs.parse::<f64>().unwrap() >= 0.2, "{v}");
    }
    // One cold start: the request that asked for the wake.
    assert_eq!(cold_starts_counted(&act).await.as_deref(), Some("1"));
    // A request that found a ready pod: no header.
    let a = predict(&c).await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.headers.get("zeroscale-cold-start").is_none(),
        "{:?}",
        a.headers
    );

    // Turned off (ConfigMap activator-cold-start-header: false): counted, not told.
    act.proxy.set_cold_start_header(false);
    act.table.set_endpoints(&k, vec![]);
    let t = predict(&c);
    until("queued", || model.gate().queued() == 1).await;
    act.table
        .set_endpoints(&k, vec![model_server("iris", Options::default()).await]);
    let a = t.await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert!(
        a.headers.get("zeroscale-cold-start").is_none(),
        "{:?}",
        a.headers
    );
    assert_eq!(cold_starts_counted(&act).await.as_deref(), Some("2"));
}
