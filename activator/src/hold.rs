//! Held streams: a streamed request that waits for its model to wake longer than the model's
//! `hold-streams` delay is answered `200 text/event-stream` at once and kept open with SSE
//! comment heartbeats until its pod answers, so that load balancers and clients that cut idle
//! connections after a minute (knative/serving#13208) do not lose it during a long model load.
//!
//! What the client gets, in order (`docs/configuration.md`, "Held streams"):
//! 1. `200`, `content-type: text/event-stream`, `cache-control: no-cache`, nothing else: the
//!    pod has not answered yet, so none of its headers can be passed on, ever.
//! 2. `: waiting for model {name} ({n}s)` comments, the first at once, then every
//!    `activator-stream-heartbeat-interval`; SSE clients ignore comments.
//! 3. When the pod answers 2xx: `: zeroscale-cold-start: 5.21s` (the `zeroscale-cold-start`
//!    header of part 3, which cannot follow a 200, as a comment; only when that header is on),
//!    then the pod's body byte for byte, frame by frame as it comes (nothing buffered). No
//!    heartbeat follows the pod's answer. The pod's own headers are dropped: its status was
//!    2xx and its content type is taken to be `text/event-stream` (a pod that answers a
//!    streamed request with another type still has its bytes relayed as they are).
//! 4. Otherwise a final `event: error` whose data is the JSON error the non-streamed path
//!    answers (`error::error_json`, the same `{"error":{"code","type","message"}}`: 504
//!    `queue_deadline`, 502 `backend_failed`, ...), or for a pod's non-2xx answer
//!    `{"error":{"code":<pod status>,"type":"model_server_status","message",...,"body":<the
//!    pod's body as text, at most 16 KiB>}}`; then the stream ends.
//!
//! The request is forwarded once, by the same code as every other request (`proxy::send`,
//! run inside this body), so retries, timeouts and the pod slot behave as on the plain path. The
//! work lives in the answer body rather than a spawned task: a client that goes away makes
//! hyper drop the body, which drops the queue ticket (the request leaves the queue and is
//! counted in `queue_abandoned`) or the request at the pod (counted in `client_gone`) exactly as
//! for a client that left a request that was not held.
//!
//! Why the delay: most cold starts of small models end in seconds; answering them as usual
//! keeps the pod's status and headers. Only a wait longer than the delay is worth giving them up.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::answer::RespBody;
use crate::body::BoxError;
use crate::error::{ProxyError, error_json};
use crate::forward::COLD_START_HEADER;
use crate::metrics::Metrics;
use crate::queue::{Permit, QueueError, Ticket};

/// The most bytes of a pod's non-2xx body put into the final error event.
pub const POD_ERROR_BODY_BYTES: usize = 16 << 10;

/// The wait for a pod slot, boxed so that it can go on inside a held stream's body.
pub type Wait = Pin<Box<dyn Future<Output = Result<Permit, QueueError>> + Send>>;

/// The request's exchange with its pod once it has a slot: the pod's answer, or why there is none.
pub type Exchange = Pin<Box<dyn Future<Output = Result<Response<RespBody>, ProxyError>> + Send>>;

/// What became of a queued streamed request after its model's hold delay.
pub enum Held {
    /// A slot came within the delay (or the wait ended otherwise): answer as usual.
    Waited(Result<Permit, QueueError>),
    /// Still waiting: hold it ([`answer`]), the wait goes on.
    Hold(Wait),
}

/// Waits for a slot for at most `after`.
pub async fn wait_or_hold(ticket: Ticket, after: Duration) -> Held {
    let mut wait: Wait = Box::pin(ticket.wait());
    tokio::select! {
        // A slot already there wins over a zero delay.
        biased;
        r = &mut wait => Held::Waited(r),
        () = tokio::time::sleep(after) => Held::Hold(wait),
    }
}

/// The `200` of a held stream; its body sends heartbeats every `interval` while `exchange`
/// (the wait for a slot and the request at the pod) runs, then the pod's stream or a final
/// error event. `since`: when the request was queued (heartbeats say how long it waited).
pub fn answer(
    model: String,
    since: Instant,
    interval: Duration,
    exchange: Exchange,
    metrics: Arc<Metrics>,
) -> Response<RespBody> {
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let body = HeldBody {
        state: State::Waiting(exchange),
        heartbeat,
        model,
        since,
        metrics,
        counted: false,
    };
    let mut resp = Response::new(RespBody::Boxed(body.boxed_unsync()));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

enum State {
    Waiting(Exchange),
    /// A pod's non-2xx answer, read (bounded) into the final event.
    Failing(Pin<Box<dyn Future<Output = Bytes> + Send>>),
    Relaying(RespBody),
    Done,
}

struct HeldBody {
    state: State,
    heartbeat: Interval,
    model: String,
    since: Instant,
    metrics: Arc<Metrics>,
    /// Its outcome was counted; a body dropped before it was counts as `client_gone`.
    counted: bool,
}

impl HeldBody {
    fn outcome(&mut self, outcome: &'static str) {
        self.counted = true;
        self.metrics.held_stream(outcome);
    }
}

impl Body for HeldBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Waiting(exchange) => match exchange.as_mut().poll(cx) {
                    Poll::Ready(Ok(resp)) if resp.status().is_success() => {
                        this.outcome("relayed");
                        let (parts, body) = resp.into_parts();
                        this.state = State::Relaying(body);
                        if let Some(waited) = parts.headers.get(COLD_START_HEADER) {
                            let mut c = Vec::with_capacity(48);
                            c.extend_from_slice(b": ");
                            c.extend_from_slice(COLD_START_HEADER.as_bytes());
                            c.extend_from_slice(b": ");
                            c.extend_from_slice(waited.as_bytes());
                            c.extend_from_slice(b"\n\n");
                            return Poll::Ready(Some(Ok(Frame::data(c.into()))));
                        }
                    }
                    Poll::Ready(Ok(resp)) => {
                        this.outcome("pod_error");
                        this.state = State::Failing(Box::pin(pod_error_event(resp)));
                    }
                    Poll::Ready(Err(e)) => {
                        this.outcome(e.reason());
                        tracing::debug!(model = %this.model, error = %e, "held stream ends with an error event");
                        this.state = State::Done;
                        return Poll::Ready(Some(Ok(Frame::data(error_event(&error_json(&e))))));
                    }
                    Poll::Pending => {
                        return match this.heartbeat.poll_tick(cx) {
                            Poll::Ready(_) => {
                                let waited = this.since.elapsed().as_secs();
                                let beat =
                                    format!(": waiting for model {} ({waited}s)\n\n", this.model);
                                Poll::Ready(Some(Ok(Frame::data(beat.into()))))
                            }
                            Poll::Pending => Poll::Pending,
                        };
                    }
                },
                State::Failing(event) => {
                    return match event.as_mut().poll(cx) {
                        Poll::Ready(e) => {
                            this.state = State::Done;
                            Poll::Ready(Some(Ok(Frame::data(e))))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
                State::Relaying(body) => return Pin::new(body).poll_frame(cx),
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Relaying(b) => b.is_end_stream(),
            State::Done => true,
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for HeldBody {
    fn drop(&mut self) {
        if !self.counted {
            self.metrics.held_stream("client_gone");
        }
    }
}

/// `event: error` with `json` as its data (one line: JSON has no raw newline outside strings,
/// and `serde_json` writes none).
fn error_event(json: &str) -> Bytes {
    let mut e = Vec::with_capacity(json.len() + 24);
    e.extend_from_slice(b"event: error\ndata: ");
    e.extend_from_slice(json.as_bytes());
    e.extend_from_slice(b"\n\n");
    e.into()
}

/// The final event for a pod's non-2xx answer: its status and (the start of) its body.
async fn pod_error_event(resp: Response<RespBody>) -> Bytes {
    let status = resp.status();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    // Read to its end (an error body is small, and the idle timeout cuts one that stalls), so
    // the pod connection goes back to its pool; only its start is kept.
    while let Some(frame) = body.frame().await {
        let Ok(Ok(d)) = frame.map(Frame::into_data) else {
            break; // the pod's body failed: what came is what there is
        };
        let room = POD_ERROR_BODY_BYTES.saturating_sub(text.len());
        text.extend_from_slice(&d[..d.len().min(room)]);
    }
    let json = serde_json::json!({
        "error": {
            "code": status.as_u16(),
            "type": "model_server_status",
            "message": format!("the model server answered {status}"),
            "body": String::from_utf8_lossy(&text),
        }
    });
    error_event(&json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use tokio::sync::oneshot;

    /// Completes a held answer's exchange: the pod's answer, or why there is none.
    type Pod = oneshot::Sender<Result<Response<RespBody>, ProxyError>>;

    /// A held answer over an exchange the test completes, and its metrics.
    fn held(every: Duration) -> (RespBody, Pod, Arc<Metrics>) {
        let metrics = Metrics::register(&mut Registry::default());
        let (tx, rx) = oneshot::channel();
        let exchange: Exchange = Box::pin(async move { rx.await.unwrap() });
        let resp = answer(
            "sentiment".into(),
            Instant::now(),
            every,
            exchange,
            metrics.clone(),
        );
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        (resp.into_body(), tx, metrics)
    }

    /// The next frame's text, if one is ready now.
    fn next(body: &mut RespBody) -> Option<String> {
        let waker = std::task::Waker::noop();
        match Pin::new(body).poll_frame(&mut Context::from_waker(waker)) {
            Poll::Ready(Some(Ok(f))) => {
                Some(String::from_utf8(f.into_data().unwrap().to_vec()).unwrap())
            }
            Poll::Ready(None) => Some(String::new()),
            Poll::Ready(Some(Err(e))) => panic!("{e}"),
            Poll::Pending => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_heartbeat_per_interval_until_the_pod_answers_then_its_bytes() {
        let (mut body, tx, metrics) = held(Duration::from_secs(10));
        assert_eq!(
            next(&mut body).as_deref(),
            Some(": waiting for model sentiment (0s)\n\n")
        );
        assert_eq!(next(&mut body), None, "one heartbeat per interval");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            next(&mut body).as_deref(),
            Some(": waiting for model sentiment (10s)\n\n")
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(next(&mut body), None);
        let mut pod = Response::new(RespBody::full(Bytes::from_static(b"data: 1\n\n")));
        pod.headers_mut()
            .insert(COLD_START_HEADER, HeaderValue::from_static("12.00s"));
        tx.send(Ok(pod)).unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            next(&mut body).as_deref(),
            Some(": zeroscale-cold-start: 12.00s\n\n")
        );
        // Past several intervals: no heartbeat once the pod answered.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(next(&mut body).as_deref(), Some("data: 1\n\n"));
        assert_eq!(next(&mut body).as_deref(), Some(""), "the end");
        assert_eq!(metrics.held_streams_count("relayed"), 1);
        drop(body);
        assert_eq!(metrics.held_streams_count("client_gone"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_ends_the_stream_with_its_json_and_a_dropped_stream_counts_the_client() {
        let (mut body, tx, metrics) = held(Duration::from_secs(10));
        assert!(next(&mut body).is_some());
        let e = ProxyError::Queue(QueueError::Deadline(Duration::from_secs(300)));
        let want = format!("event: error\ndata: {}\n\n", error_json(&e));
        tx.send(Err(e)).unwrap();
        tokio::task::yield_now().await;
        assert_eq!(next(&mut body), Some(want));
        assert_eq!(next(&mut body).as_deref(), Some(""));
        assert_eq!(metrics.held_streams_count("queue_deadline"), 1);

        let (mut body, _tx, metrics) = held(Duration::from_secs(10));
        assert!(next(&mut body).is_some());
        drop(body);
        assert_eq!(metrics.held_streams_count("client_gone"), 1);
    }
}
