//! `tideway crds`: the CustomResourceDefinitions as YAML.

pub fn run() -> anyhow::Result<()> {
    for crd in tideway_controller::api::crds() {
        print!("---\n{}", serde_yaml::to_string(&crd)?);
    }
    Ok(())
}
