//! `POST /v1/wake`: any replica, leader or not, scales a Deployment from 0 at once.
//!
//! The request is validated and planned from the reflector's store (no API round trip), then
//! one PATCH of the scale subresource carries the `resourceVersion` seen in the store as a
//! precondition. On a conflict the scale is re-read: if someone else already scaled it up the
//! answer is `scaled: false`; a wake never scales down.
//!
//! A Deployment in a capacity pool is never patched here: admission to a pool is a rule over
//! several Deployments that only one writer can keep (see [`crate::pools`]). Its wake is
//! answered `202` with the pool's name and handed to the control loop, which admits it on the
//! leader.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::{Deserialize, Serialize};
use zeroscale_config::{DeploymentSettings, GlobalConfig};

use crate::DeploymentKey;

/// The wake request body (docs/architecture.md).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct WakeRequest {
    /// The Deployment's namespace.
    pub namespace: String,
    /// The Deployment's name.
    pub deployment: String,
    /// Requests waiting in the sending activator (informational).
    #[serde(default)]
    pub queued: u64,
}

/// The successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeAnswer {
    /// Replicas after the wake.
    pub replicas: u32,
    /// Whether this wake changed the count.
    pub scaled: bool,
    /// The capacity pool that admits it (the leader's control loop), for a pooled Deployment
    /// at zero; answered `202`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// Why a wake was refused; each maps to one HTTP status in [`WakeError::status`].
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    /// The body is not a wake request.
    #[error(
        "malformed wake request: {0}; expected {{\"namespace\": \"...\", \"deployment\": \"...\"}}"
    )]
    Malformed(String),
    /// No such Deployment.
    #[error("deployment {0} not found")]
    NotFound(DeploymentKey),
    /// The Deployment did not opt in.
    #[error(
        "deployment {0} is not managed by zeroscale: set the annotation zeroscale.dev/enabled: \"true\" to opt in"
    )]
    NotOptedIn(DeploymentKey),
    /// The API server could not be reached or failed; the caller should retry.
    #[error("kubernetes API unavailable: {0}")]
    Unavailable(String),
}

impl WakeError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            WakeError::Malformed(_) => http::StatusCode::BAD_REQUEST,
            WakeError::NotFound(_) => http::StatusCode::NOT_FOUND,
            WakeError::NotOptedIn(_) => http::StatusCode::UNPROCESSABLE_ENTITY,
            WakeError::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            WakeError::Malformed(_) => "malformed",
            WakeError::NotFound(_) => "not_found",
            WakeError::NotOptedIn(_) => "not_opted_in",
            WakeError::Unavailable(_) => "unavailable",
        }
    }
}

/// Parses and validates a wake body.
pub fn parse(body: &[u8]) -> Result<WakeRequest, WakeError> {
    let req: WakeRequest =
        serde_json::from_slice(body).map_err(|e| WakeError::Malformed(e.to_string()))?;
    if req.namespace.is_empty() || req.deployment.is_empty() {
        return Err(WakeError::Malformed(
            "namespace and deployment must not be empty".into(),
        ));
    }
    Ok(req)
}

/// What a wake will do, worked out from the cached Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakePlan {
    /// The Deployment.
    pub key: DeploymentKey,
    /// `spec.replicas` in the cache.
    pub current: u32,
    /// The count to scale to from zero: max(1, activation-scale), within max-scale.
    pub to: u32,
    /// The cached resourceVersion, the precondition of the patch.
    pub resource_version: Option<String>,
    /// Its capacity pool (configured), whose admission is the leader's.
    pub pool: Option<String>,
}

/// Plans a wake from the cached Deployment (None: not in the cache).
pub fn plan(
    req: &WakeRequest,
    cached: Option<&Deployment>,
    global: &GlobalConfig,
) -> Result<WakePlan, WakeError> {
    let key = DeploymentKey::new(&req.namespace, &req.deployment);
    let dep = cached.ok_or_else(|| WakeError::NotFound(key.clone()))?;
    let annotations = dep.metadata.annotations.clone().unwrap_or_default();
    if !zeroscale_config::is_opted_in(&annotations) {
        return Err(WakeError::NotOptedIn(key));
    }
    // A bad annotation was already reported by the index; here its global fallback is fine.
    let (settings, _) = DeploymentSettings::resolve(global, &annotations);
    let p = &settings.scaling;
    let mut to = p.activation_scale.max(1).max(p.min_scale);
    if p.max_scale > 0 {
        to = to.min(p.max_scale).max(1);
    }
    let current = dep
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as u32;
    Ok(WakePlan {
        key,
        current,
        to,
        resource_version: dep.metadata.resource_version.clone(),
        pool: settings.pool,
    })
}

fn api_error(e: kube::Error, key: &DeploymentKey) -> WakeError {
    match e {
        kube::Error::Api(s) if s.code == 404 => WakeError::NotFound(key.clone()),
        other => WakeError::Unavailable(other.to_string()),
    }
}

/// Carries out a plan: one precondition PATCH in the common case; on conflict re-read and
/// either stop (already scaled) or retry with the fresh resourceVersion.
///
/// `on_patch` is called right before the first PATCH is sent (for the latency metric).
pub async fn execute(
    api: &Api<Deployment>,
    plan: &WakePlan,
    timeout: Duration,
    on_patch: impl FnOnce(),
) -> Result<WakeAnswer, WakeError> {
    if plan.current > 0 || plan.pool.is_some() {
        return Ok(WakeAnswer {
            replicas: plan.current,
            scaled: false,
            pool: plan.pool.clone().filter(|_| plan.current == 0),
        });
    }
    let work = async {
        let mut resource_version = plan.resource_version.clone();
        let mut on_patch = Some(on_patch);
        for _ in 0..3 {
            let mut patch = serde_json::json!({ "spec": { "replicas": plan.to } });
            if let Some(rv) = &resource_version {
                patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
            }
            if let Some(f) = on_patch.take() {
                f();
            }
            match api
                .patch_scale(
                    &plan.key.deployment,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(scale) => {
                    let replicas = scale
                        .spec
                        .and_then(|s| s.replicas)
                        .unwrap_or(plan.to as i32);
                    return Ok(WakeAnswer {
                        replicas: replicas.max(0) as u32,
                        scaled: true,
                        pool: None,
                    });
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let scale = api
                        .get_scale(&plan.key.deployment)
                        .await
                        .map_err(|e| api_error(e, &plan.key))?;
                    let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
                    if replicas > 0 {
                        return Ok(WakeAnswer {
                            replicas,
                            scaled: false,
                            pool: None,
                        });
                    }
                    resource_version = scale.metadata.resource_version;
                }
                Err(e) => return Err(api_error(e, &plan.key)),
            }
        }
        Err(WakeError::Unavailable(
            "scale kept changing under three attempts".into(),
        ))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(WakeError::Unavailable(format!(
            "no answer from the API server within {timeout:?}"
        ))),
    }
}

/// The JSON body of an error answer.
pub fn error_body(e: &WakeError) -> String {
    serde_json::json!({ "error": e.to_string() }).to_string()
}

/// Time since `received`, for the latency histogram.
pub fn since(received: Instant) -> f64 {
    received.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use kube::api::ObjectMeta;

    use super::*;

    fn deployment(annotations: &[(&str, &str)], replicas: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("llama".into()),
                namespace: Some("models".into()),
                resource_version: Some("42".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn req() -> WakeRequest {
        parse(br#"{"namespace":"models","deployment":"llama","queued":3}"#).unwrap()
    }

    #[test]
    fn parses_the_contract_body() {
        assert_eq!(
            req(),
            WakeRequest {
                namespace: "models".into(),
                deployment: "llama".into(),
                queued: 3
            }
        );
        let no_queued = parse(br#"{"namespace":"a","deployment":"b"}"#).unwrap();
        assert_eq!(no_queued.queued, 0);
    }

    #[test]
    fn malformed_bodies_are_400() {
        for body in [
            &b"not json"[..],
            br#"{"namespace":"a"}"#,
            br#"{"namespace":"","deployment":"b"}"#,
            b"",
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST, "{body:?}");
        }
    }

    #[test]
    fn unknown_deployment_is_404() {
        let e = plan(&req(), None, &GlobalConfig::default()).unwrap_err();
        assert_eq!(e.status(), http::StatusCode::NOT_FOUND);
        assert_eq!(e.to_string(), "deployment models/llama not found");
    }

    #[test]
    fn not_opted_in_is_422_with_a_hint() {
        let d = deployment(&[], 0);
        let e = plan(&req(), Some(&d), &GlobalConfig::default()).unwrap_err();
        assert_eq!(e.status(), http::StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.to_string().contains("zeroscale.dev/enabled"), "{e}");
        let d = deployment(&[("zeroscale.dev/enabled", "false")], 0);
        assert!(matches!(
            plan(&req(), Some(&d), &GlobalConfig::default()),
            Err(WakeError::NotOptedIn(_))
        ));
    }

    #[test]
    fn plans_activation_scale_with_precondition() {
        let d = deployment(&[("zeroscale.dev/enabled", "true")], 0);
        let p = plan(&req(), Some(&d), &GlobalConfig::default()).unwrap();
        assert_eq!(
            p,
            WakePlan {
                key: DeploymentKey::new("models", "llama"),
                current: 0,
                to: 1,
                resource_version: Some("42".into()),
                pool: None,
            }
        );
        let d = deployment(
            &[
                ("zeroscale.dev/enabled", "true"),
                ("zeroscale.dev/activation-scale", "3"),
            ],
            0,
        );
        assert_eq!(
            plan(&req(), Some(&d), &GlobalConfig::default()).unwrap().to,
            3
        );
        let d = deployment(
            &[
                ("zeroscale.dev/enabled", "true"),
                ("zeroscale.dev/activation-scale", "3"),
                ("zeroscale.dev/max-scale", "2"),
            ],
            0,
        );
        assert_eq!(
            plan(&req(), Some(&d), &GlobalConfig::default()).unwrap().to,
            2
        );
    }

    #[tokio::test]
    async fn an_already_running_deployment_is_not_patched() {
        // The API is never reached: the client points nowhere and would fail.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let api: Api<Deployment> = Api::namespaced(client, "models");
        let d = deployment(&[("zeroscale.dev/enabled", "true")], 2);
        let p = plan(&req(), Some(&d), &GlobalConfig::default()).unwrap();
        let answer = execute(&api, &p, Duration::from_secs(1), || {
            panic!("must not patch")
        })
        .await
        .unwrap();
        assert_eq!(
            answer,
            WakeAnswer {
                replicas: 2,
                scaled: false,
                pool: None,
            }
        );
    }

    #[tokio::test]
    async fn a_pooled_deployment_is_never_patched_here() {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let api: Api<Deployment> = Api::namespaced(client, "models");
        let data = BTreeMap::from([("pools".to_owned(), "a100=2".to_owned())]);
        let (global, errors) = GlobalConfig::from_configmap(&data, &GlobalConfig::default());
        assert!(errors.is_empty());
        let d = deployment(
            &[
                ("zeroscale.dev/enabled", "true"),
                ("zeroscale.dev/pool", "a100"),
            ],
            0,
        );
        let p = plan(&req(), Some(&d), &global).unwrap();
        assert_eq!(p.pool.as_deref(), Some("a100"));
        let answer = execute(&api, &p, Duration::from_secs(1), || {
            panic!("must not patch a pooled Deployment")
        })
        .await
        .unwrap();
        assert_eq!(
            answer,
            WakeAnswer {
                replicas: 0,
                scaled: false,
                pool: Some("a100".into()),
            }
        );
        // Without the pool configured it is an ordinary wake.
        let p = plan(&req(), Some(&d), &GlobalConfig::default()).unwrap();
        assert_eq!(p.pool, None);
    }

    #[tokio::test]
    async fn an_unreachable_api_is_503() {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let api: Api<Deployment> = Api::namespaced(client, "models");
        let d = deployment(&[("zeroscale.dev/enabled", "true")], 0);
        let p = plan(&req(), Some(&d), &GlobalConfig::default()).unwrap();
        let e = execute(&api, &p, Duration::from_secs(5), || {})
            .await
            .unwrap_err();
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    }
}
