//! The Helm chart (`charts/zeroscale`) renders the same objects as `manifests/` for its default
//! values, so the two install paths cannot drift; `helm lint --strict` passes; values reach the
//! objects they name; bad values are refused by the chart's schema. Needs `helm`
//! (`scripts/build-tools.sh`, found through `ZEROSCALE_TOOLS_BIN` or the cache).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use zeroscale_testkit::addon::{kustomization_objects, manifests_dir};
use zeroscale_testkit::bins::tool;

const NAMESPACE: &str = "zeroscale-system";

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/zeroscale")
}

fn helm(args: &[&str]) -> std::process::Output {
    let helm = tool("helm").unwrap_or_else(|e| panic!("{e}"));
    Command::new(&helm)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", helm.display()))
}

/// `helm template` with `sets` (`key=value`), as (kind, namespace, name) -> object.
fn render(sets: &[&str]) -> Result<BTreeMap<(String, String, String), Value>, String> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        "zeroscale",
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = helm(&args);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let mut objects = BTreeMap::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| e.to_string())?;
        if v.is_null() {
            continue;
        }
        let prev = objects.insert(key(&v), v.clone());
        assert!(prev.is_none(), "rendered twice: {:?}", key(&v));
    }
    Ok(objects)
}

fn key(v: &Value) -> (String, String, String) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (s("/kind"), s("/metadata/namespace"), s("/metadata/name"))
}

fn kustomize() -> BTreeMap<(String, String, String), Value> {
    kustomize_dir(&manifests_dir())
}

fn kustomize_dir(dir: &Path) -> BTreeMap<(String, String, String), Value> {
    kustomization_objects(dir)
        .unwrap()
        .into_iter()
        .map(|(_, o)| {
            let v = serde_json::to_value(&o).unwrap();
            (key(&v), v)
        })
        .collect()
}

fn object<'a>(
    objects: &'a BTreeMap<(String, String, String), Value>,
    kind: &str,
    name: &str,
) -> &'a Value {
    objects
        .iter()
        .find(|((k, _, n), _)| k == kind && n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn args(objects: &BTreeMap<(String, String, String), Value>, deployment: &str) -> Vec<String> {
    serde_json::from_value(
        object(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]["args"]
            .clone(),
    )
    .unwrap()
}

#[test]
fn the_chart_lints_clean() {
    let out = helm(&["lint", "--strict", chart_dir().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "helm lint --strict failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn default_values_render_the_objects_of_the_manifests() {
    let want = kustomize();
    let have = render(&[]).unwrap();
    let ns = ("Namespace".to_owned(), String::new(), NAMESPACE.to_owned());
    // The Namespace is rendered only with namespace.create (Helm's --create-namespace makes it).
    same_objects(
        &have,
        &want,
        std::slice::from_ref(&ns),
        "chart vs manifests/",
    );
    let with_ns = render(&["namespace.create=true"]).unwrap();
    assert_eq!(with_ns.get(&ns), want.get(&ns), "the Namespace differs");
    assert_eq!(with_ns.len(), want.len());
}

/// `have` (a chart render) has exactly the objects of `want` (a kustomize render), each equal,
/// leaving out the objects `except` names.
fn same_objects(
    have: &BTreeMap<(String, String, String), Value>,
    want: &BTreeMap<(String, String, String), Value>,
    except: &[(String, String, String)],
    what: &str,
) {
    let want_keys: Vec<_> = want.keys().filter(|k| !except.contains(k)).collect();
    let have_keys: Vec<_> = have.keys().collect();
    assert_eq!(have_keys, want_keys, "{what}: different objects");
    for (k, v) in have {
        assert_eq!(v, &want[k], "{what}: {k:?} differs");
    }
}

#[test]
fn the_namespaced_mode_renders_the_namespaced_overlay() {
    let want = kustomize_dir(&manifests_dir().join("namespaced"));
    let have = render(&["rbac.namespaced=true", "watchNamespaces={models}"]).unwrap();
    let ns = ("Namespace".to_owned(), String::new(), NAMESPACE.to_owned());
    same_objects(
        &have,
        &want,
        &[ns],
        "chart rbac.namespaced vs manifests/namespaced/",
    );
    assert!(have.keys().all(|(k, _, _)| k != "ClusterRoleBinding"));
    let err = render(&["rbac.namespaced=true"]).unwrap_err();
    assert!(
        err.contains("rbac.namespaced needs watchNamespaces"),
        "{err}"
    );
}

#[test]
fn the_scale_guard_renders_the_scale_guard_overlay() {
    let guard = kustomize_dir(&manifests_dir().join("scale-guard"));
    assert_eq!(guard.len(), 2);
    let with = render(&["scaleGuard.enabled=true"]).unwrap();
    let without = render(&[]).unwrap();
    for (k, v) in &guard {
        assert_eq!(
            with.get(k),
            Some(v),
            "{k:?} differs from manifests/scale-guard/"
        );
        assert!(
            !without.contains_key(k),
            "{k:?} rendered without scaleGuard.enabled"
        );
    }
}

#[test]
fn values_reach_the_objects_they_name() {
    let o = render(&[
        "watchNamespaces={models,team-b}",
        "image.repository=registry.local/zs",
        "image.tag=dev",
        "activator.replicas=3",
        "config.stable-window=2m",
        "commonLabels.team=ml",
        "activator.nodeSelector.pool=cpu",
        "autoscaler.podDisruptionBudget.enabled=false",
    ])
    .unwrap();
    assert!(args(&o, "zeroscale-activator").contains(&"--namespaces=models,team-b".into()));
    assert!(args(&o, "zeroscale-autoscaler").contains(&"--namespaces=models,team-b".into()));
    let act = object(&o, "Deployment", "zeroscale-activator");
    assert_eq!(act["spec"]["replicas"], 3);
    assert_eq!(
        act["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.local/zs:dev"
    );
    assert_eq!(
        act["spec"]["template"]["spec"]["nodeSelector"]["pool"],
        "cpu"
    );
    assert_eq!(act["spec"]["template"]["metadata"]["labels"]["team"], "ml");
    assert_eq!(
        object(&o, "ConfigMap", "zeroscale-config")["data"]["stable-window"],
        "2m"
    );
    for v in o.values() {
        assert_eq!(
            v["metadata"]["labels"]["team"],
            "ml",
            "{:?} lacks commonLabels",
            key(v)
        );
    }
    assert!(
        o.keys()
            .all(|(k, _, n)| !(k == "PodDisruptionBudget" && n == "zeroscale-autoscaler"))
    );
    let monitors = render(&["serviceMonitor.enabled=true"]).unwrap();
    assert_eq!(
        monitors.keys().filter(|k| k.0 == "ServiceMonitor").count(),
        2
    );
}

#[test]
fn bad_values_are_refused_naming_the_value() {
    let typo = render(&["config.stable-windw=2m"]).unwrap_err();
    assert!(typo.contains("stable-windw"), "{typo}");
    let replicas = render(&["activator.replicas=-1"]).unwrap_err();
    assert!(replicas.contains("replicas"), "{replicas}");
    let policy = render(&["image.pullPolicy=Sometimes"]).unwrap_err();
    assert!(policy.contains("pullPolicy"), "{policy}");
}
