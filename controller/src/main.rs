//! `tideway`: the command-line face of the controller.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tideway_controller::{check_config, load, render};

mod apply_cmd;
mod image_cmd;
mod run_cmd;
mod status_cmd;
mod weights_cmd;

/// Tideway: traffic steering for multi-cluster Istio.
#[derive(Debug, Parser)]
#[command(name = "tideway", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    // OCI packaging of the filter; its help text lives on `ImageArgs`.
    Image(image_cmd::ImageArgs),
    /// Compile a TrafficPolicy and its Fleet into Istio resources, one folder per member cluster.
    #[command(long_about = RENDER_LONG_ABOUT)]
    Render(RenderArgs),
    /// Check a filter configuration the way the filter parses it: JSON, YAML, or a whole WasmPlugin.
    #[command(long_about = CHECK_LONG_ABOUT)]
    CheckConfig {
        /// A plugin configuration (JSON or YAML), or a file of WasmPlugin objects.
        path: PathBuf,
    },
    /// Print the TrafficPolicy and Fleet CustomResourceDefinitions (YAML).
    Crds,
    /// Render a TrafficPolicy and roll it out to the Fleet's member clusters, wave by wave.
    #[command(long_about = apply_cmd::LONG_ABOUT)]
    Apply(apply_cmd::ApplyArgs),
    /// Run the controller in the hub cluster: watch policies and fleets, roll out, report status.
    #[command(long_about = run_cmd::LONG_ABOUT)]
    Run(run_cmd::RunArgs),
    /// Check a policy across its fleet: members' APIs, Istio CRDs, objects, revision, drift, endpoints.
    #[command(long_about = status_cmd::LONG_ABOUT)]
    Status(status_cmd::StatusArgs),
    /// Serve the policies' run-time weights (GET /v1/weights, long-poll) and take drains and weight changes.
    #[command(long_about = weights_cmd::SERVE_LONG_ABOUT)]
    ServeWeights(weights_cmd::ServeArgs),
    /// Drain a member cluster (no new traffic) for every service or one, on a weights server; --undo to undrain.
    Drain(weights_cmd::DrainArgs),
    /// Change a destination's weight or cost on a weights server.
    #[command(subcommand)]
    Weight(weights_cmd::WeightCommand),
    /// Read what a weights server publishes.
    #[command(subcommand)]
    Weights(weights_cmd::WeightsCommand),
}

const RENDER_LONG_ABOUT: &str = "\
Compile a TrafficPolicy and its Fleet into the Istio resources each member
cluster needs, and write them as YAML:

  DIR/<member>/<NN>-<kind>-<namespace>-<name>.yaml     (kubectl apply -f DIR/<member>/)

With --karmada, the resources are written once under DIR/karmada/, with a
PropagationPolicy per namespace sending them to every member and an
OverridePolicy filling in each member's own cluster id and locality in the
filter's configuration.

Every member gets: a WasmPlugin per caller namespace (the filter, pinned by
digest, client side only), a DestinationRule (one subset per member cluster),
a VirtualService (one route per destination on the routing header, canary
routes, and a default route), PeerAuthentication / AuthorizationPolicy when
the policy has a security section, the AuthorizationPolicy refusing the
routing header at the ingress gateways, a ServiceEntry for crossRegion, and a
PrometheusRule and Grafana dashboard ConfigMap.

Errors name the field path, the value found and what was expected; the exit
status is 1. The same input always gives byte-identical files.";

const CHECK_LONG_ABOUT: &str = "\
Check a filter configuration exactly as the filter parses it (the same types),
with every error at its full path (`services[0].destinations[1].weight`), the
value found and what was expected. Reads the plugin configuration as JSON or
YAML, or a WasmPlugin (its spec.pluginConfig; every WasmPlugin of a
multi-document file, e.g. `kubectl get wasmplugin -A -o yaml` items saved one per
document, or a file `tideway render` wrote). Exit status 1 on any error.";

#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// The TrafficPolicy (YAML or JSON).
    #[arg(short = 'f', long = "filename", value_name = "POLICY")]
    policy: PathBuf,
    /// The Fleet the policy spans (YAML or JSON).
    #[arg(long, value_name = "FLEET")]
    fleet: PathBuf,
    /// The filter image, pinned by manifest digest: host/repo[:tag]@sha256:<hex>
    /// (what `tideway image push` prints). Overrides spec.plugin.image.
    #[arg(long, value_name = "REF@sha256:…")]
    image: Option<String>,
    /// Output directory (created).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: PathBuf,
    /// Write the Karmada form (resources once + PropagationPolicy/OverridePolicy).
    #[arg(long)]
    karmada: bool,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            // The whole cause chain on one line; no backtrace noise.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs piped to a file, a collector or
        // a test's capture must not carry escape codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let done = |r: anyhow::Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
    match cli.command {
        // Its exit status says whether every member has the render.
        Command::Apply(args) => apply_cmd::run(args),
        Command::Status(args) => status_cmd::run(args),
        other => done(run_other(other)),
    }
}

fn run_other(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Image(args) => image_cmd::run(args),
        Command::Render(args) => render_cmd(args),
        Command::CheckConfig { path } => {
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
        Command::Crds => {
            for crd in tideway_controller::api::crds() {
                print!("---\n{}", serde_yaml::to_string(&crd)?);
            }
            Ok(())
        }
        Command::Apply(args) => apply_cmd::run(args).map(|_| ()),
        Command::Run(args) => run_cmd::run(args),
        Command::Status(args) => status_cmd::run(args).map(|_| ()),
        Command::ServeWeights(args) => weights_cmd::serve(args),
        Command::Drain(args) => weights_cmd::drain(args),
        Command::Weight(command) => weights_cmd::weight(command),
        Command::Weights(command) => weights_cmd::weights(command),
    }
}

fn render_cmd(args: RenderArgs) -> anyhow::Result<()> {
    let tideway_controller::Loaded {
        policy, compiled, ..
    } = tideway_controller::load_and_compile(&args.policy, &args.fleet, args.image.as_deref())?;
    let name = policy.metadata.name.as_deref().unwrap_or("");
    let files = if args.karmada {
        render::karmada(&compiled, name)
    } else {
        render::per_member(&compiled)
    };
    render::write(&args.output, &files)?;
    println!(
        "wrote {} file(s) under {} ({})",
        files.len(),
        args.output.display(),
        if args.karmada {
            "karmada/".to_string()
        } else {
            compiled.order.join(", ")
        }
    );
    Ok(())
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
        let deployment: serde_json::Value = serde_yaml::from_str(&text).expect("yaml");
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
