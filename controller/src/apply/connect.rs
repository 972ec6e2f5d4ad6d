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

use super::live::{LiveCache, OnChange};
use crate::api::FleetMember;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use std::sync::Arc;
use std::time::Duration;

/// How long to wait for a member's API server to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The kubeconfig key of a member Secret when `secretRef.key` is not set.
pub const DEFAULT_SECRET_KEY: &str = "kubeconfig";

/// Requests: a member that stops answering fails the request in
/// [`REQUEST_TIMEOUT`]. The read timeout counts from each request's write,
/// not from when its pooled connection went idle.
fn with_timeouts(mut config: Config) -> Config {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    config.reset_reader_on_write = true;
    config
}

/// Watches: no read timeout. A watch on a quiet kind reads nothing for
/// minutes, and a read timeout cut it (then relisted it) every
/// [`REQUEST_TIMEOUT`]; kube-runtime's watcher has an idle timeout of its
/// own, just past the server's 290 s watch timeout.
fn for_watches(mut config: Config) -> Config {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = None;
    config.write_timeout = Some(REQUEST_TIMEOUT);
    config
}

async fn config_for_context(kubeconfig: &Kubeconfig, context: &str) -> Result<Config, String> {
    let options = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
        .await
        .map_err(|e| format!("kubeconfig context {context:?}: {e}"))
}

/// The kubeconfig at `path`; without one, `$KUBECONFIG` or
/// `~/.kube/config` when there is one (in a pod there is none).
pub fn read_kubeconfig(path: Option<&std::path::Path>) -> anyhow::Result<Option<Kubeconfig>> {
    if let Some(path) = path {
        return Kubeconfig::read_from(path).map(Some).map_err(|e| {
            anyhow::Error::new(e).context(format!("reading kubeconfig {}", path.display()))
        });
    }
    Ok(Kubeconfig::read().ok())
}

/// A client for `context` of `kubeconfig`, for requests.
pub async fn client_for_context(kubeconfig: &Kubeconfig, context: &str) -> Result<Client, String> {
    let config = config_for_context(kubeconfig, context).await?;
    Client::try_from(with_timeouts(config))
        .map_err(|e| format!("kubeconfig context {context:?}: {e}"))
}

/// A client for `context` of `kubeconfig`, for watches (and requests that
/// may wait as long as the server takes).
pub async fn watch_client_for_context(
    kubeconfig: &Kubeconfig,
    context: &str,
) -> Result<Client, String> {
    let config = config_for_context(kubeconfig, context).await?;
    Client::try_from(for_watches(config))
        .map_err(|e| format!("kubeconfig context {context:?}: {e}"))
}

/// A client for `context` of `kubeconfig`, for requests and for watches.
async fn clients_for_context(
    kubeconfig: &Kubeconfig,
    context: &str,
) -> Result<(Client, Client), String> {
    let config = config_for_context(kubeconfig, context).await?;
    let named = |e: kube::Error| format!("kubeconfig context {context:?}: {e}");
    Ok((
        Client::try_from(with_timeouts(config.clone())).map_err(named)?,
        Client::try_from(for_watches(config)).map_err(named)?,
    ))
}

/// Where a member's client comes from: a kubeconfig and the context in it,
/// and a digest of that source (the Secret's name, key and content, or the
/// context's name) that says when a cached client is still the right one.
struct Source {
    kubeconfig: Kubeconfig,
    context: String,
    digest: [u8; 32],
}

/// A client for `member`; `kubeconfig` serves contexts, `hub` the Secrets.
pub async fn member_client(
    member: &FleetMember,
    kubeconfig: Option<&Kubeconfig>,
    hub: Option<&Client>,
) -> Result<Client, String> {
    let source = source(member, kubeconfig, hub).await?;
    client_for_context(&source.kubeconfig, &source.context).await
}

/// A member's client, and what `tideway run` knows of the member from its
/// watches.
#[derive(Clone)]
pub struct Member {
    /// For requests.
    pub client: Client,
    /// For watches (no read timeout).
    pub watch_client: Client,
    pub live: Option<Arc<LiveCache>>,
}

impl Member {
    /// A client alone: every question goes to the member (`tideway apply`).
    pub fn uncached(client: Client) -> Self {
        Self {
            watch_client: client.clone(),
            client,
            live: None,
        }
    }
}

/// Member clients kept from one reconcile to the next.
///
/// A `kube::Client` owns its connection pool: a client made per reconcile
/// paid a TCP and TLS handshake to every member each time, and every watch
/// started with one held a connection no other request could share. With
/// 1,000 policies that was thousands of connections per member. A cached
/// client is keyed by the digest of its source, so a rotated kubeconfig
/// Secret (read on every call: that read is what notices the rotation)
/// makes a new client, and two members with the same source share one.
/// Made [`ClientCache::watching`], each client comes with its member's
/// [`LiveCache`], which lives (and watches) as long as the client is kept.
#[derive(Default)]
pub struct ClientCache {
    clients: std::sync::Mutex<std::collections::HashMap<[u8; 32], Member>>,
    on_change: Option<OnChange>,
}

/// More cached clients than this means sources come and go (rotations):
/// start afresh rather than keep every one.
const MAX_CACHED_CLIENTS: usize = 1024;

impl ClientCache {
    /// A cache whose members are watched; `on_change` hears of every
    /// change to a policy's objects that Tideway did not make.
    pub fn watching(on_change: OnChange) -> Self {
        Self {
            clients: Default::default(),
            on_change: Some(on_change),
        }
    }

    /// The client (and watch cache) for `member`, made once per source.
    pub async fn member(
        &self,
        member: &FleetMember,
        kubeconfig: Option<&Kubeconfig>,
        hub: Option<&Client>,
    ) -> Result<Member, String> {
        let source = source(member, kubeconfig, hub).await?;
        if let Some(found) = self.lock().get(&source.digest) {
            return Ok(found.clone());
        }
        let (client, watch_client) =
            clients_for_context(&source.kubeconfig, &source.context).await?;
        let live = self.on_change.as_ref().map(|on_change| {
            LiveCache::new(
                &member.name,
                client.clone(),
                watch_client.clone(),
                Some(on_change.clone()),
            )
        });
        let mut clients = self.lock();
        if clients.len() >= MAX_CACHED_CLIENTS {
            clients.clear();
        }
        Ok(clients
            .entry(source.digest)
            .or_insert(Member {
                client,
                watch_client,
                live,
            })
            .clone())
    }

    /// The client for `member`, made once per source.
    pub async fn member_client(
        &self,
        member: &FleetMember,
        kubeconfig: Option<&Kubeconfig>,
        hub: Option<&Client>,
    ) -> Result<Client, String> {
        self.member(member, kubeconfig, hub).await.map(|m| m.client)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], Member>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for part in parts {
        // Length-prefixed: ("ab", "c") and ("a", "bc") differ.
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

async fn source(
    member: &FleetMember,
    kubeconfig: Option<&Kubeconfig>,
    hub: Option<&Client>,
) -> Result<Source, String> {
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
        let digest = digest(&[
            b"secret",
            secret_ref.namespace.as_bytes(),
            secret_ref.name.as_bytes(),
            key.as_bytes(),
            text.as_bytes(),
        ]);
        return Ok(Source {
            kubeconfig: member_config,
            context,
            digest,
        });
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
    // The kubeconfig file is read once per process: its context's name
    // identifies the source.
    Ok(Source {
        digest: digest(&[b"context", context.as_bytes()]),
        kubeconfig: kubeconfig.clone(),
        context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, context: Option<&str>) -> FleetMember {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "api": context.map(|c| serde_json::json!({"kubeconfigContext": c})),
        }))
        .expect("member")
    }

    fn kubeconfig() -> Kubeconfig {
        Kubeconfig::from_yaml(
            r#"
apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {server: "https://127.0.0.1:1"}
- name: b
  cluster: {server: "https://127.0.0.1:2"}
users:
- name: u
  user: {token: secret-token}
contexts:
- name: east
  context: {cluster: a, user: u}
- name: west
  context: {cluster: b, user: u}
"#,
        )
        .expect("kubeconfig")
    }

    #[tokio::test]
    async fn one_client_per_source_reused_across_calls() {
        let cache = ClientCache::default();
        let config = kubeconfig();
        for _ in 0..3 {
            cache
                .member_client(&member("east", None), Some(&config), None)
                .await
                .expect("east");
        }
        assert_eq!(cache.lock().len(), 1, "the same member reuses its client");
        // Another member naming the same context shares the client; a
        // different context is a client of its own.
        cache
            .member_client(&member("alias", Some("east")), Some(&config), None)
            .await
            .expect("alias");
        assert_eq!(cache.lock().len(), 1);
        cache
            .member_client(&member("west", None), Some(&config), None)
            .await
            .expect("west");
        assert_eq!(cache.lock().len(), 2);
        // A context that is not there is the member's error, not cached.
        let Err(err) = cache
            .member_client(&member("north", None), Some(&config), None)
            .await
        else {
            panic!("a context that is not there made a client");
        };
        assert!(err.contains("north"), "{err}");
        assert_eq!(cache.lock().len(), 2);
    }
}
