//! Reading and writing the learned-state shards ([`crate::learned`] decides what and when).
//! Both calls carry the API timeout; neither ever blocks the control loop: they run on their
//! own tasks and report back through its channel.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::mpsc;

use crate::learned::{SHARDS, shard_name};

/// Server-side apply's field manager: the same on every replica, so one leader's apply drops
/// the keys a previous leader wrote and this one no longer holds (deleted models).
pub const FIELD_MANAGER: &str = "zeroscale-autoscaler";

/// Longest wait between two read attempts of a shard that could not be read.
const READ_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Why a shard could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The API server answered with an error, or could not be reached.
    #[error("{0}")]
    Api(#[from] kube::Error),
    /// No answer within the API timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl StoreError {
    /// The metric label of this outcome.
    pub fn result(&self) -> &'static str {
        match self {
            StoreError::Api(_) => "failure",
            StoreError::Timeout(_) => "timeout",
        }
    }
}

/// One shard as read.
#[derive(Debug)]
pub struct Loaded {
    /// The shard.
    pub shard: usize,
    /// Its data; None when the ConfigMap does not exist.
    pub data: Option<BTreeMap<String, String>>,
}

/// Reads every shard of `namespace` and sends each one ([`Loaded`]) to the control loop, once.
/// A shard that cannot be read is tried again with backoff (1 s doubling to 60 s) until it is;
/// its first failure is logged.
pub async fn load<T: From<Loaded>>(
    client: Client,
    namespace: String,
    timeout: Duration,
    tx: mpsc::Sender<T>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let mut pending: Vec<usize> = (0..SHARDS).collect();
    let mut failed = [false; SHARDS];
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut still = Vec::new();
        for i in pending {
            let name = shard_name(i);
            let read = match tokio::time::timeout(timeout, api.get_opt(&name)).await {
                Ok(Ok(cm)) => Ok(cm.map(|cm| cm.data.unwrap_or_default())),
                Ok(Err(e)) => Err(StoreError::Api(e)),
                Err(_) => Err(StoreError::Timeout(timeout)),
            };
            match read {
                Ok(data) => {
                    if failed[i] {
                        tracing::info!(configmap = %name, "learned state read after all");
                    }
                    let loaded = Loaded { shard: i, data };
                    if tx.send(loaded.into()).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if !failed[i] {
                        failed[i] = true;
                        tracing::warn!(
                            configmap = %name, error = %e,
                            "reading learned state failed; retrying (not written until read)"
                        );
                    }
                    still.push(i);
                }
            }
        }
        if still.is_empty() {
            return;
        }
        pending = still;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(READ_BACKOFF_MAX);
    }
}

/// The shard ConfigMap `i` with `data`, as applied.
pub fn shard_object(namespace: &str, i: usize, data: BTreeMap<String, String>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(shard_name(i)),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                [
                    ("app.kubernetes.io/part-of", "zeroscale"),
                    ("app.kubernetes.io/component", "autoscaler"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// Writes shard `i` by server-side apply (creating it the first time), within `timeout`.
pub async fn write(
    client: Client,
    namespace: &str,
    i: usize,
    data: BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(), StoreError> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let object = shard_object(namespace, i, data);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match tokio::time::timeout(
        timeout,
        api.patch(&shard_name(i), &params, &Patch::Apply(&object)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(StoreError::Api(e)),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_applied_with_its_kind_name_and_labels() {
        let data: BTreeMap<String, String> =
            [("models.llama".to_owned(), "v1 60000 0 3:12".to_owned())].into();
        let v = serde_json::to_value(shard_object("zeroscale-system", 7, data)).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "ConfigMap");
        assert_eq!(v["metadata"]["name"], "zeroscale-learned-07");
        assert_eq!(v["metadata"]["namespace"], "zeroscale-system");
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "zeroscale"
        );
        assert_eq!(v["data"]["models.llama"], "v1 60000 0 3:12");
    }
}
