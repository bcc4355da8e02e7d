//! Installing zeroscale's own manifests into a cluster the way a user would, and running its
//! components under the manifests' ServiceAccounts.
//!
//! [`apply_kustomization`] reads a kustomize base's `resources:` list (plain files and nested
//! bases; no patches or generators, which `manifests/` does not use) and server-side applies
//! every object, so an invalid object fails loudly. [`service_account_kubeconfig`] mints a token
//! with the TokenRequest API and writes a kubeconfig for it, so a process started with that file
//! has exactly the RBAC the manifests grant: a missing rule fails a test instead of hiding behind
//! an admin identity.
//!
//! [`start_addon`] puts it together for the e2e tests and the demo: apply `manifests/`, scale the
//! add-on's Deployments to 0 (the process kubelet cannot run their image), and run the same
//! binaries as processes with the containers' args and env, each on its own address in the
//! private network namespace and under its own ServiceAccount. The activator is published
//! behind the manifests' `zeroscale-activator` Service with a hand-made EndpointSlice, which is
//! how the autoscaler finds it to scrape.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, Context, Kubeconfig, NamedAuthInfo, NamedContext};
use kube::core::GroupVersionKind;
use kube::discovery::{self, ApiCapabilities, ApiResource, Scope};
use kube::{Client, ResourceExt};
use serde::Deserialize as _;

use crate::LocalCluster;
use crate::process::OwnedChild;

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
    /// A Kubernetes API call made while starting the add-on failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The API error.
        source: Box<kube::Error>,
    },
    /// The manifests do not contain what running the add-on locally needs.
    #[error("manifests: {0}")]
    Manifest(String),
    /// Adding an address, spawning a process or writing a file failed.
    #[error("{what}: {message}")]
    Local {
        /// What was being done.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// A component did not become ready.
    #[error("{component} not ready within {timeout:?}\n--- last lines of its log ---\n{tail}")]
    NotReady {
        /// `activator` or `autoscaler`.
        component: String,
        /// How long we waited.
        timeout: std::time::Duration,
        /// The end of its log.
        tail: String,
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
    /// `metadata.resourceVersion` after the apply.
    pub resource_version: Option<String>,
    /// `metadata.generation` after the apply, for kinds that have one (spec changes bump it,
    /// status updates do not).
    pub generation: Option<i64>,
}

#[derive(serde::Deserialize)]
struct Kustomization {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<ImageOverride>,
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
/// `images:` of its own kustomization and of every kustomization above it (as `kubectl apply
/// -k` renders them).
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

// ---------------------------------------------------------------------------------------------
// Running the add-on locally.

/// The add-on's namespace, as in `manifests/base/namespace.yaml`.
pub const ADDON_NAMESPACE: &str = "zeroscale-system";
/// Name of the activator's Deployment, Service and ServiceAccount in the manifests.
pub const ACTIVATOR: &str = "zeroscale-activator";
/// Name of the autoscaler's Deployment, Service and ServiceAccount in the manifests.
pub const AUTOSCALER: &str = "zeroscale-autoscaler";
/// Field manager of configuration overrides. Not [`FIELD_MANAGER`]: an apply by the manifests'
/// manager with only a few keys would remove every other key it owns.
pub const OVERRIDE_MANAGER: &str = "zeroscale-testkit-overrides";
/// `endpointslice.kubernetes.io/managed-by` of the hand-made activator EndpointSlice, so the
/// EndpointSlice controller leaves it alone.
pub const SLICE_MANAGER: &str = "zeroscale-testkit";
/// Name of the hand-made EndpointSlice that publishes the activator process.
pub const ACTIVATOR_SLICE: &str = "zeroscale-activator-local";

/// The repository's `manifests/` directory.
pub fn manifests_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests");
    p.canonicalize().unwrap_or(p)
}

/// ConfigMap values that make scenarios take seconds instead of minutes: decisions and scrapes
/// every second, a 6 s stable window (panic window 3 s), 4 s scale-to-zero grace period.
/// A Deployment's `zeroscale.dev/*` annotations still win over these.
pub fn fast_config() -> BTreeMap<String, String> {
    [
        ("tick-interval", "1s"),
        ("scrape-interval", "1s"),
        ("scrape-timeout", "800ms"),
        ("stable-window", "6s"),
        ("panic-window-percentage", "50"),
        ("scale-to-zero-grace-period", "4s"),
        ("activator-wake-resend-interval", "2s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// How [`start_addon`] runs the add-on.
#[derive(Clone, Debug)]
pub struct AddonOptions {
    /// The kustomize base to apply (default: [`manifests_dir`]).
    pub manifests: PathBuf,
    /// `zeroscale-config` keys to override after applying (default: none, the manifests' values).
    pub config: BTreeMap<String, String>,
    /// The activator process's address inside the network namespace (default 10.245.0.2).
    pub activator_ip: Ipv4Addr,
    /// The autoscaler process's address (default 10.245.0.3).
    pub autoscaler_ip: Ipv4Addr,
    /// `RUST_LOG` of both processes (default: the manifests' value).
    pub rust_log: Option<String>,
    /// How long each process may take to answer `/readyz` with 200 (default 60 s).
    pub ready_timeout: Duration,
}

impl Default for AddonOptions {
    fn default() -> Self {
        Self {
            manifests: manifests_dir(),
            config: BTreeMap::new(),
            activator_ip: Ipv4Addr::new(10, 245, 0, 2),
            autoscaler_ip: Ipv4Addr::new(10, 245, 0, 3),
            rust_log: None,
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// The add-on running as two local processes; both are stopped when this is dropped.
#[derive(Debug)]
pub struct RunningAddon {
    /// The activator's data port (the `zeroscale-activator` Service's `http` target).
    pub activator_addr: SocketAddr,
    /// The activator's metrics/health port.
    pub activator_metrics_addr: SocketAddr,
    /// The autoscaler's wake API.
    pub autoscaler_api_addr: SocketAddr,
    /// The autoscaler's metrics/health port.
    pub autoscaler_metrics_addr: SocketAddr,
    /// What applying the manifests created or updated.
    pub applied: Vec<Applied>,
    activator: OwnedChild,
    autoscaler: OwnedChild,
}

impl RunningAddon {
    /// `http://<activator data address>`.
    pub fn activator_url(&self) -> String {
        format!("http://{}", self.activator_addr)
    }

    /// `http://<activator metrics address>`.
    pub fn activator_metrics_url(&self) -> String {
        format!("http://{}", self.activator_metrics_addr)
    }

    /// `http://<autoscaler API address>`.
    pub fn autoscaler_url(&self) -> String {
        format!("http://{}", self.autoscaler_api_addr)
    }

    /// `http://<autoscaler metrics address>`.
    pub fn autoscaler_metrics_url(&self) -> String {
        format!("http://{}", self.autoscaler_metrics_addr)
    }

    /// The activator's log file.
    pub fn activator_log(&self) -> &Path {
        &self.activator.log
    }

    /// The autoscaler's log file.
    pub fn autoscaler_log(&self) -> &Path {
        &self.autoscaler.log
    }

    /// The last `n` lines of both logs, for failure messages.
    pub fn logs(&self, n: usize) -> String {
        format!(
            "--- activator ({}) ---\n{}\n--- autoscaler ({}) ---\n{}",
            self.activator.log.display(),
            self.activator.log_tail(n),
            self.autoscaler.log.display(),
            self.autoscaler.log_tail(n)
        )
    }

    /// `Some(description)` if either process has exited.
    pub fn exited(&mut self) -> Option<String> {
        for c in [&mut self.activator, &mut self.autoscaler] {
            if let Some(status) = c.exited() {
                return Some(format!("{} exited with {status}", c.name));
            }
        }
        None
    }
}

/// How one add-on component runs as a process, derived from its Deployment in the manifests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalComponent {
    /// Workspace binary name (the basename of the container's `command[0]`).
    pub binary: String,
    /// The container's args with listen addresses moved to the component's own address.
    pub args: Vec<String>,
    /// The container's environment (field references resolved for a local process).
    pub env: Vec<(String, String)>,
    /// Container ports by name.
    pub ports: BTreeMap<String, u16>,
}

/// Listen flags of the two components; their host part is replaced by the process's address.
const LISTEN_FLAGS: [&str; 4] = [
    "--listen",
    "--admin-listen",
    "--api-listen",
    "--metrics-listen",
];

/// Turns the first container of an add-on Deployment into a process description: listen
/// flags bound to `ip` (keeping the manifests' ports), `--autoscaler-url` pointed at
/// `autoscaler_api` (there is no cluster DNS locally), `fieldRef` env resolved.
pub fn local_component(
    deployment: &Deployment,
    ip: Ipv4Addr,
    autoscaler_api: Option<SocketAddr>,
) -> Result<LocalComponent, AddonError> {
    let name = deployment.name_any();
    let bad = |m: String| AddonError::Manifest(format!("Deployment {name}: {m}"));
    let container = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .ok_or_else(|| bad("no container".into()))?;
    let command = container
        .command
        .as_ref()
        .and_then(|c| c.first())
        .ok_or_else(|| bad("container has no command".into()))?;
    let binary = Path::new(command)
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| bad(format!("command {command:?} has no file name")))?
        .to_owned();
    let mut args = Vec::new();
    for arg in container.args.iter().flatten() {
        let Some((flag, value)) = arg.split_once('=') else {
            args.push(arg.clone());
            continue;
        };
        if LISTEN_FLAGS.contains(&flag) {
            let addr: SocketAddr = value
                .parse()
                .map_err(|e| bad(format!("{flag}={value}: {e}")))?;
            args.push(format!(
                "{flag}={}",
                SocketAddr::new(ip.into(), addr.port())
            ));
        } else if flag == "--autoscaler-url" {
            let api = autoscaler_api
                .ok_or_else(|| bad("--autoscaler-url but no autoscaler address".into()))?;
            args.push(format!("{flag}=http://{api}"));
        } else {
            args.push(arg.clone());
        }
    }
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                let path = from
                    .field_ref
                    .as_ref()
                    .map(|f| f.field_path.as_str())
                    .unwrap_or_default();
                match path {
                    "metadata.namespace" => deployment
                        .namespace()
                        .unwrap_or_else(|| ADDON_NAMESPACE.to_owned()),
                    "metadata.name" => format!("{name}-local"),
                    other => {
                        return Err(bad(format!(
                            "env {}: only metadata.name/namespace field references are supported, not {other:?}",
                            var.name
                        )));
                    }
                }
            }
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    let mut ports = BTreeMap::new();
    for p in container.ports.iter().flatten() {
        if let Some(n) = &p.name {
            let port = u16::try_from(p.container_port)
                .map_err(|_| bad(format!("port {n}: {} out of range", p.container_port)))?;
            ports.insert(n.clone(), port);
        }
    }
    Ok(LocalComponent {
        binary,
        args,
        env,
        ports,
    })
}

/// The value of `--<flag>=` in `args` as a socket address.
fn flag_addr(c: &LocalComponent, flag: &str) -> Result<SocketAddr, AddonError> {
    c.args
        .iter()
        .find_map(|a| a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')))
        .ok_or_else(|| AddonError::Manifest(format!("{} has no {flag}=", c.binary)))?
        .parse()
        .map_err(|e| AddonError::Manifest(format!("{} {flag}: {e}", c.binary)))
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

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> AddonError {
    let what = what.into();
    move |e| AddonError::Kube {
        what,
        source: Box::new(e),
    }
}

/// Scales the add-on's two Deployments to 0: the process kubelet cannot run their images, so
/// the same binaries run as local processes instead (see [`start_addon`]).
pub async fn scale_addon_to_zero(client: &Client) -> Result<(), AddonError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ADDON_NAMESPACE);
    for name in [ACTIVATOR, AUTOSCALER] {
        api.patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
        )
        .await
        .map_err(kube_err(format!("scaling {ADDON_NAMESPACE}/{name} to 0")))?;
    }
    Ok(())
}

/// Sets `zeroscale-config` keys (server-side apply by [`OVERRIDE_MANAGER`]); the other keys keep
/// the manifests' values.
pub async fn override_config(
    client: &Client,
    values: &BTreeMap<String, String>,
) -> Result<(), AddonError> {
    let cm = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "zeroscale-config", "namespace": ADDON_NAMESPACE},
        "data": values,
    });
    Api::<ConfigMap>::namespaced(client.clone(), ADDON_NAMESPACE)
        .patch(
            "zeroscale-config",
            &PatchParams::apply(OVERRIDE_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await
        .map_err(kube_err("overriding zeroscale-config"))?;
    Ok(())
}

/// Adds `ip/32` to `lo` (idempotent). Only inside the private network namespace: never touches
/// the host's interfaces.
pub fn add_local_ip(ip: Ipv4Addr) -> Result<(), AddonError> {
    let err = |message: String| AddonError::Local {
        what: format!("adding {ip}/32 to lo"),
        message,
    };
    if !crate::netns::inside() {
        return Err(err(
            "not inside the private network namespace (call netns::ensure_private_netns first)"
                .into(),
        ));
    }
    let out = std::process::Command::new("ip")
        .args(["-o", "addr", "show", "dev", "lo"])
        .output()
        .map_err(|e| err(format!("running ip: {e}")))?;
    if String::from_utf8_lossy(&out.stdout).contains(&format!(" {ip}/32")) {
        return Ok(());
    }
    let status = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
        .status()
        .map_err(|e| err(format!("running ip: {e}")))?;
    if !status.success() {
        return Err(err(format!("ip addr add: {status}")));
    }
    Ok(())
}

/// Publishes the activator process behind the manifests' `zeroscale-activator` Service: an
/// EndpointSlice with its address and the container's named ports (`http`, `metrics`), as the
/// EndpointSlice controller would for a ready pod.
pub async fn publish_activator(
    client: &Client,
    ip: Ipv4Addr,
    ports: &BTreeMap<String, u16>,
) -> Result<(), AddonError> {
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|(name, port)| serde_json::json!({"name": name, "port": port, "protocol": "TCP"}))
        .collect();
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": ACTIVATOR_SLICE,
            "namespace": ADDON_NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": ACTIVATOR,
                "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
        "ports": ports,
    });
    Api::<EndpointSlice>::namespaced(client.clone(), ADDON_NAMESPACE)
        .patch(
            ACTIVATOR_SLICE,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&slice),
        )
        .await
        .map_err(kube_err("publishing the activator EndpointSlice"))?;
    Ok(())
}

/// Installs the add-on from its manifests and runs it locally, the way a cluster would but as
/// processes:
/// 1. server-side applies `opts.manifests` (any invalid object fails);
/// 2. scales the two add-on Deployments to 0 (the process kubelet cannot run their image);
/// 3. applies `opts.config` over `zeroscale-config`;
/// 4. runs `activator` and `autoscaler` (workspace binaries) with their containers' args and
///    env from the manifests, each on its own address in the network namespace and
///    authenticated as its manifests' ServiceAccount (token from the TokenRequest API), so a
///    missing RBAC rule fails;
/// 5. publishes the activator behind the `zeroscale-activator` Service (an EndpointSlice), where
///    the autoscaler finds it; the activator wakes the autoscaler at its API address;
/// 6. waits until both answer `/readyz` with 200.
pub async fn start_addon(
    cluster: &LocalCluster,
    opts: &AddonOptions,
) -> Result<RunningAddon, AddonError> {
    let client = cluster.client();
    let applied = apply_kustomization(&client, &opts.manifests).await?;
    scale_addon_to_zero(&client).await?;
    if !opts.config.is_empty() {
        override_config(&client, &opts.config).await?;
    }

    let as_dep: Deployment = manifest_object(&opts.manifests, "Deployment", AUTOSCALER)?;
    let autoscaler = local_component(&as_dep, opts.autoscaler_ip, None)?;
    let autoscaler_api = flag_addr(&autoscaler, "--api-listen")?;
    let autoscaler_metrics = flag_addr(&autoscaler, "--metrics-listen")?;
    let act_dep: Deployment = manifest_object(&opts.manifests, "Deployment", ACTIVATOR)?;
    let activator = local_component(&act_dep, opts.activator_ip, Some(autoscaler_api))?;
    let activator_addr = flag_addr(&activator, "--listen")?;
    let activator_metrics = flag_addr(&activator, "--admin-listen")?;

    add_local_ip(opts.activator_ip)?;
    add_local_ip(opts.autoscaler_ip)?;
    publish_activator(&client, opts.activator_ip, &activator.ports).await?;

    let dir = cluster.dir();
    let mut children = Vec::new();
    for (c, sa) in [(&autoscaler, AUTOSCALER), (&activator, ACTIVATOR)] {
        let kubeconfig = service_account_kubeconfig(
            &client,
            cluster.kubeconfig_path(),
            ADDON_NAMESPACE,
            sa,
            3600,
            &dir.join(format!("{}.kubeconfig", c.binary)),
        )
        .await?;
        let program = crate::bins::workspace_bin_dir()
            .map(|d| d.join(&c.binary))
            .filter(|p| p.is_file())
            .ok_or_else(|| AddonError::Local {
                what: format!("finding the {} binary", c.binary),
                message: "not built: run `cargo build --workspace --bins` first".into(),
            })?;
        let mut args = c.args.clone();
        args.push(format!("--kubeconfig={}", kubeconfig.display()));
        let mut env = c.env.clone();
        if let Some(log) = &opts.rust_log {
            env.retain(|(k, _)| k != "RUST_LOG");
            env.push(("RUST_LOG".into(), log.clone()));
        }
        let child = cluster
            .spawn(&c.binary, &program, &args, &env)
            .map_err(|e| AddonError::Local {
                what: format!("starting {}", c.binary),
                message: e.to_string(),
            })?;
        children.push(child);
    }
    let activator_child = children.pop().expect("two children");
    let autoscaler_child = children.pop().expect("two children");
    let mut running = RunningAddon {
        activator_addr,
        activator_metrics_addr: activator_metrics,
        autoscaler_api_addr: autoscaler_api,
        autoscaler_metrics_addr: autoscaler_metrics,
        applied,
        activator: activator_child,
        autoscaler: autoscaler_child,
    };
    for (component, addr) in [
        ("autoscaler", autoscaler_metrics),
        ("activator", activator_metrics),
    ] {
        let deadline = tokio::time::Instant::now() + opts.ready_timeout;
        loop {
            let ok = crate::http_client::get(addr, "/readyz")
                .await
                .is_ok_and(|r| r.status == 200);
            if ok {
                break;
            }
            let gone = running.exited();
            if gone.is_some() || tokio::time::Instant::now() > deadline {
                let child = if component == "activator" {
                    &running.activator
                } else {
                    &running.autoscaler
                };
                return Err(AddonError::NotReady {
                    component: match gone {
                        Some(g) => format!("{component} ({g})"),
                        None => component.to_owned(),
                    },
                    timeout: opts.ready_timeout,
                    tail: child.log_tail(40),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(running)
}

/// The example model of `manifests/examples/model.yaml` (Deployment and Service named `name`).
pub fn example_model(path: &Path, name: &str) -> Result<(Deployment, Service), AddonError> {
    let d = file_object(path, "Deployment", name)?.ok_or_else(|| {
        AddonError::Manifest(format!("no Deployment {name} in {}", path.display()))
    })?;
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
        for role in [AUTOSCALER, ACTIVATOR] {
            assert_eq!(
                names(role, "configmaps"),
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
        assert_eq!(d.spec.unwrap().replicas, Some(0));
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
