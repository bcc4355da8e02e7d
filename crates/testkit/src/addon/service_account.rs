//! Kubeconfigs for the manifests' ServiceAccounts (TokenRequest API), so a component started
//! with one has exactly the RBAC the manifests grant.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::config::{AuthInfo, Context, Kubeconfig, NamedAuthInfo, NamedContext};

use super::AddonError;

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
