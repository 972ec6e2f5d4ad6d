//! The auth + TLS tier: Distribution 2.8 with htpasswd (bcrypt) basic auth
//! over TLS with a test CA made by rcgen.

mod common;

use common::{wasm_module, Registry};
use std::time::Duration;
use tideway_oci::auth::{self, CredentialSource, Credentials, Secret};
use tideway_oci::image::{build, BuildOptions};
use tideway_oci::istio::Rules;
use tideway_oci::reference::ImageRef;
use tideway_oci::registry::{Registry as Client, RegistryError, RegistryOptions};
use tideway_oci::retry::RetryPolicy;

const USER: &str = "ci-bot";
const PASSWORD: &str = "s3cr3t-Pa55-do-not-print";

fn client(reg: &Registry, credentials: Credentials, with_ca: bool) -> Client {
    Client::new(RegistryOptions {
        credentials,
        ca_certs_pem: if with_ca {
            vec![reg.tls.as_ref().unwrap().ca_pem.clone()]
        } else {
            vec![]
        },
        retry: RetryPolicy {
            attempts: 2,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(50),
        },
        ..Default::default()
    })
    .unwrap()
}

fn basic(password: &str) -> Credentials {
    Credentials::Basic {
        username: USER.into(),
        password: Secret::new(password),
    }
}

#[tokio::test]
async fn push_and_pull_with_basic_auth_over_tls() {
    let reg = Registry::tls_basic_auth(USER, PASSWORD);
    let wasm = wasm_module("tls");
    let image = build(&wasm, &BuildOptions::default()).unwrap();
    let reference = ImageRef::parse(&format!("{}/secure/filter:v1", reg.addr)).unwrap();
    let c = client(&reg, basic(PASSWORD), true);
    let report = c.push(&image, &reference).await.unwrap();
    assert_eq!(report.manifest_digest, image.manifest_digest());
    let pulled = c.pull(&reference).await.unwrap();
    assert_eq!(
        pulled.istio_verdict("u", Rules::default()).unwrap().wasm,
        wasm
    );
}

#[tokio::test]
async fn wrong_password_is_unauthorized_naming_the_registry_without_leaking_it() {
    let reg = Registry::tls_basic_auth(USER, PASSWORD);
    let wrong = "wrong-Pa55-also-secret";
    let image = build(&wasm_module("wrong"), &BuildOptions::default()).unwrap();
    let reference = ImageRef::parse(&format!("{}/secure/filter:v1", reg.addr)).unwrap();
    let err = client(&reg, basic(wrong), true)
        .push(&image, &reference)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("unauthorized"), "{text}");
    assert!(text.contains(&reg.addr), "{text}");
    assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");

    let err = client(&reg, basic(wrong), true)
        .pull(&reference)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
}

#[tokio::test]
async fn anonymous_access_to_an_auth_registry_says_what_to_do() {
    let reg = Registry::tls_basic_auth(USER, PASSWORD);
    let reference = ImageRef::parse(&format!("{}/secure/filter:v1", reg.addr)).unwrap();
    let err = client(&reg, Credentials::Anonymous, true)
        .pull(&reference)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("unauthorized: registry"), "{text}");
    assert!(text.contains("no credentials were given"), "{text}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_error_not_a_retry_loop() {
    let reg = Registry::tls_basic_auth(USER, PASSWORD);
    let reference = ImageRef::parse(&format!("{}/secure/filter:v1", reg.addr)).unwrap();
    let err = client(&reg, basic(PASSWORD), false)
        .pull(&reference)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("--ca-file"), "{err}");
}

#[tokio::test]
async fn credentials_from_a_docker_config_file_work() {
    use base64::Engine as _;
    let reg = Registry::tls_basic_auth(USER, PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let auth_b64 = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        &config,
        format!(
            r#"{{"auths":{{"https://{}":{{"auth":"{auth_b64}"}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let (creds, source) = auth::resolve(&reg.addr, None, None, Some(&config)).unwrap();
    assert_eq!(source, CredentialSource::DockerConfig(config.clone()));
    let image = build(&wasm_module("docker-config"), &BuildOptions::default()).unwrap();
    let reference = ImageRef::parse(&format!("{}/cfg/filter:v1", reg.addr)).unwrap();
    client(&reg, creds, true)
        .push(&image, &reference)
        .await
        .unwrap();
}

/// A client that would wait a minute before a retry: a protocol mismatch
/// must end well before that (the caller's timeout), at the first attempt.
fn patient_client(plain_http: bool) -> Client {
    Client::new(RegistryOptions {
        plain_http,
        retry: RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(60),
        },
        ..Default::default()
    })
    .unwrap()
}

/// Fails the test if `f` takes as long as one retry's backoff.
async fn first_try<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("retried instead of failing at the first try")
}

#[tokio::test]
async fn tls_to_a_plain_http_registry_says_use_plain_http_at_the_first_try() {
    let reg = Registry::plain();
    let image = build(&wasm_module("mismatch"), &BuildOptions::default()).unwrap();
    let reference = ImageRef::parse(&format!("{}/tideway/filter:v1", reg.addr)).unwrap();
    let err = first_try(patient_client(false).push(&image, &reference))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{} speaks plain HTTP; use --plain-http", reg.addr)
    );
    let err = first_try(patient_client(false).pull(&reference))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::SchemeMismatch { .. }), "{err}");
}

#[tokio::test]
async fn plain_http_to_a_tls_registry_says_drop_plain_http_at_the_first_try() {
    let reg = Registry::tls_basic_auth(USER, PASSWORD);
    let image = build(&wasm_module("mismatch"), &BuildOptions::default()).unwrap();
    let reference = ImageRef::parse(&format!("{}/secure/filter:v1", reg.addr)).unwrap();
    let err = first_try(patient_client(true).push(&image, &reference))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{} speaks HTTPS; drop --plain-http", reg.addr)
    );
}
