//! Classifying a request: which model does it address, and how.
//!
//! Order: Host header (see `table` for the forms), then KServe paths
//! (`/v1/models/{m}`, `/v1/models/{m}:predict`, `/v1/models/{m}:explain`, `/v2/models/{m}`,
//! `/v2/models/{m}/...`), then the `model` field of OpenAI-style JSON bodies on
//! `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings`, also under KServe's
//! `/openai` prefix. A Host that names no model falls through to the path, so clients may
//! address the activator by its own name. KServe's `KServe-Isvc-Name` / `KServe-Isvc-Namespace`
//! headers ([`isvc_headers`]) come before all of them.

use bytes::Bytes;
use serde::Deserialize;

/// How the path addresses a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRoute<'a> {
    /// A KServe v1/v2 path naming the model.
    Named(&'a str),
    /// An OpenAI-style path: the model is in the JSON body.
    Body,
    /// Nothing in the path names a model.
    None,
}

/// Reads the model from a KServe or OpenAI path.
pub fn classify_path(path: &str) -> PathRoute<'_> {
    if let Some(rest) = path.strip_prefix("/v1/models/") {
        // `{m}` or `{m}:predict` / `{m}:explain`; nothing after a further `/`.
        let (name, verb) = match rest.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (rest, None),
        };
        let verb_ok = matches!(verb, None | Some("predict") | Some("explain"));
        if verb_ok && valid_name(name) {
            return PathRoute::Named(name);
        }
        return PathRoute::None;
    }
    if let Some(rest) = path.strip_prefix("/v2/models/") {
        let name = rest.split('/').next().unwrap_or("");
        if valid_name(name) {
            return PathRoute::Named(name);
        }
        return PathRoute::None;
    }
    // KServe's runtimes serve the OpenAI routes under `/openai` (`KSERVE_OPENAI_ROUTE_PREFIX`'s
    // default), and so do clients that call them through KServe.
    match path.strip_prefix(KSERVE_OPENAI_PREFIX).unwrap_or(path) {
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" => PathRoute::Body,
        _ => PathRoute::None,
    }
}

/// The prefix of KServe's OpenAI routes (`/openai/v1/chat/completions`).
pub const KSERVE_OPENAI_PREFIX: &str = "/openai";

/// The InferenceService (name, namespace) named by KServe's `KServe-Isvc-Name` and
/// `KServe-Isvc-Namespace` headers, both present and valid names; `header` looks one up by its
/// lower-case name.
pub fn isvc_headers<'a>(header: impl Fn(&str) -> Option<&'a [u8]>) -> Option<(&'a str, &'a str)> {
    use zeroscale_config::kserve::{ISVC_NAME_HEADER, ISVC_NAMESPACE_HEADER};
    let text = |name| {
        header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| valid_name(v))
    };
    Some((text(ISVC_NAME_HEADER)?, text(ISVC_NAMESPACE_HEADER)?))
}

/// Model names as Kubernetes allows them in annotations and names: no separators, no spaces.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Why the `model` field of a body could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON, or not an object.
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// A JSON object without a string `model` field.
    #[error("the JSON body has no \"model\" field; it names the model to route to")]
    MissingModel,
}

#[derive(Deserialize)]
struct ModelField {
    model: Option<String>,
}

/// The `model` field of an OpenAI-style JSON body.
pub fn model_from_body(body: &Bytes) -> Result<String, BodyError> {
    // serde would read `["m"]` as the struct's fields in order: only an object names a model.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(BodyError::InvalidJson(
            "expected a JSON object with a string \"model\" field".into(),
        ));
    }
    let f: ModelField =
        serde_json::from_slice(body).map_err(|e| BodyError::InvalidJson(e.to_string()))?;
    match f.model {
        Some(m) if !m.is_empty() => Ok(m),
        _ => Err(BodyError::MissingModel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kserve_paths() {
        assert_eq!(classify_path("/v1/models/iris"), PathRoute::Named("iris"));
        assert_eq!(
            classify_path("/v1/models/iris:predict"),
            PathRoute::Named("iris")
        );
        assert_eq!(
            classify_path("/v1/models/iris:explain"),
            PathRoute::Named("iris")
        );
        assert_eq!(classify_path("/v1/models/iris:train"), PathRoute::None);
        assert_eq!(classify_path("/v1/models/"), PathRoute::None);
        assert_eq!(classify_path("/v1/models/a/b"), PathRoute::None);
        assert_eq!(classify_path("/v2/models/iris"), PathRoute::Named("iris"));
        assert_eq!(
            classify_path("/v2/models/iris/infer"),
            PathRoute::Named("iris")
        );
        assert_eq!(
            classify_path("/v2/models/iris/versions/1/infer"),
            PathRoute::Named("iris")
        );
        assert_eq!(classify_path("/v2/models//infer"), PathRoute::None);
        assert_eq!(classify_path("/v2/models/a%2Fb/infer"), PathRoute::None);
    }

    #[test]
    fn openai_paths() {
        assert_eq!(classify_path("/v1/chat/completions"), PathRoute::Body);
        assert_eq!(classify_path("/v1/completions"), PathRoute::Body);
        assert_eq!(classify_path("/v1/embeddings"), PathRoute::Body);
        assert_eq!(classify_path("/v1/models"), PathRoute::None);
        assert_eq!(classify_path("/"), PathRoute::None);
        assert_eq!(
            classify_path("/openai/v1/chat/completions"),
            PathRoute::Body
        );
        assert_eq!(classify_path("/openai/v1/completions"), PathRoute::Body);
        assert_eq!(classify_path("/openai/v1/embeddings"), PathRoute::Body);
        assert_eq!(classify_path("/openai/v1/models"), PathRoute::None);
        assert_eq!(classify_path("/openai"), PathRoute::None);
        assert_eq!(classify_path("/openaiv1/completions"), PathRoute::None);
    }

    #[test]
    fn isvc_headers_need_both_valid() {
        let with = |pairs: &'static [(&'static str, &'static str)]| {
            isvc_headers(move |n| {
                pairs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.as_bytes())
            })
        };
        assert_eq!(
            with(&[
                ("KServe-Isvc-Name", "iris"),
                ("KServe-Isvc-Namespace", "models")
            ]),
            Some(("iris", "models"))
        );
        assert_eq!(with(&[("KServe-Isvc-Name", "iris")]), None);
        assert_eq!(
            with(&[
                ("KServe-Isvc-Name", "a/b"),
                ("KServe-Isvc-Namespace", "models")
            ]),
            None
        );
        assert_eq!(with(&[]), None);
    }

    #[test]
    fn body_model() {
        let b = |s: &str| Bytes::from(s.to_string());
        assert_eq!(
            model_from_body(&b(r#"{"model":"m","messages":[]}"#)),
            Ok("m".into())
        );
        assert_eq!(
            model_from_body(&b(r#"{"messages":[]}"#)),
            Err(BodyError::MissingModel)
        );
        assert_eq!(
            model_from_body(&b(r#"{"model":""}"#)),
            Err(BodyError::MissingModel)
        );
        assert!(
            matches!(model_from_body(&b("{nope")), Err(BodyError::InvalidJson(m)) if m.contains("line 1"))
        );
        assert!(matches!(
            model_from_body(&b("[1]")),
            Err(BodyError::InvalidJson(_))
        ));
        assert!(matches!(
            model_from_body(&b(r#"{"model":3}"#)),
            Err(BodyError::InvalidJson(_))
        ));
        for not_an_object in [r#"["m"]"#, r#""m""#, r#" [{"model":"m"}]"#, "null"] {
            assert!(
                matches!(
                    model_from_body(&b(not_an_object)),
                    Err(BodyError::InvalidJson(_))
                ),
                "{not_an_object}"
            );
        }
        assert!(matches!(
            model_from_body(&b(r#"{"model":["m"]}"#)),
            Err(BodyError::InvalidJson(_))
        ));
        assert_eq!(model_from_body(&b(r#" {"model":"m"}"#)), Ok("m".into()));
    }
}
