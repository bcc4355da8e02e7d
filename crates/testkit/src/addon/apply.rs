//! Server-side apply of rendered objects, so an invalid object fails loudly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, ApiCapabilities, ApiResource, Scope};
use kube::{Client, ResourceExt};

use super::AddonError;
use super::kustomize::{kustomization_objects, parse_objects};

/// Field manager used for server-side apply.
pub const FIELD_MANAGER: &str = "zeroscale-testkit";

/// One object applied, for reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The object's kind.
    pub kind: String,
    /// Its namespace, if namespaced.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// `metadata.resourceVersion` after the apply.
    pub resource_version: Option<String>,
    /// `metadata.generation` after the apply, for kinds that have one (spec changes bump it,
    /// status updates do not).
    pub generation: Option<i64>,
}

/// Server-side applies every object of a kustomize base (e.g. `manifests/`), in the order the
/// base lists them.
pub async fn apply_kustomization(client: &Client, dir: &Path) -> Result<Vec<Applied>, AddonError> {
    apply_objects(client, kustomization_objects(dir)?).await
}

/// Server-side applies every object in one YAML file.
pub async fn apply_file(client: &Client, path: &Path) -> Result<Vec<Applied>, AddonError> {
    let objects = parse_objects(path)?
        .into_iter()
        .map(|o| (path.to_owned(), o))
        .collect();
    apply_objects(client, objects).await
}

async fn apply_objects(
    client: &Client,
    objects: Vec<(PathBuf, DynamicObject)>,
) -> Result<Vec<Applied>, AddonError> {
    let mut kinds: HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)> = HashMap::new();
    let mut applied = Vec::new();
    for (path, obj) in objects {
        let path = path.as_path();
        let types = obj.types.clone().ok_or_else(|| AddonError::Parse {
            path: path.to_owned(),
            message: format!("object {:?} has no apiVersion/kind", obj.name_any()),
        })?;
        let gvk = GroupVersionKind::try_from(&types).map_err(|e| AddonError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if !kinds.contains_key(&gvk) {
            let found = discovery::pinned_kind(client, &gvk)
                .await
                .map_err(|source| AddonError::UnknownKind {
                    path: path.to_owned(),
                    gvk: gvk.clone(),
                    source: Box::new(source),
                })?;
            kinds.insert(gvk.clone(), found);
        }
        let (resource, caps) = &kinds[&gvk];
        let name = obj.name_any();
        let namespace = obj.namespace();
        let api: Api<DynamicObject> = match (&caps.scope, &namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, resource),
            (Scope::Namespaced, None) => {
                return Err(AddonError::Parse {
                    path: path.to_owned(),
                    message: format!("{} {name} is namespaced but names no namespace", gvk.kind),
                });
            }
            (Scope::Cluster, _) => Api::all_with(client.clone(), resource),
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let answer = api
            .patch(&name, &params, &Patch::Apply(&obj))
            .await
            .map_err(|source| AddonError::Apply {
                path: path.to_owned(),
                kind: gvk.kind.clone(),
                name: match &namespace {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name.clone(),
                },
                source: Box::new(source),
            })?;
        applied.push(Applied {
            kind: gvk.kind.clone(),
            namespace,
            name,
            resource_version: answer.metadata.resource_version,
            generation: answer.metadata.generation,
        });
    }
    Ok(applied)
}

pub(super) fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> AddonError {
    let what = what.into();
    move |e| AddonError::Kube {
        what,
        source: Box::new(e),
    }
}
