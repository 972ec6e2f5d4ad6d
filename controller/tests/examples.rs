//! The checked-in outputs of `manifests/`: the example policies' rendered
//! objects and the CRDs must be exactly what the code renders today. A
//! change to the compiler, the API types or an example shows up here as a
//! diff to review; accept it with
//!
//! ```sh
//! TIDEWAY_BLESS=1 cargo test -p tideway-controller --test examples
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tideway_controller::render::RenderedFile;

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn bless() -> bool {
    std::env::var_os("TIDEWAY_BLESS").is_some_and(|v| v == "1")
}

/// Every file under `dir`, by path relative to it.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path
                    .strip_prefix(base)
                    .expect("under base")
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, std::fs::read_to_string(&path).expect("utf-8 file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Compare (or, blessing, replace) `dir` with `files`.
fn check_tree(dir: &Path, files: &[RenderedFile], what: &str) -> Vec<String> {
    let fresh: BTreeMap<String, String> = files
        .iter()
        .map(|f| (f.path.clone(), f.text.clone()))
        .collect();
    if bless() {
        let _ = std::fs::remove_dir_all(dir);
        tideway_controller::render::write(dir, files).expect("write");
        return Vec::new();
    }
    let on_disk = tree(dir);
    let mut problems = Vec::new();
    for (path, text) in &fresh {
        match on_disk.get(path) {
            None => problems.push(format!("{what}: {path} is rendered but not checked in")),
            Some(old) if old != text => {
                let line = old
                    .lines()
                    .zip(text.lines())
                    .position(|(a, b)| a != b)
                    .map_or(old.lines().count().min(text.lines().count()), |i| i);
                problems.push(format!(
                    "{what}: {path} differs from a fresh render (first at line {})",
                    line + 1
                ))
            }
            Some(_) => {}
        }
    }
    for path in on_disk.keys() {
        if !fresh.contains_key(path) {
            problems.push(format!(
                "{what}: {path} is checked in but no longer rendered"
            ));
        }
    }
    problems
}

#[test]
fn example_renders_match_checked_in_output() {
    let examples = manifests().join("examples");
    let fleet = std::fs::read_to_string(examples.join("fleet.yaml")).expect("fleet.yaml");
    let mut problems = Vec::new();
    let mut seen = 0;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&examples)
        .expect("manifests/examples")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("policy.yaml").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        seen += 1;
        let name = dir.file_name().expect("name").to_string_lossy().to_string();
        let policy = std::fs::read_to_string(dir.join("policy.yaml")).expect("policy");
        let mut files = tideway_controller::render_texts(&policy, &fleet, None, false)
            .unwrap_or_else(|e| panic!("example {name} does not render: {e}"));
        files.extend(
            tideway_controller::render_texts(&policy, &fleet, None, true)
                .unwrap_or_else(|e| panic!("example {name} (karmada) does not render: {e}")),
        );
        // Determinism: a second render is byte-identical.
        let again = tideway_controller::render_texts(&policy, &fleet, None, false).expect("again");
        assert_eq!(
            files[..again.len()],
            again[..],
            "{name}: two renders of the same input differ"
        );
        problems.extend(check_tree(&dir.join("rendered"), &files, &name));
    }
    assert_eq!(seen, 6, "the six seed examples are in manifests/examples");
    assert!(
        problems.is_empty(),
        "{}\n(review, then TIDEWAY_BLESS=1 cargo test -p tideway-controller --test examples)",
        problems.join("\n")
    );
}

#[test]
fn crds_match_checked_in_yaml() {
    let files: Vec<RenderedFile> = tideway_controller::api::crds()
        .into_iter()
        .map(|crd| RenderedFile {
            path: format!("{}.yaml", crd.metadata.name.clone().expect("crd name")),
            text: yaml_serde::to_string(&crd).expect("yaml"),
        })
        .collect();
    let problems = check_tree(&manifests().join("crds"), &files, "crds");
    assert!(
        problems.is_empty(),
        "{}\n(the API types changed: review, then TIDEWAY_BLESS=1 cargo test -p tideway-controller --test examples)",
        problems.join("\n")
    );
}
