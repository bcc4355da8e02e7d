//! End-to-end with KServe's own controller: the manager of `github.com/kserve/kserve` v0.20.0
//! (`scripts/build-kserve.sh`), run as a local process against the local cluster with the real
//! node, in Standard mode (its CRDs and `inferenceservice-config` from the module; a self-signed
//! certificate for its webhook server, no webhook configuration installed, no Ingress). The
//! add-on is installed from `manifests/` as pods, and the InferenceService of
//! `manifests/examples/inferenceservice.yaml` is applied as written (only its grace period is
//! shortened): KServe makes the Deployment, zeroscale scales it to 0 and wakes it for requests
//! sent through the activator Service by KServe path, KServe host name, KServe's headers and
//! the OpenAI body under `/openai`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use http::Method;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use zeroscale_e2e::{Ctx, cluster_ip, eventually, test};
use zeroscale_testkit::addon::{self, ACTIVATOR, ADDON_NAMESPACE, manifests_dir};
use zeroscale_testkit::process::OwnedChild;
use zeroscale_testkit::{bins, certs, http_client};

fn main() -> std::process::ExitCode {
    zeroscale_e2e::run(vec![
        test(
            "an_inference_service_sleeps_at_zero_and_wakes_by_path_host_headers_and_openai_body",
            an_inference_service_sleeps_at_zero_and_wakes_by_path_host_headers_and_openai_body,
        ),
        test(
            "an_inference_service_whose_autoscaler_class_fights_gets_a_warning_event",
            an_inference_service_whose_autoscaler_class_fights_gets_a_warning_event,
        ),
        test(
            "without_a_readiness_probe_a_woken_pod_answers_503_and_the_activator_passes_it_on",
            without_a_readiness_probe_a_woken_pod_answers_503_and_the_activator_passes_it_on,
        ),
    ])
}

/// KServe's namespace (the manager reads `inferenceservice-config` there; `POD_NAMESPACE`).
const KSERVE_NAMESPACE: &str = "kserve";
/// The example's namespace and InferenceService.
const NS: &str = "models";
const ISVC: &str = "iris";
const PREDICTOR: &str = "iris-predictor";

fn kserve_dir() -> anyhow::Result<PathBuf> {
    let manager = bins::kserve_manager().map_err(anyhow::Error::msg)?;
    Ok(manager
        .parent()
        .and_then(Path::parent)
        .context("the KServe bin dir has no parent")?
        .to_path_buf())
}

fn isvc_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("serving.kserve.io", "v1beta1", "InferenceService");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

/// KServe's CRDs and ConfigMap (Standard mode, no Ingress), then its manager as a process of the
/// cluster (stopped when the handle drops). Applying twice changes nothing, so each test may
/// call it.
async fn start_kserve(ctx: &Ctx) -> anyhow::Result<OwnedChild> {
    let cluster = ctx.cluster().await?;
    let client = cluster.client();
    let manager = bins::kserve_manager().map_err(anyhow::Error::msg)?;
    let dir = kserve_dir()?;
    let mut crds: Vec<PathBuf> = std::fs::read_dir(dir.join("crd"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    crds.sort();
    let mut names = Vec::new();
    for path in &crds {
        for a in addon::apply_file(&client, path).await? {
            names.push(a.name);
        }
    }
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in &names {
        eventually(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || async {
                let crd = crd_api.get(name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(established.then_some(()))
            },
        )
        .await?;
    }

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": KSERVE_NAMESPACE}}))?;
    let pp = PatchParams::apply("zeroscale-e2e").force();
    namespaces
        .patch(KSERVE_NAMESPACE, &pp, &Patch::Apply(&ns))
        .await?;
    // The module's ConfigMap with two entries changed: Standard mode by default, and no
    // Ingress (this cluster has no ingress controller; the activator Service is the way in).
    let text = std::fs::read_to_string(dir.join("config/inferenceservice-config.yaml"))?;
    let mut cm: ConfigMap = serde_yaml_ng::from_str(&text)?;
    let data = cm.data.get_or_insert_with(Default::default);
    data.insert(
        "deploy".into(),
        json!({"defaultDeploymentMode": "Standard"}).to_string(),
    );
    let mut ingress: Value =
        serde_json::from_str(data.get("ingress").context("no ingress entry")?)?;
    ingress["disableIngressCreation"] = json!(true);
    data.insert("ingress".into(), ingress.to_string());
    cm.metadata.managed_fields = None;
    Api::<ConfigMap>::namespaced(client.clone(), KSERVE_NAMESPACE)
        .patch("inferenceservice-config", &pp, &Patch::Apply(&cm))
        .await?;

    // controller-runtime's webhook server reads $TMPDIR/k8s-webhook-server/serving-certs.
    let tmp = cluster.dir().join("kserve-tmp");
    certs::write_self_signed(
        &tmp.join("k8s-webhook-server/serving-certs"),
        &["localhost", "127.0.0.1"],
    )?;
    let args: Vec<String> = [
        "--metrics-addr=0",
        "--health-probe-addr=0",
        "--webhook-port=19443",
    ]
    .map(String::from)
    .to_vec();
    let kubeconfig = cluster.kubeconfig_path().to_owned();
    let mut child = cluster.spawn(
        "kserve-manager",
        &manager,
        &args,
        &[
            ("KUBECONFIG", kubeconfig.as_os_str()),
            ("TMPDIR", tmp.as_os_str()),
            ("POD_NAMESPACE", KSERVE_NAMESPACE.as_ref()),
        ],
    )?;
    // The webhook server listens once the manager has started its controllers.
    eventually(
        "KServe's manager to serve its webhook port",
        Duration::from_secs(60),
        || {
            let exited = child.exited();
            let log = child.log_tail(30);
            async move {
                ensure!(
                    exited.is_none(),
                    "KServe's manager exited ({exited:?}):\n{log}"
                );
                Ok(tokio::net::TcpStream::connect("127.0.0.1:19443")
                    .await
                    .ok()
                    .map(drop))
            }
        },
    )
    .await?;
    Ok(child)
}

async fn replicas(client: &Client, ns: &str, name: &str) -> anyhow::Result<Option<i32>> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?;
    Ok(d.map(|d| d.spec.and_then(|s| s.replicas).unwrap_or(1)))
}

/// Waits until the predictor is scaled to 0 and its last pod is gone, so that the next request
/// is a cold one.
async fn wait_zero(client: &Client, what: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let lp = ListParams::default().labels(&format!("app=isvc.{PREDICTOR}"));
    eventually(what, Duration::from_secs(120), || async {
        let zero = replicas(client, NS, PREDICTOR).await? == Some(0);
        Ok((zero && pods.list(&lp).await?.items.is_empty()).then_some(()))
    })
    .await
}

/// One request through the activator Service.
async fn send(
    activator: std::net::SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> anyhow::Result<http_client::HttpResponse> {
    let r = http_client::request_with_headers(
        activator,
        method.clone(),
        path,
        headers,
        body.as_ref(),
        Duration::from_secs(120),
    )
    .await?;
    eprintln!(
        "{method} {path} {headers:?}: {} from pod {} {}",
        r.status,
        r.header("x-pod-name").unwrap_or("-"),
        r.text().chars().take(160).collect::<String>()
    );
    Ok(r)
}

async fn an_inference_service_sleeps_at_zero_and_wakes_by_path_host_headers_and_openai_body(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    zeroscale_e2e::install_addon(&client, &addon::fast_config()).await?;
    let manager = start_kserve(&ctx).await?;
    let example = manifests_dir().join("examples/inferenceservice.yaml");
    addon::apply_file(&client, &example).await?;
    // The example's 60 s grace period is for people. KServe copies the change onto the
    // Deployment: an InferenceService update reaching zeroscale.
    let isvcs = isvc_api(&client, NS);
    isvcs
        .patch(
            ISVC,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {
                "zeroscale.dev/scale-to-zero-grace-period": "4s",
            }}})),
        )
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    eventually(
        "KServe to create the predictor Deployment with the annotations",
        Duration::from_secs(60),
        || async {
            let d = deployments.get_opt(PREDICTOR).await?;
            let copied = d
                .and_then(|d| d.metadata.annotations)
                .and_then(|a| a.get("zeroscale.dev/scale-to-zero-grace-period").cloned());
            Ok((copied.as_deref() == Some("4s")).then_some(()))
        },
    )
    .await
    .with_context(|| format!("KServe's manager log:\n{}", manager.log_tail(40)))?;
    let svc: Service = Api::namespaced(client.clone(), NS).get(PREDICTOR).await?;
    let ports: Vec<(Option<String>, i32)> = svc
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name, p.port))
        .collect();
    eprintln!("KServe's Service {PREDICTOR}: ports {ports:?}");
    wait_zero(&client, "zeroscale to scale the idle predictor to 0").await?;

    let activator = cluster_ip(&client, ADDON_NAMESPACE, ACTIVATOR, "http").await?;
    // Cold, by KServe v1 path.
    let t = Instant::now();
    let r = send(
        activator,
        Method::POST,
        &format!("/v1/models/{ISVC}:predict"),
        &[],
        Some(json!({"instances": [[1.0, 2.0]]})),
    )
    .await?;
    ensure!(r.status == 200, "cold v1 predict: {}", r.status);
    eprintln!("cold v1 predict answered 200 in {:?}", t.elapsed());
    // Warm: v2 path, KServe host names (the path names no model: only the Host routes it),
    // KServe's headers, the OpenAI body under /openai.
    let r = send(
        activator,
        Method::POST,
        &format!("/v2/models/{ISVC}/infer"),
        &[],
        Some(json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]})),
    )
    .await?;
    ensure!(r.status == 200, "v2 infer: {}", r.status);
    for host in [
        "iris-models.example.com",
        "iris-predictor-models.example.com",
        "iris-predictor.models.svc.cluster.local",
    ] {
        let r = send(
            activator,
            Method::GET,
            "/v2/health/ready",
            &[("host", host)],
            None,
        )
        .await?;
        ensure!(r.status == 200, "Host {host}: {}", r.status);
        ensure!(r.json()["model"] == ISVC, "Host {host}: {}", r.text());
    }
    let r = send(
        activator,
        Method::GET,
        "/v2/health/ready",
        &[("KServe-Isvc-Name", ISVC), ("KServe-Isvc-Namespace", NS)],
        None,
    )
    .await?;
    ensure!(r.status == 200, "KServe headers: {}", r.status);
    let r = send(
        activator,
        Method::POST,
        "/openai/v1/chat/completions",
        &[],
        Some(json!({"model": ISVC, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await?;
    ensure!(r.status == 200, "OpenAI chat: {}", r.status);
    ensure!(r.json()["object"] == "chat.completion", "{}", r.text());
    wait_zero(&client, "back to 0 after the grace period").await?;

    // An InferenceService update (a new env var): KServe rewrites the Deployment's template,
    // and leaves its replicas at zeroscale's 0.
    isvcs
        .patch(
            ISVC,
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(json!([{
                "op": "add",
                "path": "/spec/predictor/containers/0/env/-",
                "value": {"name": "REVISION", "value": "2"},
            }]))?),
        )
        .await?;
    let has_revision = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| &p.containers)
            .into_iter()
            .flatten()
            .flat_map(|c| c.env.iter().flatten())
            .any(|e| e.name == "REVISION" && e.value.as_deref() == Some("2"))
    };
    let d = eventually(
        "KServe to roll the env var into the Deployment",
        Duration::from_secs(60),
        || async {
            let d = deployments.get(PREDICTOR).await?;
            Ok(has_revision(&d).then_some(d))
        },
    )
    .await?;
    let after_update = d.spec.and_then(|s| s.replicas);
    ensure!(
        after_update == Some(0),
        "KServe's update changed the replicas to {after_update:?}"
    );
    // Cold again, routed by the OpenAI body: the pod that answers runs the new template.
    let t = Instant::now();
    let r = send(
        activator,
        Method::POST,
        "/openai/v1/completions",
        &[],
        Some(json!({"model": ISVC, "prompt": "x"})),
    )
    .await?;
    ensure!(r.status == 200, "cold OpenAI completion: {}", r.status);
    eprintln!("cold OpenAI completion answered 200 in {:?}", t.elapsed());
    let pod_name = r.header("x-pod-name").context("no x-pod-name")?.to_owned();
    let pod: Pod = Api::namespaced(client.clone(), NS).get(&pod_name).await?;
    let env: Vec<_> = pod
        .spec
        .map(|s| s.containers)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|c| c.env.unwrap_or_default())
        .map(|e| (e.name, e.value))
        .collect();
    ensure!(
        env.contains(&("REVISION".into(), Some("2".into()))),
        "pod {pod_name} env {env:?}"
    );
    wait_zero(&client, "back to 0 after the update").await?;
    let warnings: Vec<_> = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default().fields(&format!("involvedObject.name={PREDICTOR}")))
        .await?
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e.reason, e.message))
        .collect();
    ensure!(warnings.is_empty(), "Warning Events: {warnings:?}");

    isvcs.delete(ISVC, &Default::default()).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.delete(NS, &Default::default()).await?;
    eventually(
        "namespace models deleted",
        Duration::from_secs(120),
        || async { Ok(namespaces.get_opt(NS).await?.is_none().then_some(())) },
    )
    .await?;
    drop(manager);
    Ok(())
}

/// Server-side applies InferenceService `name` in `ns`: sample-model with `args`, no readiness
/// probe, these annotations besides Standard mode and the opt-in.
async fn apply_isvc(
    client: &Client,
    ns: &str,
    name: &str,
    annotations: Value,
    args: &[&str],
) -> anyhow::Result<()> {
    let mut a = json!({
        "serving.kserve.io/deploymentMode": "Standard",
        "zeroscale.dev/enabled": "true",
    });
    if let (Some(a), Some(extra)) = (a.as_object_mut(), annotations.as_object()) {
        a.extend(extra.clone());
    }
    let isvc: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "annotations": a},
        "spec": {"predictor": {"containers": [{
            "name": "kserve-container",
            "image": zeroscale_e2e::sample_model_image(),
            "command": ["sample-model"],
            "args": args,
            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
        }]}},
    }))?;
    isvc_api(client, ns)
        .patch(
            name,
            &PatchParams::apply("zeroscale-e2e"),
            &Patch::Apply(&isvc),
        )
        .await?;
    Ok(())
}

/// The first `type_` Event with `reason` on `object` in `ns`, waited for.
async fn wait_event(
    client: &Client,
    ns: &str,
    object: &str,
    type_: &str,
    reason: &str,
) -> anyhow::Result<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={object}"));
    eventually(
        &format!("a {type_} {reason} Event on {object}"),
        Duration::from_secs(60),
        || async {
            let list = events.list(&lp).await?;
            Ok(list.items.into_iter().find_map(|e| {
                (e.type_.as_deref() == Some(type_) && e.reason.as_deref() == Some(reason))
                    .then_some(e.message)
                    .flatten()
            }))
        },
    )
    .await
}

async fn an_inference_service_whose_autoscaler_class_fights_gets_a_warning_event(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    zeroscale_e2e::install_addon(&client, &addon::fast_config()).await?;
    let manager = start_kserve(&ctx).await?;
    let ns = ctx.namespace().await?;
    // `none`: KServe owns the replicas.
    apply_isvc(
        &client,
        &ns,
        "fights",
        json!({"serving.kserve.io/autoscalerClass": "none"}),
        &["--model-name=fights"],
    )
    .await?;
    let note = wait_event(
        &client,
        &ns,
        "fights-predictor",
        "Warning",
        "KServeAutoscalerClass",
    )
    .await
    .with_context(|| format!("KServe's manager log:\n{}", manager.log_tail(40)))?;
    eprintln!("Warning KServeAutoscalerClass: {note}");
    ensure!(
        note.contains("\"none\"") && note.contains("external"),
        "{note}"
    );
    // What the Warning says: zeroscale's scale to 0 is undone by KServe's next reconcile.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let spec = || async {
        let d = deployments.get("fights-predictor").await?;
        anyhow::Ok(d.spec.and_then(|s| s.replicas))
    };
    eventually(
        "zeroscale to scale fights-predictor to 0",
        Duration::from_secs(60),
        || async { Ok((spec().await? == Some(0)).then_some(())) },
    )
    .await?;
    let back = eventually(
        "KServe to set the replicas again",
        Duration::from_secs(60),
        || async { Ok(spec().await?.filter(|n| *n > 0)) },
    )
    .await?;
    eprintln!("autoscalerClass none: zeroscale scaled to 0, KServe set {back} again");
    // No autoscalerClass: KServe's default, an HPA, which zeroscale stands aside for.
    apply_isvc(
        &client,
        &ns,
        "defaulted",
        json!({}),
        &["--model-name=defaulted"],
    )
    .await?;
    let note = wait_event(
        &client,
        &ns,
        "defaulted-predictor",
        "Warning",
        "HPAConflict",
    )
    .await?;
    eprintln!("Warning HPAConflict: {note}");
    ensure!(note.contains("defaulted-predictor"), "{note}");
    drop(manager);
    Ok(())
}

/// The activator does not hold or retry a pod's 503 (a pod that answered has read the request;
/// sending it again could run it twice, and a 503 is also how a loaded pod sheds work): a
/// just-woken pod that is Ready before its model is loaded is answered as it answers. KServe
/// gives a container without a readiness probe a TCP one, Ready as soon as the port opens, so
/// the README and the example set an HTTP probe (tested above: the cold request is 200).
async fn without_a_readiness_probe_a_woken_pod_answers_503_and_the_activator_passes_it_on(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    zeroscale_e2e::install_addon(&client, &addon::fast_config()).await?;
    let manager = start_kserve(&ctx).await?;
    let ns = ctx.namespace().await?;
    // Loading for 10 minutes: only a pod Ready before its model can answer within the test.
    apply_isvc(
        &client,
        &ns,
        "slow",
        json!({
            "serving.kserve.io/autoscalerClass": "external",
            "zeroscale.dev/initial-scale": "0",
        }),
        &["--model-name=slow", "--load-delay=600s"],
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = eventually(
        "KServe to create slow-predictor",
        Duration::from_secs(60),
        || async { Ok(deployments.get_opt("slow-predictor").await?) },
    )
    .await
    .with_context(|| format!("KServe's manager log:\n{}", manager.log_tail(40)))?;
    let probe = d
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().next())
        .and_then(|c| c.readiness_probe);
    eprintln!("the readiness probe KServe gave the container: {probe:?}");
    ensure!(
        probe.as_ref().is_some_and(|p| p.tcp_socket.is_some()),
        "KServe did not add a TCP readiness probe: {probe:?}"
    );
    let activator = cluster_ip(&client, ADDON_NAMESPACE, ACTIVATOR, "http").await?;
    let r = send(
        activator,
        Method::POST,
        "/v1/models/slow:predict",
        &[],
        Some(json!({"instances": [[1.0]]})),
    )
    .await?;
    ensure!(r.status == 503, "want the pod's 503, got {}", r.status);
    ensure!(
        r.header("x-pod-name").is_some() && r.text().contains("is loading"),
        "the 503 is not the pod's: {:?} {}",
        r.header("x-pod-name"),
        r.text()
    );
    drop(manager);
    Ok(())
}
