//! The HTTP endpoints: the wake API on the API port; `/metrics`, `/healthz` and `/readyz` on the
//! metrics port.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::Instrument;
use zeroscale_config::GlobalConfig;

use crate::apply::{Applier, deployment_ref};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::wake::{self, WakeError};

/// Largest wake body accepted; the contract's body is tiny.
const MAX_WAKE_BODY: usize = 16 * 1024;

/// Serves `handler` on `listener` until `shutdown` resolves.
pub async fn serve<H, F>(listener: TcpListener, handler: H, shutdown: impl Future<Output = ()>)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// What the metrics port needs.
#[derive(Clone)]
pub struct AdminState {
    /// The registry holding every metric.
    pub registry: Arc<Registry>,
    /// Readiness: watches synced and fresh, API server reachable, leadership not lapsed.
    pub health: Arc<Health>,
}

/// Handles one request on the metrics port.
pub async fn admin(state: AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                Ok(()) => respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            let reasons = state
                .health
                .not_ready_at(tokio::time::Instant::now().into_std());
            if reasons.is_empty() {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                // One reason a line, so a probe's log shows them all.
                let mut body = String::new();
                for r in &reasons {
                    body.push_str(&r.text);
                    body.push('\n');
                }
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
            }
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Looks up cached Deployments, whichever watch scope holds them.
#[derive(Clone)]
pub struct DeploymentCache {
    /// `(namespace or None for all, store)`.
    pub stores: Vec<(Option<String>, Store<Deployment>)>,
}

impl DeploymentCache {
    /// The cached Deployment, if a watched scope holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        let key = ObjectRef::new(name).within(namespace);
        self.stores
            .iter()
            .filter(|(scope, _)| scope.as_deref().is_none_or(|ns| ns == namespace))
            .find_map(|(_, store)| store.get(&key))
    }
}

/// What the API port needs.
#[derive(Clone)]
pub struct WakeState {
    /// Kubernetes client.
    pub client: Client,
    /// The reflector stores.
    pub cache: DeploymentCache,
    /// The global configuration in force (kept current by the control loop).
    pub global: Arc<std::sync::RwLock<GlobalConfig>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// For the Event recording the wake.
    pub applier: Applier,
    /// Timeout of the whole wake against the API server.
    pub timeout: Duration,
}

/// Handles one request on the API port.
pub async fn api(state: WakeState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let received = Instant::now();
    if req.uri().path() != "/v1/wake" {
        return respond(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"not found; POST /v1/wake"}"#,
        );
    }
    if req.method() != Method::POST {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            r#"{"error":"use POST"}"#,
        );
    }
    let body = match Limited::new(req.into_body(), MAX_WAKE_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return rescue(&state, &WakeError::Malformed(e.to_string())),
    };
    match wake_one(&state, &body, received).await {
        Ok(answer) => {
            state.metrics.wake_result(if answer.scaled {
                "scaled"
            } else {
                "already_scaled"
            });
            respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&answer).unwrap_or_default(),
            )
        }
        Err(e) => rescue(&state, &e),
    }
}

/// The one place a wake error becomes an HTTP answer.
fn rescue(state: &WakeState, e: &WakeError) -> Response<Full<Bytes>> {
    state.metrics.wake_result(e.label());
    tracing::info!(error = %e, "wake refused");
    respond(e.status(), "application/json", wake::error_body(e))
}

async fn wake_one(
    state: &WakeState,
    body: &[u8],
    received: Instant,
) -> Result<wake::WakeAnswer, WakeError> {
    let req = wake::parse(body)?;
    let cached = state.cache.get(&req.namespace, &req.deployment);
    let plan = {
        let global = state.global.read().unwrap_or_else(|e| e.into_inner());
        wake::plan(&req, cached.as_deref(), &global)?
    };
    let span = tracing::info_span!("wake", deployment = %plan.key);
    let api: Api<Deployment> = Api::namespaced(state.client.clone(), &plan.key.namespace);
    let metrics = state.metrics.clone();
    let answer = wake::execute(&api, &plan, state.timeout, move || {
        metrics.wake_to_patch.observe(wake::since(received))
    })
    .instrument(span)
    .await?;
    if answer.scaled {
        let message = format!(
            "Scaled 0 -> {}: woken by the activator ({} request{} waiting)",
            answer.replicas,
            req.queued,
            if req.queued == 1 { "" } else { "s" }
        );
        tracing::info!(deployment = %plan.key, to = answer.replicas, reason = "wake", "{message}");
        state.metrics.decision(&plan.key, "wake");
        let applier = state.applier.clone();
        let key = plan.key.clone();
        // The Event must not delay the answer.
        tokio::spawn(async move {
            applier
                .event(&deployment_ref(&key), EventType::Normal, "Scaled", message)
                .await
        });
    }
    Ok(answer)
}
