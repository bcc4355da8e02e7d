//! Wake signals: telling the autoscaler that a model at zero has requests waiting.
//!
//! `POST {autoscaler}/v1/wake` with `{"namespace","deployment","queued"}` (contract in
//! `docs/architecture.md`). One background task per model at most; the request path only flips
//! an atomic flag (or pokes the running task). The task signals, then signals again every
//! resend interval while requests still wait and no pod is ready; failures (no answer, non-2xx,
//! including 503) back off exponentially. It ends as soon as the queue is empty or a pod is
//! ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::table::{Model, WakeSink};

/// Timeout of one wake POST.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry delay after a failed signal; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Sends wake signals. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Waker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client<HttpConnector, Full<Bytes>>,
    url: Uri,
    resend_millis: AtomicU64,
}

/// The autoscaler URL could not be turned into a wake URL.
#[derive(Debug, thiserror::Error)]
#[error("invalid autoscaler URL {url:?}: {source}")]
pub struct BadUrl {
    url: String,
    source: http::uri::InvalidUri,
}

impl Waker {
    /// A waker for the autoscaler at `base` (e.g. `http://zeroscale-autoscaler.zeroscale-system.svc:8080`).
    pub fn new(base: &str, resend_interval: Duration) -> Result<Self, BadUrl> {
        let full = format!("{}/v1/wake", base.trim_end_matches('/'));
        let url: Uri = full.parse().map_err(|source| BadUrl {
            url: base.to_string(),
            source,
        })?;
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        Ok(Self {
            inner: Arc::new(Inner {
                client: Client::builder(TokioExecutor::new()).build(conn),
                url,
                resend_millis: AtomicU64::new(resend_interval.as_millis() as u64),
            }),
        })
    }

    /// Changes the resend interval (ConfigMap reload).
    pub fn set_resend_interval(&self, d: Duration) {
        self.inner
            .resend_millis
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    async fn run(self, model: Arc<Model>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let gate = model.gate();
            if gate.queued() == 0 || gate.has_ready() {
                model.waking.store(false, Ordering::SeqCst);
                // A request may have queued between the check and the store and seen the flag
                // still set: look again before leaving.
                let still = gate.queued() > 0 && !gate.has_ready();
                if still
                    && model
                        .waking
                        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    continue;
                }
                return;
            }
            let queued = gate.queued();
            let ok = self.send(&model, queued).await;
            gate.metrics().wake_signals.inc();
            let pause = if ok {
                backoff = BACKOFF_MIN;
                Duration::from_millis(self.inner.resend_millis.load(Ordering::Relaxed))
            } else {
                gate.metrics().wake_failures.inc();
                let p = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                p
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = model.wake_now.notified() => {}
            }
        }
    }

    async fn send(&self, model: &Model, queued: usize) -> bool {
        let key = model.key();
        let body = serde_json::json!({
            "namespace": key.namespace,
            "deployment": key.deployment,
            "queued": queued,
        })
        .to_string();
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.inner.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("static request parts are valid");
        let res = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            let resp = self.inner.client.request(req).await?;
            let status = resp.status();
            // Drain the small answer so the connection goes back to the pool.
            let _ = resp.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        })
        .await;
        match res {
            Ok(Ok(s)) if s.is_success() => {
                tracing::info!(model = %key, queued, "wake signal accepted");
                true
            }
            Ok(Ok(s)) => {
                tracing::warn!(model = %key, status = %s, "wake signal refused");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(model = %key, error = %e, "wake signal failed");
                false
            }
            Err(_) => {
                tracing::warn!(model = %key, "wake signal timed out");
                false
            }
        }
    }
}

impl WakeSink for Waker {
    fn wake(&self, model: &Arc<Model>) {
        if model
            .waking
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            tokio::spawn(self.clone().run(model.clone()));
        } else {
            model.wake_now.notify_one();
        }
    }
}
