//! `tideway install --apply` and `tideway uninstall`, run as a user runs
//! them, against a real kube-apiserver (the kube tier's hub, 1.20.2).

mod kube_fixture;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube_fixture::KubeFleet;
use serde_json::Value;
use std::process::Command;

const IMAGE: &str = "registry.example.com/tideway/controller@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn tideway(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tideway"))
        .args(args)
        .output()
        .expect("running tideway");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_applies_and_uninstall_waits_for_the_controllers_cleanup_unless_forced() {
    let kube = KubeFleet::start(&[]).await;
    let kubeconfig = kube.dir.path().join("admin.yaml");
    std::fs::write(&kubeconfig, kube.hub.admin_kubeconfig_yaml()).unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let admin = kube.hub.admin().await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "tideway-system");

    for round in 0..2 {
        let (ok, stdout, stderr) = tideway(&[
            "install",
            "--image",
            IMAGE,
            "--apply",
            "--kubeconfig",
            kubeconfig,
        ]);
        assert!(ok, "round {round}: {stderr}");
        assert!(
            stdout.contains("applied Deployment tideway-system/tideway-controller"),
            "{stdout}"
        );
        assert!(
            stdout.contains("applied PodDisruptionBudget tideway-system/tideway-controller"),
            "{stdout}"
        );
    }
    let deployment = deployments
        .get("tideway-controller")
        .await
        .expect("the Deployment");
    let deployment = serde_json::to_value(&deployment).unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        IMAGE
    );

    // A policy the controller has not cleaned up yet.
    let namespace = "production";
    kube.hub.create_namespace(&admin, namespace).await;
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/examples/canary/policy.yaml");
    let mut policy: Value =
        tideway_crd_validate::yaml_documents(&std::fs::read_to_string(example).unwrap())
            .unwrap()
            .remove(0);
    policy["metadata"]["finalizers"] = serde_json::json!(["traffic.tideway.dev/cleanup"]);
    let name = policy["metadata"]["name"].as_str().unwrap().to_string();
    kube.hub.apply_as(&admin, "test", &policy).await;

    let (ok, _, stderr) = tideway(&["uninstall", "--kubeconfig", kubeconfig]);
    assert!(
        !ok,
        "uninstall must refuse while a policy needs the controller"
    );
    assert!(
        stderr.contains(&format!("{namespace}/{name}")) && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(
        deployments.get("tideway-controller").await.is_ok(),
        "nothing was removed"
    );

    let (ok, stdout, stderr) = tideway(&["uninstall", "--force", "--kubeconfig", kubeconfig]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "removed the finalizer of TrafficPolicy {namespace}/{name}"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("deleted Deployment tideway-system/tideway-controller"),
        "{stdout}"
    );
    match deployments.get("tideway-controller").await {
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        other => panic!("the Deployment is still there: {other:?}"),
    }
}
