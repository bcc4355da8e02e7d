//! The real [`App`], started from flags as `main` starts it, against an API server that does
//! not answer: its two ports serve at once, with the admin server's rules (methods, 404s),
//! readiness says why it is not ready, and a malformed wake is refused before any API call.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroscale_autoscaler::app::{App, Config};

/// A kubeconfig pointing at a port nothing listens on (a listener bound and dropped).
fn dead_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: dead
  cluster:
    server: http://127.0.0.1:{port}
users:
- name: nobody
  user: {{}}
contexts:
- name: dead
  context: {{cluster: dead, user: nobody}}
current-context: dead
"
        ),
    )
    .unwrap();
    path
}

async fn exchange(addr: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn the_app_serves_both_ports_while_the_api_server_is_down() {
    let dir = std::env::temp_dir().join(format!("zeroscale-autoscaler-app-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dead_kubeconfig(&dir);
    let config = Config::try_parse_from([
        "autoscaler",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--api-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--identity",
        "test",
    ])
    .unwrap();
    let app = App::build(config).await.unwrap();
    let (api, metrics) = (app.api_addr().unwrap(), app.metrics_addr().unwrap());
    // Leader election is retried while the API server is down: spawn does not return yet,
    // but the servers are up.
    let running = tokio::spawn(app.spawn());

    let health = exchange(metrics, &get("/healthz")).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let ready = exchange(metrics, &get("/readyz")).await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    let text = exchange(metrics, &get("/metrics")).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("zeroscale_autoscaler_"), "{text}");
    let post = exchange(
        metrics,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(
        post.to_ascii_lowercase()
            .contains("\r\nallow: get, head\r\n"),
        "{post}"
    );

    let wrong = exchange(api, &get("/v1/wake")).await;
    assert!(wrong.starts_with("HTTP/1.1 405"), "{wrong}");
    assert!(wrong.ends_with(r#"{"error":"use POST"}"#), "{wrong}");
    let missing = exchange(api, &get("/nope")).await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(
        missing.ends_with(r#"{"error":"not found; POST /v1/wake"}"#),
        "{missing}"
    );
    let malformed = exchange(
        api,
        "POST /v1/wake HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nnope!",
    )
    .await;
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");

    running.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
