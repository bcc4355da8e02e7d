//! Classifying a request: which model does it address, and how.
//!
//! Order: Host header (see `table` for the forms), then KServe paths
//! (`/v1/models/{m}`, `/v1/models/{m}:predict`, `/v1/models/{m}:explain`, `/v2/models/{m}`,
//! `/v2/models/{m}/...`), then the `model` field of OpenAI-style JSON bodies on
//! `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings`, also under KServe's
//! `/openai` prefix. A Host that names no model falls through to the path, so clients may
//! address the activator by its own name. KServe's `KServe-Isvc-Name` / `KServe-Isvc-Namespace`
//! headers ([`isvc_headers`]) come before all of them.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use zeroscale_gate::balance::PrefixKey;

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

/// What routing reads of an OpenAI-style body, in one parse: the model, and where the prompt is
/// (left unparsed until a model balancing by prefix asks for it, [`BodyRoute::prefix_key`]).
#[derive(Deserialize)]
pub struct BodyRoute<'a> {
    model: Option<String>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
    /// Left raw: a `stream` that is not a boolean is the pod's to refuse, not a routing error.
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl BodyRoute<'_> {
    /// `"stream": true`: the client asked for server-sent events (module `hold`).
    pub fn streams(&self) -> bool {
        self.stream.is_some_and(|s| s.get() == "true")
    }

    /// The prefix-hash key of the first `chars` characters of the prompt: the text contents of
    /// `messages` one after another (a string content, or the `text` of each part of an array
    /// content), else `prompt` (a string, or the first of an array of strings). `None` when
    /// there is no such text (token-id prompts, no prompt at all, a shape not understood): the
    /// request then goes by least requests.
    pub fn prefix_key(&self, chars: u32) -> Option<u64> {
        let mut key = PrefixKey::new(chars);
        if let Some(raw) = self.messages {
            let messages: Vec<Message<'_>> = serde_json::from_str(raw.get()).ok()?;
            for content in messages.iter().filter_map(|m| m.content) {
                let more = match content.get().as_bytes().first() {
                    Some(b'"') => {
                        key.feed(&serde_json::from_str::<Text<'_>>(content.get()).ok()?.0)
                    }
                    Some(b'[') => {
                        let parts: Vec<Part<'_>> = serde_json::from_str(content.get()).ok()?;
                        parts
                            .iter()
                            .filter_map(|p| p.text.as_deref())
                            .all(|t| key.feed(t))
                    }
                    _ => true,
                };
                if !more {
                    break;
                }
            }
        } else if let Some(raw) = self.prompt {
            let text = match raw.get().as_bytes().first() {
                Some(b'"') => serde_json::from_str::<Text<'_>>(raw.get()).ok()?.0,
                Some(b'[') => {
                    serde_json::from_str::<Vec<&RawValue>>(raw.get())
                        .ok()?
                        .first()
                        .and_then(|first| serde_json::from_str::<Text<'_>>(first.get()).ok())?
                        .0
                }
                _ => return None,
            };
            key.feed(&text);
        }
        key.finish()
    }
}

/// An `Accept` value that asks for server-sent events (`text/event-stream`, any case, among
/// other media types or with parameters).
pub fn accepts_event_stream(accept: &[u8]) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    accept
        .windows(SSE.len())
        .any(|w| w.eq_ignore_ascii_case(SSE))
}

/// The `model` field of an OpenAI-style JSON body.
pub fn model_from_body(body: &Bytes) -> Result<String, BodyError> {
    route_body(body).map(|r| r.1)
}

/// An OpenAI-style JSON body read for routing: where its prompt is, and its `model` field.
pub fn route_body(body: &Bytes) -> Result<(BodyRoute<'_>, String), BodyError> {
    // serde would read `["m"]` as the struct's fields in order: only an object names a model.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(BodyError::InvalidJson(
            "expected a JSON object with a string \"model\" field".into(),
        ));
    }
    let mut f: BodyRoute<'_> =
        serde_json::from_slice(body).map_err(|e| BodyError::InvalidJson(e.to_string()))?;
    match f.model.take() {
        Some(m) if !m.is_empty() => Ok((f, m)),
        _ => Err(BodyError::MissingModel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_asked_for_by_the_body_or_by_accept() {
        let streams = |b: &'static str| {
            route_body(&Bytes::from_static(b.as_bytes())).map(|(r, _)| r.streams())
        };
        assert_eq!(streams(r#"{"model":"m","stream":true}"#), Ok(true));
        assert_eq!(streams(r#"{"stream": true ,"model":"m"}"#), Ok(true));
        assert_eq!(streams(r#"{"model":"m","stream":false}"#), Ok(false));
        assert_eq!(streams(r#"{"model":"m"}"#), Ok(false));
        // Not a boolean: not a stream, and still routed (the pod judges it).
        assert_eq!(streams(r#"{"model":"m","stream":"true"}"#), Ok(false));
        assert_eq!(streams(r#"{"model":"m","stream":{"a":1}}"#), Ok(false));
        assert!(accepts_event_stream(b"text/event-stream"));
        assert!(accepts_event_stream(
            b"application/json, Text/Event-Stream; q=0.9"
        ));
        assert!(!accepts_event_stream(b"application/json"));
        assert!(!accepts_event_stream(b"text/event"));
        assert!(!accepts_event_stream(b""));
    }

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

    #[test]
    fn prompt_prefix_keys() {
        let key = |body: &str, n| {
            let body = Bytes::from(body.to_string());
            let (r, _) = route_body(&body).expect("routable");
            r.prefix_key(n)
        };
        let chat = |system: &str, user: &str| {
            format!(
                r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{user}"}}]}}"#
            )
        };
        // A shared system prompt longer than N: one key, whatever follows.
        assert_eq!(
            key(&chat("You are terse.", "hi"), 10),
            key(&chat("You are terse.", "bye"), 10)
        );
        assert_ne!(
            key(&chat("You are terse.", "hi"), 20),
            key(&chat("You are terse.", "bye"), 20)
        );
        // Contents in order, string or parts; escapes are the text they stand for.
        assert_eq!(
            key(&chat("ab", "cd"), 4),
            key(
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a\u0062"},{"type":"image_url","image_url":{}},{"type":"text","text":"cd"}]}]}"#,
                4
            )
        );
        // A completion prompt is keyed the same way as the same text in messages.
        assert_eq!(
            key(r#"{"model":"m","prompt":"abcdef"}"#, 4),
            key(&chat("abcd", "x"), 4)
        );
        assert_eq!(
            key(r#"{"model":"m","prompt":["abcdef","zzz"]}"#, 4),
            key(r#"{"model":"m","prompt":"abcdxx"}"#, 4)
        );
        // No prompt text: no key (least requests).
        for none in [
            r#"{"model":"m"}"#,
            r#"{"model":"m","prompt":[1,2,3]}"#,
            r#"{"model":"m","prompt":null}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[]}]}"#,
            r#"{"model":"m","messages":"nope"}"#,
            r#"{"model":"m","input":"embed me"}"#,
        ] {
            assert_eq!(key(none, 8), None, "{none}");
        }
    }
}
