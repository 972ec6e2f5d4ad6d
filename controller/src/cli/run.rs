//! `tideway run`: the CLI over [`tideway_controller::run`].

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tideway_controller::run::{self, lease::LeaseConfig, RunConfig};

pub const LONG_ABOUT: &str = "\
Run the controller in the hub cluster: watch TrafficPolicies and Fleets,
compile each policy for its Fleet, roll the render out to the member
clusters (server-side apply, wave by wave, prune) and write each policy's
status: Ready / Progressing / Degraded for the policy and per member, with
the reason and the member API server's own message.

Several replicas may run; the one holding the Lease (coordination.k8s.io/v1,
--lease-namespace/--lease-name) acts, the others take over when it stops.
A replica that loses the Lease exits (status 1) so that it stops writing at
once. SIGTERM finishes the reconciles in flight and releases the Lease.

The hub is reached in-cluster (the pod's ServiceAccount), or with
--kubeconfig/--context. Members are reached through their Fleet entry's
`api` (a Secret in the hub, or a context of --kubeconfig).

HTTP on every --listen address: /healthz (liveness), /readyz (readiness; a
standby is ready), /metrics (Prometheus: reconciles by result, reconcile
errors, per-member apply latency, leader).";

fn duration(text: &str) -> Result<Duration, String> {
    tideway_controller::validate::parse_duration_ns(text)
        .filter(|ns| *ns > 0.0)
        .map(|ns| Duration::from_nanos(ns as u64))
        .ok_or_else(|| format!("{text:?} is not a duration (e.g. 15s, 500ms, 5m)"))
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A kubeconfig for the hub (and members with kubeconfigContext). Default: in-cluster, else $KUBECONFIG / ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The hub cluster's context in --kubeconfig (default: its current context).
    #[arg(long, value_name = "CONTEXT")]
    context: Option<String>,
    /// This replica's name in the Lease.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    identity: Option<String>,
    /// The Lease's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tideway-system")]
    lease_namespace: String,
    /// The Lease's name (manifests/controller/rbac.yaml grants this one).
    #[arg(long, default_value = "tideway-controller")]
    lease_name: String,
    /// How long a Lease not renewed stays the holder's.
    #[arg(long, default_value = "15s", value_parser = duration)]
    lease_duration: Duration,
    /// How often the leader renews (well under --lease-duration).
    #[arg(long, default_value = "5s", value_parser = duration)]
    renew_interval: Duration,
    /// How often a standby looks at the Lease.
    #[arg(long, default_value = "2s", value_parser = duration)]
    retry_interval: Duration,
    /// Address for /healthz, /readyz and /metrics (repeat for several).
    #[arg(long, value_name = "ADDR", default_values = ["0.0.0.0:8080", "0.0.0.0:9090"])]
    listen: Vec<SocketAddr>,
    /// Re-apply every policy this often even with no change (drift repair).
    #[arg(long, default_value = "5m", value_parser = duration)]
    resync: Duration,
    /// How many policies are reconciled at the same time (each talks to every member).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Watch the TrafficPolicies of this namespace only (default: all).
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    /// Also serve the weights API (GET /v1/weights, as `tideway serve-weights`) here while
    /// leading; discovery's drains (no ready endpoints) reach it at once.
    #[arg(long, value_name = "ADDR")]
    weights_listen: Option<SocketAddr>,
    /// The bearer token for the weights API's writes (drain, weight set); default $TIDEWAY_TOKEN.
    #[arg(long, value_name = "FILE", requires = "weights_listen")]
    weights_token_file: Option<PathBuf>,
    /// Serve the fleet dashboard at /ui on the weights API's address: rollout
    /// status per member, live traffic from --envoy-admin, the what-if.
    #[arg(long, requires = "weights_listen")]
    ui: bool,
    /// The dashboard's scheduler module (`cargo xtask build-ui`'s output);
    /// ignored without --ui.
    #[arg(long, value_name = "DIR", env = "TIDEWAY_UI_DIR")]
    ui_dir: Option<PathBuf>,
    /// An Envoy admin endpoint whose stats the dashboard shows: NAME=URL or
    /// NAME=file:PATH (repeatable).
    #[arg(long = "envoy-admin", value_name = "NAME=URL", requires = "ui")]
    envoy_admin: Vec<tideway_controller::ui::ProxyTarget>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.renew_interval < args.lease_duration,
        "--renew-interval ({:?}) must be shorter than --lease-duration ({:?})",
        args.renew_interval,
        args.lease_duration
    );
    let kubeconfig = match &args.kubeconfig {
        Some(path) => Some(
            kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?,
        ),
        None => None,
    };
    let identity = match args.identity.clone() {
        Some(id) => id,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .context("no --identity (or $POD_NAME) and no host name")?,
    };
    let weights = match args.weights_listen {
        Some(addr) => Some((
            addr,
            tideway_controller::weights::ServerOptions {
                token: tideway_controller::weights::Token::from_file_or_env(
                    args.weights_token_file.as_deref(),
                )?,
                // The policies' configs arrive as they are reconciled.
                ui: if args.ui {
                    Some(std::sync::Arc::new(tideway_controller::ui::Dashboard::new(
                        Default::default(),
                        args.envoy_admin.clone(),
                        args.ui_dir.clone(),
                    )?))
                } else {
                    None
                },
                ..Default::default()
            },
        )),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let hub = match (&kubeconfig, &args.context) {
            (Some(kc), context) => {
                let context = context
                    .clone()
                    .or_else(|| kc.current_context.clone())
                    .context("--kubeconfig has no current-context: give --context")?;
                // As in a pod (kube's default): no read timeout, which
                // would cut the controller's watches of quiet kinds.
                tideway_controller::apply::connect::watch_client_for_context(kc, &context)
                    .await
                    .map_err(|e| anyhow::anyhow!("hub: {e}"))?
            }
            (None, Some(_)) => anyhow::bail!("--context needs --kubeconfig"),
            (None, None) => kube::Client::try_default()
                .await
                .context("hub: no in-cluster config and no kubeconfig")?,
        };
        run::run(
            hub,
            RunConfig {
                lease: LeaseConfig {
                    namespace: args.lease_namespace,
                    name: args.lease_name,
                    identity,
                    lease_duration: args.lease_duration,
                    renew_interval: args.renew_interval,
                    retry_interval: args.retry_interval,
                },
                listen: args.listen,
                resync: args.resync,
                namespace: args.namespace,
                concurrency: args.concurrency,
                kubeconfig,
                weights,
            },
        )
        .await
    })
}
