//! `tideway install` and `tideway image build-controller`, run as a user
//! runs them: the printed objects are valid as an API server validates them
//! (built-in kinds through k8s-openapi, Tideway's CRDs from their own
//! output), pinned by digest, and the same as the kustomize directory.

use serde_json::Value;
use std::process::Command;
use tideway_crd_validate::{istio_and_karmada, yaml_documents};

const IMAGE: &str = "registry.example.com/tideway/controller@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn tideway(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tideway"))
        .args(args)
        .output()
        .expect("running tideway")
}

fn printed_objects(args: &[&str]) -> Vec<Value> {
    let out = tideway(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8_lossy(&out.stdout)).expect("YAML")
}

#[test]
fn install_prints_valid_objects_with_the_image_pinned() {
    let objects = printed_objects(&["install", "--image", IMAGE]);
    let mut catalog = istio_and_karmada().unwrap_or_else(|e| panic!("{e}"));
    let crds: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .collect();
    // The CRDs are what manifests/crds holds (validated there).
    let crd_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds");
    for crd in &crds {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        let file = crd_dir.join(format!("{name}.yaml"));
        let on_disk = yaml_documents(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(on_disk, [(*crd).clone()], "{}", file.display());
        catalog
            .load_crd(crd, "tideway install")
            .expect("a CRD the catalog loads");
    }
    for object in objects
        .iter()
        .filter(|o| o["kind"] != "CustomResourceDefinition")
    {
        if let Err(e) = catalog.validate(object) {
            panic!("{} {}: {e}", object["kind"], object["metadata"]["name"]);
        }
    }
    let images: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .map(|c| &c["image"])
        .collect();
    assert_eq!(images, [IMAGE]);
    // The same objects as the kustomize directory, but for the image.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/controller");
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let resources: Vec<String> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(str::to_string)
        .collect();
    let mut from_files = 0;
    for file in &resources {
        for mut object in yaml_documents(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
        {
            if object["kind"] == "Deployment" {
                object["spec"]["template"]["spec"]["containers"][0]["image"] = IMAGE.into();
            }
            assert!(
                objects.contains(&object),
                "{file}: {} is not what install prints",
                object["kind"]
            );
            from_files += 1;
        }
    }
    let crds = objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .count();
    assert_eq!(
        objects.len(),
        from_files + crds,
        "install prints only the CRDs and the kustomize files"
    );
}

#[test]
fn install_refuses_an_image_that_is_not_pinned() {
    let out = tideway(&[
        "install",
        "--image",
        "registry.example.com/tideway/controller:0.1.0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--image: got \"registry.example.com/tideway/controller:0.1.0\""),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing half-printed");
}

#[test]
fn install_member_prints_the_member_rbac() {
    let objects = printed_objects(&["install", "--member"]);
    let catalog = istio_and_karmada().unwrap_or_else(|e| panic!("{e}"));
    for object in &objects {
        catalog
            .validate(object)
            .unwrap_or_else(|e| panic!("{}: {e}", object["kind"]));
    }
    assert!(objects
        .iter()
        .any(|o| o["kind"] == "ServiceAccount" && o["metadata"]["name"] == "tideway-member"));
}

#[test]
fn build_controller_refuses_a_dynamically_linked_program() {
    // The test build of `tideway` links glibc dynamically; the image has no
    // libraries, so packaging it would make an image that cannot start.
    let out_dir = tempfile::tempdir().unwrap();
    let out = tideway(&[
        "image",
        "build-controller",
        "-o",
        out_dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dynamically linked"), "{stderr}");
}

#[test]
fn version_names_the_commit() {
    let out = tideway(&["--version"]);
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.starts_with(&format!("tideway {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
}
