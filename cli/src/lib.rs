//! `kubectl zeroscale`: what the autoscaler is doing for each opted-in Deployment, and why.
//!
//! - [`gather`] reads the state from the API server: opted-in Deployments, the autoscaler's
//!   `Scaled` Events on them, and the add-on's own pages through the API server's pod proxy
//!   (every activator replica's stat feed, filtered to the scope and merged; the leader
//!   autoscaler's `/metrics` for its window averages).
//! - [`render`] turns it into a table, JSON or YAML (pure).
//! - [`metrics`] parses the pages (pure).
//!
//! What it needs (RBAC): `list` Deployments and `events.k8s.io` Events in the model namespaces,
//! and, for the live figures, `list` pods and `get` `pods/proxy` in the add-on's namespace (the
//! `zeroscale-status` Role of `manifests/status/`). Without the latter the table still shows
//! replicas and decisions, and says the figures are unavailable.

pub mod metrics;
pub mod render;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt as _};
use zeroscale_config::DeploymentKey;
use zeroscale_config::feed::{FEED_PATH, FeedFilter, FeedPage};

pub use metrics::{ColdStart, ModelFigures};

/// The reporting controller of the autoscaler's Events.
pub const AUTOSCALER: &str = "zeroscale-autoscaler";

/// One scale decision, from its Event.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decision {
    /// When it was last made (RFC 3339).
    pub at: Option<String>,
    /// Seconds before the read.
    pub age_seconds: Option<i64>,
    /// The Event's note: `Scaled 0 -> 3: <the reason in words, with its inputs>`.
    pub message: String,
    /// How many times in a row (the Event's series count, 1 if none).
    pub count: i32,
}

/// One opted-in Deployment's state.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelStatus {
    /// Namespace.
    pub namespace: String,
    /// Deployment name.
    pub deployment: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// The `zeroscale.dev/*` annotations as written.
    pub annotations: BTreeMap<String, String>,
    /// Live figures from the add-on's metrics, if they could be read.
    pub figures: Option<ModelFigures>,
    /// The autoscaler's decisions, newest first.
    pub decisions: Vec<Decision>,
}

/// The whole answer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Status {
    /// When it was read (RFC 3339).
    pub read_at: String,
    /// Why live figures are missing, if they are.
    pub figures_unavailable: Option<String>,
    /// Every opted-in Deployment, by namespace and name.
    pub models: Vec<ModelStatus>,
}

/// What to read.
#[derive(Clone, Debug)]
pub struct Scope {
    /// A namespace, or every namespace.
    pub namespace: Option<String>,
    /// One Deployment only.
    pub deployment: Option<String>,
    /// The add-on's namespace.
    pub addon_namespace: String,
}

/// A decision with the instant it sorts by.
type Dated = (Option<Timestamp>, Decision);

fn age(at: Option<Timestamp>, now: Timestamp) -> (Option<String>, Option<i64>) {
    match at {
        Some(t) => (
            Some(t.to_string()),
            Some((now.as_second() - t.as_second()).max(0)),
        ),
        None => (None, None),
    }
}

/// Reads the state of every opted-in Deployment in `scope`.
pub async fn gather(client: &Client, scope: &Scope) -> anyhow::Result<Status> {
    let now = Timestamp::now();
    let deployments: Api<Deployment> = match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut models = Vec::new();
    for d in deployments.list(&ListParams::default()).await?.items {
        if scope
            .deployment
            .as_deref()
            .is_some_and(|n| n != d.name_any())
            || !zeroscale_config::is_opted_in(d.annotations())
        {
            continue;
        }
        models.push(ModelStatus {
            namespace: d.namespace().unwrap_or_default(),
            deployment: d.name_any(),
            replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            ready: d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
            annotations: d
                .annotations()
                .iter()
                .filter(|(k, _)| k.starts_with(zeroscale_config::ANNOTATION_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            figures: None,
            decisions: Vec::new(),
        });
    }
    models.sort_by(|a, b| (&a.namespace, &a.deployment).cmp(&(&b.namespace, &b.deployment)));

    // The autoscaler's Events, per namespace that has a model.
    let namespaces: std::collections::BTreeSet<String> =
        models.iter().map(|m| m.namespace.clone()).collect();
    let mut decisions: BTreeMap<(String, String), Vec<Dated>> = BTreeMap::new();
    for ns in namespaces {
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        for e in events.list(&ListParams::default()).await?.items {
            let regarding = e.regarding.clone().unwrap_or_default();
            if regarding.kind.as_deref() != Some("Deployment")
                || e.reporting_controller.as_deref() != Some(AUTOSCALER)
                || e.reason.as_deref() != Some("Scaled")
            {
                continue;
            }
            let last = e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0));
            let (at, age_seconds) = age(last, now);
            decisions
                .entry((ns.clone(), regarding.name.unwrap_or_default()))
                .or_default()
                .push((
                    last,
                    Decision {
                        at,
                        age_seconds,
                        message: e.note.unwrap_or_default(),
                        count: e.series.as_ref().map_or(1, |s| s.count),
                    },
                ));
        }
    }
    for m in &mut models {
        if let Some(mut ds) = decisions.remove(&(m.namespace.clone(), m.deployment.clone())) {
            ds.sort_by_key(|d| std::cmp::Reverse(d.0));
            m.decisions = ds.into_iter().map(|(_, d)| d).collect();
        }
    }

    let (figures, figures_unavailable) = match read_figures(client, scope).await {
        Ok(f) => (f, None),
        Err(e) => (BTreeMap::new(), Some(format!("{e:#}"))),
    };
    if figures_unavailable.is_none() {
        for m in &mut models {
            let k = DeploymentKey {
                namespace: m.namespace.clone(),
                deployment: m.deployment.clone(),
            };
            m.figures = Some(figures.get(&k).cloned().unwrap_or_default());
        }
    }
    Ok(Status {
        read_at: now.to_string(),
        figures_unavailable,
        models,
    })
}

/// The metrics port of both components (`manifests/base/*.yaml`, container port `metrics`).
const METRICS_PORT: u16 = 9090;

/// Why the figures could not be read, and what to do about it.
fn why(e: kube::Error, ns: &str) -> anyhow::Error {
    match e {
        kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
            "{} (to see them, bind the zeroscale-status Role of manifests/status/ in {ns})",
            s.message
        ),
        e => anyhow::anyhow!("reading the add-on's metrics in {ns}: {e}"),
    }
}

/// `path_and_query` on the metrics port of every running pod of `component`.
async fn pages(
    client: &Client,
    ns: &str,
    component: &str,
    path_and_query: &str,
) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/name={component}"));
    let list = pods.list(&lp).await.map_err(|e| why(e, ns))?;
    let mut out = Vec::new();
    for p in list.items {
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if !running || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = p.name_any();
        let req = http::Request::get(format!(
            "/api/v1/namespaces/{ns}/pods/{name}:{METRICS_PORT}/proxy{path_and_query}"
        ))
        .body(Vec::new())?;
        let page = client.request_text(req).await.map_err(|e| why(e, ns))?;
        out.push(page);
    }
    Ok(out)
}

async fn read_figures(
    client: &Client,
    scope: &Scope,
) -> anyhow::Result<BTreeMap<DeploymentKey, ModelFigures>> {
    let ns = scope.addon_namespace.as_str();
    let filter = FeedFilter {
        namespace: scope.namespace.clone(),
        deployment: scope.deployment.clone(),
    };
    // No filter: every model (a full page, as a reader without a cursor gets).
    let feed = if filter == FeedFilter::default() {
        FEED_PATH.to_owned()
    } else {
        filter.query()
    };
    let mut figures = BTreeMap::new();
    for page in pages(client, ns, "zeroscale-activator", &feed).await? {
        let page: FeedPage = serde_json::from_str(&page)
            .map_err(|e| anyhow::anyhow!("an activator's {FEED_PATH} page: {e}"))?;
        metrics::add_feed(&mut figures, &page);
    }
    let mut autoscalers = pages(client, ns, "zeroscale-autoscaler", "/metrics").await?;
    autoscalers.retain(|p| metrics::is_leader(p));
    if let Some(leader) = autoscalers.first() {
        metrics::add_autoscaler(&mut figures, leader);
    }
    Ok(figures)
}
