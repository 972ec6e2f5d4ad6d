//! A client of the weights API, for the CLI (`tideway drain`, `tideway
//! weight set`, `tideway weights get`).
//!
//! Errors say what the operator can do about them: the server that could
//! not be reached (by URL), a token that is missing or refused (never the
//! token itself), or the server's own message naming the field at fault.

use super::server::{DRAIN_PATH, OVERRIDES_PATH, WEIGHT_PATH};
use super::state::Overrides;
use super::token::{Token, TOKEN_ENV};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use tideway_filter::weights::{ServiceWeights, WeightsDocument, WEIGHTS_PATH};

/// What a write answers: the version now published, whether this request
/// changed anything, and the affected services as they are now.
#[derive(Debug, Clone, Deserialize)]
pub struct WriteReply {
    pub version: u64,
    pub changed: bool,
    pub services: Vec<ServiceWeights>,
}

/// A weights server at one base URL.
#[derive(Debug)]
pub struct Client {
    base: reqwest::Url,
    http: reqwest::Client,
    token: Option<Token>,
}

impl Client {
    /// `server` is the base URL (`http://127.0.0.1:8080`); `ca_file` adds a
    /// PEM root to trust (a server with its own certificate).
    pub fn new(server: &str, token: Option<Token>, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(server).map_err(|e| {
            anyhow::anyhow!("--server {server:?}: not a URL ({e}); e.g. http://127.0.0.1:8080")
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("--server {server:?}: the scheme must be http or https");
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("reading --ca-file {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
        Ok(Self { base, http, token })
    }

    /// The current document (every service, or only `services`).
    pub async fn get(&self, services: &[String]) -> anyhow::Result<WeightsDocument> {
        let mut url = self.url(WEIGHTS_PATH)?;
        if !services.is_empty() {
            url.query_pairs_mut()
                .append_pair("service", &services.join(","));
        }
        let body = self.send(self.http.get(url)).await?;
        WeightsDocument::parse(&body).map_err(|e| {
            anyhow::anyhow!(
                "the weights server at {} answered a bad document: {e}",
                self.base
            )
        })
    }

    /// The operator overrides in force.
    pub async fn overrides(&self) -> anyhow::Result<Overrides> {
        let body = self.send(self.http.get(self.url(OVERRIDES_PATH)?)).await?;
        serde_json::from_slice(&body).map_err(|e| {
            anyhow::anyhow!("the weights server at {} answered bad JSON: {e}", self.base)
        })
    }

    /// Drain or undrain `cluster` (for one service, or all).
    pub async fn drain(
        &self,
        cluster: &str,
        service: Option<&str>,
        drained: bool,
    ) -> anyhow::Result<WriteReply> {
        let body =
            serde_json::json!({ "cluster": cluster, "service": service, "drained": drained });
        self.write(DRAIN_PATH, body).await
    }

    /// Set a destination's weight and/or cost, or reset it to the policy's.
    pub async fn set_weight(
        &self,
        service: &str,
        destination: &str,
        weight: Option<f64>,
        cost: Option<f64>,
        reset: bool,
    ) -> anyhow::Result<WriteReply> {
        let body = serde_json::json!({
            "service": service, "destination": destination,
            "weight": weight, "cost": cost, "reset": reset,
        });
        self.write(WEIGHT_PATH, body).await
    }

    async fn write(&self, path: &str, body: serde_json::Value) -> anyhow::Result<WriteReply> {
        let request = self.http.post(self.url(path)?).json(&body);
        let reply = self.send(request).await?;
        serde_json::from_slice(&reply).map_err(|e| {
            anyhow::anyhow!("the weights server at {} answered bad JSON: {e}", self.base)
        })
    }

    fn url(&self, path: &str) -> anyhow::Result<reqwest::Url> {
        self.base
            .join(path)
            .map_err(|e| anyhow::anyhow!("--server {}: {e}", self.base))
    }

    async fn send(&self, mut request: reqwest::RequestBuilder) -> anyhow::Result<bytes::Bytes> {
        if let Some(token) = &self.token {
            request = request.header(reqwest::header::AUTHORIZATION, token.header_value());
        }
        let response = request.send().await.map_err(|e| {
            // reqwest's message carries the URL already; add what to check.
            anyhow::anyhow!(
                "cannot reach the weights server at {}: {} (is `tideway serve-weights` running there?)",
                self.base,
                tideway_oci::error_chain(&e)
            )
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            anyhow::anyhow!(
                "reading the answer of the weights server at {}: {e}",
                self.base
            )
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        match status.as_u16() {
            401 if self.token.is_none() => anyhow::bail!(
                "the weights server at {} needs a bearer token (401): pass --token-file FILE or set ${TOKEN_ENV}",
                self.base
            ),
            401 => anyhow::bail!(
                "the weights server at {} refused the bearer token (401): check --token-file / ${TOKEN_ENV}",
                self.base
            ),
            _ => anyhow::bail!("the weights server at {} answered {status}: {message}", self.base),
        }
    }
}
