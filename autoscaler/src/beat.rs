//! Proof of life for watches: a client wrapper that calls back on every successful response
//! and every chunk of its body.
//!
//! kube-runtime's watcher keeps bookmarks and re-watches to itself, so its stream is silent
//! both when a quiet watch is healthy and when it hangs. Below it, at the HTTP level, a healthy
//! watch is never silent for long: the server ends each watch call after its timeout and the
//! watcher starts the next one, and bookmarks and events arrive as body chunks. Counting those
//! tells the two apart.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use kube::Client;
use kube::client::Body;

/// Called on each sign of life.
pub type OnBeat = Arc<dyn Fn() + Send + Sync>;

/// A client whose requests go through `client` and call `on_beat` on every 2xx response and
/// every data chunk of such a response's body (list pages, watch events, bookmarks).
pub fn client(client: &Client, on_beat: OnBeat) -> Client {
    let namespace = client.default_namespace().to_owned();
    Client::new(
        Beating {
            client: client.clone(),
            on_beat,
        },
        namespace,
    )
}

#[derive(Clone)]
struct Beating {
    client: Client,
    on_beat: OnBeat,
}

impl tower_service::Service<Request<Body>> for Beating {
    type Response = Response<BeatingBody>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // `Client::send` waits for readiness of the inner service itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let client = self.client.clone();
        let on_beat = self.on_beat.clone();
        Box::pin(async move {
            let res = client.send(req).await?;
            // An error status is not life: the watcher turns it into an error item.
            let on_beat = res.status().is_success().then_some(on_beat);
            if let Some(beat) = &on_beat {
                beat();
            }
            Ok(res.map(|inner| BeatingBody { inner, on_beat }))
        })
    }
}

/// A response body that calls back on every data chunk.
struct BeatingBody {
    inner: Body,
    on_beat: Option<OnBeat>,
}

impl HttpBody for BeatingBody {
    type Data = Bytes;
    type Error = kube::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
            && let Some(beat) = &self.on_beat
        {
            beat();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::StatusCode;
    use http_body_util::StreamBody;

    use super::*;

    type Chunks =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    /// An API server stand-in: every request gets `status` and a body of three chunks.
    #[derive(Clone)]
    struct Answer(StatusCode);

    impl tower_service::Service<Request<Body>> for Answer {
        type Response = Response<Chunks>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            let chunks: Vec<_> = ["a", "b", "c"]
                .into_iter()
                .map(|c| Ok(Frame::data(Bytes::from(c))))
                .collect();
            let mut res = Response::new(StreamBody::new(futures::stream::iter(chunks)));
            *res.status_mut() = self.0;
            std::future::ready(Ok(res))
        }
    }

    async fn beats_of(status: StatusCode) -> (usize, usize) {
        let beats = Arc::new(AtomicUsize::new(0));
        let counter = beats.clone();
        let c = client(
            &Client::new(Answer(status), "default"),
            Arc::new(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            }),
        );
        let req = Request::get("/api/v1/namespaces/default/configmaps?watch=1")
            .body(Body::empty())
            .unwrap();
        let res = c.send(req).await.unwrap();
        let on_headers = beats.load(Ordering::Relaxed);
        let body = res.into_body().collect_bytes().await.unwrap();
        assert_eq!(body, "abc");
        (on_headers, beats.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn successful_responses_and_their_chunks_are_signs_of_life() {
        assert_eq!(beats_of(StatusCode::OK).await, (1, 4));
    }

    #[tokio::test]
    async fn error_responses_are_not() {
        assert_eq!(beats_of(StatusCode::FORBIDDEN).await, (0, 0));
        assert_eq!(beats_of(StatusCode::SERVICE_UNAVAILABLE).await, (0, 0));
    }
}
