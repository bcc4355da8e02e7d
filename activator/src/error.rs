//! Errors of the request path and the one place where they become HTTP answers ([`rescue`]).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::answer::RespBody;
use crate::forward::Refusal;
use crate::queue::QueueError;
use crate::route::BodyError;

/// How to address a model; part of every 404 so a person can fix the request.
pub const ADDRESSING_HINT: &str = "address a model by Host `{model}.{namespace}` (any port or \
domain suffix) or one of its zeroscale.dev/hostnames, by path `/v1/models/{model}[:predict|:explain]` \
or `/v2/models/{model}/...`, or by the \"model\" field of a JSON body on `/v1/chat/completions`, \
`/v1/completions` or `/v1/embeddings`";

/// Everything that can go wrong between accepting a request and answering it.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request head breaks the forwarding policy ([`crate::forward`]).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The request head could not be parsed.
    #[error("the request is not valid HTTP/1.1: {0}")]
    Malformed(String),
    /// The request head is over the limit.
    #[error("the request head is larger than {0} bytes")]
    HeadTooLarge(usize),
    /// Nothing in the request names a model.
    #[error("no model is addressed by this request")]
    NoRoute,
    /// The request names a model that is not routed.
    #[error("model {0:?} is not known to the activator")]
    UnknownModel(String),
    /// The body, buffered to read its `model` field, is over the limit.
    #[error("the request body is larger than {0} bytes, the limit for routing by body")]
    BodyTooLarge(usize),
    /// The body could not be read for routing.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The client's body failed while being read.
    #[error("reading the request body failed: {0}")]
    ClientBody(String),
    /// No capacity: queue full, deadline or model removed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The backend could not be reached or failed before its answer head. The detail (with
    /// the pod's address) is for logs only: answers never show the cluster's topology.
    #[error("the model server failed to answer")]
    Backend(String),
    /// No answer head within the model's response timeout.
    #[error("the model server sent no answer within {}s (response-timeout)", .0.as_secs_f64())]
    ResponseTimeout(std::time::Duration),
    /// The client's body paused longer than the model's idle timeout.
    #[error("the request body paused for more than {}s (idle-timeout)", .0.as_secs_f64())]
    BodyTimeout(std::time::Duration),
}

impl ProxyError {
    /// A short machine-readable name, used as a metric label and in the JSON body.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Refused(r) => r.reason(),
            ProxyError::Malformed(_) => "malformed_http",
            ProxyError::HeadTooLarge(_) => "header_too_large",
            ProxyError::ResponseTimeout(_) => "response_timeout",
            ProxyError::BodyTimeout(_) => "idle_timeout",
            ProxyError::NoRoute => "no_route",
            ProxyError::UnknownModel(_) => "unknown_model",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::Body(BodyError::InvalidJson(_)) => "invalid_json",
            ProxyError::Body(BodyError::MissingModel) => "missing_model",
            ProxyError::ClientBody(_) => "client_body",
            ProxyError::Queue(QueueError::Full { .. }) => "queue_full",
            ProxyError::Queue(QueueError::Deadline(_)) => "queue_deadline",
            ProxyError::Queue(QueueError::Closed) => "unavailable",
            ProxyError::Backend(_) => "backend_failed",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Refused(r) => r.status(),
            ProxyError::Malformed(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoRoute | ProxyError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Body(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::Queue(QueueError::Full { .. }) | ProxyError::Queue(QueueError::Closed) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Queue(QueueError::Deadline(_)) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Backend(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Turns an error into the answer the client gets: status, JSON body, and Retry-After when
/// retrying later can help.
pub fn rescue(err: &ProxyError) -> Response<RespBody> {
    let status = err.status();
    let mut resp = Response::new(RespBody::full(Bytes::from(error_json(err))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let retry_after = match err {
        ProxyError::Queue(QueueError::Full { retry_after, .. }) => Some(*retry_after),
        ProxyError::Queue(QueueError::Closed) => Some(1),
        _ => None,
    };
    if let Some(s) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if err.closes_connection() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if matches!(err, ProxyError::Refused(Refusal::Connect)) {
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
    }
    resp
}

/// The JSON body of `err`'s answer: `{"error":{"code","type","message"}}`. Also the data of a
/// held stream's final `error` event (module `hold`), so both say the same.
pub fn error_json(err: &ProxyError) -> String {
    let status = err.status();
    let message = match err {
        ProxyError::NoRoute | ProxyError::UnknownModel(_) => format!("{err}: {ADDRESSING_HINT}"),
        _ => err.to_string(),
    };
    serde_json::json!({
        "error": {
            "code": status.as_u16(),
            "type": err.reason(),
            "message": message,
        }
    })
    .to_string()
}

impl ProxyError {
    /// After this answer the client connection is closed: what follows the head on it cannot
    /// be trusted to start a new request (a refused or unparseable head, an unread body).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::Refused(_)
                | ProxyError::Malformed(_)
                | ProxyError::HeadTooLarge(_)
                | ProxyError::BodyTimeout(_)
        )
    }
}
