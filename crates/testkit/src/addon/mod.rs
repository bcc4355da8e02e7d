//! Installing zeroscale's own manifests into a cluster the way a user would, and running its
//! components under the manifests' ServiceAccounts.
//!
//! - [`kustomize`]: read a kustomize base (`resources:`, nested bases, `images:`; no patches
//!   or generators, which `manifests/` does not use) and render its objects.
//! - [`apply`]: server-side apply those objects ([`apply_kustomization`]), so an invalid object
//!   fails loudly.
//! - [`service_account`]: mint a token with the TokenRequest API and write a kubeconfig for it
//!   ([`service_account_kubeconfig`]), so a process started with that file has exactly the RBAC
//!   the manifests grant: a missing rule fails a test instead of hiding behind an admin identity.
//! - [`local`]: [`start_addon`] puts it together for the e2e suites that drive the add-on's
//!   components one by one: apply `manifests/`, scale the add-on's Deployments to 0, and run
//!   the same binaries as processes with the containers' args and env,
//!   each on its own address in the private network namespace and under its own
//!   ServiceAccount. The activator is published behind the manifests' `zeroscale-activator`
//!   Service with a hand-made EndpointSlice, which is how the autoscaler finds it to scrape.
//!   On the real node the add-on runs as pods instead (`zeroscale-e2e`'s `install_addon`).

use std::path::PathBuf;

use kube::core::GroupVersionKind;

pub mod apply;
pub mod kustomize;
pub mod local;
pub mod service_account;
#[cfg(test)]
mod tests;

pub use apply::{Applied, FIELD_MANAGER, apply_file, apply_kustomization};
pub use kustomize::{
    ImageOverride, example_model, file_object, kustomization_files, kustomization_objects,
    kustomized_image, manifest_object, manifests_dir, parse_objects,
};
pub use local::{
    ACTIVATOR, ACTIVATOR_SLICE, ADDON_NAMESPACE, AUTOSCALER, AddonOptions, LocalComponent,
    OVERRIDE_MANAGER, RunningAddon, SLICE_MANAGER, add_local_ip, fast_config, local_component,
    override_config, publish_activator, scale_addon_to_zero, start_addon,
};
pub use service_account::service_account_kubeconfig;

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
