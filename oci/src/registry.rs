//! Pushing and pulling images over the OCI Distribution API.
//!
//! The wire protocol comes from the `oci-client` crate (rustls TLS with extra
//! root CAs; plain HTTP on request). This module adds what a release tool
//! needs on top:
//!
//! * the first request to a registry is `GET /v2/`, which tells how it wants
//!   clients to authenticate (open, HTTP basic, or a `Bearer` challenge) and
//!   catches a plain-HTTP/TLS mismatch at once, with the flag to use and
//!   without retries;
//! * token auth ([`crate::token`]): a token per repository and access (pull;
//!   pull+push) from the realm, kept for its `expires_in`, renewed once when
//!   the registry refuses it (expired, revoked), and a refusal of the action
//!   itself explained ("user \"reader\" lacks push access to repository …");
//! * push uploads exactly our bytes: each blob is `HEAD`-checked first and
//!   skipped when present (so a re-run after an interrupted push only sends
//!   what is missing), otherwise uploaded as `POST` + `PUT ?digest=`
//!   (Distribution 2.8 stores nothing for a single `POST ?digest=`); the
//!   manifest is `PUT` with its media type as `Content-Type`, then read back
//!   with `HEAD` to confirm the registry has the digest we computed;
//! * pull asks for every manifest type explicitly (Distribution 2.8 answers
//!   404 `MANIFEST_UNKNOWN` to a GET without the OCI type in `Accept`),
//!   checks the manifest digest, streams each blob with a size bound, and
//!   checks every size and digest (the registry does not check a layer's
//!   declared size);
//! * transient failures are retried with backoff ([`crate::retry`]); the
//!   final error says what failed, where, and after how many attempts;
//! * errors say "unauthorized" and name the registry when credentials are
//!   wrong or missing, and never contain a credential (server texts are
//!   scrubbed with [`Credentials::scrub`]).

use crate::auth::Credentials;
use crate::digest::Digest;
use crate::error_chain::error_chain;
use crate::fetched::{verify_blob, FetchedImage, IntegrityError};
use crate::image::Image;
use crate::istio;
use crate::manifest::{Descriptor, Manifest, ManifestError};
use crate::media_types;
use crate::reference::ImageRef;
use crate::retry::{retry, Exhausted, RetryPolicy};
use crate::token::{self, Challenge, Token, TokenError};
use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest blob a pull will accept (the descriptor's size is checked before downloading).
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 1024 * 1024 * 1024;

/// How to reach and authenticate to a registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Credentials (see [`crate::auth::resolve`]).
    pub credentials: Credentials,
    /// Use `http://` instead of `https://`. Only when explicitly asked.
    pub plain_http: bool,
    /// Extra trusted root certificates, PEM (e.g. a private registry's CA).
    pub ca_certs_pem: Vec<Vec<u8>>,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Per-read timeout.
    pub read_timeout: Duration,
    /// Largest blob a pull accepts.
    pub max_blob_size: u64,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            credentials: Credentials::Anonymous,
            plain_http: false,
            ca_certs_pem: Vec::new(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
        }
    }
}

/// Registry failures. Messages name the registry/reference; never a secret.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Credentials missing, wrong, or without the needed permission.
    #[error("unauthorized: registry {registry} refused access to {repository} as {who}: {detail}")]
    Unauthorized {
        /// `host[:port]`.
        registry: String,
        /// The repository.
        repository: String,
        /// Which identity was used (`anonymous`, `user "x"`).
        who: String,
        /// The registry's answer (scrubbed).
        detail: String,
    },
    /// Token auth: the registry refused an action the token does not grant.
    #[error("{0}")]
    Denied(Box<Denial>),
    /// Plain HTTP sent to a TLS port, or TLS to a plain-HTTP one.
    #[error("{registry} speaks {speaks}; {advice}")]
    SchemeMismatch {
        /// `host[:port]`.
        registry: String,
        /// `plain HTTP` or `HTTPS`.
        speaks: &'static str,
        /// The flag to change.
        advice: &'static str,
    },
    /// Still failing after all retries (down, unreachable, 5xx, 429).
    #[error("registry {registry} is unavailable: {operation} failed after {attempts} attempt(s): {detail}")]
    Unavailable {
        /// `host[:port]`.
        registry: String,
        /// What we were doing.
        operation: String,
        /// Attempts made.
        attempts: u32,
        /// Last error (scrubbed).
        detail: String,
    },
    /// TLS could not be established (certificate not trusted, wrong host name…).
    #[error("TLS error talking to registry {registry}: {detail} (trust a private CA with --ca-file; use --plain-http only for a registry without TLS)")]
    Tls {
        /// `host[:port]`.
        registry: String,
        /// The TLS error.
        detail: String,
    },
    /// The manifest or blob does not exist.
    #[error("not found: {what} in {reference}: {detail}")]
    NotFound {
        /// What was looked up.
        what: String,
        /// The reference.
        reference: String,
        /// The registry's answer.
        detail: String,
    },
    /// Received content does not match its digest or size.
    #[error("refusing {reference}: {source}")]
    Integrity {
        /// The reference.
        reference: String,
        /// The mismatch.
        source: IntegrityError,
    },
    /// A manifest we cannot use.
    #[error("manifest of {reference}: {source}")]
    Manifest {
        /// The reference.
        reference: String,
        /// The parse error.
        source: ManifestError,
    },
    /// An index with no entry Istio would pick, or nested indexes.
    #[error("{reference}: {detail}")]
    Unsupported {
        /// The reference.
        reference: String,
        /// Why.
        detail: String,
    },
    /// A blob bigger than the configured bound.
    #[error("{reference}: {what} declares {size} bytes, above the {max}-byte limit")]
    TooLarge {
        /// The reference.
        reference: String,
        /// Which blob.
        what: String,
        /// Declared size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// Pushing to `repo@sha256:X` an image whose manifest digest is not X,
    /// or the registry reporting a different digest after a push.
    #[error("{reference}: manifest digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// What we computed.
        expected: Digest,
        /// What the reference/registry says.
        actual: Digest,
    },
    /// Bad options (e.g. an unreadable CA file).
    #[error("registry client configuration: {0}")]
    Config(String),
    /// Any other protocol error.
    #[error("registry {registry}: {operation}: {detail}")]
    Protocol {
        /// `host[:port]`.
        registry: String,
        /// What we were doing.
        operation: String,
        /// The error (scrubbed).
        detail: String,
    },
}

/// A refused action, with what the token server did grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("denied: {who} lacks {missing} access to repository {repository} on registry {registry} (the token server granted: {granted}){hint}")]
pub struct Denial {
    /// `host[:port]`.
    pub registry: String,
    /// The repository.
    pub repository: String,
    /// Which identity was used.
    pub who: String,
    /// The actions asked for and not granted, e.g. `push`.
    pub missing: String,
    /// What the token did grant on the repository (`pull`, or `nothing`).
    pub granted: String,
    /// Advice for anonymous requests (empty otherwise).
    pub hint: &'static str,
}

impl RegistryError {
    fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// What happened to one blob during a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobStatus {
    /// Already in the registry (HEAD said so); not sent.
    AlreadyPresent,
    /// Uploaded now.
    Uploaded,
}

/// The outcome of a push.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// The reference pushed to.
    pub reference: ImageRef,
    /// The manifest digest (confirmed by the registry).
    pub manifest_digest: Digest,
    /// Each blob (layers, then config) and what happened to it.
    pub blobs: Vec<(Descriptor, BlobStatus)>,
    /// The registry asked for authentication and credentials were sent: a
    /// pull (Istio's) will need them too, as an `imagePullSecret`.
    pub authenticated: bool,
}

impl PushReport {
    /// `oci://host/repo@sha256:…` — the `url:` of a `WasmPlugin`.
    pub fn wasm_plugin_url(&self) -> String {
        self.reference.wasm_plugin_url(&self.manifest_digest)
    }
    /// The hex digest for a `WasmPlugin`'s `sha256:` field: the MANIFEST digest.
    pub fn wasm_plugin_sha256(&self) -> &str {
        self.manifest_digest.hex()
    }
}

/// A registry client.
pub struct Registry {
    options: RegistryOptions,
    /// The `oci-client` client for open and basic-auth registries.
    shared: Arc<Session>,
    /// For `GET /v2/` and token requests.
    http: reqwest::Client,
    /// How each registry (`host[:port]`) authenticates, learnt once.
    access: tokio::sync::Mutex<HashMap<String, Access>>,
    /// Token-auth sessions by (registry, repository, access).
    tokens: Mutex<HashMap<(String, String, Need), Arc<Session>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("credentials", &self.options.credentials)
            .field("plain_http", &self.options.plain_http)
            .field("retry", &self.options.retry)
            .finish_non_exhaustive()
    }
}

/// How a registry wants clients to authenticate (its answer to `GET /v2/`).
#[derive(Debug, Clone)]
enum Access {
    /// No authentication asked for.
    Open,
    /// HTTP basic auth (or a challenge we leave to `oci-client`).
    Basic,
    /// Token auth: get a token from the challenge's realm.
    Token(Challenge),
}

/// The access an operation needs on a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Need {
    Pull,
    Push,
}

impl Need {
    fn actions(self) -> &'static [&'static str] {
        match self {
            Need::Pull => &["pull"],
            Need::Push => &["pull", "push"],
        }
    }
}

/// An `oci-client` client with the authentication to use with it.
struct Session {
    client: Client,
    auth: RegistryAuth,
    bearer: Option<Bearer>,
}

/// The token a token-auth session sends.
struct Bearer {
    token: Token,
    /// False for a ready token from the user (`registrytoken`): not renewable.
    renewable: bool,
    /// What the token grants on the repository, when it is a readable JWT.
    granted: Option<Vec<String>>,
}

/// The context an error is mapped in.
struct Ctx<'a> {
    reference: &'a ImageRef,
    operation: &'a str,
}

impl Registry {
    /// A client with `options`.
    pub fn new(options: RegistryOptions) -> Result<Self, RegistryError> {
        for (i, pem) in options.ca_certs_pem.iter().enumerate() {
            if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(RegistryError::Config(format!(
                    "CA certificate #{} is not PEM (no BEGIN CERTIFICATE block)",
                    i + 1
                )));
            }
        }
        let auth = match &options.credentials {
            Credentials::Anonymous | Credentials::IdentityToken(_) => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.expose().to_string())
            }
            Credentials::Bearer(token) => RegistryAuth::Bearer(token.expose().to_string()),
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .user_agent(concat!("tideway/", env!("CARGO_PKG_VERSION")));
        for pem in &options.ca_certs_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| RegistryError::Config(format!("CA certificate is not usable: {e}")))?;
            http = http.tls_certs_merge([cert]);
        }
        let http = http
            .build()
            .map_err(|e| RegistryError::Config(error_chain(&e)))?;
        let shared = Arc::new(Session {
            client: oci_client(&options)?,
            auth,
            bearer: None,
        });
        Ok(Self {
            options,
            shared,
            http,
            access: tokio::sync::Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn credentials(&self) -> &Credentials {
        &self.options.credentials
    }

    /// Runs `op` under the retry policy, turning exhausted transient errors
    /// into [`RegistryError::Unavailable`] with the attempt count.
    async fn retrying<T, F, Fut>(
        &self,
        reference: &ImageRef,
        operation: &str,
        op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        retry(
            self.options.retry,
            operation,
            RegistryError::is_transient,
            op,
        )
        .await
        .map_err(|Exhausted { error, attempts }| match error {
            RegistryError::Unavailable { detail, .. } => RegistryError::Unavailable {
                registry: reference.registry().to_string(),
                operation: operation.to_string(),
                attempts,
                detail,
            },
            other => other,
        })
    }

    /// How the registry of `reference` authenticates (asked once).
    async fn access(&self, reference: &ImageRef) -> Result<Access, RegistryError> {
        let host = reference.client_ref().resolve_registry().to_string();
        let mut known = self.access.lock().await;
        if let Some(a) = known.get(&host) {
            return Ok(a.clone());
        }
        let a = self.probe(reference, &host).await?;
        tracing::debug!(registry = %host, access = ?a, "registry authentication");
        known.insert(host, a.clone());
        Ok(a)
    }

    /// `GET /v2/`: the registry's auth challenge, or a clear error when it
    /// speaks the other protocol (Go's TLS server answers plain HTTP with a
    /// 400 "Client sent an HTTP request to an HTTPS server"; a plain server
    /// answers a TLS ClientHello with HTTP, which rustls reports as an
    /// invalid record content type).
    async fn probe(&self, reference: &ImageRef, host: &str) -> Result<Access, RegistryError> {
        let registry = reference.registry().to_string();
        let scheme = if self.options.plain_http {
            "http"
        } else {
            "https"
        };
        let url = format!("{scheme}://{host}/v2/");
        let response = match self.http.get(&url).send().await {
            Ok(r) => r,
            Err(e) => {
                let detail = self.credentials().scrub(&error_chain(&e));
                return Err(self.transport_error(
                    &registry,
                    "registry API check (GET /v2/)",
                    detail,
                ));
            }
        };
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect::<Vec<_>>();
        match status {
            200..=299 => Ok(Access::Open),
            401 => Ok(challenge
                .iter()
                .find_map(|h| token::parse_bearer_challenge(h))
                .map(Access::Token)
                .unwrap_or(Access::Basic)),
            408 | 429 | 500..=599 => Err(RegistryError::Unavailable {
                registry,
                operation: "registry API check (GET /v2/)".into(),
                attempts: 1,
                detail: format!("HTTP {status}"),
            }),
            _ => {
                let body = response.text().await.unwrap_or_default();
                if self.options.plain_http && speaks_tls_reply(&body) {
                    return Err(RegistryError::SchemeMismatch {
                        registry,
                        speaks: "HTTPS",
                        advice: "drop --plain-http",
                    });
                }
                // Not the /v2/ answer of a registry; let the operation itself
                // report what the server says.
                Ok(Access::Open)
            }
        }
    }

    /// A request that got no HTTP answer: mismatch, TLS, or unavailable.
    fn transport_error(&self, registry: &str, operation: &str, detail: String) -> RegistryError {
        if !self.options.plain_http && speaks_plain_http_failure(&detail) {
            RegistryError::SchemeMismatch {
                registry: registry.to_string(),
                speaks: "plain HTTP",
                advice: "use --plain-http",
            }
        } else if is_tls_failure(&detail) {
            RegistryError::Tls {
                registry: registry.to_string(),
                detail,
            }
        } else {
            RegistryError::Unavailable {
                registry: registry.to_string(),
                operation: operation.to_string(),
                attempts: 1,
                detail,
            }
        }
    }

    /// The client and authentication for `need` on `reference`'s repository.
    /// `renew` skips a cached token (the registry just refused it).
    async fn session(
        &self,
        reference: &ImageRef,
        need: Need,
        renew: bool,
    ) -> Result<Arc<Session>, RegistryError> {
        let challenge = match self.access(reference).await? {
            Access::Token(c) => c,
            Access::Basic if matches!(self.credentials(), Credentials::IdentityToken(_)) => {
                return Err(RegistryError::Config(format!(
                    "registry {} asks for HTTP basic auth, but the credentials found are an identity token, which only a token-auth registry accepts; give --username with --password-stdin",
                    reference.registry()
                )))
            }
            Access::Open | Access::Basic => return Ok(self.shared.clone()),
        };
        let key = (
            reference.registry().to_string(),
            reference.repository().to_string(),
            need,
        );
        if !renew {
            // A pull+push token serves a pull as well.
            let cached = {
                let tokens = lock(&self.tokens);
                let push_key = (key.0.clone(), key.1.clone(), Need::Push);
                let fresh = [&key, &push_key]
                    .into_iter()
                    .filter_map(|k| tokens.get(k))
                    .find(|s| s.bearer.as_ref().is_some_and(|b| b.token.is_fresh()))
                    .cloned();
                fresh
            };
            if let Some(s) = cached {
                return Ok(s);
            }
        }
        let scope = token::repository_scope(reference.repository(), need.actions());
        let renewable = !matches!(self.credentials(), Credentials::Bearer(_));
        let token = token::fetch(
            &self.http,
            &challenge,
            &scope,
            self.credentials(),
            !self.options.plain_http,
        )
        .await
        .map_err(|e| self.token_error(reference, e))?;
        tracing::debug!(registry = %reference.registry(), %scope, renew, "got a registry token");
        let granted = token::granted_actions(token.value.expose(), reference.repository());
        let session = Arc::new(Session {
            client: oci_client(&self.options)?,
            auth: RegistryAuth::Bearer(token.value.expose().to_string()),
            bearer: Some(Bearer {
                token,
                renewable,
                granted,
            }),
        });
        lock(&self.tokens).insert(key, session.clone());
        Ok(session)
    }

    fn token_error(&self, reference: &ImageRef, e: TokenError) -> RegistryError {
        let registry = reference.registry().to_string();
        let detail = self.credentials().scrub(&e.to_string());
        match e {
            TokenError::Refused { .. } => self.unauthorized(reference, detail),
            TokenError::Unavailable { .. } => RegistryError::Unavailable {
                registry,
                operation: "token request".into(),
                attempts: 1,
                detail,
            },
            TokenError::BadReply { .. } => RegistryError::Protocol {
                registry,
                operation: "token request".into(),
                detail,
            },
            TokenError::InsecureRealm { .. } => RegistryError::Config(detail),
        }
    }

    fn unauthorized(&self, reference: &ImageRef, detail: String) -> RegistryError {
        RegistryError::Unauthorized {
            registry: reference.registry().to_string(),
            repository: reference.repository().to_string(),
            who: self.credentials().describe(),
            detail: format!("{detail}{}", self.anonymous_hint()),
        }
    }

    fn anonymous_hint(&self) -> &'static str {
        if matches!(self.credentials(), Credentials::Anonymous) {
            "; no credentials were given (use --username with --password-stdin, TIDEWAY_REGISTRY_USERNAME/TIDEWAY_REGISTRY_PASSWORD, docker login, or --docker-config)"
        } else {
            ""
        }
    }

    /// Runs `op` with a session for `need`. When the registry refuses a
    /// token: if the token grants what is needed (so it expired or was
    /// revoked), gets a new one and runs `op` once more; if it does not,
    /// says which action is missing.
    async fn authorized<T, F, Fut>(
        &self,
        reference: &ImageRef,
        need: Need,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let mut session = self.session(reference, need, false).await?;
        let mut renewed = false;
        loop {
            let error = match op(session.clone()).await {
                Err(e @ RegistryError::Unauthorized { .. }) => e,
                other => return other,
            };
            let Some(bearer) = &session.bearer else {
                return Err(error);
            };
            let missing: Vec<&str> = match &bearer.granted {
                Some(granted) => need
                    .actions()
                    .iter()
                    .copied()
                    .filter(|a| !granted.iter().any(|g| g == a))
                    .collect(),
                None => Vec::new(),
            };
            if !missing.is_empty() {
                let granted = bearer.granted.as_deref().unwrap_or_default();
                return Err(RegistryError::Denied(Box::new(Denial {
                    registry: reference.registry().to_string(),
                    repository: reference.repository().to_string(),
                    who: self.credentials().describe(),
                    missing: missing.join(","),
                    granted: if granted.is_empty() {
                        "nothing".into()
                    } else {
                        granted.join(",")
                    },
                    hint: self.anonymous_hint(),
                })));
            }
            if renewed || !bearer.renewable {
                return Err(error);
            }
            tracing::info!(
                registry = %reference.registry(),
                repository = %reference.repository(),
                "the registry refused the token (expired or revoked); getting a new one"
            );
            session = self.session(reference, need, true).await?;
            renewed = true;
        }
    }

    /// Maps an `oci-client` error to ours, scrubbing secrets from its text.
    fn map_err(&self, ctx: &Ctx<'_>, e: OciDistributionError) -> RegistryError {
        let detail = self.credentials().scrub(&error_chain(&e));
        let registry = ctx.reference.registry().to_string();
        let unauthorized = |detail: String| self.unauthorized(ctx.reference, detail);
        let unavailable = |detail: String| RegistryError::Unavailable {
            registry: registry.clone(),
            operation: ctx.operation.to_string(),
            attempts: 1,
            detail,
        };
        let not_found = |detail: String| RegistryError::NotFound {
            what: ctx.operation.to_string(),
            reference: ctx.reference.to_string(),
            detail,
        };
        let by_status = |code: u16, detail: String| match code {
            401 | 403 => unauthorized(detail),
            404 => not_found(detail),
            408 | 429 | 500..=599 => unavailable(detail),
            _ => RegistryError::Protocol {
                registry: registry.clone(),
                operation: ctx.operation.to_string(),
                detail,
            },
        };
        match &e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => unauthorized(detail),
            OciDistributionError::ServerError { code, .. } => by_status(*code, detail),
            OciDistributionError::RegistryError { envelope, .. } => {
                let code = envelope.errors.first().map(|x| &x.code);
                match code {
                    Some(OciErrorCode::Unauthorized) | Some(OciErrorCode::Denied) => {
                        unauthorized(detail)
                    }
                    Some(OciErrorCode::ManifestUnknown)
                    | Some(OciErrorCode::BlobUnknown)
                    | Some(OciErrorCode::NameUnknown)
                    | Some(OciErrorCode::NotFound) => not_found(detail),
                    Some(OciErrorCode::Toomanyrequests) => unavailable(detail),
                    _ => by_status(0, detail),
                }
            }
            OciDistributionError::RequestError(re) => {
                if let Some(status) = re.status() {
                    by_status(status.as_u16(), detail)
                } else if re.is_builder() {
                    RegistryError::Config(detail)
                } else {
                    self.transport_error(&registry, ctx.operation, detail)
                }
            }
            OciDistributionError::IoError(_) => unavailable(detail),
            _ => by_status(0, detail),
        }
    }

    /// Pushes `image` to `reference`; see the module docs for the protocol.
    pub async fn push(
        &self,
        image: &Image,
        reference: &ImageRef,
    ) -> Result<PushReport, RegistryError> {
        let digest = image.manifest_digest();
        if let Some(want) = reference.digest() {
            if want != digest {
                return Err(RegistryError::DigestMismatch {
                    reference: reference.to_string(),
                    expected: digest,
                    actual: want,
                });
            }
        }
        let mut blobs = Vec::new();
        for blob in image.blobs() {
            let status = self
                .push_blob(reference, &blob.descriptor, &blob.data)
                .await?;
            blobs.push((blob.descriptor.clone(), status));
        }
        self.push_manifest(reference, &image.manifest, &image.manifest_media_type)
            .await?;
        let asked = !matches!(self.access(reference).await?, Access::Open);
        Ok(PushReport {
            reference: reference.clone(),
            manifest_digest: digest,
            blobs,
            authenticated: asked && !matches!(self.credentials(), Credentials::Anonymous),
        })
    }

    /// Uploads one blob unless the registry already has it.
    pub async fn push_blob(
        &self,
        reference: &ImageRef,
        descriptor: &Descriptor,
        data: &[u8],
    ) -> Result<BlobStatus, RegistryError> {
        verify_blob("blob", descriptor, data).map_err(|source| RegistryError::Integrity {
            reference: reference.to_string(),
            source,
        })?;
        let r = reference.client_ref();
        let digest = descriptor.digest.to_string();
        let op = format!("upload of blob {digest}");
        let bytes = bytes_of(data);
        self.retrying(reference, &op, || {
            self.authorized(reference, Need::Push, |s| {
                let (op, digest, bytes) = (&op, &digest, bytes.clone());
                async move {
                    let head_ctx = Ctx {
                        reference,
                        operation: "blob existence check (HEAD)",
                    };
                    s.client
                        .store_auth_if_needed(r.resolve_registry(), &s.auth)
                        .await;
                    let exists = s
                        .client
                        .blob_exists(r, digest)
                        .await
                        .map_err(|e| self.map_err(&head_ctx, e))?;
                    if exists {
                        tracing::info!(%digest, size = descriptor.size, "blob already present, skipped");
                        return Ok(BlobStatus::AlreadyPresent);
                    }
                    let ctx = Ctx {
                        reference,
                        operation: op,
                    };
                    s.client
                        .push_blob(r, bytes, digest)
                        .await
                        .map_err(|e| self.map_err(&ctx, e))?;
                    tracing::info!(%digest, size = descriptor.size, "blob uploaded");
                    Ok(BlobStatus::Uploaded)
                }
            })
        })
        .await
    }

    /// PUTs manifest bytes with `media_type` as `Content-Type`, then confirms
    /// (HEAD) that the registry serves them under the digest we computed.
    pub async fn push_manifest(
        &self,
        reference: &ImageRef,
        manifest: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let r = reference.client_ref();
        let expected = Digest::of(manifest);
        let content_type = http::HeaderValue::from_str(media_type).map_err(|_| {
            RegistryError::Config(format!("invalid manifest media type `{media_type}`"))
        })?;
        let body = bytes_of(manifest);
        let op = "manifest upload (PUT)";
        let ctx = Ctx {
            reference,
            operation: op,
        };
        self.retrying(reference, op, || {
            self.authorized(reference, Need::Push, |s| {
                let (body, content_type, ctx) = (body.clone(), content_type.clone(), &ctx);
                async move {
                    s.client
                        .store_auth_if_needed(r.resolve_registry(), &s.auth)
                        .await;
                    s.client
                        .push_manifest_raw(r, body, content_type)
                        .await
                        .map_err(|e| self.map_err(ctx, e))
                }
            })
        })
        .await?;
        let pinned = reference.with_digest(&expected);
        let op = "manifest read-back (HEAD)";
        let ctx = Ctx {
            reference,
            operation: op,
        };
        let served = self
            .retrying(reference, op, || {
                self.authorized(reference, Need::Push, |s| {
                    let (pinned, ctx) = (&pinned, &ctx);
                    async move {
                        s.client
                            .fetch_manifest_digest(pinned.client_ref(), &s.auth)
                            .await
                            .map_err(|e| self.map_err(ctx, e))
                    }
                })
            })
            .await?;
        let served = Digest::parse(&served).map_err(|e| RegistryError::Protocol {
            registry: reference.registry().to_string(),
            operation: op.to_string(),
            detail: e.to_string(),
        })?;
        if served != expected {
            return Err(RegistryError::DigestMismatch {
                reference: reference.to_string(),
                expected,
                actual: served,
            });
        }
        tracing::info!(reference = %reference, digest = %expected, "manifest pushed");
        Ok(expected)
    }

    /// Fetches manifest bytes for `reference` (tag or digest); checks them
    /// against the reference's digest. Returns the bytes and their digest.
    async fn manifest_bytes(
        &self,
        reference: &ImageRef,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let r = reference.client_ref();
        let op = "manifest fetch";
        let ctx = Ctx {
            reference,
            operation: op,
        };
        let (bytes, _) = self
            .retrying(reference, op, || {
                self.authorized(reference, Need::Pull, |s| {
                    let ctx = &ctx;
                    async move {
                        s.client
                            .pull_manifest_raw(r, &s.auth, media_types::ACCEPTED_MANIFESTS)
                            .await
                            .map_err(|e| match e {
                                OciDistributionError::DigestError(d) => RegistryError::Protocol {
                                    registry: reference.registry().to_string(),
                                    operation: op.to_string(),
                                    detail: format!("manifest digest check failed: {d}"),
                                },
                                e => self.map_err(ctx, e),
                            })
                    }
                })
            })
            .await?;
        let bytes = bytes.to_vec();
        let digest = Digest::of(&bytes);
        if let Some(want) = reference.digest() {
            if want != digest {
                return Err(RegistryError::Integrity {
                    reference: reference.to_string(),
                    source: IntegrityError::Digest {
                        what: "manifest".into(),
                        expected: want,
                        actual: digest,
                    },
                });
            }
        }
        Ok((bytes, digest))
    }

    /// Downloads one blob, refusing more bytes than declared, then verifies it.
    pub async fn pull_blob(
        &self,
        reference: &ImageRef,
        what: &str,
        descriptor: &Descriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        if descriptor.size > self.options.max_blob_size {
            return Err(RegistryError::TooLarge {
                reference: reference.to_string(),
                what: what.to_string(),
                size: descriptor.size,
                max: self.options.max_blob_size,
            });
        }
        let r = reference.client_ref();
        let digest = descriptor.digest.to_string();
        let op = format!("download of {what} {digest}");
        let integrity = |source| RegistryError::Integrity {
            reference: reference.to_string(),
            source,
        };
        let ctx = Ctx {
            reference,
            operation: &op,
        };
        self.retrying(reference, &op, || {
            self.authorized(reference, Need::Pull, |s| {
                let (ctx, digest, op) = (&ctx, &digest, &op);
                async move {
                    s.client
                        .store_auth_if_needed(r.resolve_registry(), &s.auth)
                        .await;
                    let mut stream = s
                        .client
                        .pull_blob_stream(r, digest.as_str())
                        .await
                        .map_err(|e| self.map_err(ctx, e))?;
                    let mut buf: Vec<u8> = Vec::with_capacity(
                        usize::try_from(descriptor.size).unwrap_or(0).min(64 << 20),
                    );
                    while let Some(chunk) = stream.next().await {
                        match chunk {
                            Ok(b) => {
                                buf.extend_from_slice(&b);
                                if buf.len() as u64 > descriptor.size {
                                    return Err(integrity(IntegrityError::Size {
                                        what: what.to_string(),
                                        digest: descriptor.digest.clone(),
                                        expected: descriptor.size,
                                        actual: buf.len() as u64,
                                    }));
                                }
                            }
                            Err(e) => {
                                // oci-client's own digest check fails at the end of the
                                // stream; report the mismatch, do not retry it.
                                if buf.len() as u64 == descriptor.size {
                                    verify_blob(what, descriptor, &buf).map_err(integrity)?;
                                }
                                return Err(RegistryError::Unavailable {
                                    registry: reference.registry().to_string(),
                                    operation: op.clone(),
                                    attempts: 1,
                                    detail: self.credentials().scrub(&e.to_string()),
                                });
                            }
                        }
                    }
                    verify_blob(what, descriptor, &buf).map_err(integrity)?;
                    Ok(buf)
                }
            })
        })
        .await
    }

    /// Pulls the image `reference` names: manifest (an index is resolved
    /// for linux/amd64, as Istio does), config and every layer, all verified.
    pub async fn pull(&self, reference: &ImageRef) -> Result<FetchedImage, RegistryError> {
        let (mut bytes, mut digest) = self.manifest_bytes(reference).await?;
        let manifest_err = |source| RegistryError::Manifest {
            reference: reference.to_string(),
            source,
        };
        let mut parsed = Manifest::parse(&bytes, None).map_err(manifest_err)?;
        let mut index_digest = None;
        if let Manifest::Index(index) = &parsed {
            let child = istio::select_from_index(index)
                .map_err(|r| RegistryError::Unsupported {
                    reference: reference.to_string(),
                    detail: r.to_string(),
                })?
                .clone();
            let child_ref = reference.with_digest(&child.digest);
            let (child_bytes, child_digest) = self.manifest_bytes(&child_ref).await?;
            verify_blob("manifest", &child, &child_bytes).map_err(|source| {
                RegistryError::Integrity {
                    reference: child_ref.to_string(),
                    source,
                }
            })?;
            index_digest = Some(digest);
            parsed =
                Manifest::parse(&child_bytes, Some(&child.media_type)).map_err(manifest_err)?;
            bytes = child_bytes;
            digest = child_digest;
        }
        let Manifest::Image(manifest) = parsed else {
            return Err(RegistryError::Unsupported {
                reference: reference.to_string(),
                detail: "an image index inside an image index is not supported".into(),
            });
        };
        let config = self
            .pull_blob(reference, "config", &manifest.config)
            .await?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (i, layer) in manifest.layers.iter().enumerate() {
            layers.push(
                self.pull_blob(reference, &format!("layer {i}"), layer)
                    .await?,
            );
        }
        Ok(FetchedImage {
            manifest_bytes: bytes,
            manifest_digest: digest,
            manifest,
            index_digest,
            config,
            layers,
        })
    }
}

fn bytes_of(data: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(data)
}

fn is_tls_failure(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    d.contains("certificate") || d.contains("invalidcertificate") || d.contains("tls handshake")
}

/// rustls reading an HTTP reply where a TLS record should be.
fn speaks_plain_http_failure(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    d.contains("invalidcontenttype") || d.contains("corrupt message")
}

/// The 400 body a TLS server sends back to a plain-HTTP request (Go, nginx).
fn speaks_tls_reply(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    b.contains("http request to an https server")
        || b.contains("plain http request was sent to https port")
}

/// The `oci-client` client for `options` (an unusable TLS setup is an error
/// here, where `Client::new` would silently fall back to defaults).
fn oci_client(options: &RegistryOptions) -> Result<Client, RegistryError> {
    let config = ClientConfig {
        protocol: if options.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        extra_root_certificates: options
            .ca_certs_pem
            .iter()
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .collect(),
        use_monolithic_push: true,
        platform_resolver: None,
        connect_timeout: Some(options.connect_timeout),
        read_timeout: Some(options.read_timeout),
        ..ClientConfig::default()
    };
    Client::try_from(config).map_err(|e| RegistryError::Config(error_chain(&e)))
}

/// Locks a mutex, taking the data of a poisoned one (a panicked holder
/// leaves a cache that is still valid).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_debug_output_hides_the_password() {
        let reg = Registry::new(RegistryOptions {
            credentials: Credentials::Basic {
                username: "bot".into(),
                password: crate::auth::Secret::new("hunter2"),
            },
            ..Default::default()
        })
        .unwrap();
        let shown = format!("{reg:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("bot"),
            "{shown}"
        );
    }

    #[test]
    fn a_non_pem_ca_is_refused_up_front() {
        let err = Registry::new(RegistryOptions {
            ca_certs_pem: vec![b"not a cert".to_vec()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("CA certificate #1"), "{err}");
    }
}
