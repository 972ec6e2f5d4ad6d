//! The fleet dashboard at `/ui`, served by the weights API's server
//! (`tideway serve-weights --ui`; any `WeightsApi` given a [`Dashboard`]
//! in its `ServerOptions`).
//!
//! - live: the weights the controller publishes and the operator's
//!   overrides (its own state), and what each proxy reports — traffic by
//!   destination, ejections, p50/p99, the weights version it runs — read
//!   from the Envoy admin endpoints it is given (`--envoy-admin`), at most
//!   once per [`SCRAPE_EVERY`] however many pages poll;
//! - what-if: the page runs the filter's own engine, compiled for the
//!   browser (`filter/web`, built by `cargo xtask build-ui`), on the plugin
//!   config each service's filter runs ([`Dashboard::configs`]);
//! - apply: the page writes through the weights API (`/v1/weight`,
//!   `/v1/drain`, `/v1/factors`) with the operator's bearer token, so the
//!   dashboard has no write path of its own to secure.
//!
//! Everything the page loads comes from here: no CDN, works offline. The
//! page itself carries no data, so it is served without a token; its live
//! API (`/ui/api/…`) is a read like `GET /v1/weights` (`--protect-reads`).

pub mod envoy_stats;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

pub const UI_PATH: &str = "/ui";
pub const UI_PREFIX: &str = "/ui/";
pub const UI_API_PREFIX: &str = "/ui/api/";
const LIVE_PATH: &str = "/ui/api/live";
const SCHEDULER_PREFIX: &str = "/ui/scheduler/";
/// Proxies are read at most this often, whatever the number of pages.
pub const SCRAPE_EVERY: Duration = Duration::from_millis(500);
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const DASHBOARD_JS: &str = include_str!("../../ui/dashboard.js");
/// Only our own origin; `wasm-unsafe-eval` lets the page compile the
/// scheduler module (and nothing else).
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'";

/// A proxy whose admin endpoint the dashboard reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyTarget {
    /// What the page calls it (a member cluster, a gateway).
    pub name: String,
    /// `http://HOST:PORT` of its Envoy admin, or `file:PATH`: the file
    /// Envoy writes its admin address to (`--admin-address-path`), read at
    /// every scrape, for a proxy whose port is chosen when it starts (and
    /// that may come and go, as the demo's do).
    pub admin: String,
}

impl ProxyTarget {
    /// The admin base URL now.
    fn base_url(&self) -> Result<String, String> {
        match self.admin.strip_prefix("file:") {
            None => Ok(self.admin.clone()),
            Some(path) => match std::fs::read_to_string(path) {
                Ok(address) if !address.trim().is_empty() => {
                    Ok(format!("http://{}", address.trim()))
                }
                Ok(_) => Err(format!("{path}: empty (the proxy is not running)")),
                Err(e) => Err(format!("{path}: {e} (the proxy is not running)")),
            },
        }
    }
}

impl std::str::FromStr for ProxyTarget {
    type Err = String;
    /// `NAME=URL`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, admin) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected NAME=URL, e.g. hangzhou=http://127.0.0.1:15000")
        })?;
        if name.is_empty() {
            return Err(format!("{s:?}: the name before = is empty"));
        }
        if let Some(path) = admin.strip_prefix("file:") {
            if path.is_empty() {
                return Err(format!("{s:?}: file: needs a path"));
            }
            return Ok(Self {
                name: name.to_string(),
                admin: admin.to_string(),
            });
        }
        let url = reqwest::Url::parse(admin).map_err(|e| format!("{admin:?}: not a URL ({e})"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("{admin:?}: the scheme must be http, https or file"));
        }
        Ok(Self {
            name: name.to_string(),
            admin: admin.trim_end_matches('/').to_string(),
        })
    }
}

/// What the weights API publishes, as the dashboard's live view shows it.
/// The weights server fills it in, so the dashboard needs none of its
/// types (the server mounts the dashboard, not the other way round).
pub struct WeightsView {
    pub version: u64,
    pub document: Value,
    pub overrides: Value,
    pub clusters: Value,
}

/// What the dashboard serves (see the module doc).
#[derive(Debug)]
pub struct Dashboard {
    /// wasm-bindgen's output (`scheduler.js`, `scheduler_bg.wasm`).
    scheduler_dir: Option<PathBuf>,
    /// Service → the plugin config its filter runs (the what-if's input)
    /// and its hosts and destinations (to attribute Envoy's cluster
    /// stats); `tideway run` updates them as policies change.
    services: RwLock<Services>,
    /// Policy (`namespace/name`) → its status as the controller last wrote
    /// it (`tideway run`): the rollout per member.
    rollout: RwLock<BTreeMap<String, Value>>,
    proxies: Vec<ProxyTarget>,
    http: reqwest::Client,
    scraped: Mutex<Option<(Instant, Arc<Vec<ProxyReport>>)>>,
}

#[derive(Debug, Default)]
struct Services {
    configs: BTreeMap<String, Value>,
    names: BTreeMap<String, envoy_stats::ServiceNames>,
}

/// A service's hosts and destination names, read from its plugin config.
fn service_names(service: &str, config: &Value) -> Option<envoy_stats::ServiceNames> {
    let strings = |v: Option<&Value>, key: Option<&str>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| match key {
                        Some(k) => x.get(k).and_then(Value::as_str),
                        None => x.as_str(),
                    })
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let s = config
        .get("services")?
        .as_array()?
        .iter()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(service))?;
    Some(envoy_stats::ServiceNames {
        hosts: strings(s.get("hosts"), None),
        destinations: strings(s.get("destinations"), Some("name")),
    })
}

/// One proxy in the live view.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyReport {
    pub name: String,
    pub up: bool,
    /// Why it is not up (no credentials: an admin URL carries none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub stats: envoy_stats::ProxyStats,
}

impl Dashboard {
    /// `configs`: service → plugin config JSON (`tideway render`'s
    /// `pluginConfig`).
    pub fn new(
        configs: BTreeMap<String, Value>,
        proxies: Vec<ProxyTarget>,
        scheduler_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let names = configs
            .iter()
            .filter_map(|(service, config)| {
                Some((service.clone(), service_names(service, config)?))
            })
            .collect();
        let http = reqwest::Client::builder()
            .timeout(SCRAPE_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("building the dashboard's HTTP client: {e}"))?;
        Ok(Self {
            scheduler_dir,
            services: RwLock::new(Services { configs, names }),
            rollout: RwLock::new(BTreeMap::new()),
            proxies,
            http,
            scraped: Mutex::new(None),
        })
    }

    /// Set the plugin config `service`'s filter runs (`tideway run`, as
    /// policies change).
    pub fn set_config(&self, service: &str, config: Value) {
        let names = service_names(service, &config);
        let mut s = self.services.write().unwrap_or_else(|e| e.into_inner());
        match names {
            Some(n) => s.names.insert(service.to_string(), n),
            None => s.names.remove(service),
        };
        s.configs.insert(service.to_string(), config);
    }

    /// Set `policy`'s rollout status (`tideway run`, at every status write).
    pub fn set_rollout(&self, policy: &str, status: Value) {
        self.rollout
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(policy.to_string(), status);
    }

    /// Answer a request under `/ui` (the caller has authorised `/ui/api/`).
    /// `weights` is what the weights API publishes, asked for only by the
    /// live view.
    pub async fn handle<B>(
        &self,
        req: &Request<B>,
        weights: impl FnOnce() -> WeightsView,
    ) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "the dashboard is read with GET",
            );
        }
        let path = req.uri().path();
        match path {
            UI_PATH => redirect("/ui/"),
            "/ui/" | "/ui/index.html" => {
                asset(INDEX_HTML.as_bytes().to_vec(), "text/html; charset=utf-8")
            }
            "/ui/dashboard.js" => asset(
                DASHBOARD_JS.as_bytes().to_vec(),
                "text/javascript; charset=utf-8",
            ),
            LIVE_PATH => self.live(weights).await,
            _ => match path.strip_prefix(SCHEDULER_PREFIX) {
                Some(file @ ("scheduler.js" | "scheduler_bg.wasm")) => self.scheduler_file(file),
                _ => text(
                    StatusCode::NOT_FOUND,
                    &format!("{path}: not part of the dashboard"),
                ),
            },
        }
    }

    fn scheduler_file(&self, file: &str) -> Response<Full<Bytes>> {
        let Some(dir) = &self.scheduler_dir else {
            return text(
                StatusCode::NOT_FOUND,
                "the what-if scheduler is not installed: build it with `cargo xtask build-ui` and pass --ui-dir target/tideway/ui",
            );
        };
        match std::fs::read(dir.join(file)) {
            Ok(bytes) => asset(
                bytes,
                if file.ends_with(".wasm") {
                    "application/wasm"
                } else {
                    "text/javascript; charset=utf-8"
                },
            ),
            Err(e) => text(
                StatusCode::NOT_FOUND,
                &format!(
                    "{}: {e} (build it with `cargo xtask build-ui`)",
                    dir.join(file).display()
                ),
            ),
        }
    }

    async fn live(&self, weights: impl FnOnce() -> WeightsView) -> Response<Full<Bytes>> {
        let proxies = self.scrape().await;
        // After the scrape: the weights as fresh as the proxies' numbers.
        let weights = weights();
        let configs = self
            .services
            .read()
            .map(|s| s.configs.clone())
            .unwrap_or_default();
        let rollout = self.rollout.read().map(|r| r.clone()).unwrap_or_default();
        let body = serde_json::json!({
            "version": weights.version,
            "weights": weights.document,
            "overrides": weights.overrides,
            "clusters": weights.clusters,
            "configs": configs,
            "rollout": rollout,
            "scheduler": self.scheduler_dir.is_some(),
            "proxies": &*proxies,
        });
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    /// Every proxy's report, read at most once per [`SCRAPE_EVERY`]
    /// (concurrently; a proxy that does not answer in time is reported
    /// down, and never holds the others up).
    async fn scrape(&self) -> Arc<Vec<ProxyReport>> {
        let mut cached = self.scraped.lock().await;
        if let Some((at, reports)) = cached.as_ref() {
            if at.elapsed() < SCRAPE_EVERY {
                return reports.clone();
            }
        }
        let names = self
            .services
            .read()
            .map(|s| s.names.clone())
            .unwrap_or_default();
        let names = &names;
        let reads = self.proxies.iter().map(|p| async move {
            let answer = async {
                let url = format!("{}{}", p.base_url()?, envoy_stats::STATS_QUERY);
                let get = async {
                    let reply = self.http.get(&url).send().await?.error_for_status()?;
                    reply.json::<Value>().await
                };
                get.await.map_err(|e| format!("{url}: {e}"))
            }
            .await;
            match answer {
                Ok(body) => ProxyReport {
                    name: p.name.clone(),
                    up: true,
                    error: None,
                    stats: envoy_stats::parse(&body, names),
                },
                Err(e) => ProxyReport {
                    name: p.name.clone(),
                    up: false,
                    error: Some(e),
                    stats: envoy_stats::ProxyStats::default(),
                },
            }
        });
        let reports = Arc::new(futures::future::join_all(reads).await);
        *cached = Some((Instant::now(), reports.clone()));
        reports
    }
}

fn asset(bytes: Vec<u8>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn redirect(to: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // Offline: every URL the page and its script name is our own (the
        // SVG namespace is a name, not a load).
        for (file, text) in [("index.html", INDEX_HTML), ("dashboard.js", DASHBOARD_JS)] {
            for (at, _) in text.match_indices("://") {
                let around = &text[at.saturating_sub(10)..(at + 30).min(text.len())];
                assert!(
                    around.contains("http://www.w3.org/2000/svg"),
                    "{file} refers elsewhere: …{around}…"
                );
            }
            assert!(!text.contains("//cdn"), "{file}");
        }
    }

    #[test]
    fn proxy_targets_parse_name_equals_url() {
        let p: ProxyTarget = "hangzhou=http://127.0.0.1:15000/".parse().unwrap();
        assert_eq!(p.name, "hangzhou");
        assert_eq!(p.admin, "http://127.0.0.1:15000");
        let f: ProxyTarget = "gw=file:/tmp/admin-address".parse().unwrap();
        assert_eq!(f.admin, "file:/tmp/admin-address");
        assert!(f.base_url().is_err(), "no such file: not running");
        for bad in [
            "hangzhou",
            "=http://x",
            "a=ftp://x",
            "a=not a url",
            "a=file:",
        ] {
            assert!(bad.parse::<ProxyTarget>().is_err(), "{bad}");
        }
    }
}
