//! The one Event publisher: notes cut to the API's limit, a digest of the note in the action,
//! a timeout, failures logged and never fatal, and publishing off the caller's task when the
//! caller must not wait.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The API server rejects an Event whose note is longer than this many bytes.
pub const MAX_NOTE_BYTES: usize = 1000;

/// How long publishing one Event may take when the caller has no API timeout of its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Cuts `note` to at most [`MAX_NOTE_BYTES`], at a character boundary.
pub fn truncate_note(note: &mut String) {
    if note.len() > MAX_NOTE_BYTES {
        let mut cut = MAX_NOTE_BYTES;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
}

/// The Event for `note`: truncated, with action `{reason}-{digest of the note}` (see
/// [`zeroscale_config::note_digest`] for why the digest is there).
pub fn event(type_: EventType, reason: &str, note: String) -> Event {
    let mut note = note;
    truncate_note(&mut note);
    let digest = zeroscale_config::note_digest(&note);
    Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: format!("{reason}-{digest:08x}"),
        secondary: None,
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Publishes Events as one controller instance.
#[derive(Clone)]
pub struct Publisher {
    recorder: Recorder,
    timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher reporting as `controller` (e.g. `zeroscale-autoscaler`), instance
    /// `instance` (the pod name), each publish bounded by `timeout`.
    pub fn new(
        client: Client,
        controller: &str,
        instance: Option<String>,
        timeout: Duration,
    ) -> Self {
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: controller.to_owned(),
                instance,
            },
        );
        Self { recorder, timeout }
    }

    /// Records an Event on `regarding` and waits for it (at most the timeout); failures are
    /// logged, never returned.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let mut ev = event(type_, reason, note);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut fresh = false;
        loop {
            match tokio::time::timeout_at(deadline, self.recorder.publish(&ev, regarding)).await {
                Ok(Ok(())) => return,
                // The recorder counts a repeat by patching the Event it made before (its cache
                // is keyed by the object's name, not by which incarnation of it). When that
                // Event is gone (the object, or its namespace, was deleted and made again), the
                // repeat is lost: record it as a new occurrence instead, once.
                Ok(Err(kube::Error::Api(e))) if e.code == 404 && !fresh => {
                    fresh = true;
                    ev.action = format!("{}-{:x}", ev.action, now_nanos());
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, reason, "could not record event");
                    return;
                }
                Err(_) => {
                    tracing::warn!(reason, "recording an event timed out");
                    return;
                }
            }
        }
    }

    /// Records an Event from a task of its own: the caller (a request, a sync) never waits
    /// for the API server.
    pub fn spawn(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &'static str,
        note: String,
    ) {
        let this = self.clone();
        tokio::spawn(async move { this.publish(&regarding, type_, reason, note).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_at_a_character_boundary() {
        let mut short = "fits".to_owned();
        truncate_note(&mut short);
        assert_eq!(short, "fits");
        // 999 ASCII bytes then a 3-byte character straddling the limit.
        let mut note = "a".repeat(999) + "€€";
        truncate_note(&mut note);
        assert_eq!(note.len(), 999);
        let mut exact = "b".repeat(MAX_NOTE_BYTES + 500);
        truncate_note(&mut exact);
        assert_eq!(exact.len(), MAX_NOTE_BYTES);
    }

    #[test]
    fn the_action_carries_a_digest_of_the_note_as_sent() {
        let a = event(EventType::Normal, "Scaled", "Scaled 1 -> 3".into());
        let b = event(EventType::Normal, "Scaled", "Scaled 3 -> 0".into());
        assert!(a.action.starts_with("Scaled-"));
        assert_eq!(a.action.len(), "Scaled-".len() + 8);
        assert_ne!(a.action, b.action);
        // The digest is of the truncated note: two notes equal in their first kilobyte are
        // one occurrence, as the API would store them.
        let long1 = event(EventType::Warning, "X", "c".repeat(2000));
        let long2 = event(EventType::Warning, "X", "c".repeat(3000));
        assert_eq!(long1.action, long2.action);
        assert_eq!(long1.note.as_deref().map(str::len), Some(MAX_NOTE_BYTES));
    }

    /// A stand-in API server: records each request body, then answers 500 (or never, when
    /// `hang`).
    #[derive(Clone)]
    struct StandIn {
        bodies: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        hang: bool,
    }

    impl tower_service::Service<http::Request<kube::client::Body>> for StandIn {
        type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
        >;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
            let this = self.clone();
            Box::pin(async move {
                use http_body_util::BodyExt;
                let body = req.into_body().collect().await.unwrap().to_bytes();
                this.bodies.lock().unwrap().push(body.to_vec());
                if this.hang {
                    std::future::pending::<()>().await;
                }
                let status = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"no","reason":"InternalError","code":500}"#;
                Ok(http::Response::builder()
                    .status(500)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(status)))
                    .unwrap())
            })
        }
    }

    fn regarding() -> ObjectReference {
        ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("Deployment".into()),
            namespace: Some("ns".into()),
            name: Some("m".into()),
            ..Default::default()
        }
    }

    fn publisher(hang: bool) -> (Publisher, StandIn) {
        let stand_in = StandIn {
            bodies: Default::default(),
            hang,
        };
        let client = Client::new(stand_in.clone(), "default");
        let p = Publisher::new(client, "test", Some("me".into()), Duration::from_secs(5));
        (p, stand_in)
    }

    #[tokio::test]
    async fn a_refused_event_is_logged_and_what_was_sent_is_truncated_and_digested() {
        let (p, stand_in) = publisher(false);
        p.publish(&regarding(), EventType::Warning, "Bad", "x".repeat(5000))
            .await;
        let bodies = stand_in.bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), 1);
        let sent: serde_json::Value = serde_json::from_slice(&bodies[0]).unwrap();
        assert_eq!(sent["note"].as_str().map(str::len), Some(MAX_NOTE_BYTES));
        let digest = zeroscale_config::note_digest(&"x".repeat(MAX_NOTE_BYTES));
        assert_eq!(sent["action"], format!("Bad-{digest:08x}"));
        assert_eq!(sent["reason"], "Bad");
        assert_eq!(sent["reportingController"], "test");
    }

    /// A stand-in API server that creates every Event (201, the body echoed) and answers 404 to
    /// every PATCH: an Event deleted with its namespace.
    #[derive(Clone, Default)]
    struct Gone {
        calls: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    }

    impl tower_service::Service<http::Request<kube::client::Body>> for Gone {
        type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
        >;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
            let this = self.clone();
            Box::pin(async move {
                use http_body_util::BodyExt;
                let method = req.method().to_string();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                this.calls.lock().unwrap().push((method.clone(), v));
                let (code, answer) = if method == "POST" {
                    (201, body.to_vec())
                } else {
                    (404, br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"gone","reason":"NotFound","code":404}"#.to_vec())
                };
                Ok(http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(answer)))
                    .unwrap())
            })
        }
    }

    #[tokio::test]
    async fn a_repeat_whose_first_event_is_gone_is_recorded_anew() {
        let gone = Gone::default();
        let client = Client::new(gone.clone(), "default");
        let p = Publisher::new(client, "test", None, Duration::from_secs(5));
        for _ in 0..2 {
            p.publish(
                &regarding(),
                EventType::Normal,
                "Scaled",
                "Scaled 0 -> 1".into(),
            )
            .await;
        }
        let calls = gone.calls.lock().unwrap().clone();
        let methods: Vec<&str> = calls.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(methods, ["POST", "PATCH", "POST"], "{calls:?}");
        assert_eq!(calls[2].1["note"], "Scaled 0 -> 1");
        assert_ne!(calls[2].1["action"], calls[0].1["action"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_server_that_never_answers_costs_the_timeout_only() {
        let (p, stand_in) = publisher(true);
        let started = tokio::time::Instant::now();
        p.publish(
            &regarding(),
            EventType::Normal,
            "Scaled",
            "Scaled 0 -> 1".into(),
        )
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(stand_in.bodies.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn spawn_returns_at_once_and_publishes_in_the_background() {
        let (p, stand_in) = publisher(true);
        p.spawn(
            regarding(),
            EventType::Normal,
            "Scaled",
            "Scaled 0 -> 1".into(),
        );
        assert!(
            stand_in.bodies.lock().unwrap().is_empty(),
            "published inline"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(stand_in.bodies.lock().unwrap().len(), 1);
    }
}
