//! Installing zeroscale's own manifests into a cluster the way a user would, and running its
//! components under the manifests' ServiceAccounts.
//!
//! [`apply_kustomization`] reads a kustomize base's `resources:` list (plain files and nested
//! bases; no patches or generators, which `manifests/` does not use) and server-side applies
//! every object, so an invalid object fails loudly. [`service_account_kubeconfig`] mints a token
//! with the TokenRequest API and writes a kubeconfig for it, so a process started with that file
//! has exactly the RBAC the manifests grant: a missing rule fails a test instead of hiding behind
//! an admin identity.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, Context, Kubeconfig, NamedAuthInfo, NamedContext};
use kube::core::GroupVersionKind;
use kube::discovery::{self, ApiCapabilities, ApiResource, Scope};
use kube::{Client, ResourceExt};
use serde::Deserialize as _;

/// Field manager used for server-side apply.
pub const FIELD_MANAGER: &str = "zeroscale-testkit";

/// Why installing manifests failed. Every variant names the file or object concerned.
#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    /// A manifest file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A manifest file is not valid YAML for a Kubernetes object.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The API server does not know an object's kind.
    #[error("{path}: unknown kind {gvk:?}: {source}")]
    UnknownKind {
        /// The file.
        path: PathBuf,
        /// The kind as written.
        gvk: GroupVersionKind,
        /// The discovery error.
        source: Box<kube::Error>,
    },
    /// The API server rejected an object.
    #[error("applying {kind} {name} from {path}: {source}")]
    Apply {
        /// The file.
        path: PathBuf,
        /// The object's kind.
        kind: String,
        /// `namespace/name` or `name`.
        name: String,
        /// The API error.
        source: Box<kube::Error>,
    },
    /// Minting a ServiceAccount token or writing its kubeconfig failed.
    #[error("kubeconfig for ServiceAccount {namespace}/{name}: {message}")]
    Token {
        /// ServiceAccount namespace.
        namespace: String,
        /// ServiceAccount name.
        name: String,
        /// What went wrong.
        message: String,
    },
}

/// One object applied, for reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The object's kind.
    pub kind: String,
    /// Its namespace, if namespaced.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

#[derive(serde::Deserialize)]
struct Kustomization {
    #[serde(default)]
    resources: Vec<String>,
}

/// Lists the manifest files of a kustomize base in order, following nested bases.
pub fn kustomization_files(dir: &Path) -> Result<Vec<PathBuf>, AddonError> {
    let path = dir.join("kustomization.yaml");
    let text = read(&path)?;
    let k: Kustomization = serde_yaml_ng::from_str(&text).map_err(|e| AddonError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
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

/// Server-side applies every object of a kustomize base (e.g. `manifests/`), in the order the
/// base lists them.
pub async fn apply_kustomization(client: &Client, dir: &Path) -> Result<Vec<Applied>, AddonError> {
    let mut applied = Vec::new();
    let mut kinds = HashMap::new();
    for file in kustomization_files(dir)? {
        applied.extend(apply_file_with(client, &file, &mut kinds).await?);
    }
    Ok(applied)
}

/// Server-side applies every object in one YAML file.
pub async fn apply_file(client: &Client, path: &Path) -> Result<Vec<Applied>, AddonError> {
    apply_file_with(client, path, &mut HashMap::new()).await
}

async fn apply_file_with(
    client: &Client,
    path: &Path,
    kinds: &mut HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>,
) -> Result<Vec<Applied>, AddonError> {
    let mut applied = Vec::new();
    for obj in parse_objects(path)? {
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
        api.patch(&name, &params, &Patch::Apply(&obj))
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
        });
    }
    Ok(applied)
}

/// Mints a token for ServiceAccount `namespace/name` (TokenRequest API, valid `ttl_seconds`) and
/// writes a kubeconfig at `out` that reaches the same API server as `admin_kubeconfig` but
/// authenticates as that ServiceAccount.
pub async fn service_account_kubeconfig(
    client: &Client,
    admin_kubeconfig: &Path,
    namespace: &str,
    name: &str,
    ttl_seconds: i64,
    out: &Path,
) -> Result<PathBuf, AddonError> {
    let err = |message: String| AddonError::Token {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        message,
    };
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            expiration_seconds: Some(ttl_seconds),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .map_err(|e| err(format!("TokenRequest failed: {e}")))?;
    let token = answer
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| err("TokenRequest answered without a token".into()))?;

    let admin = Kubeconfig::read_from(admin_kubeconfig)
        .map_err(|e| err(format!("reading {}: {e}", admin_kubeconfig.display())))?;
    let cluster = admin
        .clusters
        .first()
        .cloned()
        .ok_or_else(|| err(format!("{} has no cluster", admin_kubeconfig.display())))?;
    let user = format!("{namespace}-{name}");
    let config = Kubeconfig {
        clusters: vec![cluster.clone()],
        auth_infos: vec![NamedAuthInfo {
            name: user.clone(),
            auth_info: Some(AuthInfo {
                token: Some(token.into()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: user.clone(),
            context: Some(Context {
                cluster: cluster.name.clone(),
                user: Some(user.clone()),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        current_context: Some(user),
        ..Default::default()
    };
    let yaml = serde_yaml_ng::to_string(&config).map_err(|e| err(e.to_string()))?;
    std::fs::write(out, yaml).map_err(|e| err(format!("writing {}: {e}", out.display())))?;
    Ok(out.to_owned())
}

fn read(path: &Path) -> Result<String, AddonError> {
    std::fs::read_to_string(path).map_err(|source| AddonError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
