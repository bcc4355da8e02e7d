//! The one key both binaries use for an opted-in Deployment (the activator's model, the
//! autoscaler's scale target).

use std::fmt;

/// A Deployment's namespace and name: the key of a model in the activator's routing table and
/// of a scale target in the autoscaler's index. Ordered by namespace, then name.
///
/// ```
/// use zeroscale_config::DeploymentKey;
///
/// let key = DeploymentKey::new("models", "llama");
/// assert_eq!(key.to_string(), "models/llama");
/// assert!(DeploymentKey::new("a", "z") < DeploymentKey::new("b", "a"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeploymentKey {
    /// The Deployment's namespace.
    pub namespace: String,
    /// The Deployment's name.
    pub deployment: String,
}

impl DeploymentKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, deployment: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            deployment: deployment.into(),
        }
    }
}

impl fmt::Display for DeploymentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.deployment)
    }
}
