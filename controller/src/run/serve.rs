//! `/healthz`, `/readyz` and `/metrics` over HTTP/1.1 (hyper).
//!
//! - `/healthz`: the process is alive and its leader-election loop is not
//!   stuck (it talked to the hub, or tried to, recently). Liveness.
//! - `/readyz`: the replica has reached the hub at least once and, if it
//!   leads, its caches are synced. A standby replica is ready: it is
//!   healthy and takes over when the leader stops.
//! - `/metrics`: [`super::metrics`] as Prometheus text.
//!
//! The two listeners of the Deployment (8080 health, 9090 metrics) serve
//! the same routes; one address may be given for both.

use super::metrics::Metrics;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the probes look at, shared with the controller's tasks.
#[derive(Default)]
pub struct Health {
    /// Unix ms of the last lease round-trip attempt (answered or not).
    pub lease_loop_at_ms: AtomicU64,
    /// The hub answered at least once.
    pub hub_reached: AtomicBool,
    /// Leading, and the TrafficPolicy cache is synced (or standby).
    pub synced: AtomicBool,
    /// How old the lease loop's last attempt may be before liveness fails.
    pub stale_after_ms: AtomicU64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Health {
    pub fn new(stale_after: Duration) -> Self {
        let h = Self::default();
        h.lease_loop_at_ms.store(now_ms(), Ordering::Relaxed);
        h.stale_after_ms
            .store(stale_after.as_millis() as u64, Ordering::Relaxed);
        h
    }

    pub fn tick(&self) {
        self.lease_loop_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn live(&self) -> bool {
        let age = now_ms().saturating_sub(self.lease_loop_at_ms.load(Ordering::Relaxed));
        age <= self.stale_after_ms.load(Ordering::Relaxed)
    }

    fn ready(&self) -> bool {
        self.live()
            && self.hub_reached.load(Ordering::Relaxed)
            && self.synced.load(Ordering::Relaxed)
    }
}

fn text(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn route(path: &str, health: &Health, metrics: &Metrics) -> Response<Full<Bytes>> {
    let plain = "text/plain; charset=utf-8";
    let probe = |ok: bool, what: &str| {
        if ok {
            text(StatusCode::OK, "ok\n".into(), plain)
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not {what}\n"),
                plain,
            )
        }
    };
    match path {
        "/healthz" | "/livez" => probe(health.live(), "live"),
        "/readyz" => probe(health.ready(), "ready"),
        "/metrics" => text(
            StatusCode::OK,
            metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), plain),
    }
}

/// Bind `addr` and serve until the process ends. Returns the bound address
/// (port 0 picks a free one) once listening.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (health, metrics) = (health.clone(), metrics.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let response = route(request.uri().path(), &health, &metrics);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                // A client that goes away mid-request is its own business.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(bound)
}
