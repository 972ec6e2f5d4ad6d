//! A client per Fleet member, from the member's `api` reference:
//! - `kubeconfigContext`: that context of the kubeconfig (`--kubeconfig`,
//!   else `$KUBECONFIG`, else `~/.kube/config`);
//! - `secretRef`: a kubeconfig stored in a Secret of the hub cluster
//!   (`key`, default `kubeconfig`), its current context;
//! - neither: the kubeconfig context named like the member.
//!
//! Failing to make a client is not an error of the rollout: it becomes that
//! member's "unreachable" outcome, with the reason. Connections time out
//! quickly so that a member that is down does not hold up its wave.

use crate::api::FleetMember;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use std::time::Duration;

/// How long to wait for a member's API server to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The kubeconfig key of a member Secret when `secretRef.key` is not set.
pub const DEFAULT_SECRET_KEY: &str = "kubeconfig";

fn with_timeouts(mut config: Config) -> Config {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    config
}

/// A client for `context` of `kubeconfig`.
pub async fn client_for_context(kubeconfig: &Kubeconfig, context: &str) -> Result<Client, String> {
    let options = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
        .await
        .map_err(|e| format!("kubeconfig context {context:?}: {e}"))?;
    Client::try_from(with_timeouts(config))
        .map_err(|e| format!("kubeconfig context {context:?}: {e}"))
}

/// A client for `member`; `kubeconfig` serves contexts, `hub` the Secrets.
pub async fn member_client(
    member: &FleetMember,
    kubeconfig: Option<&Kubeconfig>,
    hub: Option<&Client>,
) -> Result<Client, String> {
    let api = member.api.clone().unwrap_or_default();
    if let Some(secret_ref) = &api.secret_ref {
        let hub = hub.ok_or_else(|| {
            format!(
                "member {}: api.secretRef needs the hub cluster (--hub-context) to read Secret {}/{}",
                member.name, secret_ref.namespace, secret_ref.name
            )
        })?;
        let key = secret_ref.key.as_deref().unwrap_or(DEFAULT_SECRET_KEY);
        let secrets: Api<Secret> = Api::namespaced(hub.clone(), &secret_ref.namespace);
        let secret = secrets.get(&secret_ref.name).await.map_err(|e| {
            format!(
                "member {}: reading Secret {}/{}: {}",
                member.name,
                secret_ref.namespace,
                secret_ref.name,
                match &e {
                    kube::Error::Api(s) => s.message.clone(),
                    other => other.to_string(),
                }
            )
        })?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .ok_or_else(|| {
                format!(
                    "member {}: Secret {}/{} has no key {key:?}",
                    member.name, secret_ref.namespace, secret_ref.name
                )
            })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            format!(
                "member {}: Secret {}/{} key {key:?} is not UTF-8 text",
                member.name, secret_ref.namespace, secret_ref.name
            )
        })?;
        // The parse error names a position, never the content (it holds
        // credentials).
        let member_config = Kubeconfig::from_yaml(&text).map_err(|e| {
            format!(
                "member {}: Secret {}/{} key {key:?} is not a kubeconfig: {e}",
                member.name, secret_ref.namespace, secret_ref.name
            )
        })?;
        let context = member_config.current_context.clone().ok_or_else(|| {
            format!(
                "member {}: the kubeconfig in Secret {}/{} has no current-context",
                member.name, secret_ref.namespace, secret_ref.name
            )
        })?;
        return client_for_context(&member_config, &context).await;
    }
    let context = api
        .kubeconfig_context
        .clone()
        .unwrap_or_else(|| member.name.clone());
    let kubeconfig = kubeconfig.ok_or_else(|| {
        format!(
            "member {}: no kubeconfig to find context {context:?} in",
            member.name
        )
    })?;
    client_for_context(kubeconfig, &context).await
}
