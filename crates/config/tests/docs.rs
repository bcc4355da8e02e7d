//! `docs/configuration.md` lists exactly the keys the code knows, with the code's defaults, ranges
//! and meanings, and its examples parse without errors.
//!
//! `ZEROSCALE_UPDATE_DOCS=1 cargo test -p zeroscale-config --test docs` rewrites the tables.

use std::collections::{BTreeMap, BTreeSet};

use zeroscale_config::{
    ANNOTATIONS, CONFIGMAP_KEYS, DeploymentSettings, GlobalConfig, KeyDoc, markdown_table,
};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");

const SECTIONS: [(&str, &[KeyDoc]); 2] = [
    ("configmap-keys", CONFIGMAP_KEYS),
    ("annotations", ANNOTATIONS),
];

fn read_doc() -> String {
    std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("reading {DOC}: {e}"))
}

/// The text between `<!-- {name}:start -->` and `<!-- {name}:end -->`, and its byte range.
fn section<'a>(doc: &'a str, name: &str) -> (&'a str, std::ops::Range<usize>) {
    let start_marker = format!("<!-- {name}:start -->\n");
    let end_marker = format!("<!-- {name}:end -->");
    let start = doc
        .find(&start_marker)
        .unwrap_or_else(|| panic!("{DOC} lacks {start_marker:?}"))
        + start_marker.len();
    let end = start
        + doc[start..]
            .find(&end_marker)
            .unwrap_or_else(|| panic!("{DOC} lacks {end_marker:?}"));
    (&doc[start..end], start..end)
}

/// The keys of a table: the first cell of each row, in backticks.
fn table_keys(table: &str) -> Vec<String> {
    table
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(key, _)| key.to_owned())
        .collect()
}

#[test]
fn doc_lists_exactly_the_known_keys() {
    let doc = read_doc();
    for (name, keys) in SECTIONS {
        let (table, _) = section(&doc, name);
        let listed = table_keys(table);
        let listed_set: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
        let known: BTreeSet<&str> = keys.iter().map(|k| k.key).collect();
        let missing: Vec<_> = known.difference(&listed_set).collect();
        let extra: Vec<_> = listed_set.difference(&known).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name} table in {DOC}: missing {missing:?}, extra {extra:?}"
        );
        assert_eq!(
            listed.len(),
            listed_set.len(),
            "{name}: a key is listed twice"
        );
    }
}

#[test]
fn doc_tables_match_the_code() {
    let mut doc = read_doc();
    let update = std::env::var_os("ZEROSCALE_UPDATE_DOCS").is_some();
    for (name, keys) in SECTIONS {
        let want = markdown_table(keys);
        let (have, range) = section(&doc, name);
        if have != want {
            if update {
                doc.replace_range(range, &want);
            } else {
                panic!(
                    "the {name} table in {DOC} is out of date; run \
                     ZEROSCALE_UPDATE_DOCS=1 cargo test -p zeroscale-config --test docs\n\
                     expected:\n{want}"
                );
            }
        }
    }
    if update {
        std::fs::write(DOC, doc).unwrap();
    }
}

/// `key: "value"` lines of the YAML block that contains `marker`, below the line ending in
/// `under:`, as long as they stay indented deeper than it.
fn yaml_map(doc: &str, marker: &str, under: &str) -> BTreeMap<String, String> {
    let block = doc
        .split("```yaml")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or(""))
        .find(|b| b.contains(marker))
        .unwrap_or_else(|| panic!("no yaml block with {marker:?}"));
    let mut lines = block.lines().skip_while(|l| l.trim() != under);
    let head = lines.next().expect("section line");
    let indent = head.len() - head.trim_start().len();
    lines
        .take_while(|l| l.len() - l.trim_start().len() > indent)
        .map(|l| {
            let l = l.split(" #").next().unwrap_or(l).trim();
            let (k, v) = l
                .split_once(": ")
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (k.to_owned(), v.trim().trim_matches('"').to_owned())
        })
        .collect()
}

#[test]
fn example_configmap_parses_without_errors() {
    let data = yaml_map(&read_doc(), "kind: ConfigMap", "data:");
    assert!(data.len() >= 5, "{data:?}");
    let (cfg, errors) = GlobalConfig::from_configmap(&data, &GlobalConfig::default());
    assert_eq!(errors, vec![]);
    assert_ne!(cfg, GlobalConfig::default());
}

#[test]
fn example_deployment_parses_without_errors() {
    let doc = read_doc();
    let annotations = yaml_map(&doc, "kind: Deployment", "annotations:");
    assert!(zeroscale_config::is_opted_in(&annotations));
    let (global, _) = GlobalConfig::from_configmap(
        &yaml_map(&doc, "kind: ConfigMap", "data:"),
        &GlobalConfig::default(),
    );
    let (s, errors) = DeploymentSettings::resolve(&global, &annotations);
    assert_eq!(errors, vec![]);
    assert_eq!(s.model_name.as_deref(), Some("llama-3.1-8b"));
    assert_eq!(s.scaling.target, 4.0, "container-concurrency is the target");
}
