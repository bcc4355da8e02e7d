//! Why a local cluster (or its node) could not start: one error type for `cluster` and `node`,
//! apart from both so neither imports the other for it.

use std::path::PathBuf;

/// Why a local cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A control-plane binary is missing.
    #[error(
        "{binary} not found in {dir}: run scripts/build-control-plane.sh (with network access) or set ZEROSCALE_K8S_BIN"
    )]
    MissingBinary {
        /// Binary name.
        binary: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// File system or process spawning failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Generating certificates failed.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    /// The machine lacks something the real node needs.
    #[error("the real node needs {what}: {fix}")]
    NodeMissing {
        /// What is missing.
        what: String,
        /// How to get it.
        fix: String,
    },
    /// A component exited or did not become ready.
    #[error("{component} did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    Start {
        /// Component name.
        component: String,
        /// What happened.
        reason: String,
        /// Its log file.
        log: String,
        /// Last 30 lines of it.
        tail: String,
    },
    /// Building the client failed.
    #[error("building a client from {path}: {message}")]
    Client {
        /// The kubeconfig.
        path: PathBuf,
        /// Cause.
        message: String,
    },
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}
