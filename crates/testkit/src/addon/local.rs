//! Running the add-on's binaries as local processes next to the cluster's node: apply
//! `manifests/`, scale the add-on's Deployments to 0, start the same binaries with the
//! containers' args and env under their ServiceAccounts, and publish the activator behind its
//! Service with a hand-made EndpointSlice. For the suites that restart, stop or read the logs of
//! one component at will; `node_e2e` runs the add-on as the manifests' pods instead.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::AddonError;
use super::apply::Applied;
use super::apply::{FIELD_MANAGER, apply_kustomization, kube_err};
use super::kustomize::{manifest_object, manifests_dir};
use super::service_account::service_account_kubeconfig;
use crate::LocalCluster;
use crate::process::OwnedChild;

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
pub(super) fn flag_addr(c: &LocalComponent, flag: &str) -> Result<SocketAddr, AddonError> {
    c.args
        .iter()
        .find_map(|a| a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')))
        .ok_or_else(|| AddonError::Manifest(format!("{} has no {flag}=", c.binary)))?
        .parse()
        .map_err(|e| AddonError::Manifest(format!("{} {flag}: {e}", c.binary)))
}

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
/// 2. scales the two add-on Deployments to 0 (the processes below do their work);
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
