//! `tideway crds`: the CustomResourceDefinitions as YAML.

pub fn run() -> anyhow::Result<()> {
    for crd in tideway_controller::api::crds() {
        print!("---\n{}", yaml_serde::to_string(&crd)?);
    }
    Ok(())
}
