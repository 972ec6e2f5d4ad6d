//! A registry token server for the token-auth tier, as distribution's token
//! spec (`docs/spec/auth/token.md`, `oauth.md`) describes one: HTTPS on
//! loopback; users with passwords (HTTP basic on `GET /token`); refresh
//! tokens, i.e. Docker's identity tokens (`POST /token`,
//! `grant_type=refresh_token`); grants per user (or everyone) on repository
//! prefixes, intersected with the requested scope as the spec says.
//!
//! Tokens are JWTs signed ES256 by a key whose self-signed certificate is the
//! registry's `rootcertbundle`, carried in the `x5c` header: Distribution 2.8
//! (`registry/auth/token/token.go`) verifies that chain against the bundle
//! (any key usage), takes the leaf's key, checks `iss`, `aud` (a string),
//! `exp`/`nbf` with 60 s leeway, and the `access` claim.

use super::{free_port, make_tls, TlsFiles};
use base64::Engine as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The registry's `auth.token.service`, the tokens' `aud`.
pub const SERVICE: &str = "tideway-test-registry";
/// The registry's `auth.token.issuer`, the tokens' `iss`.
pub const ISSUER: &str = "tideway-test-token-issuer";
/// Distribution's clock-skew leeway on `exp`.
const LEEWAY_SECS: i64 = 60;

/// Actions on repositories whose name starts with `prefix`, for `who`
/// (`None`: everyone, anonymous included).
#[derive(Clone, Debug)]
pub struct Grant {
    pub who: Option<String>,
    pub prefix: String,
    pub actions: Vec<String>,
}

impl Grant {
    pub fn user(who: &str, prefix: &str, actions: &[&str]) -> Self {
        Self {
            who: Some(who.into()),
            prefix: prefix.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }
    pub fn everyone(prefix: &str, actions: &[&str]) -> Self {
        Self {
            who: None,
            ..Self::user("", prefix, actions)
        }
    }
}

/// Who may get which token.
#[derive(Clone, Debug)]
pub struct Policy {
    /// (user, password).
    pub users: Vec<(String, String)>,
    /// (refresh token, user): Docker identity tokens.
    pub refresh_tokens: Vec<(String, String)>,
    pub grants: Vec<Grant>,
    /// How long the registry accepts a token (its `exp`, leeway included).
    pub valid_for: Duration,
    /// The `expires_in` the reply claims.
    pub expires_in: u64,
}

impl Policy {
    pub fn new(users: &[(&str, &str)], grants: Vec<Grant>) -> Self {
        Self {
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            refresh_tokens: Vec::new(),
            grants,
            valid_for: Duration::from_secs(300),
            expires_in: 300,
        }
    }
}

/// One token handed out.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The user, `None` for anonymous.
    pub who: Option<String>,
    /// `GET` (password/anonymous) or `POST` (refresh token).
    pub method: String,
    /// The scopes asked for.
    pub scopes: Vec<String>,
    /// `repository:name:actions` actually granted.
    pub granted: Vec<String>,
}

/// A running token server, stopped on drop.
pub struct TokenServer {
    /// TLS material (also used by the registry: one CA for both).
    pub tls: TlsFiles,
    /// The signing certificate, PEM (the registry's `rootcertbundle`).
    pub rootcertbundle: PathBuf,
    pub port: u16,
    issued: Arc<Mutex<Vec<Issued>>>,
    refusals: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

struct Signer {
    key: ring::signature::EcdsaKeyPair,
    x5c: String,
    policy: Policy,
    next_id: AtomicU64,
}

impl TokenServer {
    pub fn start(policy: Policy) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = make_tls(dir.path());
        // The signing key and its self-signed certificate.
        let signing_key = rcgen::KeyPair::generate().expect("signing key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tideway test token signer");
        let signing_cert = params.self_signed(&signing_key).expect("signing cert");
        let rootcertbundle = dir.path().join("token-signer.pem");
        std::fs::write(&rootcertbundle, signing_cert.pem()).expect("writing the bundle");
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signing_key.serialize_der(),
            &rng,
        )
        .expect("ring reads rcgen's PKCS#8 key");
        let signer = Arc::new(Signer {
            key,
            x5c: base64::engine::general_purpose::STANDARD.encode(signing_cert.der()),
            policy,
            next_id: AtomicU64::new(1),
        });
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls_config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![rustls::pki_types::CertificateDer::from(
                        tls.cert_der.clone(),
                    )],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(
                        rustls::pki_types::PrivatePkcs8KeyDer::from(tls.key_der.clone()),
                    ),
                )
                .expect("TLS server config"),
        );
        let (listener, port) = (0..20)
            .find_map(|_| {
                let port = free_port();
                TcpListener::bind(("127.0.0.1", port))
                    .ok()
                    .map(|l| (l, port))
            })
            .expect("a free port for the token server");
        listener.set_nonblocking(true).expect("nonblocking");
        let issued = Arc::new(Mutex::new(Vec::new()));
        let refusals = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (issued, refusals, stop) = (issued.clone(), refusals.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            let (signer, tls_config, issued, refusals) = (
                                signer.clone(),
                                tls_config.clone(),
                                issued.clone(),
                                refusals.clone(),
                            );
                            std::thread::spawn(move || {
                                serve(tcp, tls_config, &signer, &issued, &refusals)
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        TokenServer {
            tls,
            rootcertbundle,
            port,
            issued,
            refusals,
            stop,
            _dir: dir,
        }
    }

    /// The realm URL the registry's challenge names.
    pub fn realm(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.port)
    }

    /// Every token handed out so far.
    pub fn issued(&self) -> Vec<Issued> {
        self.issued.lock().unwrap().clone()
    }

    /// Stops answering (the port then refuses connections); files stay.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the token server did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many token requests were refused (bad password, unknown refresh token).
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    tcp: TcpStream,
    tls_config: Arc<rustls::ServerConfig>,
    signer: &Signer,
    issued: &Mutex<Vec<Issued>>,
    refusals: &AtomicU64,
) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(conn) = rustls::ServerConnection::new(tls_config) else {
        return;
    };
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let Some((head, body)) = read_request(&mut stream) else {
        return;
    };
    let (status, reply) = handle(&head, &body, signer, issued, refusals);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

fn read_request(stream: &mut impl Read) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn refuse(refusals: &AtomicU64, why: &str) -> (&'static str, String) {
    refusals.fetch_add(1, Ordering::Relaxed);
    (
        "401 Unauthorized",
        serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": why}]}).to_string(),
    )
}

fn handle(
    head: &str,
    body: &[u8],
    signer: &Signer,
    issued: &Mutex<Vec<Issued>>,
    refusals: &AtomicU64,
) -> (&'static str, String) {
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let Ok(url) = reqwest::Url::parse(&format!("https://token.invalid{target}")) else {
        return ("400 Bad Request", "{}".into());
    };
    if url.path() != "/token" {
        return ("404 Not Found", "{}".into());
    }
    let policy = &signer.policy;
    let params: Vec<(String, String)> = if method == "POST" {
        let form = String::from_utf8_lossy(body);
        reqwest::Url::parse(&format!("https://token.invalid/?{form}"))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default()
    } else {
        url.query_pairs().into_owned().collect()
    };
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if param("service").as_deref() != Some(SERVICE) {
        return (
            "400 Bad Request",
            serde_json::json!({"errors": [{"code": "DENIED", "message": "unknown service"}]})
                .to_string(),
        );
    }
    let check_password =
        |user: &str, password: &str| policy.users.iter().any(|(u, p)| u == user && p == password);
    let who: Option<String> = match method {
        "POST" => match param("grant_type").as_deref() {
            Some("refresh_token") => {
                let given = param("refresh_token").unwrap_or_default();
                match policy.refresh_tokens.iter().find(|(t, _)| *t == given) {
                    Some((_, user)) => Some(user.clone()),
                    None => return refuse(refusals, "invalid refresh token"),
                }
            }
            Some("password") => {
                let user = param("username").unwrap_or_default();
                if !check_password(&user, &param("password").unwrap_or_default()) {
                    return refuse(refusals, "invalid username or password");
                }
                Some(user)
            }
            _ => return ("400 Bad Request", "{}".into()),
        },
        _ => match header(head, "authorization") {
            None => None,
            Some(value) => {
                let decoded = value
                    .strip_prefix("Basic ")
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok());
                match decoded.as_deref().and_then(|d| d.split_once(':')) {
                    Some((u, p)) if check_password(u, p) => Some(u.to_string()),
                    _ => return refuse(refusals, "invalid username or password"),
                }
            }
        },
    };
    let scopes: Vec<String> = if method == "POST" {
        param("scope")
            .map(|s| s.split(' ').map(str::to_string).collect())
            .unwrap_or_default()
    } else {
        params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .collect()
    };
    let mut access = Vec::new();
    let mut granted = Vec::new();
    for scope in &scopes {
        let Some((kind, rest)) = scope.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        if kind != "repository" {
            continue;
        }
        let allowed: Vec<String> = actions
            .split(',')
            .filter(|a| {
                policy.grants.iter().any(|g| {
                    (g.who.is_none() || g.who == who)
                        && name.starts_with(&g.prefix)
                        && g.actions.iter().any(|x| x == a)
                })
            })
            .map(str::to_string)
            .collect();
        granted.push(format!("repository:{name}:{}", allowed.join(",")));
        access.push(serde_json::json!({"type": "repository", "name": name, "actions": allowed}));
    }
    let token = signer.jwt(who.as_deref(), access);
    issued.lock().unwrap().push(Issued {
        who: who.clone(),
        method: method.to_string(),
        scopes: scopes.clone(),
        granted,
    });
    let reply = if method == "POST" {
        serde_json::json!({"access_token": token, "expires_in": policy.expires_in, "scope": scopes.join(" ")})
    } else {
        serde_json::json!({"token": token, "access_token": token, "expires_in": policy.expires_in})
    };
    ("200 OK", reply.to_string())
}

impl Signer {
    fn jwt(&self, who: Option<&str>, access: Vec<serde_json::Value>) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs() as i64;
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": who.unwrap_or(""),
            "aud": SERVICE,
            "exp": now + self.policy.valid_for.as_secs() as i64 - LEEWAY_SECS,
            "nbf": now - 1,
            "iat": now,
            "jti": self.next_id.fetch_add(1, Ordering::Relaxed).to_string(),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let signature = self
            .key
            .sign(&rng, signing_input.as_bytes())
            .expect("ES256 signing");
        format!("{signing_input}.{}", b64(signature.as_ref()))
    }
}
