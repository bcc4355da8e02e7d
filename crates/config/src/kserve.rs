//! What zeroscale reads from KServe (Standard mode, KServe v0.20), in one place for both
//! binaries.
//!
//! KServe creates an InferenceService's predictor as a Deployment `<isvc>-predictor` labelled
//! [`INFERENCE_SERVICE_LABEL`]` = <isvc>`, with the InferenceService's annotations copied onto it,
//! so `zeroscale.dev/*` annotations written on the InferenceService opt it in. Clients address
//! it by the InferenceService's name (`/v1/models/<isvc>:predict`, the OpenAI body's `model`),
//! by KServe's host names (`<isvc>-<namespace>.<domain>`, `<isvc>-predictor-<namespace>.<domain>`,
//! the Service's `<isvc>-predictor.<namespace>.svc...`) and, behind KServe's HTTPRoutes, by its
//! `KServe-Isvc-Name` / `KServe-Isvc-Namespace` headers.

use std::collections::BTreeMap;

/// The label KServe puts on an InferenceService's Deployments: the InferenceService's name.
pub const INFERENCE_SERVICE_LABEL: &str = "serving.kserve.io/inferenceservice";
/// The label KServe puts on each component's Deployment: `predictor`, `transformer`, `explainer`.
pub const COMPONENT_LABEL: &str = "component";
/// The Deployment labels [`inference_service`] reads (and so routing by KServe names); a
/// reader that keeps a Deployment's labels for routing needs these only.
pub const ROUTING_LABELS: [&str; 2] = [INFERENCE_SERVICE_LABEL, COMPONENT_LABEL];
/// The InferenceService annotation choosing who scales its Deployment (copied onto it).
pub const AUTOSCALER_CLASS_ANNOTATION: &str = "serving.kserve.io/autoscalerClass";
/// The header KServe's HTTPRoutes set to the InferenceService's name.
pub const ISVC_NAME_HEADER: &str = "kserve-isvc-name";
/// The header KServe's HTTPRoutes set to the InferenceService's namespace.
pub const ISVC_NAMESPACE_HEADER: &str = "kserve-isvc-namespace";

/// The model name a Deployment is routed by: `zeroscale.dev/model-name` when set, else the
/// InferenceService whose predictor it is (KServe clients name the InferenceService, not
/// `<isvc>-predictor`), else the Deployment's name (a transformer or explainer keeps its own
/// name, `<isvc>-transformer`: the InferenceService's name is its predictor's).
pub fn routed_model_name(
    annotated: Option<&str>,
    deployment: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> String {
    annotated
        .or_else(|| inference_service(labels))
        .unwrap_or(deployment)
        .to_owned()
}

/// The InferenceService whose predictor a Deployment is, from its [`INFERENCE_SERVICE_LABEL`]
/// (and [`COMPONENT_LABEL`] `predictor`, when that label is there).
pub fn inference_service(labels: Option<&BTreeMap<String, String>>) -> Option<&str> {
    let labels = labels?;
    if labels
        .get(COMPONENT_LABEL)
        .is_some_and(|c| c != "predictor")
    {
        return None;
    }
    labels
        .get(INFERENCE_SERVICE_LABEL)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

/// Host keys of an InferenceService's predictor, in the routing table's forms: `<a>.<b>` keys
/// match any host whose first two labels they are (`iris.models.svc.cluster.local`), keys
/// ending in `.*` match any host whose first label is the part before it (KServe's
/// `{{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}` for any domain).
pub fn host_keys(isvc: &str, namespace: &str) -> Vec<String> {
    vec![
        // The `KServe-Isvc-*` headers are looked up under this one too.
        format!("{isvc}.{namespace}"),
        // The predictor Service's own name, `<isvc>-predictor.<namespace>.svc...`.
        format!("{isvc}-predictor.{namespace}"),
        format!("{isvc}-{namespace}.*"),
        format!("{isvc}-predictor-{namespace}.*"),
    ]
}

/// Why an opted-in Deployment's `serving.kserve.io/autoscalerClass` fights zeroscale, if it
/// does. `external` (KServe leaves the replicas alone) and no annotation (not a KServe
/// Deployment, or KServe's default `hpa`, whose HPA the HPA-conflict rule reports) are fine.
pub fn autoscaler_class_conflict(annotations: &BTreeMap<String, String>) -> Option<String> {
    let class = annotations.get(AUTOSCALER_CLASS_ANNOTATION)?.trim();
    let why = match class {
        "external" => return None,
        "hpa" => {
            "KServe creates a HorizontalPodAutoscaler for it, and zeroscale leaves a Deployment an HPA scales alone"
        }
        "none" => {
            "KServe sets its replicas back to minReplicas whenever it reconciles, undoing every scale to zero"
        }
        "keda" => "KEDA's ScaledObject (through its HPA) scales it too",
        _ => "KServe does not hand its replicas over",
    };
    Some(format!(
        "{AUTOSCALER_CLASS_ANNOTATION} is {class:?}: {why}; set {AUTOSCALER_CLASS_ANNOTATION}: \"external\" on the InferenceService so that zeroscale alone scales it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn model_name_is_the_annotation_then_the_inference_service_then_the_deployment() {
        let kserve = map(&[(INFERENCE_SERVICE_LABEL, "iris")]);
        let plain = map(&[("app", "iris")]);
        assert_eq!(
            routed_model_name(None, "iris-predictor", Some(&kserve)),
            "iris"
        );
        assert_eq!(
            routed_model_name(Some("flowers"), "iris-predictor", Some(&kserve)),
            "flowers"
        );
        assert_eq!(
            routed_model_name(None, "iris-predictor", Some(&plain)),
            "iris-predictor"
        );
        assert_eq!(routed_model_name(None, "llama", None), "llama");
        let predictor = map(&[
            (INFERENCE_SERVICE_LABEL, "iris"),
            (COMPONENT_LABEL, "predictor"),
        ]);
        assert_eq!(
            routed_model_name(None, "iris-predictor", Some(&predictor)),
            "iris"
        );
        let transformer = map(&[
            (INFERENCE_SERVICE_LABEL, "iris"),
            (COMPONENT_LABEL, "transformer"),
        ]);
        assert_eq!(
            routed_model_name(None, "iris-transformer", Some(&transformer)),
            "iris-transformer"
        );
        let empty = map(&[(INFERENCE_SERVICE_LABEL, "")]);
        assert_eq!(routed_model_name(None, "d", Some(&empty)), "d");
    }

    #[test]
    fn only_external_hands_the_replicas_over() {
        assert_eq!(autoscaler_class_conflict(&map(&[])), None);
        assert_eq!(
            autoscaler_class_conflict(&map(&[(AUTOSCALER_CLASS_ANNOTATION, "external")])),
            None
        );
        for (class, says) in [
            ("none", "minReplicas"),
            ("hpa", "HorizontalPodAutoscaler"),
            ("keda", "KEDA"),
            ("kpa", "does not hand"),
        ] {
            let note = autoscaler_class_conflict(&map(&[(AUTOSCALER_CLASS_ANNOTATION, class)]))
                .unwrap_or_default();
            assert!(note.contains(says), "{class}: {note}");
            assert!(note.contains(&format!("{class:?}")), "{class}: {note}");
            assert!(note.contains("\"external\""), "{class}: {note}");
        }
    }

    #[test]
    fn host_keys_cover_kserve_names() {
        assert_eq!(
            host_keys("iris", "models"),
            [
                "iris.models",
                "iris-predictor.models",
                "iris-models.*",
                "iris-predictor-models.*"
            ]
        );
    }
}
