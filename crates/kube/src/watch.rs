//! A watch stream forwarded into a channel: each event wrapped into the receiver's input
//! type, errors logged once per failing streak (the watcher retries on its own, with
//! [`WatchBackoff`]).

use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use tokio::sync::mpsc;

/// The API of `K` in one namespace, or in every namespace for `None`: the scope of one watch
/// stream (a re-list replaces that scope's objects).
pub fn scoped_api<K>(client: kube::Client, namespace: Option<&str>) -> kube::Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => kube::Api::namespaced(client, ns),
        None => kube::Api::all(client),
    }
}

/// Retry delays of a failing watch: 0.5 s doubling to at most 5 s, reset by the next event.
/// Shorter than kube-runtime's default (up to 30 s) so the watches, and with them readiness
/// and routing, come back within seconds of the API server; a handful of watches per replica
/// keeps the load of retrying small.
#[derive(Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (delay * 2).min(Self::MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// kubectl's copy of the last applied object, kept on objects applied client-side.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops from a watched object what no zeroscale component reads, before it is stored:
/// `metadata.managedFields` (every field manager's field set) and kubectl's
/// `last-applied-configuration` annotation (a second copy of the object). Both binaries keep
/// every watched Deployment, Service and EndpointSlice for as long as it exists; at 10,000
/// models these copies are a large part of their memory. Apply it to a watch stream with
/// `WatchStreamExt::modify(slim)`, before a reflector stores the objects.
pub fn slim<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Forwards the watch stream `what` into `tx` until the stream ends or the receiver is gone.
///
/// `observe` sees every item first (health bookkeeping, for example); `wrap` turns an event
/// into the receiver's input, or `None` to send nothing (a reflector's stream whose store is
/// all that is used). The first error of a failing streak is logged as a warning and the
/// recovery at info, so an API server outage leaves two lines per watch, not one per retry.
pub async fn forward<K, S, T>(
    what: &str,
    stream: S,
    tx: mpsc::Sender<T>,
    mut observe: impl FnMut(&Result<watcher::Event<K>, watcher::Error>),
    mut wrap: impl FnMut(watcher::Event<K>) -> Option<T>,
) where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(item) = stream.next().await {
        observe(&item);
        match item {
            Ok(ev) => {
                if failing {
                    tracing::info!(watch = %what, "watch recovered");
                    failing = false;
                }
                if let Some(input) = wrap(ev)
                    && tx.send(input).await.is_err()
                {
                    return;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(watch = %what, error = %e, "watch failed; retrying with backoff");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slim_drops_managed_fields_and_the_last_applied_copy_only() {
        use k8s_openapi::api::apps::v1::Deployment;
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "m",
                "annotations": {LAST_APPLIED: "{}", "zeroscale.dev/enabled": "true"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"selector": {}, "template": {}, "replicas": 2},
        }))
        .unwrap();
        slim(&mut d);
        assert_eq!(d.metadata.managed_fields, None);
        let a = d.metadata.annotations.as_ref().unwrap();
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a["zeroscale.dev/enabled"], "true");
        assert_eq!(d.spec.unwrap().replicas, Some(2));

        let mut only_last: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "m", "annotations": {LAST_APPLIED: "{}"}},
        }))
        .unwrap();
        slim(&mut only_last);
        assert_eq!(only_last.metadata.annotations, None);
    }

    #[test]
    fn watch_retries_back_off_to_five_seconds_and_reset() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let delays: Vec<u64> = b.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }

    fn failure() -> watcher::Error {
        watcher::Error::NoResourceVersion
    }

    #[tokio::test]
    async fn events_are_wrapped_in_order_and_errors_only_observed() {
        let items: Vec<Result<watcher::Event<String>, watcher::Error>> = vec![
            Ok(watcher::Event::Init),
            Err(failure()),
            Err(failure()),
            Ok(watcher::Event::Apply("a".into())),
            Ok(watcher::Event::Delete("skip".into())),
            Ok(watcher::Event::InitDone),
        ];
        let (tx, mut rx) = mpsc::channel(16);
        let mut seen = Vec::new();
        forward(
            "test",
            futures::stream::iter(items),
            tx,
            |item| seen.push(item.is_ok()),
            |ev| match ev {
                watcher::Event::Delete(_) => None,
                watcher::Event::Apply(s) => Some(format!("apply {s}")),
                watcher::Event::Init => Some("init".into()),
                watcher::Event::InitDone => Some("done".into()),
                watcher::Event::InitApply(_) => Some("init-apply".into()),
            },
        )
        .await;
        assert_eq!(seen, [true, false, false, true, true, true]);
        let mut got = Vec::new();
        while let Ok(s) = rx.try_recv() {
            got.push(s);
        }
        assert_eq!(got, ["init", "apply a", "done"]);
    }

    #[tokio::test]
    async fn a_gone_receiver_ends_the_forwarder() {
        let (tx, rx) = mpsc::channel::<u8>(1);
        drop(rx);
        // An endless stream: only the closed channel can end the forwarder.
        let stream = futures::stream::repeat_with(|| Ok(watcher::Event::Apply(1u8)));
        forward("test", stream, tx, |_| {}, |_| Some(1)).await;
    }
}
