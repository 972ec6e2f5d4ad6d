//! The registry token flow: the `WWW-Authenticate: Bearer realm=…,service=…`
//! challenge, and getting a token for a repository scope from the realm (the
//! token server), as Docker Hub, Harbor, GitHub/GitLab, Quay and Distribution
//! with `auth: token` use it (distribution's `docs/spec/auth/token.md`, and
//! `oauth.md` for the refresh-token grant Docker's `identitytoken` needs).
//!
//! Hand-written rather than left to `oci-client` (0.18), whose own flow, run
//! against Distribution 2.8 with `auth: token`, (1) drops the token server's
//! answer: a wrong password ends as a bare `UnauthorizedError { url }`, the
//! token server's "invalid username or password" lost; (2) never retries
//! with a new token when the registry refuses one: it re-fetches only when
//! the token's own `exp` claim says so, ignores `expires_in`, and keeps an
//! opaque token (GHCR) for a fixed 60 s; (3) reports a missing action as a
//! 401 listing every action of the request; (4) has no refresh-token grant
//! (a `TODO` in its `_auth`). Here a token is fetched with the user's
//! credentials, kept for the `expires_in` the token server gave, and handed
//! to `oci-client` as a ready bearer token ([`crate::registry`] renews it
//! once when the registry refuses it, and names the missing action).
//!
//! Tokens are opaque to clients; [`granted_actions`] only peeks into a JWT's
//! `access` claim to EXPLAIN a refusal ("the token server granted: pull").

use crate::auth::{Credentials, Secret};
use base64::Engine as _;
use serde::Deserialize;
use std::time::{Duration, Instant};

/// The lifetime a token server implies when it omits `expires_in` (token spec).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A `Bearer` challenge from a registry's `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The token server's URL.
    pub realm: String,
    /// The `service` to name in the token request (the registry's identity).
    pub service: Option<String>,
    /// The scope the registry asked for, when it said.
    pub scope: Option<String>,
    /// `invalid_token`, `insufficient_scope`, … when the registry refused a token.
    pub error: Option<String>,
}

/// Parses the `Bearer` challenge out of a `WWW-Authenticate` value (which may
/// list several challenges). `None` when there is no Bearer challenge with a realm.
pub fn parse_bearer_challenge(header: &str) -> Option<Challenge> {
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut in_bearer = false;
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        p.skip_separators();
        let Some(word) = p.token() else { break };
        p.skip_spaces();
        if p.peek() == Some(b'=') {
            p.i += 1;
            p.skip_spaces();
            let value = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                p.token().unwrap_or_default()
            };
            if in_bearer {
                params.push((word.to_ascii_lowercase(), value));
            }
        } else {
            // A new challenge (auth scheme). Stop after the Bearer one.
            if in_bearer {
                break;
            }
            in_bearer = word.eq_ignore_ascii_case("bearer");
        }
    }
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    Some(Challenge {
        realm: get("realm").filter(|r| !r.is_empty())?,
        service: get("service"),
        scope: get("scope"),
        error: get("error"),
    })
}

/// Whether a `WWW-Authenticate` value asks for HTTP basic auth.
pub fn is_basic_challenge(header: &str) -> bool {
    header
        .trim_start()
        .get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("basic"))
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn skip_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    /// An RFC 7230 token (also accepts the base64 `=`-free chars of token68).
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c) {
                self.i += 1;
            } else {
                break;
            }
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn quoted(&mut self) -> String {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                c => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A registry token and how long it may be used.
#[derive(Clone)]
pub struct Token {
    /// The bearer token.
    pub value: Secret,
    obtained: Instant,
    lifetime: Duration,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl Token {
    /// A token obtained now that the server says lasts `lifetime`.
    pub fn new(value: Secret, lifetime: Duration) -> Self {
        Self {
            value,
            obtained: Instant::now(),
            lifetime,
        }
    }

    /// Still worth sending: inside the first 90% of its stated lifetime, so a
    /// request does not start with a token about to lapse.
    pub fn is_fresh(&self) -> bool {
        self.obtained.elapsed() < self.lifetime.mul_f64(0.9)
    }
}

/// Why no token was obtained. Texts never hold a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The token server refused (wrong credentials, unknown user…).
    Refused {
        /// The realm URL (without query).
        realm: String,
        /// HTTP status.
        status: u16,
        /// Its answer (scrubbed, shortened).
        detail: String,
    },
    /// The token server could not be reached, or failed with 5xx/429.
    Unavailable {
        /// The realm URL.
        realm: String,
        /// What happened.
        detail: String,
    },
    /// The token server's reply is not a token.
    BadReply {
        /// The realm URL.
        realm: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Credentials would go to a plain-HTTP realm of an HTTPS registry.
    InsecureRealm {
        /// The realm URL.
        realm: String,
    },
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Refused {
                realm,
                status,
                detail,
            } => write!(f, "the token server {realm} refused the request ({status}): {detail}"),
            TokenError::Unavailable { realm, detail } => {
                write!(f, "the token server {realm} is unavailable: {detail}")
            }
            TokenError::BadReply { realm, detail } => {
                write!(f, "the token server {realm} sent no usable token: {detail}")
            }
            TokenError::InsecureRealm { realm } => write!(
                f,
                "refusing to send credentials to the token server {realm} over plain HTTP for a registry reached over HTTPS"
            ),
        }
    }
}

#[derive(Deserialize)]
struct TokenReply {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// `repository:<name>:<actions>` — the scope of a token for one repository.
pub fn repository_scope(repository: &str, actions: &[&str]) -> String {
    format!("repository:{repository}:{}", actions.join(","))
}

/// The client id sent with the refresh-token grant (required by the spec).
const CLIENT_ID: &str = "tideway";

/// Gets a token for `scope` from the challenge's realm with `credentials`:
/// basic auth for a username/password (GET), the OAuth2 refresh-token grant
/// for an identity token (POST), nothing for anonymous (GET).
/// `registry_over_https` forbids sending credentials to an `http://` realm
/// (unless it is on loopback), which Docker would do.
pub async fn fetch(
    http: &reqwest::Client,
    challenge: &Challenge,
    scope: &str,
    credentials: &Credentials,
    registry_over_https: bool,
) -> Result<Token, TokenError> {
    let realm = challenge.realm.clone();
    let url = reqwest::Url::parse(&realm).map_err(|e| TokenError::BadReply {
        realm: realm.clone(),
        detail: format!("the registry's realm is not a URL: {e}"),
    })?;
    if registry_over_https
        && url.scheme() != "https"
        && !is_loopback(&url)
        && !matches!(credentials, Credentials::Anonymous)
    {
        return Err(TokenError::InsecureRealm { realm });
    }
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = &challenge.service {
        query.push(("service", s));
    }
    query.push(("scope", scope));
    let request = match credentials {
        Credentials::Anonymous => http.get(url).query(&query),
        Credentials::Basic { username, password } => {
            query.push(("account", username));
            http.get(url)
                .query(&query)
                .basic_auth(username, Some(password.expose()))
        }
        Credentials::IdentityToken(refresh) => {
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.expose()),
                ("client_id", CLIENT_ID),
                ("scope", scope),
            ];
            if let Some(s) = &challenge.service {
                form.push(("service", s));
            }
            http.post(url).form(&form)
        }
        // A ready registry token needs no exchange (the caller uses it as is).
        Credentials::Bearer(token) => {
            return Ok(Token::new(
                token.clone(),
                Duration::from_secs(10 * 365 * 24 * 3600),
            ))
        }
    };
    let response = request.send().await.map_err(|e| TokenError::Unavailable {
        realm: realm.clone(),
        detail: credentials.scrub(&crate::error_chain(&e)),
    })?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let detail = shorten(&credentials.scrub(body.trim()));
    if status.is_server_error() || status.as_u16() == 429 {
        return Err(TokenError::Unavailable {
            realm,
            detail: format!("{status}: {detail}"),
        });
    }
    if !status.is_success() {
        return Err(TokenError::Refused {
            realm,
            status: status.as_u16(),
            detail,
        });
    }
    let reply: TokenReply = serde_json::from_str(&body).map_err(|_| TokenError::BadReply {
        realm: realm.clone(),
        detail: "the reply is not the token JSON ({\"token\": …} or {\"access_token\": …})".into(),
    })?;
    let value = reply
        .token
        .filter(|t| !t.is_empty())
        .or(reply.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| TokenError::BadReply {
            realm: realm.clone(),
            detail: "the reply has neither `token` nor `access_token`".into(),
        })?;
    let lifetime = match reply.expires_in {
        Some(s) if s > 0 => Duration::from_secs(s),
        _ => DEFAULT_TOKEN_LIFETIME,
    };
    Ok(Token::new(Secret::new(value), lifetime))
}

/// A realm on this machine: plain HTTP there exposes nothing on the network.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn shorten(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    access: Vec<AccessEntry>,
}

#[derive(Deserialize)]
struct AccessEntry {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

/// The actions a JWT registry token (Distribution, Harbor…) grants on
/// `repository`, read from its unverified `access` claim — for explaining a
/// refusal only. `None` when the token is not such a JWT.
pub fn granted_actions(token: &str, repository: &str) -> Option<Vec<String>> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Claims = serde_json::from_slice(&json).ok()?;
    let mut actions: Vec<String> = claims
        .access
        .into_iter()
        .filter(|a| a.kind == "repository" && (a.name == repository || a.name == "*"))
        .flat_map(|a| a.actions)
        .collect();
    if actions.iter().any(|a| a == "*") {
        actions = vec!["pull".into(), "push".into(), "delete".into()];
    }
    actions.sort();
    actions.dedup();
    Some(actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_challenges_parse_with_quoted_commas() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/filter:pull,push",error="insufficient_scope""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        assert_eq!(c.scope.as_deref(), Some("repository:team/filter:pull,push"));
        assert_eq!(c.error.as_deref(), Some("insufficient_scope"));
    }

    #[test]
    fn the_bearer_challenge_is_found_among_several_and_basic_is_recognised() {
        let h = r#"Basic realm="x", Bearer realm="https://a/t", service=reg"#;
        let c = parse_bearer_challenge(h).unwrap();
        assert_eq!(
            (c.realm.as_str(), c.service.as_deref()),
            ("https://a/t", Some("reg"))
        );
        assert!(parse_bearer_challenge(r#"Basic realm="Registry Realm""#).is_none());
        assert!(is_basic_challenge(r#"Basic realm="Registry Realm""#));
        assert!(!is_basic_challenge(h.trim_start_matches("Basic")));
        assert!(parse_bearer_challenge(r#"Bearer service="no-realm""#).is_none());
        let escaped = parse_bearer_challenge(r#"bearer realm="https://a/t?x=\"y\"""#).unwrap();
        assert_eq!(escaped.realm, r#"https://a/t?x="y""#);
    }

    fn jwt(claims: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b(r#"{"alg":"ES256"}"#), b(claims))
    }

    #[test]
    fn granted_actions_reads_the_access_claim_for_the_repository() {
        let t = jwt(
            r#"{"access":[{"type":"repository","name":"team/filter","actions":["pull"]},{"type":"repository","name":"other","actions":["push"]}]}"#,
        );
        assert_eq!(
            granted_actions(&t, "team/filter"),
            Some(vec!["pull".into()])
        );
        assert_eq!(granted_actions(&t, "nope"), Some(vec![]));
        assert_eq!(granted_actions(&jwt(r#"{"sub":"x"}"#), "a"), Some(vec![]));
        assert_eq!(granted_actions("opaque-ghs_token", "a"), None);
        assert_eq!(granted_actions("a.!!!.c", "a"), None);
    }

    #[tokio::test]
    async fn credentials_never_go_to_a_plain_http_realm_off_this_machine() {
        let http = reqwest::Client::new();
        let creds = Credentials::Basic {
            username: "u".into(),
            password: Secret::new("p"),
        };
        let challenge = |realm: &str| Challenge {
            realm: realm.into(),
            service: None,
            scope: None,
            error: None,
        };
        let err = fetch(
            &http,
            &challenge("http://auth.example/token"),
            "repository:a:pull",
            &creds,
            true,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            TokenError::InsecureRealm {
                realm: "http://auth.example/token".into()
            }
        );
        assert!(is_loopback(
            &reqwest::Url::parse("http://127.0.0.1:1/t").unwrap()
        ));
        assert!(is_loopback(
            &reqwest::Url::parse("http://[::1]:1/t").unwrap()
        ));
        assert!(is_loopback(
            &reqwest::Url::parse("http://localhost/t").unwrap()
        ));
        assert!(!is_loopback(
            &reqwest::Url::parse("http://10.0.0.1/t").unwrap()
        ));
    }

    #[test]
    fn freshness_uses_ninety_percent_of_the_lifetime() {
        let t = Token::new(Secret::new("t"), Duration::from_secs(60));
        assert!(t.is_fresh());
        let old = Token {
            obtained: Instant::now() - Duration::from_secs(55),
            ..t.clone()
        };
        assert!(!old.is_fresh());
        assert!(!format!("{t:?}").contains("\"t\""));
    }
}
