//! `tideway run`: the controller as a daemon in the hub cluster.
//!
//! Two or more replicas run; the one holding the leader Lease ([`lease`])
//! reconciles, the others wait to take over. The leader runs a kube-rs
//! `Controller` on TrafficPolicies (its watcher's backoff on the hub API,
//! an exponential error policy per policy), triggered also by a change to
//! any Fleet (every policy of that Fleet), and every `resync` (drift
//! repair). [`reconcile`] is one pass: compile, apply to the members,
//! status; a trigger that brings nothing new (the controller's own status
//! write, a relist after the hub API restarted) is answered from memory
//! without touching the members. [`serve`] answers the
//! probes and `/metrics` ([`metrics`]); [`discovery`] watches the members'
//! Endpoints and drains destinations without ready ones.
//!
//! Losing the Lease (not renewed within its term, or another holder in the
//! record) ends the process with an error: a replica that may no longer
//! be leader must stop writing at once, and its restart makes it a
//! candidate again. SIGTERM / Ctrl-C stops reconciling, waits for the
//! reconciles in flight and releases the Lease.

pub mod discovery;
pub mod events;
pub mod lease;
pub mod metrics;
pub mod reconcile;
pub mod serve;

use crate::api::{Fleet, TrafficPolicy};
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::Client;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Everything `tideway run` is configured with.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub lease: lease::LeaseConfig,
    /// Listeners for the probes and `/metrics` (the same routes on each).
    pub listen: Vec<SocketAddr>,
    pub resync: Duration,
    /// Watch TrafficPolicies of this namespace only (default: all).
    pub namespace: Option<String>,
    pub kubeconfig: Option<kube::config::Kubeconfig>,
    /// How many policies are reconciled at once (at least 1): each
    /// reconcile talks to every member, and a thousand at once overload
    /// the API servers (the fleet benchmark saw handler timeouts).
    pub concurrency: u16,
    /// Serve the weights API ([`crate::weights`]) here while leading, with
    /// these options (a token enables its write endpoints).
    pub weights: Option<(SocketAddr, crate::weights::ServerOptions)>,
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Run until SIGTERM (Ok) or until leadership is lost (Err).
pub async fn run(hub: Client, config: RunConfig) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    let health = serve_probes(&config, &metrics).await?;
    let mut elector = lease::Elector::new(hub.clone(), config.lease.clone());
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    if !wait_to_lead(&mut elector, &health, &config.lease, shutdown.as_mut()).await {
        return Ok(());
    }
    tracing::info!(identity = %config.lease.identity, "leading");
    metrics.leader.set(1);
    health.synced.store(false, Ordering::Relaxed);

    let (lost_tx, mut lost_rx) = tokio::sync::watch::channel(None::<String>);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let renewer = spawn_renewer(
        elector,
        health.clone(),
        config.lease.clone(),
        lost_tx,
        stop_rx,
    );
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = lead(hub, &config, metrics.clone(), health, async move {
        let _ = shutdown_rx.await;
    })
    .await?;
    tokio::pin!(controller);
    let lost = tokio::select! {
        _ = &mut controller => None,
        _ = &mut shutdown => None,
        _ = lost_rx.changed() => lost_rx.borrow().clone(),
    };
    metrics.leader.set(0);
    if let Some(why) = lost {
        // Stop at once: another replica may already be acting.
        anyhow::bail!("lost leadership: {why}");
    }
    tracing::info!("shutting down: finishing reconciles in flight");
    let _ = shutdown_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), &mut controller).await;
    let _ = stop_tx.send(true);
    if let Ok(mut elector) = renewer.await {
        match elector.release().await {
            Ok(()) => tracing::info!("released the Lease"),
            Err(e) => tracing::warn!(error = %e, "releasing the Lease"),
        }
    }
    Ok(())
}

/// The probes and `/metrics` on every listener of `config`.
async fn serve_probes(
    config: &RunConfig,
    metrics: &Arc<metrics::Metrics>,
) -> anyhow::Result<Arc<serve::Health>> {
    let health = Arc::new(serve::Health::new(
        config.lease.retry_interval.max(config.lease.renew_interval) * 3 + Duration::from_secs(10),
    ));
    for addr in &config.listen {
        let bound = serve::serve(*addr, health.clone(), metrics.clone()).await?;
        tracing::info!(%bound, "serving /healthz, /readyz, /metrics");
    }
    Ok(health)
}

/// Stand by until this replica holds the Lease (true) or is told to shut
/// down (false).
async fn wait_to_lead<F: std::future::Future<Output = ()>>(
    elector: &mut lease::Elector,
    health: &serve::Health,
    lease: &lease::LeaseConfig,
    mut shutdown: std::pin::Pin<&mut F>,
) -> bool {
    tracing::info!(
        identity = %lease.identity,
        lease = %format!("{}/{}", lease.namespace, lease.name),
        "waiting to lead"
    );
    // Standby: ready (healthy, will take over), not reconciling.
    health.synced.store(true, Ordering::Relaxed);
    loop {
        health.tick();
        let outcome = tokio::select! {
            o = elector.try_acquire_or_renew() => o,
            _ = &mut shutdown => return false,
        };
        match outcome {
            Ok(lease::Observed::Held) => {
                health.hub_reached.store(true, Ordering::Relaxed);
                return true;
            }
            Ok(lease::Observed::HeldBy(holder)) => {
                health.hub_reached.store(true, Ordering::Relaxed);
                tracing::debug!(%holder, "standby");
            }
            Err(e) => tracing::warn!(error = %e, "leader election: hub API"),
        }
        tokio::select! {
            _ = tokio::time::sleep(lease.retry_interval) => {}
            _ = &mut shutdown => return false,
        }
    }
}

/// Renew the Lease every `renew_interval` until `stop` (the elector is
/// handed back to release the Lease) or until it is lost: then `lost` says
/// why.
fn spawn_renewer(
    mut elector: lease::Elector,
    health: Arc<serve::Health>,
    lease_config: lease::LeaseConfig,
    lost: tokio::sync::watch::Sender<Option<String>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<lease::Elector> {
    tokio::spawn(async move {
        let mut last_renewed = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(lease_config.renew_interval) => {}
                _ = stop.changed() => return elector,
            }
            health.tick();
            match elector.try_acquire_or_renew().await {
                Ok(lease::Observed::Held) => last_renewed = std::time::Instant::now(),
                Ok(lease::Observed::HeldBy(holder)) => {
                    let _ = lost.send(Some(format!("the Lease is held by {holder:?}")));
                    return elector;
                }
                Err(e) => tracing::warn!(error = %e, "renewing the Lease"),
            }
            if last_renewed.elapsed() >= lease_config.lease_duration {
                let _ = lost.send(Some(format!(
                    "the Lease was not renewed for {:?}",
                    lease_config.lease_duration
                )));
                return elector;
            }
        }
    })
}

/// The weights API, when `config` asks for it: its state, which the
/// reconciles and the endpoint watches keep up to date.
async fn serve_weights(
    config: &RunConfig,
) -> anyhow::Result<Option<Arc<crate::weights::WeightsState>>> {
    let Some((addr, options)) = &config.weights else {
        return Ok(None);
    };
    let state = Arc::new(
        crate::weights::WeightsState::new(Vec::new(), Default::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("weights API on {addr}: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving the weights API");
    let api = crate::weights::WeightsApi::new(state.clone(), options.clone());
    tokio::spawn(api.serve(listener, futures::future::pending()));
    Ok(Some(state))
}

/// The leader's work: the policies' controller, triggered by the policies,
/// their Fleets, the members' endpoints and drift, until `shutdown`.
async fn lead(
    hub: Client,
    config: &RunConfig,
    metrics: Arc<metrics::Metrics>,
    health: Arc<serve::Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let policies: Api<TrafficPolicy> = match &config.namespace {
        Some(ns) => Api::namespaced(hub.clone(), ns),
        None => Api::all(hub.clone()),
    };
    // The policies, without their managedFields: nothing here reads them,
    // and they repeat every status field of every member (in the store of
    // every policy, a large share of the controller's memory).
    let (policy_store, policy_writer) = kube::runtime::reflector::store::<TrafficPolicy>();
    let policy_events = kube::runtime::reflector(
        policy_writer,
        watcher(policies, watcher::Config::default())
            .default_backoff()
            .modify(|p| p.metadata.managed_fields = None),
    )
    .applied_objects();
    let controller = Controller::for_stream(policy_events, policy_store).with_config(
        kube::runtime::controller::Config::default().concurrency(config.concurrency.max(1)),
    );
    let weights = serve_weights(config).await?;
    let (discovery, endpoint_triggers) = discovery::Discovery::new(weights.clone());
    // A member object changed under Tideway (a hand edit, a deletion):
    // that policy is reconciled at once.
    let (drift_tx, drift_triggers) = futures::channel::mpsc::unbounded();
    let on_change: crate::apply::live::OnChange = Arc::new(move |p: crate::apply::PolicyRef| {
        let _ =
            drift_tx.unbounded_send(ObjectRef::<TrafficPolicy>::new(&p.name).within(&p.namespace));
    });
    // Fleets: a store the reconciles read (no request per reconcile), and
    // every change (a deletion too) triggers the Fleet's policies.
    let (fleets, fleet_writer) = kube::runtime::reflector::store::<Fleet>();
    let fleet_events = kube::runtime::reflector(
        fleet_writer,
        watcher(Api::<Fleet>::all(hub.clone()), watcher::Config::default()).default_backoff(),
    )
    .touched_objects();
    let ctx = Arc::new(reconcile::Context {
        hub: hub.clone(),
        kubeconfig: config.kubeconfig.clone(),
        metrics,
        clients: crate::apply::connect::ClientCache::watching(on_change),
        resync: config.resync,
        failures: Default::default(),
        applied: Default::default(),
        handled: Default::default(),
        discovery: discovery.clone(),
        weights,
        dashboard: config.weights.as_ref().and_then(|(_, o)| o.ui.clone()),
        policies: controller.store(),
        fleets,
        events: events::EventRecorder::new(
            hub.clone(),
            "tideway-controller",
            &config.lease.identity,
        ),
    });
    report_synced(controller.store(), health);
    let store = controller.store();
    Ok(controller
        .watches_stream(fleet_events, move |fleet: Fleet| {
            let name = fleet.metadata.name.clone().unwrap_or_default();
            store
                .state()
                .into_iter()
                .filter(|p| p.spec.fleet == name)
                .map(|p| ObjectRef::from(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .reconcile_on(futures::stream::select(endpoint_triggers, drift_triggers))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(policy = %object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller"),
            }
        }))
}

/// Ready once the policies' cache has listed.
fn report_synced(
    reader: kube::runtime::reflector::Store<TrafficPolicy>,
    health: Arc<serve::Health>,
) {
    tokio::spawn(async move {
        // Polled again and again: the store's readiness is one oneshot
        // shared by every clone, and the controller's own wait on it
        // takes the wake-up (a single long wait here may never wake).
        loop {
            let wait = reader.wait_until_ready();
            match tokio::time::timeout(Duration::from_millis(500), wait).await {
                Ok(Ok(())) => {
                    health.synced.store(true, Ordering::Relaxed);
                    tracing::info!("TrafficPolicy cache synced");
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => continue,
            }
        }
    });
}
