//! The add-on's ConfigMap (`manifests/base/configmap.yaml`) carries every key the code knows, at
//! its default, with its range and meaning as a comment. Regenerate it after adding a key:
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
