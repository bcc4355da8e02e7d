//! Test support: real local backends, a wake recorder, and an activator on loopback.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use zeroscale_activator::server::ServerOptions;
use zeroscale_activator::table::WakeSink;
use zeroscale_activator::{
    App, Config, Endpoint, Feed, Limits, Metrics, ModelKey, ModelSpec, Proxy, Table,
};

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A local model server that reports what it saw.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub delay: Mutex<Duration>,
    pub current: AtomicUsize,
    pub max: AtomicUsize,
    pub count: AtomicUsize,
    pub order: Mutex<Vec<String>>,
    pub sse: Mutex<Option<mpsc::Receiver<Bytes>>>,
}

impl Backend {
    pub async fn start(name: &str) -> Arc<Backend> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Arc::new(Backend {
            addr: l.local_addr().unwrap(),
            name: name.to_string(),
            delay: Mutex::new(Duration::ZERO),
            current: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
            order: Mutex::new(Vec::new()),
            sse: Mutex::new(None),
        });
        let b2 = b.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let b = b2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let b = b.clone();
                        async move { Ok::<_, Infallible>(b.handle(req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        b
    }

    pub fn endpoint(&self) -> Endpoint {
        ep(self.addr, true)
    }

    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<BoxBody> {
        self.count.fetch_add(1, Ordering::SeqCst);
        if let Some(seq) = req.headers().get("x-seq") {
            self.order
                .lock()
                .unwrap()
                .push(seq.to_str().unwrap().to_string());
        }
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        let resp = if req.uri().path() == "/ws" {
            let up = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = up.await {
                    let mut io = TokioIo::new(up);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Full::new(Bytes::new()).boxed())
                .unwrap()
        } else if req.uri().path() == "/sse" {
            let rx = self.sse.lock().unwrap().take().expect("sse channel set");
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("x-served-by", &self.name)
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        } else {
            let delay = *self.delay.lock().unwrap();
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let headers: BTreeMap<String, String> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let j = serde_json::json!({
                "served_by": self.name,
                "path": parts.uri.to_string(),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            Response::builder()
                .header("content-type", "application/json")
                .header("x-served-by", &self.name)
                .header("keep-alive", "timeout=5")
                .body(Full::new(Bytes::from(j.to_string())).boxed())
                .unwrap()
        };
        self.current.fetch_sub(1, Ordering::SeqCst);
        resp
    }
}

pub fn ep(addr: SocketAddr, ready: bool) -> Endpoint {
    Endpoint {
        addr,
        ready,
        terminating: false,
        pod_name: None,
    }
}

/// A backend that accepts, reads the request head, then closes the connection.
pub async fn resetting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            n2.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    (addr, n)
}

/// An address nobody listens on.
pub async fn refusing_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Records wake POSTs; answers 503 while `fail` is set, else 200.
pub struct WakeRecorder {
    pub url: String,
    pub calls: Mutex<Vec<serde_json::Value>>,
    pub fail: AtomicBool,
}

impl WakeRecorder {
    pub async fn start() -> Arc<WakeRecorder> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let w = Arc::new(WakeRecorder {
            url: format!("http://{}", l.local_addr().unwrap()),
            calls: Mutex::new(Vec::new()),
            fail: AtomicBool::new(false),
        });
        let w2 = w.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let w = w2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let w = w.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let mut v: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            v["_path"] = path.into();
                            w.calls.lock().unwrap().push(v);
                            let status = if w.fail.load(Ordering::SeqCst) {
                                503
                            } else {
                                200
                            };
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(r#"{"replicas":1,"scaled":true}"#)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        w
    }

    pub fn calls(&self) -> Vec<serde_json::Value> {
        self.calls.lock().unwrap().clone()
    }
}

/// An activator listening on loopback: the real [`App`], its table fed by the test.
pub struct Activator {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub table: Arc<Table>,
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    shutdown: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<bool>>,
}

impl Activator {
    pub async fn start(wake: Arc<dyn WakeSink>, opts: ServerOptions) -> Activator {
        Self::start_on(wake, opts, 0).await
    }

    /// `workers` > 0: the proxy on that many worker threads, as the binary runs it
    /// ([`App::spawn`]); 0: on the test's runtime ([`App::spawn_local`]).
    pub async fn start_on(
        wake: Arc<dyn WakeSink>,
        opts: ServerOptions,
        workers: usize,
    ) -> Activator {
        let ServerOptions {
            header_read_timeout,
            keep_alive_timeout,
            max_header_bytes,
            drain_timeout,
            relay,
        } = opts;
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = Config {
            listen: loopback,
            admin_listen: loopback,
            header_read_timeout,
            keep_alive_timeout,
            max_header_bytes,
            drain_timeout,
            relay,
            workers,
            // A test's shutdown drains at once.
            shutdown_delay: Duration::ZERO,
            ..Config::parse_from(["activator"])
        };
        let app = App::build_with(config, Feed::Local { wake }).await.unwrap();
        // Small, so body-routing limits are cheap to reach.
        app.proxy().set_max_routing_body_bytes(1024);
        let (addr, admin) = (app.addr().unwrap(), app.admin_addr().unwrap());
        let (table, proxy) = (app.table().clone(), app.proxy().clone());
        let (metrics, ready) = (app.metrics().clone(), app.ready().clone());
        let running = match workers {
            0 => app.spawn_local(),
            _ => app.spawn().unwrap(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            let _ = rx.await;
            running.drain().await
        });
        Activator {
            addr,
            admin,
            table,
            proxy,
            metrics,
            ready,
            shutdown: Some(tx),
            done: Some(done),
        }
    }

    /// Adds a model `name` in namespace `ns` (Deployment `name`).
    pub fn model(
        &self,
        ns: &str,
        name: &str,
        cc: u32,
        depth: usize,
        deadline: Duration,
    ) -> ModelKey {
        self.model_with(ns, name, Limits::with_queue(cc, depth, 1 << 20, deadline))
    }

    /// Adds a model `name` in namespace `ns` (Deployment `name`) with these limits, e.g. short
    /// `response_timeout` / `idle_timeout` for timeout tests.
    pub fn model_with(&self, ns: &str, name: &str, limits: Limits) -> ModelKey {
        let key = ModelKey {
            namespace: ns.into(),
            deployment: name.into(),
        };
        self.table.upsert_model(ModelSpec {
            key: key.clone(),
            model_name: name.into(),
            hostnames: vec![],
            created: Some(0),
            limits,
        });
        key
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The admin port's `/metrics` text.
pub async fn metrics_text(act: &Activator) -> String {
    let a = send(
        &client(),
        get(&format!("http://{}/metrics", act.admin))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    String::from_utf8_lossy(&a.body).to_string()
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn served_by(&self) -> String {
        self.headers
            .get("x-served-by")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

pub async fn send(c: &Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Answer {
    let r = tokio::time::timeout(Duration::from_secs(20), c.request(req))
        .await
        .expect("answer within 20s")
        .expect("request succeeded at the HTTP level");
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str) -> http::request::Builder {
    Request::builder().uri(url)
}

/// Polls `f` until true (bounded).
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}
