//! `tideway check-config`: a filter configuration checked the way the
//! filter parses it.

use std::path::PathBuf;
use tideway_controller::{check_config, load};

pub const LONG_ABOUT: &str = "\
Check a filter configuration exactly as the filter parses it (the same types),
with every error at its full path (`services[0].destinations[1].weight`), the
value found and what was expected. Reads the plugin configuration as JSON or
YAML, or a WasmPlugin (its spec.pluginConfig; every WasmPlugin of a
multi-document file, e.g. `kubectl get wasmplugin -A -o yaml` items saved one per
document, or a file `tideway render` wrote). Exit status 1 on any error.";

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// A plugin configuration (JSON or YAML), or a file of WasmPlugin objects.
    pub path: PathBuf,
}

pub fn run(args: CheckConfigArgs) -> anyhow::Result<()> {
    let path = args.path;
    let text = load::read(&path)?;
    let checked = check_config::check(&text, &path.display().to_string())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for c in checked {
        let at = if c.origin.is_empty() {
            String::new()
        } else {
            format!("{}: ", c.origin)
        };
        println!("ok: {at}{} service(s)", c.config.services.len());
    }
    Ok(())
}
