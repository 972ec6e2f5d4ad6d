//! The token-auth tier: Distribution 2.8 with `auth: token` over TLS, and a
//! token server of the test's own (common/token_server.rs) issuing ES256 JWTs
//! the registry verifies through their `x5c` chain. The flow Docker Hub,
//! Harbor, GHCR, GitLab and Quay use.

mod common;

use common::token_server::{Grant, Policy, TokenServer};
use common::{skopeo, wasm_module, Registry};
use std::time::Duration;
use tideway_oci::auth::{self, CredentialSource, Credentials, Secret};
use tideway_oci::image::{build, BuildOptions};
use tideway_oci::istio::Rules;
use tideway_oci::layout::Layout;
use tideway_oci::reference::ImageRef;
use tideway_oci::registry::{Registry as Client, RegistryError, RegistryOptions};
use tideway_oci::retry::RetryPolicy;

const WRITER: &str = "writer";
const WRITER_PASSWORD: &str = "wr1ter-Pa55-never-printed";
const READER: &str = "reader";
const READER_PASSWORD: &str = "r3ader-Pa55-never-printed";
const REFRESH_TOKEN: &str = "refresh-7f3a9c-never-printed";

/// writer: pull+push on team/* and public/*; reader: pull on team/*;
/// everyone (anonymous too): pull on public/*.
fn policy() -> Policy {
    let mut p = Policy::new(
        &[(WRITER, WRITER_PASSWORD), (READER, READER_PASSWORD)],
        vec![
            Grant::user(WRITER, "team/", &["pull", "push"]),
            Grant::user(WRITER, "public/", &["pull", "push"]),
            Grant::user(READER, "team/", &["pull"]),
            Grant::everyone("public/", &["pull"]),
        ],
    );
    p.refresh_tokens
        .push((REFRESH_TOKEN.to_string(), WRITER.to_string()));
    p
}

fn client(server: &TokenServer, credentials: Credentials) -> Client {
    Client::new(RegistryOptions {
        credentials,
        ca_certs_pem: vec![server.tls.ca_pem.clone()],
        retry: RetryPolicy {
            attempts: 2,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(50),
        },
        ..Default::default()
    })
    .unwrap()
}

fn user(name: &str, password: &str) -> Credentials {
    Credentials::Basic {
        username: name.into(),
        password: Secret::new(password),
    }
}

fn reference(reg: &Registry, path: &str) -> ImageRef {
    ImageRef::parse(&format!("{}/{path}", reg.addr)).unwrap()
}

#[tokio::test]
async fn push_pull_and_skopeo_with_a_token_from_the_token_server() {
    let server = TokenServer::start(policy());
    let reg = Registry::token_auth(&server);
    let wasm = wasm_module("token");
    let image = build(&wasm, &BuildOptions::default()).unwrap();
    let target = reference(&reg, "team/filter:v1");
    let c = client(&server, user(WRITER, WRITER_PASSWORD));
    let report = c.push(&image, &target).await.unwrap();
    assert_eq!(report.manifest_digest, image.manifest_digest());
    assert!(report.authenticated);
    let pulled = c.pull(&target).await.unwrap();
    assert_eq!(
        pulled.istio_verdict("u", Rules::default()).unwrap().wasm,
        wasm
    );
    // The registry really required tokens: one came from a password
    // exchange for pull,push, and served the pull too.
    let issued = server.issued();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0].granted, ["repository:team/filter:pull,push"]);
    assert!(issued.iter().all(|i| i.who.as_deref() == Some(WRITER)));
    // The registry logged that it sent the Bearer challenge, and our
    // requests carried tokens (no anonymous access got through).
    assert!(reg.log().contains("authorization token required"));

    // skopeo, an independent client, pulls what we pushed with the same credentials.
    let out = tempfile::tempdir().unwrap();
    let layout_dir = out.path().join("layout");
    let tls = server.tls.ca_dir.display().to_string();
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-cert-dir",
        &tls,
        "--src-creds",
        &format!("{WRITER}:{WRITER_PASSWORD}"),
        &format!("docker://{target}"),
        &format!("oci:{}:v1", layout_dir.display()),
    ]);
    let from_skopeo = Layout::open(&layout_dir)
        .unwrap()
        .read_image(Some("v1"))
        .unwrap();
    assert_eq!(from_skopeo.manifest_digest, image.manifest_digest());
}

#[tokio::test]
async fn a_token_that_expires_mid_push_is_renewed() {
    // Tokens the registry accepts for 4-5 s, while the token server claims
    // 300 s (as with clock skew or an early revocation): only a client that
    // renews on refusal gets through.
    let mut p = policy();
    p.valid_for = Duration::from_secs(5);
    p.expires_in = 300;
    let server = TokenServer::start(p);
    let reg = Registry::token_auth(&server);
    let image = build(&wasm_module("expiry"), &BuildOptions::default()).unwrap();
    let target = reference(&reg, "team/filter:v1");
    let c = client(&server, user(WRITER, WRITER_PASSWORD));
    for blob in image.blobs() {
        c.push_blob(&target, &blob.descriptor, &blob.data)
            .await
            .unwrap();
    }
    let before = server.issued().len();
    assert_eq!(before, 1, "one token for the blobs: {:?}", server.issued());
    // The push goes on after the token lapsed at the registry.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let digest = c
        .push_manifest(&target, &image.manifest, &image.manifest_media_type)
        .await
        .unwrap();
    assert_eq!(digest, image.manifest_digest());
    assert!(
        server.issued().len() > before,
        "a new token was fetched: {:?}",
        server.issued()
    );
    assert!(
        reg.log().contains("invalid_token") || reg.log().contains("token not to be used after"),
        "the registry refused the stale token first"
    );
}

#[tokio::test]
async fn pushing_without_push_access_names_the_repository_and_the_action() {
    let server = TokenServer::start(policy());
    let reg = Registry::token_auth(&server);
    let image = build(&wasm_module("denied"), &BuildOptions::default()).unwrap();
    let target = reference(&reg, "team/filter:v1");
    let err = client(&server, user(READER, READER_PASSWORD))
        .push(&image, &target)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Denied(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "denied: user \"reader\" lacks push access to repository team/filter on registry {} (the token server granted: pull)",
            reg.addr
        )
    );
    let text = format!("{err} {err:?}");
    assert!(!text.contains(READER_PASSWORD), "{text}");
}

#[tokio::test]
async fn anonymous_pull_of_a_public_repository_works_and_of_a_private_one_is_denied() {
    let server = TokenServer::start(policy());
    let reg = Registry::token_auth(&server);
    let wasm = wasm_module("public");
    let image = build(&wasm, &BuildOptions::default()).unwrap();
    let public = reference(&reg, "public/filter:v1");
    let private = reference(&reg, "team/filter:v1");
    let writer = client(&server, user(WRITER, WRITER_PASSWORD));
    writer.push(&image, &public).await.unwrap();
    writer.push(&image, &private).await.unwrap();

    let anonymous = client(&server, Credentials::Anonymous);
    let pulled = anonymous.pull(&public).await.unwrap();
    assert_eq!(
        pulled.istio_verdict("u", Rules::default()).unwrap().wasm,
        wasm
    );
    assert!(server
        .issued()
        .iter()
        .any(|i| i.who.is_none() && i.granted == ["repository:public/filter:pull"]));

    let err = anonymous.pull(&private).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "denied: anonymous lacks pull access to repository team/filter on registry {} (the token server granted: nothing); no credentials were given (use --username with --password-stdin, TIDEWAY_REGISTRY_USERNAME/TIDEWAY_REGISTRY_PASSWORD, docker login, or --docker-config)",
            reg.addr
        )
    );
}

#[tokio::test]
async fn a_wrong_password_is_reported_from_the_token_server_without_the_password() {
    let server = TokenServer::start(policy());
    let reg = Registry::token_auth(&server);
    let target = reference(&reg, "team/filter:v1");
    let wrong = "wrong-Pa55-also-never-printed";
    let err = client(&server, user(WRITER, wrong))
        .pull(&target)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "unauthorized: registry {} refused access to team/filter as user \"writer\": the token server {} refused the request (401)",
            reg.addr,
            server.realm()
        )),
        "{text}"
    );
    assert!(text.contains("invalid username or password"), "{text}");
    assert!(!format!("{text} {err:?}").contains(wrong));
    assert_eq!(server.refusals(), 1, "a refusal is not retried");
}

#[tokio::test]
async fn a_docker_identity_token_is_exchanged_with_the_refresh_token_grant() {
    let server = TokenServer::start(policy());
    let reg = Registry::token_auth(&server);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"","identitytoken":"{REFRESH_TOKEN}"}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let (creds, source) = auth::resolve(&reg.addr, None, None, Some(&config)).unwrap();
    assert_eq!(source, CredentialSource::DockerConfig(config.clone()));
    assert!(matches!(creds, Credentials::IdentityToken(_)));
    let image = build(&wasm_module("identity"), &BuildOptions::default()).unwrap();
    let target = reference(&reg, "team/filter:v1");
    client(&server, creds).push(&image, &target).await.unwrap();
    let issued = server.issued();
    assert!(
        issued
            .iter()
            .all(|i| i.method == "POST" && i.who.as_deref() == Some(WRITER)),
        "{issued:?}"
    );

    // An unknown identity token is refused by the token server, without
    // quoting the token.
    let bad = Credentials::IdentityToken(Secret::new("revoked-refresh-token-secret"));
    let err = client(&server, bad).pull(&target).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("invalid refresh token"), "{text}");
    assert!(!text.contains("revoked-refresh-token-secret"), "{text}");
}

#[tokio::test]
async fn a_kubernetes_pull_secret_serves_the_push() {
    use base64::Engine as _;
    let server = TokenServer::start(policy());
    let reg = Registry::token_auth(&server);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let docker_config = format!(
        r#"{{"auths":{{"{}":{{"username":"{WRITER}","password":"{WRITER_PASSWORD}","auth":"{}"}}}}}}"#,
        reg.addr,
        b64(&format!("{WRITER}:{WRITER_PASSWORD}"))
    );
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pull-secret.json");
    std::fs::write(
        &secret,
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "tideway-pull", "namespace": "istio-system"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": b64(&docker_config)}
        })
        .to_string(),
    )
    .unwrap();
    let (creds, source) = auth::resolve(&reg.addr, None, None, Some(&secret)).unwrap();
    assert_eq!(
        source,
        CredentialSource::KubernetesSecret {
            path: secret.clone(),
            name: "tideway-pull".into()
        }
    );
    let image = build(&wasm_module("secret"), &BuildOptions::default()).unwrap();
    client(&server, creds)
        .push(&image, &reference(&reg, "team/filter:v1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_token_server_that_is_down_is_retried_then_named() {
    let server = TokenServer::start(policy());
    let reg = Registry::token_auth(&server);
    server.stop();
    let target = reference(&reg, "team/filter:v1");
    let err = client(&server, user(WRITER, WRITER_PASSWORD))
        .pull(&target)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unavailable { attempts: 2, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "registry {} is unavailable: manifest fetch failed after 2 attempt(s): the token server {} is unavailable:",
            reg.addr,
            server.realm()
        )),
        "{text}"
    );
    assert!(!text.contains(WRITER_PASSWORD), "{text}");
}
