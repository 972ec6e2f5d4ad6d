//! The command line: one module per command, each holding its flags and
//! what it prints; the work is done by the library.

use clap::{Parser, Subcommand};

pub mod apply;
pub mod check_config;
pub mod crds;
pub mod image;
pub mod install;
pub mod render;
pub mod run;
pub mod status;
pub mod weights;

/// Tideway: traffic steering for multi-cluster Istio.
#[derive(Debug, Parser)]
#[command(name = "tideway", version = env!("TIDEWAY_VERSION_LINE"), about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    // OCI packaging of the filter; its help text lives on `ImageArgs`.
    Image(image::ImageArgs),
    /// Compile a TrafficPolicy and its Fleet into Istio resources, one folder per member cluster.
    #[command(long_about = render::LONG_ABOUT)]
    Render(render::RenderArgs),
    /// Check a filter configuration the way the filter parses it: JSON, YAML, or a whole WasmPlugin.
    #[command(long_about = check_config::LONG_ABOUT)]
    CheckConfig(check_config::CheckConfigArgs),
    /// Print the TrafficPolicy and Fleet CustomResourceDefinitions (YAML).
    Crds,
    /// Print what installs Tideway: the CRDs and the controller (its image pinned by digest), or a member's RBAC.
    #[command(long_about = install::LONG_ABOUT)]
    Install(install::InstallArgs),
    /// Remove what `tideway install` installed; refuses while policies still need the controller's cleanup.
    Uninstall(install::UninstallArgs),
    /// Render a TrafficPolicy and roll it out to the Fleet's member clusters, wave by wave.
    #[command(long_about = apply::LONG_ABOUT)]
    Apply(apply::ApplyArgs),
    /// Run the controller in the hub cluster: watch policies and fleets, roll out, report status.
    #[command(long_about = run::LONG_ABOUT)]
    Run(run::RunArgs),
    /// Check a policy across its fleet: members' APIs, Istio CRDs, objects, revision, drift, endpoints.
    #[command(long_about = status::LONG_ABOUT)]
    Status(status::StatusArgs),
    /// Serve the policies' run-time weights (GET /v1/weights, long-poll) and take drains and weight changes.
    #[command(long_about = weights::SERVE_LONG_ABOUT)]
    ServeWeights(weights::ServeArgs),
    /// Drain a member cluster (no new traffic) for every service or one, on a weights server; --undo to undrain.
    Drain(weights::DrainArgs),
    /// Change a destination's weight or cost on a weights server.
    #[command(subcommand)]
    Weight(weights::WeightCommand),
    /// Read what a weights server publishes.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
}

/// Runs every command whose exit status is only success or an error.
pub fn run_other(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Image(args) => image::run(args),
        Command::Render(args) => render::run(args),
        Command::CheckConfig(args) => check_config::run(args),
        Command::Crds => crds::run(),
        Command::Install(args) => install::run(args),
        Command::Uninstall(args) => install::uninstall(args),
        Command::Apply(args) => apply::run(args).map(|_| ()),
        Command::Run(args) => run::run(args),
        Command::Status(args) => status::run(args).map(|_| ()),
        Command::ServeWeights(args) => weights::serve(args),
        Command::Drain(args) => weights::drain(args),
        Command::Weight(command) => weights::weight(command),
        Command::Weights(command) => weights::weights(command),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scheduler directory without --ui is ignored, not an error: it
    /// usually comes from $TIDEWAY_UI_DIR, set for every command (CI sets
    /// it for the whole test suite).
    #[test]
    fn a_ui_dir_without_ui_is_not_an_error() {
        for args in [
            &[
                "tideway",
                "serve-weights",
                "--policy",
                "p.yaml",
                "--ui-dir",
                "/d",
            ][..],
            &[
                "tideway",
                "run",
                "--weights-listen",
                "127.0.0.1:0",
                "--ui-dir",
                "/d",
            ][..],
        ] {
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("{args:?}: {e}");
            }
        }
    }

    /// The Deployment in manifests/controller runs flags `tideway run`
    /// really has.
    #[test]
    fn the_deployments_args_parse() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/controller/deployment.yaml"
        );
        let text = std::fs::read_to_string(path).expect("deployment.yaml");
        let deployment: serde_json::Value = yaml_serde::from_str(&text).expect("yaml");
        let args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("string arg").to_string())
            .collect();
        assert_eq!(args[0], "run");
        let cli = Cli::try_parse_from(std::iter::once("tideway".to_string()).chain(args))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(cli.command, Command::Run(_)));
    }
}
