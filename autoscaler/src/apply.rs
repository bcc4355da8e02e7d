//! Applying what the index worked out: scale patches and Events.
//!
//! The small controller: it patches `deployments/{name}/scale` only when asked (the index
//! emits only changes), only while this replica leads, with a timeout, and counts every
//! outcome. Every change is logged with its reason and recorded as a Normal Event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Client};

use zeroscale_kube::events::Publisher;

use crate::DeploymentKey;
use crate::index::{Notice, ScaleIntent};
use crate::metrics::Metrics;

/// Why a patch did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// This replica does not hold the Lease.
    #[error("not the leader")]
    NotLeader,
    /// The API server refused or failed.
    #[error("scale patch failed: {0}")]
    Api(#[from] kube::Error),
    /// No answer in time.
    #[error("scale patch timed out after {0:?}")]
    Timeout(Duration),
}

/// Patches scales and records Events.
#[derive(Clone)]
pub struct Applier {
    client: Client,
    events: Publisher,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

/// A reference to a Deployment for Events.
pub fn deployment_ref(key: &DeploymentKey) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("Deployment".into()),
        namespace: Some(key.namespace.clone()),
        name: Some(key.deployment.clone()),
        ..Default::default()
    }
}

/// A reference to the ConfigMap for Events.
pub fn configmap_ref(namespace: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        namespace: Some(namespace.to_owned()),
        name: Some(zeroscale_config::CONFIGMAP_NAME.into()),
        ..Default::default()
    }
}

/// The person-readable message of a scale change, e.g. "Scaled 0 -> 1: 3 requests waiting in
/// the activator".
pub fn scale_message(intent: &ScaleIntent) -> String {
    use crate::pools::{PoolNote, evicted_message};
    match &intent.pool {
        Some(PoolNote::Evicted {
            pool,
            for_model,
            idle_for,
        }) => return evicted_message(intent.from, pool, for_model, *idle_for),
        Some(PoolNote::Limited { pool, wanted }) => {
            return format!(
                "Scaled {} -> {} of {wanted} wanted, all pool {pool} has room for: {}",
                intent.from, intent.to, intent.decision
            );
        }
        None => {}
    }
    if intent.overrides_manual {
        format!(
            "Scaled {} -> {}, overriding a change made outside zeroscale (replicas set to {}): {}. To scale this Deployment by hand, set zeroscale.dev/enabled: \"false\" first",
            intent.from, intent.to, intent.from, intent.decision
        )
    } else {
        format!(
            "Scaled {} -> {}: {}",
            intent.from, intent.to, intent.decision
        )
    }
}

impl Applier {
    /// An applier with the given patch timeout; `events` publishes its Events.
    pub fn new(
        client: Client,
        events: Publisher,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Self {
        Self {
            client,
            events,
            metrics,
            timeout,
        }
    }

    /// Patches one scale change; `leading` is checked right before the write.
    pub async fn apply(&self, intent: &ScaleIntent, leading: bool) -> Result<(), ApplyError> {
        if !leading {
            return Err(ApplyError::NotLeader);
        }
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &intent.key.namespace);
        let patch = serde_json::json!({ "spec": { "replicas": intent.to } });
        let started = Instant::now();
        let result = tokio::time::timeout(
            self.timeout,
            api.patch_scale(
                &intent.key.deployment,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            ),
        )
        .await;
        self.metrics
            .patch_latency
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(_)) => {
                self.metrics.patch_result("success");
                let evicted = match &intent.pool {
                    Some(crate::pools::PoolNote::Evicted {
                        pool,
                        for_model,
                        idle_for,
                    }) => Some((pool, for_model, *idle_for)),
                    _ => None,
                };
                let reason = match evicted {
                    Some(_) => "pool_eviction",
                    None => intent.decision.reason.as_str(),
                };
                self.metrics.decision(&intent.key, reason);
                let message = scale_message(intent);
                tracing::info!(deployment = %intent.key, from = intent.from, to = intent.to,
                    reason, "{message}");
                let event_reason = if evicted.is_some() {
                    "PoolEviction"
                } else {
                    "Scaled"
                };
                self.event(
                    &deployment_ref(&intent.key),
                    EventType::Normal,
                    event_reason,
                    message,
                )
                .await;
                if let Some((pool, for_model, idle_for)) = evicted {
                    // Both Deployments tell the story: the one evicted and the one it made room for.
                    self.metrics.pools.evicted(pool);
                    let note = crate::pools::room_made_message(&intent.key, pool, idle_for);
                    self.event(
                        &deployment_ref(for_model),
                        EventType::Normal,
                        "PoolEviction",
                        note,
                    )
                    .await;
                }
                Ok(())
            }
            Ok(Err(e)) => {
                self.metrics.patch_result("failure");
                tracing::warn!(deployment = %intent.key, to = intent.to, error = %e, "scale patch failed");
                Err(ApplyError::Api(e))
            }
            Err(_) => {
                self.metrics.patch_result("timeout");
                tracing::warn!(deployment = %intent.key, to = intent.to, "scale patch timed out");
                Err(ApplyError::Timeout(self.timeout))
            }
        }
    }

    /// Turns a notice into a log line, a Warning Event and (for config) a metric.
    pub async fn notice(&self, notice: &Notice, own_namespace: &str) {
        match notice {
            Notice::BadAnnotations { key, errors } => {
                self.metrics.config_errors.inc_by(errors.len() as u64);
                let message = join(errors);
                tracing::warn!(deployment = %key, "invalid annotations: {message}");
                let note = format!("Invalid annotation: {message}");
                self.event(
                    &deployment_ref(key),
                    EventType::Warning,
                    "InvalidAnnotation",
                    note,
                )
                .await;
            }
            Notice::BadConfigMap { errors } => {
                self.metrics.config_errors.inc_by(errors.len() as u64);
                let message = join(errors);
                tracing::warn!(
                    configmap = zeroscale_config::CONFIGMAP_NAME,
                    "invalid values, last good kept: {message}"
                );
                let note = format!("Invalid configuration: {message}");
                self.event(
                    &configmap_ref(own_namespace),
                    EventType::Warning,
                    "InvalidConfig",
                    note,
                )
                .await;
            }
            Notice::KServeAutoscaler { key, note } => {
                tracing::warn!(deployment = %key, "{note}");
                self.event(
                    &deployment_ref(key),
                    EventType::Warning,
                    "KServeAutoscalerClass",
                    note.clone(),
                )
                .await;
            }
            Notice::HpaConflict { key, hpa } => {
                tracing::warn!(deployment = %key, hpa, "HPA targets this Deployment; zeroscale skips it");
                let note = format!(
                    "HorizontalPodAutoscaler {hpa} also scales this Deployment; zeroscale leaves it alone until the HPA is removed"
                );
                self.event(
                    &deployment_ref(key),
                    EventType::Warning,
                    "HPAConflict",
                    note,
                )
                .await;
            }
        }
    }

    /// Records an Event (truncated, digested, with a timeout: [`Publisher::publish`]);
    /// failures are logged, never fatal.
    pub async fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.events.publish(regarding, type_, reason, note).await;
    }
}

fn join(errors: &[zeroscale_config::ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
