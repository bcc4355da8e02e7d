//! Component tests of the sample model over real sockets.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;

use super::*;
use crate::http_client::{get, post_json};

struct Running {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(opts: Options) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(listener, opts));
    Running { addr, task }
}

fn opts() -> Options {
    Options {
        model_name: "m1".into(),
        pod_name: "pod-a".into(),
        ..Options::default()
    }
}

async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = get(addr, "/metrics").await.unwrap().text();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

#[tokio::test(start_paused = true)]
async fn healthz_is_503_until_the_load_delay_has_passed() {
    let s = start(Options {
        load_delay: Duration::from_secs(5),
        ..opts()
    })
    .await;
    let r = get(s.addr, "/healthz").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let r = post_json(s.addr, "/v1/models/m1:predict", &json!({"instances": [1]}))
        .await
        .unwrap();
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "inference refused while loading"
    );
    assert_eq!(r.json()["model"], "m1");
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(
        get(s.addr, "/healthz").await.unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        get(s.addr, "/healthz").await.unwrap().status,
        StatusCode::OK
    );
    let r = post_json(s.addr, "/v1/models/m1:predict", &json!({"instances": [1]}))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn kserve_v1_predict_and_explain_name_the_model_and_the_backend() {
    let s = start(opts()).await;
    let r = post_json(
        s.addr,
        "/v1/models/m1:predict",
        &json!({"instances": [[1, 2], [3, 4], [5, 6]]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["model_name"], "m1");
    assert_eq!(v["predictions"].as_array().unwrap().len(), 3);
    assert_eq!(r.header("x-pod-name"), Some("pod-a"));
    assert_eq!(r.header("x-served-by"), Some(s.addr.to_string().as_str()));
    let r = post_json(s.addr, "/v1/models/m1:explain", &json!({"instances": [1]}))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["explanations"].as_array().unwrap().len(), 1);
    let r = get(s.addr, "/v1/models/m1").await.unwrap();
    assert_eq!(r.json()["ready"], true);
}

#[tokio::test]
async fn kserve_v2_infer_answers_with_outputs() {
    let s = start(opts()).await;
    let body = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]});
    let r = post_json(s.addr, "/v2/models/m1/infer", &body)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["model_name"], "m1");
    assert!(r.json()["outputs"].is_array());
    let r = post_json(s.addr, "/v2/models/m1/versions/1/infer", &body)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn openai_routes_answer_and_check_the_model_field() {
    let s = start(opts()).await;
    let r = post_json(
        s.addr,
        "/v1/chat/completions",
        &json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["model"], "m1");
    assert_eq!(r.json()["object"], "chat.completion");
    let r = post_json(
        s.addr,
        "/v1/completions",
        &json!({"model": "m1", "prompt": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(r.json()["object"], "text_completion");
    let r = post_json(
        s.addr,
        "/v1/embeddings",
        &json!({"model": "m1", "input": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(r.json()["data"][0]["object"], "embedding");
    let r = post_json(s.addr, "/v1/chat/completions", &json!({"model": "other"}))
        .await
        .unwrap();
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "another model's request is refused"
    );
    assert_eq!(r.json()["model"], "other");
    // KServe's prefix.
    for (path, object) in [
        ("/openai/v1/chat/completions", "chat.completion"),
        ("/openai/v1/completions", "text_completion"),
    ] {
        let r = post_json(s.addr, path, &json!({"model": "m1", "prompt": "x"}))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.json()["object"], object, "{path}");
    }
    let r = post_json(
        s.addr,
        "/openai/v1/embeddings",
        &json!({"model": "m1", "input": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(r.json()["data"][0]["object"], "embedding");
}

#[tokio::test]
async fn streaming_sends_n_events_then_done() {
    let s = start(Options {
        stream_chunks: 3,
        chunk_interval: Duration::from_millis(1),
        ..opts()
    })
    .await;
    let r = post_json(
        s.addr,
        "/v1/chat/completions",
        &json!({"model": "m1", "stream": true, "messages": []}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = r.text();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .expect("every event is a data line")
        })
        .collect();
    assert_eq!(events.len(), 4, "{text}");
    assert_eq!(events[3], "[DONE]");
    for (i, e) in events[..3].iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["model"], "m1");
        assert_eq!(v["choices"][0]["delta"]["content"], format!("tok{i} "));
    }
    assert_eq!(metric(s.addr, "sample_model_requests_in_flight").await, 0.0);
    assert_eq!(metric(s.addr, "sample_model_requests_total").await, 1.0);
}

#[tokio::test]
async fn bad_input_and_unknown_routes_get_clear_errors() {
    let s = start(opts()).await;
    let r = crate::http_client::request(
        s.addr,
        http::Method::POST,
        "/v1/models/m1:predict",
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK, "an empty body is accepted");
    let r = post_json(s.addr, "/v1/models/nope:predict", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get(s.addr, "/nowhere").await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].as_str().unwrap().contains("/nowhere"));
    assert_eq!(
        r.header("x-pod-name"),
        Some("pod-a"),
        "errors name the backend too"
    );
}

/// Waits (bounded) until the in-flight gauge reaches `n`.
async fn wait_in_flight(addr: SocketAddr, n: f64) {
    for _ in 0..500 {
        if metric(addr, "sample_model_requests_in_flight").await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("in flight never reached {n}");
}

#[tokio::test]
async fn over_max_concurrency_is_429_and_metrics_count() {
    let s = start(Options {
        max_concurrency: 1,
        service_time: Duration::from_millis(800),
        ..opts()
    })
    .await;
    let addr = s.addr;
    let first =
        tokio::spawn(async move { post_json(addr, "/v1/models/m1:predict", &json!({})).await });
    wait_in_flight(addr, 1.0).await;
    let r = post_json(addr, "/v1/models/m1:predict", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.json()["error"].as_str().unwrap().contains("m1"));
    assert_eq!(first.await.unwrap().unwrap().status, StatusCode::OK);
    assert_eq!(metric(addr, "sample_model_requests_in_flight").await, 0.0);
    assert_eq!(metric(addr, "sample_model_requests_total").await, 1.0);
    assert_eq!(
        metric(addr, "sample_model_requests_rejected_total").await,
        1.0
    );
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_then_stops_listening() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_with_shutdown(
        listener,
        Options {
            service_time: Duration::from_millis(500),
            ..opts()
        },
        async move {
            let _ = rx.await;
        },
    ));
    let inflight =
        tokio::spawn(async move { post_json(addr, "/v1/models/m1:predict", &json!({})).await });
    wait_in_flight(addr, 1.0).await;
    tx.send(()).unwrap();
    let r = inflight.await.unwrap().unwrap();
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the request in flight is answered"
    );
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops after draining")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[test]
fn durations_and_listen_addresses_parse() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
    assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("-1s").is_err());
    assert_eq!(
        listen_addr(None, None, None).unwrap().to_string(),
        "0.0.0.0:8080"
    );
    assert_eq!(
        listen_addr(None, Some("10.244.0.7"), Some("9000"))
            .unwrap()
            .to_string(),
        "10.244.0.7:9000"
    );
    assert_eq!(
        listen_addr(Some("127.0.0.1:1"), Some("10.244.0.7"), None)
            .unwrap()
            .to_string(),
        "127.0.0.1:1"
    );
    assert!(listen_addr(Some("nope"), None, None).is_err());
}
