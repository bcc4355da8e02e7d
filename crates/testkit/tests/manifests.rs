//! The add-on's ConfigMap (`manifests/base/configmap.yaml`) and the chart's `config:` values
//! (`charts/zeroscale/values.yaml`) carry every key the code knows, at its default, with its
//! range and meaning as a comment. Regenerate both after adding a key:
//! `ZEROSCALE_UPDATE_MANIFESTS=1 cargo test -p zeroscale-testkit --test manifests`.

use std::path::Path;

use zeroscale_config::{CONFIGMAP_KEYS, CONFIGMAP_NAME, GlobalConfig};

fn render() -> String {
    let mut out = String::from(
        "# zeroscale's global configuration, read by the autoscaler and the activators.\n\
         # Edits are hot-reloaded within one tick. A bad value is rejected (log line, Warning Event on\n\
         # this ConfigMap, zeroscale_autoscaler_config_errors_total) and the last good value stays.\n\
         # Per-Deployment overrides: zeroscale.dev/* annotations (docs/configuration.md).\n\
         # Keys and defaults are generated from the code and checked by a test: set your own values in a\n\
         # kustomize overlay or with `kubectl edit configmap -n zeroscale-system zeroscale-config`.\n",
    );
    out.push_str("apiVersion: v1\nkind: ConfigMap\nmetadata:\n");
    out.push_str(&format!(
        "  name: {CONFIGMAP_NAME}\n  namespace: zeroscale-system\n"
    ));
    out.push_str("  labels: {app.kubernetes.io/part-of: zeroscale}\ndata:\n");
    out.push_str(&keys_block());
    out
}

/// Every key at its default, indented under a YAML map, each with its meaning and range.
fn keys_block() -> String {
    let mut out = String::new();
    for (i, k) in CONFIGMAP_KEYS.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "  # {}\n  # Default {}; allowed: {}.\n",
            k.doc, k.default, k.range
        ));
        out.push_str(&format!("  {}: \"{}\"\n", k.key, k.default));
    }
    out
}

const BEGIN: &str = "# BEGIN generated config";
const END: &str = "# END generated config";

/// `values.yaml` with its generated `config:` block (between the BEGIN and END lines) rendered.
fn render_values(values: &str) -> Result<String, String> {
    let begin = values.find(BEGIN).ok_or(format!("no `{BEGIN}` line"))?;
    let body = begin + values[begin..].find('\n').ok_or("no line after BEGIN")? + 1;
    let end = values.find(END).ok_or(format!("no `{END}` line"))?;
    if end < body {
        return Err("END before BEGIN".into());
    }
    Ok(format!(
        "{}config:\n{}{}",
        &values[..body],
        keys_block(),
        &values[end..]
    ))
}

#[test]
fn chart_values_list_every_key_at_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/zeroscale/values.yaml");
    let have = std::fs::read_to_string(&path).unwrap();
    let want = render_values(&have).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if std::env::var_os("ZEROSCALE_UPDATE_MANIFESTS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    assert_eq!(
        have,
        want,
        "{}'s config block is out of date: run ZEROSCALE_UPDATE_MANIFESTS=1 cargo test -p zeroscale-testkit --test manifests",
        path.display()
    );
    // The block parses as the same data as the ConfigMap in manifests/.
    let values: serde_json::Value = serde_yaml_ng::from_str(&have).unwrap();
    let chart: std::collections::BTreeMap<String, String> =
        serde_json::from_value(values["config"].clone()).unwrap();
    let want: std::collections::BTreeMap<String, String> = CONFIGMAP_KEYS
        .iter()
        .map(|k| (k.key.to_owned(), k.default.to_owned()))
        .collect();
    assert_eq!(chart, want);
}

#[test]
fn a_values_file_without_markers_is_refused() {
    assert!(render_values("config: {}\n").unwrap_err().contains("BEGIN"));
    assert!(
        render_values("# END generated config\n# BEGIN generated config\n")
            .unwrap_err()
            .contains("END before BEGIN")
    );
}

#[test]
fn configmap_manifest_lists_every_key_at_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/base/configmap.yaml");
    let want = render();
    if std::env::var_os("ZEROSCALE_UPDATE_MANIFESTS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        have,
        want,
        "{} is out of date: run ZEROSCALE_UPDATE_MANIFESTS=1 cargo test -p zeroscale-testkit --test manifests",
        path.display()
    );

    // And what it says is a valid configuration that equals the built-in defaults.
    let objects = zeroscale_testkit::addon::parse_objects(&path).unwrap();
    let data: std::collections::BTreeMap<String, String> =
        serde_json::from_value(objects[0].data["data"].clone()).unwrap();
    let (config, errors) = GlobalConfig::from_configmap(&data, &GlobalConfig::default());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(config, GlobalConfig::default());
}

/// The chart's `values.schema.json`: every value's type, and the `config:` keys exactly those
/// the code knows (a misspelt key fails `helm install` instead of being ignored).
fn render_schema() -> String {
    use serde_json::json;
    let config: serde_json::Map<String, serde_json::Value> = CONFIGMAP_KEYS
        .iter()
        .map(|k| {
            (
                k.key.to_owned(),
                // `--set key=50` gives a number: the template quotes every value.
                json!({
                    "type": ["string", "number", "boolean"],
                    "description": format!("{} Default {}; allowed: {}.", k.doc, k.default, k.range),
                }),
            )
        })
        .collect();
    let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let component = |extra: serde_json::Value| {
        let mut props = json!({
            "replicas": {"type": "integer", "minimum": 0},
            "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
            "logLevel": {"type": "string", "minLength": 1},
            "resources": {"type": "object"},
            "podDisruptionBudget": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "enabled": {"type": "boolean"},
                    "minAvailable": {"type": ["integer", "string"]},
                },
            },
            "podAnnotations": strings.clone(),
            "nodeSelector": strings.clone(),
            "tolerations": {"type": "array", "items": {"type": "object"}},
            "affinity": {"type": "object"},
            "priorityClassName": {"type": "string"},
            "extraArgs": {"type": "array", "items": {"type": "string", "pattern": "^--"}},
        });
        props
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"type": "object", "additionalProperties": false, "properties": props})
    };
    let schema = json!({
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "zeroscale chart values (generated by crates/testkit/tests/manifests.rs)",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "namespace": {
                "type": "object",
                "additionalProperties": false,
                "properties": {"create": {"type": "boolean"}},
            },
            "image": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "repository": {"type": "string", "minLength": 1},
                    "tag": {"type": "string"},
                    "pullPolicy": {"enum": ["", "Always", "IfNotPresent", "Never"]},
                },
            },
            "imagePullSecrets": {"type": "array", "items": {"type": "object"}},
            "commonLabels": strings.clone(),
            "commonAnnotations": strings.clone(),
            "watchNamespaces": {"type": "array", "items": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
            "rbac": {
                "type": "object",
                "additionalProperties": false,
                "properties": {"namespaced": {"type": "boolean"}},
            },
            "scaleGuard": {
                "type": "object",
                "additionalProperties": false,
                "properties": {"enabled": {"type": "boolean"}},
            },
            "activator": component(json!({"drainTimeout": {"type": "string", "minLength": 1}})),
            "autoscaler": component(json!({})),
            "serviceMonitor": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "enabled": {"type": "boolean"},
                    "interval": {"type": "string"},
                    "labels": strings,
                },
            },
            "config": {"type": "object", "additionalProperties": false, "properties": config},
        },
    });
    serde_json::to_string_pretty(&schema).unwrap() + "\n"
}

#[test]
fn chart_schema_knows_every_value_and_config_key() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/zeroscale/values.schema.json");
    let want = render_schema();
    if std::env::var_os("ZEROSCALE_UPDATE_MANIFESTS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        have,
        want,
        "{} is out of date: run ZEROSCALE_UPDATE_MANIFESTS=1 cargo test -p zeroscale-testkit --test manifests",
        path.display()
    );
}

/// The permissions the manifests grant `sa`, one line per rule, as the component READMEs list
/// them: the ClusterRoles bound cluster-wide and the Roles bound in the add-on's namespace.
fn granted(sa: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests");
    let mut objects = Vec::new();
    for f in ["base/rbac.yaml", "cluster-bindings.yaml"] {
        for o in zeroscale_testkit::addon::parse_objects(&root.join(f)).unwrap() {
            objects.push(serde_json::to_value(&o).unwrap());
        }
    }
    let role = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let mut out = String::new();
    for b in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        let subjects = b["subjects"].as_array().cloned().unwrap_or_default();
        if !subjects
            .iter()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa)
        {
            continue;
        }
        let r = role(
            b["roleRef"]["kind"].as_str().unwrap(),
            b["roleRef"]["name"].as_str().unwrap(),
        );
        let scope = match b["metadata"]["namespace"].as_str() {
            Some(ns) => format!("in `{ns}`"),
            None => "in every namespace".to_owned(),
        };
        for rule in r["rules"].as_array().unwrap() {
            let list = |k: &str| {
                rule[k]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| v.as_str().unwrap().to_owned())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            };
            let groups: Vec<String> = list("apiGroups")
                .into_iter()
                .map(|g| if g.is_empty() { "core".into() } else { g })
                .collect();
            let names = list("resourceNames");
            let named = if names.is_empty() {
                String::new()
            } else {
                format!(" named {}", names.join(", "))
            };
            out.push_str(&format!(
                "- {} on `{}` ({}){named}, {scope}\n",
                list("verbs").join(", "),
                list("resources").join("`, `"),
                groups.join(", "),
            ));
        }
    }
    out
}

const RBAC_BEGIN: &str = "<!-- BEGIN granted by manifests/base/rbac.yaml (generated: ZEROSCALE_UPDATE_MANIFESTS=1 cargo test -p zeroscale-testkit --test manifests) -->\n";
const RBAC_END: &str = "<!-- END granted -->";

#[test]
fn the_component_readmes_list_exactly_the_permissions_the_manifests_grant() {
    for (readme, sa) in [
        ("../../activator/README.md", "zeroscale-activator"),
        ("../../autoscaler/README.md", "zeroscale-autoscaler"),
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(readme);
        let have = std::fs::read_to_string(&path).unwrap();
        let begin = have
            .find(RBAC_BEGIN)
            .unwrap_or_else(|| panic!("{}: no `{}` line", path.display(), RBAC_BEGIN.trim()));
        let body = begin + RBAC_BEGIN.len();
        let end = have[body..]
            .find(RBAC_END)
            .map(|e| body + e)
            .unwrap_or_else(|| panic!("{}: no `{RBAC_END}` line", path.display()));
        let want = format!("{}{}{}", &have[..body], granted(sa), &have[end..]);
        if std::env::var_os("ZEROSCALE_UPDATE_MANIFESTS").is_some() {
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        assert_eq!(
            have,
            want,
            "{}: its permission list differs from the manifests; run ZEROSCALE_UPDATE_MANIFESTS=1 cargo test -p zeroscale-testkit --test manifests",
            path.display()
        );
    }
}
