use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;

use super::kustomize::*;
use super::local::*;

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests")
}

#[test]
fn the_base_lists_existing_files_and_every_object_parses() {
    let files = kustomization_files(&manifests()).unwrap();
    assert!(files.len() >= 5, "{files:?}");
    let mut kinds = Vec::new();
    for f in &files {
        for o in parse_objects(f).unwrap() {
            kinds.push(o.types.unwrap().kind);
        }
    }
    for want in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.iter().any(|k| k == want), "no {want} in {kinds:?}");
    }
}

#[test]
fn the_activator_runs_with_its_manifest_args_on_its_own_address() {
    let d: Deployment = manifest_object(&manifests(), "Deployment", ACTIVATOR).unwrap();
    let api: SocketAddr = "10.245.0.3:8080".parse().unwrap();
    let c = local_component(&d, Ipv4Addr::new(10, 245, 0, 2), Some(api)).unwrap();
    assert_eq!(c.binary, "activator");
    for want in [
        "--listen=10.245.0.2:8080",
        "--admin-listen=10.245.0.2:9090",
        "--autoscaler-url=http://10.245.0.3:8080",
    ] {
        assert!(
            c.args.iter().any(|a| a == want),
            "no {want} in {:?}",
            c.args
        );
    }
    assert!(
        c.env
            .contains(&("POD_NAMESPACE".into(), ADDON_NAMESPACE.into())),
        "{:?}",
        c.env
    );
    assert_eq!(c.ports.get("http"), Some(&8080));
    assert_eq!(c.ports.get("metrics"), Some(&9090));
    assert_eq!(
        flag_addr(&c, "--listen").unwrap(),
        "10.245.0.2:8080".parse().unwrap()
    );
}

#[test]
fn the_autoscaler_keeps_its_flags_and_gets_a_pod_name() {
    let d: Deployment = manifest_object(&manifests(), "Deployment", AUTOSCALER).unwrap();
    let c = local_component(&d, Ipv4Addr::new(10, 245, 0, 3), None).unwrap();
    assert_eq!(c.binary, "autoscaler");
    assert!(
        c.args
            .iter()
            .any(|a| a == "--activator-service=zeroscale-system/zeroscale-activator"),
        "{:?}",
        c.args
    );
    assert_eq!(
        flag_addr(&c, "--api-listen").unwrap(),
        "10.245.0.3:8080".parse().unwrap()
    );
    assert!(
        c.env
            .contains(&("POD_NAME".into(), "zeroscale-autoscaler-local".into())),
        "{:?}",
        c.env
    );
}

/// RBAC names objects that the code and the Deployments name elsewhere: keep them in step.
#[test]
fn rbac_resource_names_match_the_lease_flag_and_the_configmap_name() {
    use k8s_openapi::api::rbac::v1::Role;
    let rbac = manifests().join("base/rbac.yaml");
    let names = |role: &str, resource: &str| -> Vec<String> {
        let r: Role = file_object(&rbac, "Role", role).unwrap().unwrap();
        r.rules
            .unwrap_or_default()
            .into_iter()
            .filter(|rule| rule.resources.iter().flatten().any(|x| x == resource))
            .flat_map(|rule| rule.resource_names.unwrap_or_default())
            .collect()
    };
    let d: Deployment = manifest_object(&manifests(), "Deployment", AUTOSCALER).unwrap();
    let c = local_component(&d, Ipv4Addr::new(10, 245, 0, 3), None).unwrap();
    let lease = c
        .args
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name="))
        .expect("--lease-name in autoscaler.yaml");
    assert_eq!(names(AUTOSCALER, "leases"), vec![lease.to_owned()]);
    // The autoscaler's learned-state shards are checked against the code that writes them by
    // autoscaler/tests/learned_rbac.rs; every other ConfigMap name is the configuration's.
    for role in [AUTOSCALER, ACTIVATOR] {
        let config: Vec<String> = names(role, "configmaps")
            .into_iter()
            .filter(|n| role != AUTOSCALER || !n.starts_with("zeroscale-learned-"))
            .collect();
        assert_eq!(
            config,
            vec![zeroscale_config::CONFIGMAP_NAME.to_owned()],
            "{role}"
        );
    }
}

#[test]
fn an_unsupported_field_reference_is_an_error_naming_it() {
    let mut d: Deployment = manifest_object(&manifests(), "Deployment", AUTOSCALER).unwrap();
    let spec = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    let env = spec.containers[0].env.as_mut().unwrap();
    env[0]
        .value_from
        .as_mut()
        .unwrap()
        .field_ref
        .as_mut()
        .unwrap()
        .field_path = "status.hostIP".into();
    let e = local_component(&d, Ipv4Addr::new(10, 245, 0, 3), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("status.hostIP"), "{e}");
}

#[test]
fn the_example_model_is_opted_in_at_zero() {
    let (d, s) = example_model(&manifests().join("examples/model.yaml"), "sentiment").unwrap();
    let a = d.metadata.annotations.unwrap();
    assert_eq!(
        a.get("zeroscale.dev/enabled").map(String::as_str),
        Some("true")
    );
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(0));
    // The image as `kubectl apply -k manifests/examples` names it, not the file's bare name.
    assert_eq!(
        spec.template.spec.unwrap().containers[0].image.as_deref(),
        Some("ghcr.io/zeroscale/sample-model:0.1.0")
    );
    assert_eq!(s.metadata.name.as_deref(), Some("sentiment"));
}

#[test]
fn image_overrides_rewrite_name_and_tag_as_kustomize_does() {
    let o = ImageOverride {
        name: "zeroscale".into(),
        new_name: Some("reg.example:5000/zs".into()),
        new_tag: Some("1.2".into()),
    };
    assert_eq!(
        o.rewrite("zeroscale").as_deref(),
        Some("reg.example:5000/zs:1.2")
    );
    assert_eq!(
        o.rewrite("zeroscale:old").as_deref(),
        Some("reg.example:5000/zs:1.2")
    );
    assert_eq!(o.rewrite("zeroscale-other"), None);
    assert_eq!(o.rewrite("other/zeroscale"), None);
    let keep_tag = ImageOverride {
        name: "reg:5000/a".into(),
        new_name: Some("b".into()),
        new_tag: None,
    };
    assert_eq!(keep_tag.rewrite("reg:5000/a:7").as_deref(), Some("b:7"));
    assert_eq!(
        keep_tag.rewrite("reg:5000/a@sha256:ab").as_deref(),
        Some("b@sha256:ab")
    );
}

#[test]
fn the_rendered_manifests_name_the_images_of_their_kustomizations() {
    let images = |dir: PathBuf| -> Vec<String> {
        kustomization_objects(&dir)
            .unwrap()
            .into_iter()
            .filter_map(|(_, o)| {
                let c = o.data.pointer("/spec/template/spec/containers/0/image")?;
                c.as_str().map(str::to_owned)
            })
            .collect()
    };
    assert_eq!(
        images(manifests()),
        vec!["ghcr.io/zeroscale/zeroscale:0.1.0"; 2]
    );
    assert_eq!(
        images(manifests().join("examples")),
        vec!["ghcr.io/zeroscale/sample-model:0.1.0"]
    );
    // The pool example names its image apart: it must be the same one.
    assert_eq!(
        images(manifests().join("examples/pool")),
        vec!["ghcr.io/zeroscale/sample-model:0.1.0"; 3]
    );
    // What the e2e tests' own Deployments run.
    assert_eq!(
        super::kustomized_image(&manifests().join("examples"), "sample-model").unwrap(),
        "ghcr.io/zeroscale/sample-model:0.1.0"
    );
    assert_eq!(
        super::kustomized_image(&manifests().join("examples"), "other:1").unwrap(),
        "other:1"
    );
}

#[test]
fn a_missing_file_is_named_in_the_error() {
    let dir = std::env::temp_dir().join(format!("zs-addon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kustomization.yaml"), "resources: [nope.yaml]\n").unwrap();
    let files = kustomization_files(&dir).unwrap();
    let e = parse_objects(&files[0]).unwrap_err().to_string();
    assert!(e.contains("nope.yaml"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn invalid_yaml_is_reported_with_its_file() {
    let dir = std::env::temp_dir().join(format!("zs-addon-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.yaml");
    std::fs::write(&f, "apiVersion: v1\nkind: [oops\n").unwrap();
    let e = parse_objects(&f).unwrap_err().to_string();
    assert!(e.contains("bad.yaml"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A kustomization dir with `kustomization` and one ConfigMap `cm` in `cm.yaml`.
fn patched(
    tag: &str,
    kustomization: &str,
) -> Result<Vec<(PathBuf, kube::api::DynamicObject)>, String> {
    let dir = std::env::temp_dir().join(format!("zs-addon-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm, namespace: a}\ndata: {k: v}\n",
    )
    .unwrap();
    std::fs::write(dir.join("kustomization.yaml"), kustomization).unwrap();
    let out = kustomization_objects(&dir).map_err(|e| e.to_string());
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

#[test]
fn json6902_patches_apply_to_their_target_only() {
    let objects = patched(
        "patch",
        "resources: [cm.yaml]\npatches:\n  - target: {kind: ConfigMap, name: cm}\n    patch: |-\n      - {op: add, path: /data/extra, value: x}\n",
    )
    .unwrap();
    assert_eq!(
        objects[0].1.data["data"],
        serde_json::json!({"k": "v", "extra": "x"})
    );
    let nothing = patched(
        "miss",
        "resources: [cm.yaml]\npatches:\n  - target: {kind: Secret}\n    patch: '[]'\n",
    )
    .unwrap_err();
    assert!(nothing.contains("selects no object"), "{nothing}");
}

#[test]
fn unsupported_kustomize_features_are_errors_not_ignored() {
    let smp = patched(
        "smp",
        "resources: [cm.yaml]\npatches:\n  - target: {kind: ConfigMap}\n    patch: |-\n      data: {k: w}\n",
    )
    .unwrap_err();
    assert!(
        smp.contains("strategic-merge patches are not supported"),
        "{smp}"
    );
    let field = patched("field", "resources: [cm.yaml]\nnamePrefix: x-\n").unwrap_err();
    assert!(field.contains("namePrefix"), "{field}");
}
