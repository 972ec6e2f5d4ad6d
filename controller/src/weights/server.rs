//! The weights API over HTTP/1.1 (hyper), optionally TLS (rustls): what
//! `tideway serve-weights` runs and `tideway run` embeds.
//!
//! Reads (`GET /v1/weights`, the contract in [`tideway_filter::weights`]):
//! `ETag: "<version>"`; `If-None-Match` with the current version answers
//! `304` at once, or with `wait=<n>s` holds the request on the state's watch
//! channel until the version moves (then `200` with the new document) or the
//! wait ends (`304`). A held poll costs a socket, a small task and a watch
//! receiver — nothing runs for it until a change wakes it — and a poller
//! that hangs up frees them (hyper notices the closed connection and drops
//! the request's future).
//!
//! Writes (`POST /v1/drain`, `POST /v1/weight`) need the bearer token; a
//! server started without one refuses every write (403), so an
//! unconfigured server is read-only rather than open.
//!
//! Reads are open by default: the pollers are sidecars whose only client
//! is `dispatch_http_call`, and a credential in their plugin config would be
//! readable in every Envoy config dump — the mesh (mTLS and an
//! AuthorizationPolicy on the controller) is what guards them, and the
//! document holds weights, not secrets. `protect_reads` makes reads need
//! the token too, for a server reachable from outside the mesh.
//!
//! Every error is JSON `{"error": "<field>: got <value>; expected …",
//! "field": …, "value": …}` naming the query parameter or body field at
//! fault. Nothing here logs a header, so the token is never in a log.

use super::state::{Change, Snapshot, WeightsState};
use super::token::Token;
use crate::field_error::FieldError;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tideway_filter::weights::WEIGHTS_PATH;
use tokio::net::TcpListener;

/// The drain endpoint (`tideway drain`).
pub const DRAIN_PATH: &str = "/v1/drain";
/// The weight endpoint (`tideway weight set`).
pub const WEIGHT_PATH: &str = "/v1/weight";
/// The factor-weights endpoint (the dashboard's "apply").
pub const FACTORS_PATH: &str = "/v1/factors";
/// The overrides in force (`tideway weights overrides`).
pub const OVERRIDES_PATH: &str = "/v1/overrides";
/// Liveness: 200 while the server accepts requests.
pub const HEALTH_PATH: &str = "/healthz";
/// The longest `wait=` a poller may ask for by default. Bounded so a
/// connection is known alive at least this often (and proxies between the
/// poller and us, with idle timeouts of a minute or more, keep it).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60);
/// Largest request body accepted by the write endpoints.
const MAX_BODY: usize = 64 * 1024;
/// A client must send its request headers (and finish TLS) within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server guards and bounds requests.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Required on writes; without one, writes are refused.
    pub token: Option<Token>,
    /// Reads need the token too.
    pub protect_reads: bool,
    /// TLS, when the operator configured a certificate.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Upper bound of `wait=`.
    pub max_wait: Duration,
    /// Where each changed override is saved (`--state-file`).
    pub store: Option<Arc<super::store::OverridesFile>>,
    /// The dashboard at `/ui` (`--ui`).
    pub ui: Option<Arc<crate::ui::Dashboard>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            token: None,
            protect_reads: false,
            tls: None,
            max_wait: DEFAULT_MAX_WAIT,
            store: None,
            ui: None,
        }
    }
}

/// Live counters (for the benchmark and for tests that a hang-up frees its poll).
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections open now.
    pub connections: AtomicUsize,
    /// Long-polls held now.
    pub waiting: AtomicUsize,
}

/// The request handler over one [`WeightsState`].
#[derive(Debug)]
pub struct WeightsApi {
    state: Arc<WeightsState>,
    options: ServerOptions,
    pub stats: Stats,
}

/// Decrements a counter when dropped (a hung-up poll's future is dropped).
struct Held<'a>(&'a AtomicUsize);
impl<'a> Held<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}
impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WeightsApi {
    pub fn new(state: Arc<WeightsState>, options: ServerOptions) -> Arc<Self> {
        Arc::new(Self {
            state,
            options,
            stats: Stats::default(),
        })
    }

    pub fn state(&self) -> &Arc<WeightsState> {
        &self.state
    }

    /// Accept connections on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let acceptor = self
            .options
            .tls
            .clone()
            .map(tokio_rustls::TlsAcceptor::from);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = &mut shutdown => return Ok(()),
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors (or a reset before accept):
                    // back off briefly instead of spinning; keep serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let api = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let counted = api.clone();
                let _open = Held::new(&counted.stats.connections);
                match acceptor {
                    None => api.connection(TokioIo::new(stream)).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => api.connection(TokioIo::new(tls)).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    }

    async fn connection<I>(self: Arc<Self>, io: TokioIo<I>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let api = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(io, service)
            .await;
        if let Err(e) = served {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    /// One request → one response (never an error: every failure is a
    /// status and a JSON message).
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let response = self.route(req).await;
        tracing::debug!(%method, %path, status = response.status().as_u16(), "weights API request");
        response
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if let Some(ui) = &self.options.ui {
            if path == crate::ui::UI_PATH || path.starts_with(crate::ui::UI_PREFIX) {
                // The page and its assets carry no data; its live API is a
                // read like any other.
                if path.starts_with(crate::ui::UI_API_PREFIX) {
                    if let Some(refused) = self.authorize(&req, true) {
                        return refused;
                    }
                }
                return ui.handle(&req, || dashboard_view(&self.state)).await;
            }
        }
        let allowed = match path {
            WEIGHTS_PATH | OVERRIDES_PATH | HEALTH_PATH => "GET, HEAD",
            DRAIN_PATH | WEIGHT_PATH | FACTORS_PATH => "POST",
            _ => {
                return error(
                    StatusCode::NOT_FOUND,
                    &FieldError::json(
                        "path",
                        &path,
                        format!("{WEIGHTS_PATH}, {DRAIN_PATH}, {WEIGHT_PATH}, {FACTORS_PATH}, {OVERRIDES_PATH} or {HEALTH_PATH}"),
                    ),
                )
            }
        };
        let read = allowed != "POST";
        let method_ok = if read {
            req.method() == Method::GET || req.method() == Method::HEAD
        } else {
            req.method() == Method::POST
        };
        if !method_ok {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                &FieldError::json("method", &req.method().as_str(), allowed),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allowed));
            return r;
        }
        if path == HEALTH_PATH {
            return json(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"));
        }
        if let Some(refused) = self.authorize(&req, read) {
            return refused;
        }
        match path {
            WEIGHTS_PATH => self.weights(&req).await,
            OVERRIDES_PATH => json(
                StatusCode::OK,
                Bytes::from(serde_json::to_vec(&self.state.overrides()).unwrap_or_default()),
            ),
            _ => self.write(req).await,
        }
    }

    /// `None` when allowed; otherwise the 401/403 to send.
    fn authorize(&self, req: &Request<Incoming>, read: bool) -> Option<Response<Full<Bytes>>> {
        if read && !self.options.protect_reads {
            return None;
        }
        let Some(token) = &self.options.token else {
            return Some(error(
                StatusCode::FORBIDDEN,
                &FieldError::new(
                    "authorization",
                    "",
                    "nothing: writes are disabled because the server was started without a token (--token-file or $TIDEWAY_TOKEN)",
                ),
            ));
        };
        // The presented token is never echoed: the value says only what
        // kind of thing arrived.
        let expected = "`Authorization: Bearer <token>` with the server's token (tideway: --token-file or $TIDEWAY_TOKEN)";
        let problem = match req.headers().get(header::AUTHORIZATION) {
            None => FieldError::missing("authorization", expected),
            Some(v) if token.accepts(v.as_bytes()) => return None,
            Some(_) => FieldError::new(
                "authorization",
                "a token the server does not accept",
                expected,
            ),
        };
        let mut r = error(StatusCode::UNAUTHORIZED, &problem);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tideway\""),
        );
        Some(r)
    }

    async fn weights(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let mut rx = self.state.subscribe();
        let mut snapshot = rx.borrow_and_update().clone();
        let query = match WeightsQuery::parse(req.uri().query(), &snapshot, self.options.max_wait) {
            Ok(q) => q,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let known = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .map(|v| v.as_bytes().to_vec());
        let matches = |s: &Snapshot| {
            known
                .as_deref()
                .is_some_and(|k| etag_matches(k, s.version()))
        };
        if matches(&snapshot) {
            if query.wait.is_zero() {
                return not_modified(snapshot.version());
            }
            let _held = Held::new(&self.stats.waiting);
            let deadline = tokio::time::sleep(query.wait);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            // The state is gone (shutting down).
                            return not_modified(snapshot.version());
                        }
                        snapshot = rx.borrow_and_update().clone();
                        if !matches(&snapshot) {
                            break;
                        }
                    }
                    () = &mut deadline => return not_modified(snapshot.version()),
                }
            }
        }
        let mut r = json(StatusCode::OK, snapshot.body(query.services.as_ref()));
        set_etag(&mut r, snapshot.version());
        if req.method() == Method::HEAD {
            *r.body_mut() = Full::new(Bytes::new());
        }
        r
    }

    async fn write(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if let Some(q) = req.uri().query().filter(|q| !q.is_empty()) {
            return error(
                StatusCode::BAD_REQUEST,
                &FieldError::json(
                    "query",
                    &q,
                    "no query parameters: the request is a JSON body",
                ),
            );
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &FieldError::new(
                        "body",
                        "unreadable",
                        format!("a JSON body of at most {MAX_BODY} bytes ({e})"),
                    ),
                )
            }
        };
        let result = if path == DRAIN_PATH {
            parse_body::<DrainRequest>(&body).and_then(|r| {
                let change = self
                    .state
                    .drain(&r.cluster, r.service.as_deref(), r.drained)?;
                Ok((change, r.service.map(|s| vec![s])))
            })
        } else if path == FACTORS_PATH {
            parse_body::<FactorsRequest>(&body).and_then(|r| {
                let change = self.state.set_factors(&r.service, r.factors)?;
                Ok((change, Some(vec![r.service])))
            })
        } else {
            parse_body::<WeightRequest>(&body).and_then(|r| {
                let change =
                    self.state
                        .set_weight(&r.service, &r.destination, r.weight, r.cost, r.reset)?;
                Ok((change, Some(vec![r.service])))
            })
        };
        let (change, services) = match result {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        if let (true, Some(store)) = (change.changed, &self.options.store) {
            let state = self.state.clone();
            let store = store.clone();
            let saved = tokio::task::spawn_blocking(move || store.save(|| state.overrides())).await;
            if let Err(e) = saved.map_err(std::io::Error::other).and_then(|r| r) {
                let file = self
                    .options
                    .store
                    .as_ref()
                    .map(|s| s.path().display().to_string());
                tracing::error!(error = %e, file = ?file, "saving the overrides failed");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &FieldError::new(
                        "stateFile",
                        format!("{} not written ({e})", file.unwrap_or_default()),
                        "a writable file: the change is in effect but will not survive a restart",
                    ),
                );
            }
        }
        write_response(&change, &self.state.snapshot(), services)
    }
}

/// `POST /v1/drain` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub cluster: String,
    /// Absent: every service with a destination in the cluster.
    #[serde(default)]
    pub service: Option<String>,
    /// `false` undrains. Default `true`.
    #[serde(default = "yes")]
    pub drained: bool,
}

/// `POST /v1/weight` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightRequest {
    pub service: String,
    pub destination: String,
    #[serde(default)]
    pub weight: Option<f64>,
    #[serde(default)]
    pub cost: Option<f64>,
    /// Drop the override (before applying `weight`/`cost`, if given).
    #[serde(default)]
    pub reset: bool,
}

/// `POST /v1/factors` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactorsRequest {
    pub service: String,
    /// Absent or null: back to the policy's factor weights.
    #[serde(default)]
    pub factors: Option<tideway_filter::config::FactorWeights>,
}

fn yes() -> bool {
    true
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| FieldError::new("body", "not JSON", format!("a JSON object ({e})")))?;
    crate::load::from_value(&value, "")
}

/// The parsed query of `GET /v1/weights`.
#[derive(Debug, PartialEq)]
struct WeightsQuery {
    services: Option<BTreeSet<String>>,
    wait: Duration,
}

impl WeightsQuery {
    fn parse(
        query: Option<&str>,
        snapshot: &Snapshot,
        max_wait: Duration,
    ) -> Result<Self, FieldError> {
        let mut out = Self {
            services: None,
            wait: Duration::ZERO,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)
                .ok_or_else(|| FieldError::json(key, &value, "valid percent-encoding"))?;
            match key {
                "service" => {
                    let set = out.services.get_or_insert_with(BTreeSet::new);
                    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        if !snapshot.has_service(name) {
                            let known: Vec<&str> = snapshot.service_names().collect();
                            return Err(FieldError::json(
                                "service",
                                &name,
                                format!(
                                    "a service some policy steers (known: {})",
                                    known.join(", ")
                                ),
                            ));
                        }
                        set.insert(name.to_string());
                    }
                }
                "wait" => out.wait = parse_wait(&value, max_wait)?,
                other => {
                    return Err(FieldError::json(
                        other,
                        &value,
                        "no such parameter (known: service, wait)",
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// `30s`, `500ms`, or bare seconds `30`; at most `max`.
fn parse_wait(value: &str, max: Duration) -> Result<Duration, FieldError> {
    let expected = || {
        format!(
            "a duration like 30s or 500ms, at most {}s",
            max.as_secs_f64()
        )
    };
    let (number, unit_ms) = if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (value, 1000.0)
    };
    let ms = number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n * unit_ms)
        .ok_or_else(|| FieldError::json("wait", &value, expected()))?;
    let wait = Duration::from_secs_f64(ms / 1000.0);
    if wait > max {
        return Err(FieldError::json("wait", &value, expected()));
    }
    Ok(wait)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether an `If-None-Match` value names `version` (`"7"`, `W/"7"`, a
/// list, or `*`).
fn etag_matches(header: &[u8], version: u64) -> bool {
    let Ok(text) = std::str::from_utf8(header) else {
        return false;
    };
    text.split(',').map(str::trim).any(|tag| {
        tag == "*" || {
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag.strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<u64>().ok())
                == Some(version)
        }
    })
}

fn set_etag(r: &mut Response<Full<Bytes>>, version: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

fn not_modified(version: u64) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    set_etag(&mut r, version);
    r
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, e: &FieldError) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": e.to_string(),
        "field": e.path,
        "value": e.value,
    });
    json(status, Bytes::from(body.to_string()))
}

fn write_response(
    change: &Change,
    snapshot: &Snapshot,
    services: Option<Vec<String>>,
) -> Response<Full<Bytes>> {
    // The affected services as they are now: what the CLI shows.
    let services: Vec<_> = snapshot
        .document
        .services
        .iter()
        .filter(|s| services.as_ref().is_none_or(|only| only.contains(&s.name)))
        .collect();
    let body = serde_json::json!({
        "version": change.version,
        "changed": change.changed,
        "services": services,
    });
    let mut r = json(StatusCode::OK, Bytes::from(body.to_string()));
    set_etag(&mut r, snapshot.version());
    r
}

/// A rustls server configuration from PEM files (certificate chain, then
/// private key); errors name the file.
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "--tls-cert {}: no PEM certificate in the file",
            cert.display()
        );
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            anyhow::anyhow!(
                "--tls-cert {} / --tls-key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The state as the dashboard's live view shows it.
fn dashboard_view(state: &WeightsState) -> crate::ui::WeightsView {
    let snapshot = state.snapshot();
    crate::ui::WeightsView {
        version: snapshot.version(),
        document: serde_json::to_value(&snapshot.document).unwrap_or_default(),
        overrides: serde_json::to_value(state.overrides()).unwrap_or_default(),
        clusters: serde_json::to_value(state.destination_clusters()).unwrap_or_default(),
    }
}

/// Every held poll is an open socket: raise the soft open-file limit to the
/// hard one (what Go's runtime does at start), so ten thousand pollers do
/// not hit the usual soft limit of 1024.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::debug!("could not raise the open-file limit");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_parsed_and_bounded() {
        let max = Duration::from_secs(60);
        assert_eq!(parse_wait("30s", max).unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_wait("500ms", max).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_wait("2", max).unwrap(), Duration::from_secs(2));
        for bad in ["61s", "-1s", "abc", "s", "1h", "NaNs", "infs"] {
            let e = parse_wait(bad, max).unwrap_err();
            assert_eq!(e.path, "wait", "{bad}");
            assert!(e.value.contains(bad), "{e}");
        }
    }

    #[test]
    fn if_none_match_forms() {
        assert!(etag_matches(b"\"7\"", 7));
        assert!(etag_matches(b"W/\"7\"", 7));
        assert!(etag_matches(b"\"3\", \"7\"", 7));
        assert!(etag_matches(b"*", 7));
        assert!(!etag_matches(b"\"8\"", 7));
        assert!(!etag_matches(b"7", 7));
        assert!(!etag_matches(b"\"x\"", 7));
    }
}
