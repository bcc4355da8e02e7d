//! The Role grants exactly the learned-state ConfigMaps the code writes
//! (`zeroscale_autoscaler::learned::shard_names`), in the manifests and in the chart alike.

use std::path::Path;

use zeroscale_autoscaler::learned::{SHARD_PREFIX, shard_names};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_role_names_every_shard_and_nothing_else() {
    let objects =
        zeroscale_testkit::addon::parse_objects(&repo("manifests/base/rbac.yaml")).unwrap();
    let role = objects
        .iter()
        .find(|o| {
            o.types.as_ref().is_some_and(|t| t.kind == "Role")
                && o.metadata.name.as_deref() == Some("zeroscale-autoscaler")
        })
        .expect("the autoscaler's Role");
    let rules = role.data["rules"].as_array().unwrap();
    let learned: Vec<&serde_json::Value> = rules
        .iter()
        .filter(|r| {
            r["resourceNames"].as_array().is_some_and(|names| {
                names
                    .iter()
                    .any(|n| n.as_str().is_some_and(|n| n.starts_with(SHARD_PREFIX)))
            })
        })
        .collect();
    assert_eq!(learned.len(), 1, "one rule for the shards");
    let rule = learned[0];
    assert_eq!(rule["apiGroups"], serde_json::json!([""]));
    assert_eq!(rule["resources"], serde_json::json!(["configmaps"]));
    assert_eq!(rule["verbs"], serde_json::json!(["get", "patch", "create"]));
    let names: Vec<&str> = rule["resourceNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names, shard_names());

    // The chart's Role template lists the same names, in the same order.
    let chart = std::fs::read_to_string(repo("charts/zeroscale/templates/rbac.yaml")).unwrap();
    let in_chart: Vec<&str> = chart
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| n.starts_with(SHARD_PREFIX))
        .collect();
    assert_eq!(in_chart, shard_names());
}
