//! Push / pull / interop against a real Distribution 2.8 registry (no auth,
//! plain HTTP) and skopeo as an independent client.

mod common;

use common::{skopeo, wasm_module, Registry};
use std::time::{Duration, Instant};
use tideway_oci::fetched::IntegrityError;
use tideway_oci::image::{build, BuildOptions, ImageFormat};
use tideway_oci::istio::{Rules, Variant};
use tideway_oci::layout::Layout;
use tideway_oci::reference::ImageRef;
use tideway_oci::registry::{BlobStatus, Registry as Client, RegistryError, RegistryOptions};
use tideway_oci::retry::RetryPolicy;

fn plain_client() -> Client {
    Client::new(RegistryOptions {
        plain_http: true,
        retry: RetryPolicy {
            attempts: 2,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(100),
        },
        ..Default::default()
    })
    .unwrap()
}

fn r(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

#[tokio::test]
async fn push_skopeo_copy_and_pull_round_trip_is_byte_identical() {
    let reg = Registry::plain();
    let wasm = wasm_module("round-trip");
    let image = build(&wasm, &BuildOptions::default()).unwrap();
    let client = plain_client();

    let report = client
        .push(&image, &r(&format!("{}/tideway/filter:v1", reg.addr)))
        .await
        .unwrap();
    assert_eq!(report.manifest_digest, image.manifest_digest());
    assert!(report.blobs.iter().all(|(_, s)| *s == BlobStatus::Uploaded));
    assert!(
        !report.authenticated,
        "an open registry needs no pull secret"
    );
    assert_eq!(
        report.wasm_plugin_url(),
        format!(
            "oci://{}/tideway/filter@{}",
            reg.addr,
            image.manifest_digest()
        )
    );
    assert_eq!(report.wasm_plugin_sha256(), image.manifest_digest().hex());
    assert_ne!(
        report.wasm_plugin_sha256(),
        tideway_oci::Digest::of(&wasm).hex()
    );

    // skopeo: registry -> OCI layout, digests preserved.
    let out = tempfile::tempdir().unwrap();
    let layout_dir = out.path().join("layout");
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{}/tideway/filter:v1", reg.addr),
        &format!("oci:{}:v1", layout_dir.display()),
    ]);
    let from_skopeo = Layout::open(&layout_dir)
        .unwrap()
        .read_image(Some("v1"))
        .unwrap();
    assert_eq!(from_skopeo.manifest_digest, image.manifest_digest());
    assert_eq!(from_skopeo.manifest_bytes, image.manifest);

    // skopeo: OCI layout -> registry (another repository), digests preserved.
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout_dir.display()),
        &format!("docker://{}/copied/filter:v1", reg.addr),
    ]);
    let pulled = client
        .pull(&r(&format!("{}/copied/filter:v1", reg.addr)))
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, image.manifest_digest());
    let accepted = pulled.istio_verdict("oci://x", Rules::default()).unwrap();
    assert_eq!(accepted.variant, Variant::OciCompat);
    assert_eq!(accepted.wasm, wasm, "plugin.wasm must be byte-identical");

    // And by digest.
    let by_digest = client
        .pull(&r(&format!(
            "{}/copied/filter@{}",
            reg.addr,
            image.manifest_digest()
        )))
        .await
        .unwrap();
    assert_eq!(by_digest.layers, pulled.layers);
}

#[tokio::test]
async fn pull_reads_images_that_skopeo_pushed_including_a_docker_v2_conversion() {
    let reg = Registry::plain();
    let wasm = wasm_module("skopeo-pushed");
    let image = build(&wasm, &BuildOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    Layout::create(out.path())
        .unwrap()
        .write_image(&image, Some("v2"))
        .unwrap();
    let src = format!("oci:{}:v2", out.path().display());

    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &src,
        &format!("docker://{}/sk/oci:v2", reg.addr),
    ]);
    let client = plain_client();
    let pulled = client
        .pull(&r(&format!("{}/sk/oci:v2", reg.addr)))
        .await
        .unwrap();
    assert_eq!(
        pulled.istio_verdict("u", Rules::default()).unwrap().wasm,
        wasm
    );

    // skopeo converts to a Docker schema-2 image: other media types, other digests.
    skopeo(&[
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &src,
        &format!("docker://{}/sk/docker:v2", reg.addr),
    ]);
    let docker = client
        .pull(&r(&format!("{}/sk/docker:v2", reg.addr)))
        .await
        .unwrap();
    assert_ne!(docker.manifest_digest, image.manifest_digest());
    let accepted = docker.istio_verdict("u", Rules::default()).unwrap();
    assert_eq!(accepted.variant, Variant::DockerCompat);
    assert_eq!(accepted.wasm, wasm);
}

#[tokio::test]
async fn rerun_after_interrupted_push_only_uploads_missing_blobs() {
    let reg = Registry::plain();
    let image = build(&wasm_module("resume"), &BuildOptions::default()).unwrap();
    let reference = r(&format!("{}/resume/filter:v1", reg.addr));
    let client = plain_client();

    // "Interrupted" push: only the layer made it.
    let layer = &image.layers[0];
    let st = client
        .push_blob(&reference, &layer.descriptor, &layer.data)
        .await
        .unwrap();
    assert_eq!(st, BlobStatus::Uploaded);
    assert_eq!(
        reg.count_requests("PUT", "/v2/resume/filter/blobs/uploads/"),
        1,
        "{}",
        reg.log()
    );

    let report = client.push(&image, &reference).await.unwrap();
    let statuses: Vec<_> = report
        .blobs
        .iter()
        .map(|(d, s)| (d.digest.clone(), *s))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (layer.descriptor.digest.clone(), BlobStatus::AlreadyPresent),
            (image.config.descriptor.digest.clone(), BlobStatus::Uploaded),
        ]
    );
    assert_eq!(
        reg.count_requests("PUT", "/v2/resume/filter/blobs/uploads/"),
        2,
        "layer must not be re-sent"
    );
    assert_eq!(
        reg.count_requests("POST", "/v2/resume/filter/blobs/uploads/"),
        2
    );

    // A third run sends no blob at all.
    let again = client.push(&image, &reference).await.unwrap();
    assert!(again
        .blobs
        .iter()
        .all(|(_, s)| *s == BlobStatus::AlreadyPresent));
    assert_eq!(
        reg.count_requests("PUT", "/v2/resume/filter/blobs/uploads/"),
        2
    );
    assert_eq!(
        reg.count_requests("PUT", "/v2/resume/filter/manifests/v1"),
        2
    );
}

#[tokio::test]
async fn pull_refuses_a_declared_size_the_registry_did_not_check() {
    let reg = Registry::plain();
    let image = build(&wasm_module("size"), &BuildOptions::default()).unwrap();
    let reference = r(&format!("{}/size/filter:bad", reg.addr));
    let client = plain_client();
    for blob in image.blobs() {
        client
            .push_blob(&reference, &blob.descriptor, &blob.data)
            .await
            .unwrap();
    }
    // A manifest that lies about the layer size by one byte.
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
    let real = image.layers[0].data.len() as u64;
    manifest["layers"][0]["size"] = serde_json::json!(real - 1);
    let bytes = serde_json::to_vec(&manifest).unwrap();
    client
        .push_manifest(&reference, &bytes, tideway_oci::media_types::OCI_MANIFEST)
        .await
        .expect("Distribution 2.8 accepts a wrong declared size");
    let err = client.pull(&reference).await.unwrap_err();
    match &err {
        RegistryError::Integrity {
            source: IntegrityError::Size { expected, .. },
            ..
        } => assert_eq!(*expected, real - 1),
        other => panic!("expected a size mismatch, got {other}"),
    }
    assert!(err.to_string().contains("size mismatch"), "{err}");
}

#[tokio::test]
async fn pull_refuses_blob_content_that_does_not_match_its_digest() {
    let reg = Registry::plain();
    let image = build(&wasm_module("tamper"), &BuildOptions::default()).unwrap();
    let reference = r(&format!("{}/tamper/filter:v1", reg.addr));
    let client = plain_client();
    client.push(&image, &reference).await.unwrap();
    // Corrupt the stored layer behind the registry's back (same length).
    let path = reg.blob_data_path(image.layers[0].descriptor.digest.hex());
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::write(&path, data).unwrap();
    let err = client.pull(&reference).await.unwrap_err();
    assert!(
        matches!(
            &err,
            RegistryError::Integrity {
                source: IntegrityError::Digest { .. },
                ..
            }
        ),
        "expected a digest mismatch, got {err}"
    );
}

#[tokio::test]
async fn verify_rejects_the_cncf_artifact_with_istios_reason() {
    let reg = Registry::plain();
    let wasm = wasm_module("artifact");
    let opts = BuildOptions {
        format: ImageFormat::WasmArtifact,
        ..Default::default()
    };
    let image = build(&wasm, &opts).unwrap();
    let reference = r(&format!("{}/artifact/filter:v1", reg.addr));
    let client = plain_client();
    client
        .push(&image, &reference)
        .await
        .expect("registry takes custom config media types");
    let pulled = client.pull(&reference).await.unwrap();
    assert_eq!(pulled.layers[0], wasm, "the artifact itself round-trips");
    let rejection = pulled
        .istio_verdict("oci://x", Rules::default())
        .unwrap_err();
    assert!(
        rejection
            .istio_error
            .contains("invalid media type application/wasm (expect application/vnd.oci.image.layer.v1.tar+gzip)"),
        "{rejection}"
    );
    assert!(rejection.to_string().contains("39990"));
}

#[tokio::test]
async fn registry_down_is_retried_with_backoff_then_reported() {
    let port = common::free_port();
    let client = Client::new(RegistryOptions {
        plain_http: true,
        retry: RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        },
        ..Default::default()
    })
    .unwrap();
    let image = build(&wasm_module("down"), &BuildOptions::default()).unwrap();
    let started = Instant::now();
    let err = client
        .push(&image, &r(&format!("127.0.0.1:{port}/down/filter:v1")))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    match &err {
        RegistryError::Unavailable {
            registry, attempts, ..
        } => {
            assert_eq!(registry, &format!("127.0.0.1:{port}"));
            assert_eq!(*attempts, 3);
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("after 3 attempt(s)") && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
    // Two backoffs: 100 ms + 200 ms.
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
}

#[tokio::test]
async fn a_registry_that_comes_up_late_is_reached_by_a_retry() {
    let port = common::free_port();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        Registry::plain_on(port)
    });
    let client = Client::new(RegistryOptions {
        plain_http: true,
        retry: RetryPolicy {
            attempts: 8,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(2),
        },
        ..Default::default()
    })
    .unwrap();
    let image = build(&wasm_module("late"), &BuildOptions::default()).unwrap();
    let result = client
        .push(&image, &r(&format!("127.0.0.1:{port}/late/filter:v1")))
        .await;
    let reg = starter.join().unwrap();
    let report = result.unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log()));
    assert_eq!(report.manifest_digest, image.manifest_digest());
}

#[tokio::test]
async fn missing_tag_is_not_found_naming_the_reference() {
    let reg = Registry::plain();
    let err = plain_client()
        .pull(&r(&format!("{}/nothing/here:v9", reg.addr)))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("nothing/here:v9"), "{err}");
}
