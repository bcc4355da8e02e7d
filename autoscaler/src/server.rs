//! The HTTP endpoints: the wake API on the API port; `/metrics`, `/healthz` and `/readyz` on the
//! metrics port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tracing::Instrument;
use zeroscale_config::GlobalConfig;
use zeroscale_kube::admin::{self, ErrorFormat, Options, POST, Received, Route, respond};

use crate::apply::{Applier, deployment_ref};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::wake::{self, WakeError};

use kube::runtime::events::EventType;

/// Largest wake body accepted; the contract's body is tiny.
const MAX_WAKE_BODY: usize = 16 * 1024;

/// The API port's routes.
pub const API_ROUTES: &[Route] = &[Route {
    path: "/v1/wake",
    methods: POST,
}];

/// The API port's server options: JSON errors, the wake body limit.
pub fn api_options() -> Options {
    Options {
        max_body_bytes: MAX_WAKE_BODY,
        errors: ErrorFormat::Json,
        ..Options::default()
    }
}

/// Serves the metrics port until `shutdown` resolves: the shared admin server, with this
/// replica's readiness reasons ([`Health::not_ready_at`]) on `/readyz`.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let health = state.health;
    admin::serve_admin(
        listener,
        state.registry,
        move || {
            let at = tokio::time::Instant::now().into_std();
            health
                .not_ready_at(at)
                .into_iter()
                .map(|r| r.text)
                .collect()
        },
        shutdown,
    )
    .await;
}

/// Serves the wake API until `shutdown` resolves.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    state: WakeState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    admin::serve(
        listener,
        API_ROUTES,
        api_options(),
        move |req| {
            let state = state.clone();
            async move { api(&state, req).await }
        },
        shutdown,
    )
    .await;
}

/// What the metrics port needs.
#[derive(Clone)]
pub struct AdminState {
    /// The registry holding every metric.
    pub registry: Arc<Registry>,
    /// Readiness: watches synced and fresh, API server reachable, leadership not lapsed.
    pub health: Arc<Health>,
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
    /// Hands a pooled Deployment's wake (namespace/name, requests waiting) to the control loop.
    pub pooled_wake: Arc<dyn Fn(crate::DeploymentKey, u64) + Send + Sync>,
}

/// Handles one wake (route, method and body size already checked).
pub async fn api(state: &WakeState, req: Request<Bytes>) -> Response<Full<Bytes>> {
    let received = req
        .extensions()
        .get::<Received>()
        .map_or_else(Instant::now, |r| r.0);
    match wake_one(state, req.body(), received).await {
        Ok(answer) => {
            state.metrics.wake_result(if answer.scaled {
                "scaled"
            } else if answer.pool.is_some() {
                "pooled"
            } else {
                "already_scaled"
            });
            let status = if answer.pool.is_some() {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            respond(
                status,
                "application/json",
                serde_json::to_string(&answer).unwrap_or_default(),
            )
        }
        Err(e) => rescue(state, &e),
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
    if answer.pool.is_some() {
        (state.pooled_wake)(plan.key.clone(), req.queued);
    }
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
