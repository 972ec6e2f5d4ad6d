//! Registry credentials: where they come from and how they are kept secret.
//!
//! Sources, first match wins (see [`resolve`]):
//! 1. explicit values (CLI flags `--username` + `--password-stdin`/`--password`,
//!    or the `TIDEWAY_REGISTRY_USERNAME` / `TIDEWAY_REGISTRY_PASSWORD` env vars);
//! 2. the Docker client config (`$DOCKER_CONFIG/config.json`, else
//!    `~/.docker/config.json`, or a file given): the registry's `credHelpers`
//!    entry, else `credsStore` (`docker-credential-<name> get`; `<token>` as
//!    the user name means an identity token), else `auths` (`registrytoken`,
//!    then `identitytoken`, then `username`/`password`, then `auth`, as
//!    Docker prefers them). The file may also be a Kubernetes
//!    `kubernetes.io/dockerconfigjson` Secret (YAML or JSON): the Secret an Istio
//!    `imagePullSecret` names then serves the push too;
//! 3. anonymous.
//!
//! Secrets live in [`Secret`], whose `Debug`/`Display` print `<redacted>`, so
//! that no log line, error or `{:?}` can show them; [`Credentials::scrub`]
//! additionally removes them from any text that crosses from a server into
//! our error messages.

use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A secret string (password, token). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to authenticate to a registry.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// No credentials.
    #[default]
    Anonymous,
    /// Username and password: sent as HTTP basic auth, or exchanged for a
    /// bearer token when the registry answers with a `Bearer` challenge.
    Basic {
        /// User name (not secret).
        username: String,
        /// Password or access token.
        password: Secret,
    },
    /// A ready registry bearer token (Docker config `registrytoken`).
    Bearer(Secret),
    /// An OAuth2 refresh token (Docker config `identitytoken`, or a credential
    /// helper answering `Username: "<token>"`), exchanged at the registry's
    /// token server for an access token (the refresh-token grant).
    IdentityToken(Secret),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Removes every secret this value holds (raw, and base64 of
    /// `user:password` as it appears in an `Authorization` header) from `text`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        let mut secrets = Vec::new();
        match self {
            Credentials::Anonymous => {}
            Credentials::Basic { username, password } => {
                secrets.push(password.expose().to_string());
                secrets.push(
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{}", password.expose())),
                );
            }
            Credentials::Bearer(token) | Credentials::IdentityToken(token) => {
                secrets.push(token.expose().to_string())
            }
        }
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            out = out.replace(s.as_str(), "<redacted>");
        }
        out
    }

    /// A short non-secret description, e.g. `basic auth as "ci-bot"`.
    pub fn describe(&self) -> String {
        match self {
            Credentials::Anonymous => "anonymous".to_string(),
            Credentials::Basic { username, .. } => format!("user {username:?}"),
            Credentials::Bearer(_) => "a bearer token".to_string(),
            Credentials::IdentityToken(_) => "an identity token".to_string(),
        }
    }
}

/// Where the credentials in use came from (for messages; never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// Flags or environment variables.
    Explicit,
    /// A Docker credential helper (`docker-credential-<name>`).
    Helper(String),
    /// The `auths` section of a Docker config file.
    DockerConfig(PathBuf),
    /// A Kubernetes `kubernetes.io/dockerconfigjson` Secret (the kind a
    /// WasmPlugin's `imagePullSecret` names), read from a file.
    KubernetesSecret {
        /// The file.
        path: PathBuf,
        /// The Secret's `metadata.name`.
        name: String,
    },
    /// Nothing found: anonymous.
    None,
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Explicit => f.write_str("flags/environment"),
            CredentialSource::Helper(h) => write!(f, "credential helper docker-credential-{h}"),
            CredentialSource::DockerConfig(p) => write!(f, "{}", p.display()),
            CredentialSource::KubernetesSecret { path, name } => {
                write!(f, "Secret {name} in {}", path.display())
            }
            CredentialSource::None => f.write_str("no credentials"),
        }
    }
}

/// Why credentials could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Only one of username / password was given.
    #[error("registry credentials: {0}")]
    Incomplete(&'static str),
    /// The Docker config file could not be read or parsed.
    #[error("reading Docker config {path}: {detail}")]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// What went wrong (never includes secret values).
        detail: String,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} for {registry}: {detail}")]
    Helper {
        /// Helper name.
        helper: String,
        /// Registry asked about.
        registry: String,
        /// What went wrong.
        detail: String,
    },
}

/// The Docker config file to read: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// Chooses the credentials for `registry` (a `host[:port]`).
///
/// `username`/`password` are the explicit values (flags or env); both or
/// neither must be set. `docker_config` is the file to consult when they are
/// absent (a missing file means "no credentials", not an error).
pub fn resolve(
    registry: &str,
    username: Option<String>,
    password: Option<Secret>,
    docker_config: Option<&Path>,
) -> Result<(Credentials, CredentialSource), AuthError> {
    match (username, password) {
        (Some(username), Some(password)) => {
            return Ok((Credentials::Basic { username, password }, CredentialSource::Explicit))
        }
        (Some(_), None) => {
            return Err(AuthError::Incomplete(
                "a username was given without a password (use --password-stdin or TIDEWAY_REGISTRY_PASSWORD)",
            ))
        }
        (None, Some(_)) => {
            return Err(AuthError::Incomplete(
                "a password was given without a username (use --username or TIDEWAY_REGISTRY_USERNAME)",
            ))
        }
        (None, None) => {}
    }
    let Some(path) = docker_config else {
        return Ok((Credentials::Anonymous, CredentialSource::None));
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Credentials::Anonymous, CredentialSource::None))
        }
        Err(e) => {
            return Err(AuthError::DockerConfig {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })
        }
    };
    let config = DockerConfig::parse(&text).map_err(|detail| AuthError::DockerConfig {
        path: path.to_path_buf(),
        detail,
    })?;
    if let Some(helper) = config.helper_for(registry) {
        return match run_helper(&helper, registry)? {
            Some(c) => Ok((c, CredentialSource::Helper(helper))),
            None => Ok((Credentials::Anonymous, CredentialSource::None)),
        };
    }
    match config
        .credentials_for(registry)
        .map_err(|detail| AuthError::DockerConfig {
            path: path.to_path_buf(),
            detail,
        })? {
        Some(c) => {
            let source = match &config.secret_name {
                Some(name) => CredentialSource::KubernetesSecret {
                    path: path.to_path_buf(),
                    name: name.clone(),
                },
                None => CredentialSource::DockerConfig(path.to_path_buf()),
            };
            Ok((c, source))
        }
        None => Ok((Credentials::Anonymous, CredentialSource::None)),
    }
}

/// The parts of Docker's `config.json` that hold registry credentials.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
    /// Set when the file was a Kubernetes Secret wrapping this config.
    #[serde(skip)]
    secret_name: Option<String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

/// Reduces a Docker config key (`https://host:5000/v1/`, `host:5000`) or a
/// registry name to a comparable `host[:port]`; Docker Hub's aliases become `docker.io`.
fn normalize_registry(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

impl DockerConfig {
    /// Parses a Docker `config.json`, or a Kubernetes Secret of type
    /// `kubernetes.io/dockerconfigjson` in JSON or YAML (`kubectl get secret
    /// NAME -o yaml`): its `data[".dockerconfigjson"]` (base64) or `stringData` is the
    /// same config, so one Secret serves `tideway image push` and Istio's
    /// `imagePullSecret`. Errors never quote the file's content.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| {
                format!(
                    "not valid JSON (line {}, column {}); expected a Docker config.json or a Kubernetes dockerconfigjson Secret",
                    e.line(),
                    e.column()
                )
            })?
        } else {
            // Not JSON: a Kubernetes manifest in YAML, or nothing we know.
            let value: serde_json::Value = yaml_serde::from_str(text).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                    .unwrap_or_default();
                format!("neither JSON nor YAML{at}; expected a Docker config.json or a Kubernetes dockerconfigjson Secret")
            })?;
            if value.get("kind").and_then(|k| k.as_str()) != Some("Secret") {
                return Err(
                    "YAML that is not a Kubernetes Secret; expected a Docker config.json or a Kubernetes dockerconfigjson Secret".into(),
                );
            }
            value
        };
        if value.get("kind").and_then(|k| k.as_str()) == Some("Secret") {
            return Self::from_secret(&value);
        }
        serde_json::from_value(value)
            .map_err(|e| format!("not a Docker config: {}", describe_json_error(&e)))
    }

    fn from_secret(secret: &serde_json::Value) -> Result<Self, String> {
        let name = secret
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string();
        let ty = secret.get("type").and_then(|t| t.as_str()).unwrap_or("");
        if ty != "kubernetes.io/dockerconfigjson" {
            return Err(format!(
                "Secret {name:?} has type {ty:?}; registry credentials need type \"kubernetes.io/dockerconfigjson\" (kubectl create secret docker-registry)"
            ));
        }
        let inner = if let Some(b64) = secret
            .pointer("/data/.dockerconfigjson")
            .and_then(|v| v.as_str())
        {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| {
                    format!("Secret {name:?}: data.\".dockerconfigjson\" is not valid base64")
                })?;
            String::from_utf8(bytes).map_err(|_| {
                format!("Secret {name:?}: data.\".dockerconfigjson\" is not UTF-8 after base64 decoding")
            })?
        } else if let Some(text) = secret
            .pointer("/stringData/.dockerconfigjson")
            .and_then(|v| v.as_str())
        {
            text.to_string()
        } else {
            return Err(format!(
                "Secret {name:?} has no data.\".dockerconfigjson\" (nor stringData.\".dockerconfigjson\")"
            ));
        };
        let mut config: DockerConfig = serde_json::from_str(&inner).map_err(|e| {
            format!(
                "Secret {name:?}: .dockerconfigjson is not a Docker config: {}",
                describe_json_error(&e)
            )
        })?;
        config.secret_name = (!name.is_empty()).then_some(name);
        Ok(config)
    }

    /// The credential helper configured for `registry`, if any.
    pub fn helper_for(&self, registry: &str) -> Option<String> {
        let want = normalize_registry(registry);
        self.cred_helpers
            .iter()
            .find(|(k, _)| normalize_registry(k) == want)
            .map(|(_, v)| v.clone())
            .or_else(|| self.creds_store.clone().filter(|s| !s.is_empty()))
    }

    /// The inline credentials in `auths` for `registry`, if any.
    pub fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>, String> {
        let want = normalize_registry(registry);
        let Some((key, entry)) = self
            .auths
            .iter()
            .find(|(k, _)| normalize_registry(k) == want)
        else {
            return Ok(None);
        };
        if let Some(token) = entry.registrytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::Bearer(Secret::new(token.clone()))));
        }
        // `docker login` against a token-auth registry keeps an OAuth2
        // refresh token here instead of the password; Docker prefers it.
        if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::IdentityToken(Secret::new(token.clone()))));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            if !u.is_empty() {
                return Ok(Some(Credentials::Basic {
                    username: u.clone(),
                    password: Secret::new(p.clone()),
                }));
            }
        }
        if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| format!("auths.\"{key}\".auth is not valid base64"))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| format!("auths.\"{key}\".auth is not UTF-8 after base64 decoding"))?;
            let (u, p) = decoded.split_once(':').ok_or_else(|| {
                format!("auths.\"{key}\".auth is not base64 of \"user:password\"")
            })?;
            return Ok(Some(Credentials::Basic {
                username: u.to_string(),
                password: Secret::new(p.to_string()),
            }));
        }
        Ok(None)
    }
}

/// A serde_json error without the offending value (which may be a secret).
fn describe_json_error(e: &serde_json::Error) -> String {
    format!("line {}, column {}", e.line(), e.column())
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Runs `docker-credential-<helper> get` with the registry on stdin (the Docker
/// credential-helper protocol). "credentials not found" means no credentials.
fn run_helper(helper: &str, registry: &str) -> Result<Option<Credentials>, AuthError> {
    let program = format!("docker-credential-{helper}");
    run_helper_program(helper, &program, registry)
}

/// [`run_helper`] with the program named (a path in tests).
fn run_helper_program(
    helper: &str,
    program: &str,
    registry: &str,
) -> Result<Option<Credentials>, AuthError> {
    let err = |detail: String| AuthError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        detail,
    };
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(registry.as_bytes())
            .map_err(|e| err(format!("writing to {program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for {program}: {e}")))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if text.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(err(format!("{program} exited with {}", out.status)));
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout)
        .map_err(|_| err(format!("{program} did not print the expected JSON")))?;
    if reply.username == "<token>" {
        // The helper protocol's marker for an identity (refresh) token.
        return Ok(Some(Credentials::IdentityToken(Secret::new(reply.secret))));
    }
    Ok(Some(Credentials::Basic {
        username: reply.username,
        password: Secret::new(reply.secret),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn debug_and_display_never_show_secrets() {
        let c = Credentials::Basic {
            username: "bot".into(),
            password: Secret::new("hunter2"),
        };
        let shown = format!(
            "{c:?} {:?} {}",
            Secret::new("hunter2"),
            Secret::new("hunter2")
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("bot"));
        let t = Credentials::Bearer(Secret::new("tok-123"));
        assert!(!format!("{t:?}").contains("tok-123"));
    }

    #[test]
    fn scrub_removes_raw_and_basic_header_forms() {
        let c = Credentials::Basic {
            username: "bot".into(),
            password: Secret::new("hunter2"),
        };
        let header = b64("bot:hunter2");
        let text = format!("server said: bad password hunter2 in Basic {header}");
        let clean = c.scrub(&text);
        assert!(
            !clean.contains("hunter2") && !clean.contains(&header),
            "{clean}"
        );
        assert!(clean.contains("<redacted>"));
    }

    #[test]
    fn docker_config_auth_field_is_decoded_for_the_matching_registry() {
        let json = format!(
            r#"{{"auths":{{"https://reg.example:5000/v1/":{{"auth":"{}"}},"other.example":{{"auth":"{}"}}}}}}"#,
            b64("alice:s3cret:with:colons"),
            b64("bob:pw")
        );
        let cfg = DockerConfig::parse(&json).unwrap();
        let c = cfg.credentials_for("reg.example:5000").unwrap();
        assert_eq!(
            c,
            Some(Credentials::Basic {
                username: "alice".into(),
                password: Secret::new("s3cret:with:colons")
            })
        );
        assert_eq!(
            cfg.credentials_for("reg.example").unwrap(),
            None,
            "port matters"
        );
        assert!(matches!(
            cfg.credentials_for("other.example").unwrap(),
            Some(Credentials::Basic { username, .. }) if username == "bob"
        ));
    }

    #[test]
    fn docker_hub_aliases_and_registry_tokens() {
        let json = r#"{"auths":{"https://index.docker.io/v1/":{"registrytoken":"rt"}}}"#;
        let cfg = DockerConfig::parse(json).unwrap();
        assert_eq!(
            cfg.credentials_for("docker.io").unwrap(),
            Some(Credentials::Bearer(Secret::new("rt")))
        );
    }

    #[test]
    fn malformed_auth_is_an_error_that_does_not_quote_the_value() {
        let json = r#"{"auths":{"r.example":{"auth":"!!notbase64-hunter2"}}}"#;
        let cfg = DockerConfig::parse(json).unwrap();
        let err = cfg.credentials_for("r.example").unwrap_err();
        assert!(
            err.contains("r.example") && !err.contains("hunter2"),
            "{err}"
        );
        let bad = DockerConfig::parse(r#"{"auths": {"x": {"auth": "hunter2"#).unwrap_err();
        assert!(!bad.contains("hunter2"), "{bad}");
    }

    #[test]
    fn explicit_credentials_win_and_must_be_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#,
                b64("cfg:pw")
            ),
        )
        .unwrap();
        let (c, src) = resolve(
            "r.example",
            Some("flag".into()),
            Some(Secret::new("x")),
            Some(&path),
        )
        .unwrap();
        assert_eq!(src, CredentialSource::Explicit);
        assert!(matches!(c, Credentials::Basic { username, .. } if username == "flag"));
        let (c, src) = resolve("r.example", None, None, Some(&path)).unwrap();
        assert_eq!(src, CredentialSource::DockerConfig(path.clone()));
        assert!(matches!(c, Credentials::Basic { username, .. } if username == "cfg"));
        let (c, src) = resolve("elsewhere.example", None, None, Some(&path)).unwrap();
        assert_eq!((c, src), (Credentials::Anonymous, CredentialSource::None));
        assert!(resolve("r.example", Some("u".into()), None, None).is_err());
        let missing = dir.path().join("nope.json");
        assert_eq!(
            resolve("r.example", None, None, Some(&missing)).unwrap().0,
            Credentials::Anonymous
        );
    }

    #[test]
    fn identity_and_registry_tokens_win_over_the_password_as_in_docker() {
        let json = format!(
            r#"{{"auths":{{"a.example":{{"auth":"{0}","identitytoken":"refresh-1"}},"b.example":{{"auth":"{0}","identitytoken":"refresh-2","registrytoken":"rt"}},"c.example":{{"auth":"{0}","identitytoken":""}}}}}}"#,
            b64("u:p")
        );
        let cfg = DockerConfig::parse(&json).unwrap();
        assert_eq!(
            cfg.credentials_for("a.example").unwrap(),
            Some(Credentials::IdentityToken(Secret::new("refresh-1")))
        );
        assert_eq!(
            cfg.credentials_for("b.example").unwrap(),
            Some(Credentials::Bearer(Secret::new("rt")))
        );
        assert!(matches!(
            cfg.credentials_for("c.example").unwrap(),
            Some(Credentials::Basic { username, .. }) if username == "u"
        ));
        let shown = format!("{:?}", cfg.credentials_for("a.example").unwrap());
        assert!(!shown.contains("refresh-1"), "{shown}");
    }

    #[test]
    fn a_kubernetes_dockerconfigjson_secret_is_read_and_named() {
        let inner = format!(
            r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#,
            b64("bot:pw")
        );
        let secret = |ty: &str, data: &str| {
            format!(
                r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"pull"}},"type":"{ty}",{data}}}"#
            )
        };
        let cfg = DockerConfig::parse(&secret(
            "kubernetes.io/dockerconfigjson",
            &format!(r#""data":{{".dockerconfigjson":"{}"}}"#, b64(&inner)),
        ))
        .unwrap();
        assert_eq!(cfg.secret_name.as_deref(), Some("pull"));
        assert!(matches!(
            cfg.credentials_for("r.example").unwrap(),
            Some(Credentials::Basic { username, .. }) if username == "bot"
        ));
        let from_string_data = DockerConfig::parse(&secret(
            "kubernetes.io/dockerconfigjson",
            &format!(
                r#""stringData":{{".dockerconfigjson":{}}}"#,
                serde_json::to_string(&inner).unwrap()
            ),
        ))
        .unwrap();
        assert!(from_string_data
            .credentials_for("r.example")
            .unwrap()
            .is_some());
        // As `kubectl create secret docker-registry --dry-run=client -o yaml` prints it.
        let yaml = format!(
            "apiVersion: v1\ndata:\n  .dockerconfigjson: {}\nkind: Secret\nmetadata:\n  creationTimestamp: null\n  name: regcred\ntype: kubernetes.io/dockerconfigjson\n",
            b64(&inner)
        );
        let cfg = DockerConfig::parse(&yaml).unwrap();
        assert_eq!(cfg.secret_name.as_deref(), Some("regcred"));
        assert!(cfg.credentials_for("r.example").unwrap().is_some());
        // stringData with the config as a block scalar, as people write it.
        let yaml = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: handmade\n  namespace: istio-system\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: |\n    {inner}\n"
        );
        let cfg = DockerConfig::parse(&yaml).unwrap();
        assert_eq!(cfg.secret_name.as_deref(), Some("handmade"));
        assert!(cfg.credentials_for("r.example").unwrap().is_some());
        assert_eq!(
            DockerConfig::parse("apiVersion: v1\nkind: ConfigMap\n").unwrap_err(),
            "YAML that is not a Kubernetes Secret; expected a Docker config.json or a Kubernetes dockerconfigjson Secret"
        );
        let broken = DockerConfig::parse("kind: Secret\n  data: [hunter2\n").unwrap_err();
        assert!(
            broken.starts_with("neither JSON nor YAML") && !broken.contains("hunter2"),
            "{broken}"
        );
        let opaque = DockerConfig::parse(&secret("Opaque", r#""data":{}"#)).unwrap_err();
        assert_eq!(
            opaque,
            r#"Secret "pull" has type "Opaque"; registry credentials need type "kubernetes.io/dockerconfigjson" (kubectl create secret docker-registry)"#
        );
        let missing =
            DockerConfig::parse(&secret("kubernetes.io/dockerconfigjson", r#""data":{}"#))
                .unwrap_err();
        assert!(
            missing.contains(r#"no data.".dockerconfigjson""#),
            "{missing}"
        );
        let bad = DockerConfig::parse(&secret(
            "kubernetes.io/dockerconfigjson",
            r#""data":{".dockerconfigjson":"hunter2!!"}"#,
        ))
        .unwrap_err();
        assert!(
            bad.contains("not valid base64") && !bad.contains("hunter2"),
            "{bad}"
        );
        // A type error in the wrapped config does not quote the value.
        let typed = DockerConfig::parse(&secret(
            "kubernetes.io/dockerconfigjson",
            &format!(
                r#""data":{{".dockerconfigjson":"{}"}}"#,
                b64(r#"{"auths":"hunter2"}"#)
            ),
        ))
        .unwrap_err();
        assert!(!typed.contains("hunter2"), "{typed}");
    }

    #[test]
    fn a_helper_answering_token_gives_an_identity_token_and_not_found_means_none() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("docker-credential-t");
        std::fs::write(
            &script,
            "#!/bin/sh\nread s\ncase \"$s\" in\n  tok.example) echo '{\"ServerURL\":\"tok.example\",\"Username\":\"<token>\",\"Secret\":\"refresh-9\"}' ;;\n  pw.example) echo '{\"ServerURL\":\"pw.example\",\"Username\":\"bot\",\"Secret\":\"pw\"}' ;;\n  broken.example) echo 'oops hunter2' >&2; exit 3 ;;\n  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let program = script.to_str().unwrap();
        assert_eq!(
            run_helper_program("t", program, "tok.example").unwrap(),
            Some(Credentials::IdentityToken(Secret::new("refresh-9")))
        );
        assert_eq!(
            run_helper_program("t", program, "pw.example").unwrap(),
            Some(Credentials::Basic {
                username: "bot".into(),
                password: Secret::new("pw")
            })
        );
        assert_eq!(
            run_helper_program("t", program, "other.example").unwrap(),
            None
        );
        let err = run_helper_program("t", program, "broken.example")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("credential helper docker-credential-t for broken.example:")
                && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn per_registry_cred_helper_wins_over_the_default_store() {
        let cfg = DockerConfig::parse(
            r#"{"credHelpers":{"gcr.example":"gcloud"},"credsStore":"desktop"}"#,
        )
        .unwrap();
        assert_eq!(cfg.helper_for("gcr.example").as_deref(), Some("gcloud"));
        assert_eq!(cfg.helper_for("other.example").as_deref(), Some("desktop"));
    }
}
