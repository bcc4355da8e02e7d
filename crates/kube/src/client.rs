//! The Kubernetes client: from a kubeconfig file when one is given, else the in-cluster
//! configuration (or `$KUBECONFIG`, `~/.kube/config`).

use std::path::Path;

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file could not be read or parsed.
    #[error("reading kubeconfig {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig file was read but names no usable cluster or user.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What went wrong.
        source: kube::config::KubeconfigError,
    },
    /// No `--kubeconfig`, and neither an in-cluster configuration nor a kubeconfig was found.
    #[error("no in-cluster config or kubeconfig found: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The configuration was found but the client could not be built from it (TLS, proxy).
    #[error("building the Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// The client configuration: from `kubeconfig` when given, else inferred.
pub async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, ClientError> {
    match kubeconfig {
        Some(path) => {
            let shown = path.display().to_string();
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|source| ClientError::Read {
                    path: shown.clone(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    path: shown,
                    source,
                })
        }
        None => Ok(kube::Config::infer().await?),
    }
}

/// A client from `kubeconfig` (or the inferred configuration), after `tune` adjusted the
/// configuration (timeouts, for example).
pub async fn client(
    kubeconfig: Option<&Path>,
    tune: impl FnOnce(&mut kube::Config),
) -> Result<kube::Client, ClientError> {
    let mut config = config(kubeconfig).await?;
    tune(&mut config);
    Ok(kube::Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_kubeconfig_names_the_file() {
        let Err(err) = client(Some(Path::new("/nonexistent/kubeconfig")), |_| {}).await else {
            panic!("a client from a missing file");
        };
        assert!(matches!(err, ClientError::Read { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("reading kubeconfig /nonexistent/kubeconfig: "),
            "{err}"
        );
    }
}
