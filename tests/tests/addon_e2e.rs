//! End-to-end tests of the add-on as installed from `manifests/`: every object is accepted by a
//! real API server (server-side apply), the ServiceAccounts have exactly the access the code
//! needs, and scale-from-zero and scale-to-zero work with both components authenticated as
//! those ServiceAccounts (`zeroscale_testkit::addon::start_addon`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Event, Pod, Service};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use zeroscale_e2e::{Ctx, demo, eventually, test};
use zeroscale_testkit::addon::{
    self, ACTIVATOR, ADDON_NAMESPACE, AUTOSCALER, AddonOptions, Applied, manifests_dir,
};

fn main() -> std::process::ExitCode {
    zeroscale_e2e::run(vec![
        test(
            "manifests_apply_and_reapply_changes_nothing",
            manifests_apply_and_reapply_changes_nothing,
        ),
        test(
            "service_accounts_have_exactly_the_access_the_code_needs",
            service_accounts_have_exactly_the_access_the_code_needs,
        ),
        test(
            "scale_from_zero_and_back_under_the_manifests_identities",
            scale_from_zero_and_back_under_the_manifests_identities,
        ),
        test(
            "every_scale_change_leaves_its_own_event",
            every_scale_change_leaves_its_own_event,
        ),
        test(
            "the_namespaced_install_reads_and_scales_only_its_namespaces",
            the_namespaced_install_reads_and_scales_only_its_namespaces,
        ),
        test(
            "the_scale_guard_refuses_scale_writes_outside_labelled_namespaces",
            the_scale_guard_refuses_scale_writes_outside_labelled_namespaces,
        ),
    ])
}

fn key(a: &Applied) -> String {
    format!(
        "{} {}/{}",
        a.kind,
        a.namespace.as_deref().unwrap_or(""),
        a.name
    )
}

/// What a no-op re-apply must leave unchanged: the generation where the kind has one (controllers
/// update Deployment status meanwhile, which bumps resourceVersion but not generation), else the
/// resourceVersion.
fn fingerprint(a: &Applied) -> String {
    match a.generation {
        Some(g) => format!("generation {g}"),
        None => format!(
            "resourceVersion {}",
            a.resource_version.as_deref().unwrap_or("?")
        ),
    }
}

/// (1) Every object is valid (server-side apply), re-applying changes nothing, and the add-on's
/// pod templates pass the namespace's `restricted` Pod Security level.
async fn manifests_apply_and_reapply_changes_nothing(ctx: Ctx) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let dir = manifests_dir();
    let first = addon::apply_kustomization(&client, &dir).await?;
    for want in [
        "Namespace /zeroscale-system",
        "ServiceAccount zeroscale-system/zeroscale-activator",
        "ServiceAccount zeroscale-system/zeroscale-autoscaler",
        "ClusterRole /zeroscale-activator",
        "ClusterRole /zeroscale-autoscaler",
        "ConfigMap zeroscale-system/zeroscale-config",
        "Deployment zeroscale-system/zeroscale-activator",
        "Deployment zeroscale-system/zeroscale-autoscaler",
        "Service zeroscale-system/zeroscale-activator",
        "PodDisruptionBudget zeroscale-system/zeroscale-autoscaler",
    ] {
        ensure!(
            first.iter().any(|a| key(a) == want),
            "{want} not applied; applied: {:?}",
            first.iter().map(key).collect::<Vec<_>>()
        );
    }
    let second = addon::apply_kustomization(&client, &dir).await?;
    ensure!(first.len() == second.len(), "{first:?}\n{second:?}");
    for (a, b) in first.iter().zip(&second) {
        ensure!(
            key(a) == key(b) && fingerprint(a) == fingerprint(b),
            "re-applying changed {}: {} -> {}",
            key(a),
            fingerprint(a),
            fingerprint(b)
        );
    }

    // Pod Security: a dry-run create of each pod template is admitted under `restricted`.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ADDON_NAMESPACE);
    for name in [ACTIVATOR, AUTOSCALER] {
        let d: Deployment = addon::manifest_object(&dir, "Deployment", name)?;
        let template = d.spec.context("spec")?.template;
        let mut pod = Pod {
            metadata: template.metadata.unwrap_or_default(),
            spec: template.spec,
            ..Default::default()
        };
        pod.metadata.name = Some(format!("{name}-dry-run"));
        pod.metadata.namespace = Some(ADDON_NAMESPACE.into());
        pods.create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod,
        )
        .await
        .with_context(|| format!("{name}'s pod template is not admitted in {ADDON_NAMESPACE}"))?;
        // And one that breaks the restricted level is refused, so the check above means something.
        let mut bad = pod.clone();
        if let Some(c) = bad.spec.as_mut().map(|s| &mut s.containers[0]) {
            c.security_context = None;
        }
        let refused = pods
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &bad,
            )
            .await;
        ensure!(
            matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403),
            "a pod without a container securityContext was not refused: {refused:?}"
        );
    }
    // These tests run the add-on as local processes (node_e2e runs it as pods): its own
    // Deployments stay at 0 so the two never share the work.
    addon::scale_addon_to_zero(&client).await?;
    Ok(())
}

/// One access check: may ServiceAccount `sa` do `verb` on `group/resource[/sub]` (in `ns`,
/// named `name`)?
struct Check {
    sa: &'static str,
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    sub: &'static str,
    ns: &'static str,
    name: &'static str,
}

const fn c(
    sa: &'static str,
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    ns: &'static str,
) -> Check {
    Check {
        sa,
        verb,
        group,
        resource,
        sub: "",
        ns,
        name: "",
    }
}

impl Check {
    const fn sub(mut self, sub: &'static str) -> Self {
        self.sub = sub;
        self
    }

    const fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    fn describe(&self) -> String {
        let res = if self.sub.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}/{}", self.resource, self.sub)
        };
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!(
            "{} {} {group}/{res} ns={:?} name={:?}",
            self.sa, self.verb, self.ns, self.name
        )
    }

    async fn allowed(&self, client: &Client) -> anyhow::Result<bool> {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(format!(
                    "system:serviceaccount:{ADDON_NAMESPACE}:{}",
                    self.sa
                )),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ADDON_NAMESPACE}"),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    verb: opt(self.verb),
                    group: Some(self.group.to_owned()),
                    resource: opt(self.resource),
                    subresource: opt(self.sub),
                    namespace: opt(self.ns),
                    name: opt(self.name),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .with_context(|| format!("SubjectAccessReview for {}", self.describe()))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

const AS: &str = AUTOSCALER;
const AC: &str = ACTIVATOR;
const SYS: &str = ADDON_NAMESPACE;

/// (2) Least privilege, checked with SubjectAccessReviews: everything the code calls is granted
/// (the scenario test proves the calls work), and a sample of what it must never do is not.
async fn service_accounts_have_exactly_the_access_the_code_needs(ctx: Ctx) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    addon::apply_kustomization(&client, &manifests_dir()).await?;
    addon::scale_addon_to_zero(&client).await?;
    let granted = [
        // autoscaler: watch Deployments and HPAs everywhere, scale them, write Events.
        c(AS, "list", "apps", "deployments", ""),
        c(AS, "watch", "apps", "deployments", ""),
        c(AS, "get", "apps", "deployments", "models").sub("scale"),
        c(AS, "patch", "apps", "deployments", "models").sub("scale"),
        c(AS, "list", "discovery.k8s.io", "endpointslices", "models"),
        c(AS, "list", "autoscaling", "horizontalpodautoscalers", ""),
        c(AS, "watch", "autoscaling", "horizontalpodautoscalers", ""),
        c(AS, "create", "events.k8s.io", "events", "models"),
        c(AS, "patch", "events.k8s.io", "events", "models"),
        // ... its ConfigMap, the activator's EndpointSlices and its Lease, in its namespace.
        c(AS, "list", "", "configmaps", SYS).named("zeroscale-config"),
        c(AS, "watch", "", "configmaps", SYS).named("zeroscale-config"),
        c(AS, "list", "discovery.k8s.io", "endpointslices", SYS),
        c(AS, "watch", "discovery.k8s.io", "endpointslices", SYS),
        c(AS, "create", "coordination.k8s.io", "leases", SYS),
        c(AS, "get", "coordination.k8s.io", "leases", SYS).named(AUTOSCALER),
        c(AS, "patch", "coordination.k8s.io", "leases", SYS).named(AUTOSCALER),
        // ... and the learned-state shards (autoscaler/src/learned.rs), first and last.
        c(AS, "get", "", "configmaps", SYS).named("zeroscale-learned-00"),
        c(AS, "patch", "", "configmaps", SYS).named("zeroscale-learned-00"),
        c(AS, "create", "", "configmaps", SYS).named("zeroscale-learned-31"),
        c(AS, "patch", "", "configmaps", SYS).named("zeroscale-learned-31"),
        // activator: the routing table, Events, its ConfigMap.
        c(AC, "list", "apps", "deployments", ""),
        c(AC, "watch", "apps", "deployments", ""),
        c(AC, "list", "", "services", ""),
        c(AC, "watch", "", "services", ""),
        c(AC, "list", "discovery.k8s.io", "endpointslices", ""),
        c(AC, "watch", "discovery.k8s.io", "endpointslices", ""),
        c(AC, "create", "events.k8s.io", "events", "models"),
        c(AC, "patch", "events.k8s.io", "events", "models"),
        c(AC, "list", "", "configmaps", SYS).named("zeroscale-config"),
        c(AC, "watch", "", "configmaps", SYS).named("zeroscale-config"),
    ];
    let denied = [
        // Neither reads secrets or deletes or rewrites workloads.
        c(AS, "get", "", "secrets", SYS),
        c(AS, "list", "", "secrets", ""),
        c(AC, "get", "", "secrets", SYS),
        c(AC, "list", "", "secrets", ""),
        c(AS, "delete", "apps", "deployments", "models"),
        c(AC, "delete", "apps", "deployments", "models"),
        c(AS, "patch", "apps", "deployments", "models"),
        c(AS, "update", "apps", "deployments", "models"),
        c(AS, "create", "", "pods", "models"),
        c(AS, "list", "", "pods", ""),
        // The activator never scales: that is the autoscaler's job.
        c(AC, "patch", "apps", "deployments", "models").sub("scale"),
        c(AC, "update", "apps", "deployments", "models").sub("scale"),
        c(AC, "get", "apps", "deployments", "models").sub("scale"),
        c(AC, "create", "coordination.k8s.io", "leases", SYS),
        // Only their own ConfigMap, only in their namespace; only the autoscaler's Lease.
        c(AS, "list", "", "configmaps", "models"),
        c(AS, "get", "", "configmaps", SYS).named("other"),
        c(AS, "patch", "", "configmaps", SYS).named("zeroscale-learned-32"),
        c(AS, "patch", "", "configmaps", SYS).named(zeroscale_config::CONFIGMAP_NAME),
        c(AS, "patch", "", "configmaps", "models").named("zeroscale-learned-00"),
        c(AC, "patch", "", "configmaps", SYS).named("zeroscale-learned-00"),
        c(AC, "list", "", "configmaps", SYS),
        c(AS, "patch", "coordination.k8s.io", "leases", SYS).named("someone-else"),
        c(AS, "delete", "coordination.k8s.io", "leases", SYS).named(AUTOSCALER),
        c(AS, "create", "coordination.k8s.io", "leases", "models"),
        // EndpointSlices: watched only in the add-on's namespace, never written.
        c(AS, "watch", "discovery.k8s.io", "endpointslices", "models"),
        c(AS, "create", "discovery.k8s.io", "endpointslices", SYS),
        // Events only through events.k8s.io, as kube-rs writes them; never deleted.
        c(AS, "create", "", "events", "models"),
        c(AS, "delete", "events.k8s.io", "events", "models"),
        // No RBAC escalation.
        c(
            AS,
            "create",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "",
        ),
        c(
            AC,
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
            SYS,
        ),
    ];
    let mut wrong = Vec::new();
    for ch in &granted {
        if !ch.allowed(&client).await? {
            wrong.push(format!("NOT granted but needed: {}", ch.describe()));
        }
    }
    for ch in &denied {
        if ch.allowed(&client).await? {
            wrong.push(format!("granted but must not be: {}", ch.describe()));
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

async fn replicas(client: &Client, ns: &str, name: &str) -> anyhow::Result<i32> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
}

async fn scale_events(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let list = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Scaled"))
        .map(|e| e.message.unwrap_or_default())
        .collect())
}

/// What one wake-and-idle run observed.
struct Run {
    /// Messages of the `Scaled` Events on the Deployment at the end.
    events: Vec<String>,
}

/// The example model at 0 replicas: a request through the activator's data port is held and
/// answered 200 once a pod is ready; after the (shortened) grace period the Deployment returns
/// to 0. Both components run under the manifests' ServiceAccounts, so a missing RBAC rule fails
/// here (and shows as "forbidden" in their logs). Waits up to 20 s for the scale-down Event.
async fn wake_and_idle(ctx: &Ctx) -> anyhow::Result<Run> {
    let cluster = ctx.cluster().await?;
    let client = cluster.client();
    let ns = ctx.namespace().await?;

    // The example model, in this test's namespace, with a short load delay and grace period.
    let (mut d, mut svc) =
        addon::example_model(&manifests_dir().join("examples/model.yaml"), "sentiment")?;
    d.metadata.namespace = Some(ns.clone());
    svc.metadata.namespace = Some(ns.clone());
    d.annotations_mut().insert(
        "zeroscale.dev/scale-to-zero-grace-period".into(),
        "4s".into(),
    );
    let container = &mut d
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .context("pod spec")?
        .containers[0];
    container.args = Some(vec![
        "--model-name=sentiment".into(),
        "--load-delay=1s".into(),
        "--service-time=50ms".into(),
    ]);
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &d)
        .await?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &svc)
        .await?;

    let opts = AddonOptions {
        config: addon::fast_config(),
        rust_log: Some("info,kube=warn".into()),
        ..Default::default()
    };
    let mut running = addon::start_addon(&cluster, &opts).await?;
    let logs = |r: &addon::RunningAddon| r.logs(40);
    ensure!(
        replicas(&client, &ns, "sentiment").await? == 0,
        "starts at 0"
    );

    // Scale from zero: the request waits in the activator, then gets its 200.
    let t0 = Instant::now();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(90),
        demo::post_predict(
            running.activator_addr,
            &format!("sentiment.{ns}"),
            "sentiment",
        ),
    )
    .await
    .context("no answer within 90 s")
    .and_then(|r| Ok(r?))
    .with_context(|| logs(&running))?;
    let cold = t0.elapsed();
    ensure!(
        status == 200,
        "first request: {status} {body}\n{}",
        logs(&running)
    );
    let answer: serde_json::Value = serde_json::from_str(&body).context(body.clone())?;
    ensure!(answer["model_name"] == "sentiment", "{body}");
    ensure!(replicas(&client, &ns, "sentiment").await? >= 1, "woken");
    eprintln!("cold start through the activator: {cold:?}");

    // Scale to zero once idle for the grace period.
    let (c, n) = (client.clone(), ns.clone());
    eventually(
        "sentiment back at 0 replicas",
        Duration::from_secs(90),
        || {
            let (c, n) = (c.clone(), n.clone());
            async move { Ok((replicas(&c, &n, "sentiment").await? == 0).then_some(())) }
        },
    )
    .await
    .with_context(|| logs(&running))?;

    // Give the scale-down Event (written after the patch) time to appear.
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let evs = scale_events(&client, &ns, "sentiment").await?;
        if evs.iter().any(|m| m.contains(" -> 0")) || Instant::now() > deadline {
            break evs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    ensure!(running.exited().is_none(), "{}", logs(&running));
    // Nothing was refused along the way (e.g. an Event or a watch the RBAC does not allow).
    let mut refused = BTreeMap::new();
    for path in [running.activator_log(), running.autoscaler_log()] {
        let text = std::fs::read_to_string(path)?;
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
            .collect();
        if !lines.is_empty() {
            refused.insert(path.display().to_string(), lines.join("\n"));
        }
    }
    ensure!(refused.is_empty(), "requests refused by RBAC: {refused:#?}");
    drop(running);
    // The next test's model has the same name: leave no second claim on it.
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .delete("sentiment", &Default::default())
        .await?;
    Ok(Run { events })
}

/// (3) Scale from zero and back to zero under the manifests' identities; the wake left its
/// Event on the Deployment (written under the autoscaler's identity).
async fn scale_from_zero_and_back_under_the_manifests_identities(ctx: Ctx) -> anyhow::Result<()> {
    let run = wake_and_idle(&ctx).await?;
    ensure!(
        run.events
            .iter()
            .any(|m| m.starts_with("Scaled 0 -> 1: woken by the activator")),
        "no Event for the wake by the activator: {:?}",
        run.events
    );
    Ok(())
}

/// (4) Every scale change leaves its own Event: after a wake (0 -> 1) and a scale to zero
/// (1 -> 0) both are on the Deployment, each with its own reason.
async fn every_scale_change_leaves_its_own_event(ctx: Ctx) -> anyhow::Result<()> {
    let run = wake_and_idle(&ctx).await?;
    let up = run.events.iter().any(|m| m.starts_with("Scaled 0 -> 1"));
    let down = run.events.iter().any(|m| m.starts_with("Scaled 1 -> 0"));
    ensure!(
        up && down,
        "expected Events for 0 -> 1 and 1 -> 0, found {:?}. (kube-runtime's Recorder folds \
         Events with the same type, reason, action and object into one series for 6 minutes \
         and keeps the first note, so each scale change needs a distinct action or reason.)",
        run.events
    );
    Ok(())
}

/// Creates namespace `ns` (with `labels`) and the example model's Deployment `sentiment` in it,
/// at 0, routed as model `model`.
async fn model_namespace(
    client: &Client,
    ns: &str,
    labels: &[(&str, &str)],
    model: &str,
) -> anyhow::Result<()> {
    let namespace = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(ns.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    let (mut d, mut svc) =
        addon::example_model(&manifests_dir().join("examples/model.yaml"), "sentiment")?;
    d.metadata.namespace = Some(ns.into());
    svc.metadata.namespace = Some(ns.into());
    d.annotations_mut()
        .insert("zeroscale.dev/model-name".into(), model.into());
    d.spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .context("pod spec")?
        .containers[0]
        .args = Some(vec![
        format!("--model-name={model}"),
        "--load-delay=0s".into(),
        "--service-time=10ms".into(),
    ]);
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await?;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await?;
    Ok(())
}

/// (5) `manifests/namespaced/`: the add-on's roles are bound only in `models`, both components
/// watch only it, and it works there: a request wakes the model in `models`, while the same
/// model in `other` is neither routed nor scalable. A cluster of its own (the shared one has the
/// cluster-wide bindings).
async fn the_namespaced_install_reads_and_scales_only_its_namespaces(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let cluster = ctx.own_cluster().await?;
    let client = cluster.client();
    model_namespace(&client, "models", &[], "sentiment").await?;
    model_namespace(&client, "other", &[], "only-in-other").await?;
    let dir = manifests_dir().join("namespaced");
    addon::apply_kustomization(&client, &dir).await?;
    let granted = [
        c(AS, "list", "apps", "deployments", "models"),
        c(AS, "patch", "apps", "deployments", "models").sub("scale"),
        c(
            AS,
            "list",
            "autoscaling",
            "horizontalpodautoscalers",
            "models",
        ),
        c(AC, "list", "apps", "deployments", "models"),
        c(AC, "watch", "", "services", "models"),
        c(AC, "list", "discovery.k8s.io", "endpointslices", "models"),
    ];
    let denied = [
        c(AS, "list", "apps", "deployments", ""),
        c(AS, "list", "apps", "deployments", "other"),
        c(AS, "patch", "apps", "deployments", "other").sub("scale"),
        c(AS, "patch", "apps", "deployments", "kube-system").sub("scale"),
        c(AS, "create", "events.k8s.io", "events", "other"),
        c(AC, "list", "apps", "deployments", ""),
        c(AC, "list", "", "services", "other"),
        c(AC, "watch", "discovery.k8s.io", "endpointslices", "other"),
    ];
    for check in &granted {
        ensure!(
            check.allowed(&client).await?,
            "not granted: {}",
            check.describe()
        );
    }
    for check in &denied {
        ensure!(
            !check.allowed(&client).await?,
            "granted: {}",
            check.describe()
        );
    }

    // The components run under those roles (a cluster-wide list would be refused and keep them
    // from becoming ready) and serve `models`.
    let opts = AddonOptions {
        manifests: dir,
        config: addon::fast_config(),
        rust_log: Some("info,kube=warn".into()),
        ..Default::default()
    };
    let running = addon::start_addon(&cluster, &opts).await?;
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(90),
        demo::post_predict(running.activator_addr, "sentiment.models", "sentiment"),
    )
    .await
    .context("no answer within 90 s")?
    .with_context(|| running.logs(40))?;
    ensure!(
        status == 200,
        "models: {status} {body}\n{}",
        running.logs(40)
    );
    ensure!(
        replicas(&client, "models", "sentiment").await? >= 1,
        "not woken"
    );
    // A model of `other` is unknown to the activator (its namespace is not watched).
    let (status, body) =
        demo::post_predict(running.activator_addr, "only-in-other", "only-in-other").await?;
    ensure!(status == 404, "other: {status} {body}");
    ensure!(
        replicas(&client, "other", "sentiment").await? == 0,
        "the model in other was scaled"
    );
    Ok(())
}

/// (6) `manifests/scale-guard/`: with the cluster-wide install, the autoscaler's ServiceAccount
/// may still scale only in namespaces labelled `zeroscale.dev/managed=true`: a real PATCH as
/// that identity elsewhere is refused with the policy's message; an admin is not affected.
async fn the_scale_guard_refuses_scale_writes_outside_labelled_namespaces(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let cluster = ctx.own_cluster().await?;
    let client = cluster.client();
    model_namespace(
        &client,
        "models",
        &[("zeroscale.dev/managed", "true")],
        "sentiment",
    )
    .await?;
    model_namespace(&client, "other", &[], "sentiment").await?;
    addon::apply_kustomization(&client, &manifests_dir()).await?;
    addon::scale_addon_to_zero(&client).await?;
    addon::apply_kustomization(&client, &manifests_dir().join("scale-guard")).await?;
    let kubeconfig = addon::service_account_kubeconfig(
        &client,
        cluster.kubeconfig_path(),
        ADDON_NAMESPACE,
        AUTOSCALER,
        600,
        &cluster.dir().join("autoscaler.kubeconfig"),
    )
    .await?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let autoscaler = Client::try_from(config)?;
    let scale = |c: &Client, ns: &str, n: i32| {
        let api: Api<Deployment> = Api::namespaced(c.clone(), ns);
        async move {
            api.patch_scale(
                "sentiment",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"spec": {"replicas": n}})),
            )
            .await
        }
    };
    // The policy takes effect a moment after it is created.
    let refusal = eventually(
        "the scale guard to refuse the autoscaler in other",
        Duration::from_secs(30),
        || async {
            Ok(match scale(&autoscaler, "other", 1).await {
                Err(kube::Error::Api(e)) if e.code == 403 => Some(e.message),
                _ => {
                    scale(&client, "other", 0).await?;
                    None
                }
            })
        },
    )
    .await?;
    ensure!(
        refusal.contains("zeroscale.dev/managed=true") && refusal.contains("other"),
        "refusal: {refusal}"
    );
    scale(&autoscaler, "models", 1)
        .await
        .context("the autoscaler scaling in a labelled namespace")?;
    scale(&client, "other", 1)
        .await
        .context("an admin scaling in an unlabelled namespace")?;
    Ok(())
}
