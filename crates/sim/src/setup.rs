//! From configuration to the settings of one simulated model, through `zeroscale-config`.
//!
//! The simulator takes exactly what the add-on takes: `zeroscale-config` ConfigMap keys and
//! `zeroscale.dev/*` annotations, as `key=value` pairs or read from the ConfigMap and
//! Deployment YAML a user already has. They are parsed by [`GlobalConfig::from_configmap`]
//! and [`DeploymentSettings::resolve`], the functions the autoscaler and the activator call,
//! so the [`Params`] of a simulated model are the ones the real Deployment would get. Unlike
//! the add-on (which falls back and reports), a rejected value is an error here: a simulation
//! of a typo is worth nothing.

use std::collections::BTreeMap;
use std::path::Path;

use zeroscale_config::{ANNOTATION_PREFIX, DeploymentSettings, GlobalConfig, Params};

use crate::event::{Nanos, nanos};

/// Configuration as written: ConfigMap data and Deployment annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigSource {
    /// `zeroscale-config` data.
    pub configmap: BTreeMap<String, String>,
    /// The Deployment's annotations (`zeroscale.dev/enabled` is implied).
    pub annotations: BTreeMap<String, String>,
}

/// Why configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A file could not be read or is not the YAML expected.
    #[error("{path}: {problem}")]
    File {
        /// The path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A `key=value` argument has no `=`.
    #[error("{0:?}: expected key=value")]
    NotKeyValue(String),
    /// Values rejected by zeroscale-config.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// What the simulation needs to know about one model's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSettings {
    /// The scaling policy, as the autoscaler resolves it.
    pub params: Params,
    /// `tick-interval`.
    pub tick: Nanos,
    /// `scrape-interval`.
    pub scrape: Nanos,
    /// `zeroscale.dev/container-concurrency` (0 = unlimited).
    pub container_concurrency: u32,
    /// `activator-queue-depth`.
    pub queue_depth: usize,
    /// `activator-queue-deadline` or `zeroscale.dev/queue-deadline`.
    pub queue_deadline: Nanos,
    /// `activator-wake-resend-interval`.
    pub wake_resend: Nanos,
}

/// Splits `key=value`.
pub fn key_value(s: &str) -> Result<(String, String), SetupError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| SetupError::NotKeyValue(s.to_owned()))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// Whether `key` names an annotation (`zeroscale.dev/...`).
pub fn is_annotation(key: &str) -> bool {
    key.starts_with(ANNOTATION_PREFIX)
}

fn yaml_docs(path: &Path) -> Result<Vec<serde_yaml_ng::Value>, SetupError> {
    let err = |problem: String| SetupError::File {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = serde::Deserialize::deserialize(doc).map_err(|e| err(e.to_string()))?;
        docs.push(v);
    }
    Ok(docs)
}

fn string_map(v: &serde_yaml_ng::Value) -> Option<BTreeMap<String, String>> {
    let m = v.as_mapping()?;
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let k = k.as_str()?.to_owned();
        let v = match v {
            serde_yaml_ng::Value::String(s) => s.clone(),
            serde_yaml_ng::Value::Bool(b) => b.to_string(),
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            _ => return None,
        };
        out.insert(k, v);
    }
    Some(out)
}

impl ConfigSource {
    /// Adds a `key=value`: an annotation when the key starts with `zeroscale.dev/`, else a
    /// ConfigMap key.
    pub fn set(&mut self, key: &str, value: &str) {
        if is_annotation(key) {
            self.annotations.insert(key.to_owned(), value.to_owned());
        } else {
            self.configmap.insert(key.to_owned(), value.to_owned());
        }
    }

    /// Reads the `data` of a ConfigMap manifest (the first `kind: ConfigMap` document; a plain
    /// mapping of strings is taken as the data itself).
    pub fn read_configmap(&mut self, path: &Path) -> Result<(), SetupError> {
        for doc in yaml_docs(path)? {
            let data = if doc.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap") {
                match doc.get("data") {
                    Some(d) => string_map(d),
                    None => Some(BTreeMap::new()),
                }
            } else if doc.get("kind").is_none() {
                string_map(&doc)
            } else {
                continue;
            };
            let data = data.ok_or_else(|| SetupError::File {
                path: path.display().to_string(),
                problem: "ConfigMap data must map keys to strings".into(),
            })?;
            self.configmap.extend(data);
            return Ok(());
        }
        Err(SetupError::File {
            path: path.display().to_string(),
            problem: "no ConfigMap in this file".into(),
        })
    }

    /// Reads the `zeroscale.dev/*` annotations of the first Deployment in a manifest file.
    pub fn read_deployment(&mut self, path: &Path) -> Result<(), SetupError> {
        for doc in yaml_docs(path)? {
            if doc.get("kind").and_then(|k| k.as_str()) != Some("Deployment") {
                continue;
            }
            let annotations = doc
                .get("metadata")
                .and_then(|m| m.get("annotations"))
                .map(string_map)
                .unwrap_or_else(|| Some(BTreeMap::new()))
                .ok_or_else(|| SetupError::File {
                    path: path.display().to_string(),
                    problem: "metadata.annotations must map keys to strings".into(),
                })?;
            self.annotations
                .extend(annotations.into_iter().filter(|(k, _)| is_annotation(k)));
            return Ok(());
        }
        Err(SetupError::File {
            path: path.display().to_string(),
            problem: "no Deployment in this file".into(),
        })
    }

    /// Resolves the settings with zeroscale-config; any rejected value is an error.
    pub fn resolve(&self) -> Result<ModelSettings, SetupError> {
        let (global, mut errors) =
            GlobalConfig::from_configmap(&self.configmap, &GlobalConfig::default());
        let mut annotations = self.annotations.clone();
        annotations.insert("zeroscale.dev/enabled".into(), "true".into());
        let (dep, dep_errors) = DeploymentSettings::resolve(&global, &annotations);
        errors.extend(dep_errors);
        if !errors.is_empty() {
            return Err(SetupError::Invalid(
                errors.iter().map(ToString::to_string).collect(),
            ));
        }
        Ok(ModelSettings {
            params: dep.scaling,
            tick: nanos(global.tick_interval),
            scrape: nanos(global.scrape_interval),
            container_concurrency: dep.container_concurrency,
            queue_depth: global.activator.queue_depth,
            queue_deadline: nanos(dep.queue_deadline),
            wake_resend: nanos(global.activator.wake_resend_interval),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SEC;

    #[test]
    fn defaults_are_the_add_ons() {
        let s = ConfigSource::default().resolve().unwrap();
        assert_eq!(s.params, Params::default());
        assert_eq!((s.tick, s.scrape), (2 * SEC, SEC));
        assert_eq!(s.queue_depth, 10_000);
        assert_eq!(s.queue_deadline, 300 * SEC);
        assert_eq!(s.container_concurrency, 0);
    }

    #[test]
    fn keys_and_annotations_go_through_zeroscale_config() {
        let mut c = ConfigSource::default();
        c.set("scale-to-zero-grace-period", "5m");
        c.set("zeroscale.dev/container-concurrency", "8");
        c.set("tick-interval", "1s");
        let s = c.resolve().unwrap();
        assert_eq!(s.params.scale_to_zero_grace_period.as_secs(), 300);
        // Knative's rule, applied by zeroscale-config: the target defaults to the limit.
        assert_eq!(s.params.target, 8.0);
        assert_eq!(s.container_concurrency, 8);
        assert_eq!(s.tick, SEC);
    }

    #[test]
    fn a_bad_value_is_an_error_naming_the_key() {
        let mut c = ConfigSource::default();
        c.set("max-scale", "ten");
        c.set("stable-windo", "1m");
        let e = c.resolve().unwrap_err().to_string();
        assert!(e.contains("max-scale: \"ten\" is invalid"), "{e}");
        assert!(e.contains("stable-windo"), "{e}");
    }

    #[test]
    fn reads_the_add_ons_own_manifests() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut c = ConfigSource::default();
        c.read_configmap(&root.join("manifests/base/configmap.yaml"))
            .unwrap();
        assert!(c.configmap.contains_key("scale-to-zero-grace-period"));
        c.read_deployment(&root.join("manifests/examples/model.yaml"))
            .unwrap();
        assert!(
            c.annotations
                .contains_key("zeroscale.dev/container-concurrency")
        );
        c.resolve().unwrap();
    }
}
