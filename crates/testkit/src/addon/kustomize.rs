//! Reading a kustomize base without an API server: its `resources:` (files and nested bases)
//! and `images:` overrides, rendered the way `kubectl apply -k` renders them, and typed objects
//! out of it.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;

use kube::ResourceExt;
use kube::api::DynamicObject;
use serde::Deserialize as _;

use super::AddonError;

/// The fields of a kustomization this renderer implements; any other field is an error rather
/// than silently ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Kustomization {
    #[serde(default, rename = "apiVersion")]
    _api_version: Option<String>,
    #[serde(default, rename = "kind")]
    _kind: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<ImageOverride>,
    #[serde(default)]
    patches: Vec<PatchEntry>,
}

/// One entry of `patches:`: a JSON 6902 patch (inline or in a file) applied to the objects its
/// target selects. Strategic-merge patches are not implemented here.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchEntry {
    target: PatchTarget,
    #[serde(default)]
    patch: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchTarget {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

impl PatchTarget {
    fn selects(&self, o: &DynamicObject) -> bool {
        let kind = o.types.as_ref().map(|t| t.kind.as_str());
        self.kind.as_deref().is_none_or(|k| kind == Some(k))
            && self
                .name
                .as_deref()
                .is_none_or(|n| o.metadata.name.as_deref() == Some(n))
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| o.metadata.namespace.as_deref() == Some(n))
    }
}

/// Applies the kustomization's `patches:` (in `dir`) to `objects`.
fn apply_patches(
    dir: &Path,
    patches: &[PatchEntry],
    objects: &mut [(PathBuf, DynamicObject)],
) -> Result<(), AddonError> {
    let here = dir.join("kustomization.yaml");
    let bad = |message: String| AddonError::Parse {
        path: here.clone(),
        message,
    };
    for (i, p) in patches.iter().enumerate() {
        let text = match (&p.patch, &p.path) {
            (Some(t), None) => t.clone(),
            (None, Some(f)) => read(&dir.join(f))?,
            _ => {
                return Err(bad(format!(
                    "patches[{i}]: give exactly one of patch and path"
                )));
            }
        };
        let ops: json_patch::Patch = serde_yaml_ng::from_str(&text).map_err(|e| {
            bad(format!(
                "patches[{i}]: not a JSON 6902 patch (a list of operations; strategic-merge patches are not supported by this renderer): {e}"
            ))
        })?;
        let mut hit = false;
        for (_, o) in objects.iter_mut().filter(|(_, o)| p.target.selects(o)) {
            hit = true;
            let mut v = serde_json::to_value(&*o).map_err(|e| bad(e.to_string()))?;
            json_patch::patch(&mut v, &ops)
                .map_err(|e| bad(format!("patches[{i}] on {}: {e}", o.name_any())))?;
            *o = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
        }
        if !hit {
            return Err(bad(format!("patches[{i}]: its target selects no object")));
        }
    }
    Ok(())
}

/// One entry of a kustomization's `images:` list: containers whose image is `name` (with any
/// tag or digest) get `new_name` and `new_tag` instead.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct ImageOverride {
    /// The image name as the manifests write it.
    pub name: String,
    /// Replacement name (registry/repository); the same name if absent.
    #[serde(default, rename = "newName")]
    pub new_name: Option<String>,
    /// Replacement tag; the original tag if absent.
    #[serde(default, rename = "newTag")]
    pub new_tag: Option<String>,
}

impl ImageOverride {
    /// The image `image` becomes, if this entry names it.
    pub fn rewrite(&self, image: &str) -> Option<String> {
        let (name, tag) = split_image(image);
        if name != self.name {
            return None;
        }
        let name = self.new_name.as_deref().unwrap_or(name);
        Some(match (self.new_tag.as_deref(), tag) {
            (Some(t), _) => format!("{name}:{t}"),
            (None, Some(t)) => format!("{name}{t}"),
            (None, None) => name.to_owned(),
        })
    }
}

/// `registry/repo` and its `:tag` / `@digest` suffix (with the separator), if any. A colon
/// before the last slash belongs to a registry port.
fn split_image(image: &str) -> (&str, Option<&str>) {
    if let Some(at) = image.find('@') {
        return (&image[..at], Some(&image[at..]));
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(c) => (&image[..slash + c], Some(&image[slash + c..])),
        None => (image, None),
    }
}

/// Applies `images` to every container and init container of a pod or pod template in `obj`.
fn rewrite_images(obj: &mut DynamicObject, images: &[ImageOverride]) {
    fn pod_specs(v: &mut serde_json::Value) -> Vec<&mut serde_json::Value> {
        // Pod: spec; Deployment and friends: spec.template.spec; CronJob: one level deeper.
        let Some(spec) = v.get_mut("spec") else {
            return Vec::new();
        };
        if spec.get("containers").is_some() {
            return vec![spec];
        }
        let key = if spec.get("template").is_some() {
            "template"
        } else {
            "jobTemplate"
        };
        spec.get_mut(key).map(pod_specs).unwrap_or_default()
    }
    for spec in pod_specs(&mut obj.data) {
        for list in ["initContainers", "containers"] {
            let Some(cs) = spec.get_mut(list).and_then(|c| c.as_array_mut()) else {
                continue;
            };
            for c in cs {
                let Some(image) = c.get("image").and_then(|i| i.as_str()) else {
                    continue;
                };
                if let Some(new) = images.iter().find_map(|o| o.rewrite(image)) {
                    c["image"] = serde_json::Value::String(new);
                }
            }
        }
    }
}

fn read_kustomization(dir: &Path) -> Result<Kustomization, AddonError> {
    let path = dir.join("kustomization.yaml");
    let text = read(&path)?;
    serde_yaml_ng::from_str(&text).map_err(|e| AddonError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })
}

/// What image `image` becomes under the `images:` list of the kustomization in `dir` (itself
/// if no entry names it), e.g. `sample-model` under `manifests/examples/`.
pub fn kustomized_image(dir: &Path, image: &str) -> Result<String, AddonError> {
    let k = read_kustomization(dir)?;
    Ok(k.images
        .iter()
        .find_map(|o| o.rewrite(image))
        .unwrap_or_else(|| image.to_owned()))
}

/// Lists the manifest files of a kustomize base in order, following nested bases.
pub fn kustomization_files(dir: &Path) -> Result<Vec<PathBuf>, AddonError> {
    let k = read_kustomization(dir)?;
    let mut files = Vec::new();
    for r in k.resources {
        let p = dir.join(&r);
        if p.is_dir() {
            files.extend(kustomization_files(&p)?);
        } else {
            files.push(p);
        }
    }
    Ok(files)
}

/// Every object of a kustomize base in order, each with the file it came from, after the
/// `patches:` (JSON 6902) and `images:` of its own kustomization and of every kustomization
/// above it (as `kubectl apply -k` renders them).
pub fn kustomization_objects(dir: &Path) -> Result<Vec<(PathBuf, DynamicObject)>, AddonError> {
    let k = read_kustomization(dir)?;
    let mut objects = Vec::new();
    for r in &k.resources {
        let p = dir.join(r);
        if p.is_dir() {
            objects.extend(kustomization_objects(&p)?);
        } else {
            for o in parse_objects(&p)? {
                objects.push((p.clone(), o));
            }
        }
    }
    apply_patches(dir, &k.patches, &mut objects)?;
    if !k.images.is_empty() {
        for (_, o) in &mut objects {
            rewrite_images(o, &k.images);
        }
    }
    Ok(objects)
}

/// Parses a multi-document YAML file into Kubernetes objects (empty documents skipped).
pub fn parse_objects(path: &Path) -> Result<Vec<DynamicObject>, AddonError> {
    let text = read(path)?;
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| AddonError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject =
            serde_yaml_ng::from_value(value).map_err(|e| AddonError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        objects.push(obj);
    }
    Ok(objects)
}

/// The repository's `manifests/` directory.
pub fn manifests_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests");
    p.canonicalize().unwrap_or(p)
}

/// A typed object (Deployment, Service, ...) named `name` from a base, as rendered (its
/// `images:` applied).
pub fn manifest_object<K: serde::de::DeserializeOwned + kube::Resource>(
    dir: &Path,
    kind: &str,
    name: &str,
) -> Result<K, AddonError> {
    for (path, obj) in kustomization_objects(dir)? {
        if obj.types.as_ref().is_some_and(|t| t.kind == kind) && obj.name_any() == name {
            return typed(&path, obj, kind, name);
        }
    }
    Err(AddonError::Manifest(format!(
        "no {kind} {name} in {}",
        dir.display()
    )))
}

fn typed<K: serde::de::DeserializeOwned>(
    path: &Path,
    obj: DynamicObject,
    kind: &str,
    name: &str,
) -> Result<K, AddonError> {
    let value = serde_json::to_value(&obj).map_err(|e| AddonError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    serde_json::from_value(value).map_err(|e| AddonError::Parse {
        path: path.to_owned(),
        message: format!("{kind} {name}: {e}"),
    })
}

/// A typed object of `kind` named `name` from one YAML file, if present.
pub fn file_object<K: serde::de::DeserializeOwned>(
    path: &Path,
    kind: &str,
    name: &str,
) -> Result<Option<K>, AddonError> {
    for obj in parse_objects(path)? {
        let is_kind = obj.types.as_ref().is_some_and(|t| t.kind == kind);
        if is_kind && obj.name_any() == name {
            return typed(path, obj, kind, name).map(Some);
        }
    }
    Ok(None)
}

/// The example model of `manifests/examples/model.yaml` (Deployment and Service named `name`),
/// its images as the kustomization beside the file names them (what `kubectl apply -k` runs).
pub fn example_model(path: &Path, name: &str) -> Result<(Deployment, Service), AddonError> {
    let mut d: Deployment = file_object(path, "Deployment", name)?.ok_or_else(|| {
        AddonError::Manifest(format!("no Deployment {name} in {}", path.display()))
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    if dir.join("kustomization.yaml").is_file() {
        let containers = d
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .map(|s| s.containers.iter_mut());
        for c in containers.into_iter().flatten() {
            if let Some(image) = c.image.as_mut() {
                *image = kustomized_image(dir, image)?;
            }
        }
    }
    let s = file_object(path, "Service", name)?
        .ok_or_else(|| AddonError::Manifest(format!("no Service {name} in {}", path.display())))?;
    Ok((d, s))
}

fn read(path: &Path) -> Result<String, AddonError> {
    std::fs::read_to_string(path).map_err(|source| AddonError::Read {
        path: path.to_owned(),
        source,
    })
}
