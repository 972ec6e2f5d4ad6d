//! `tideway render`: a policy and its fleet compiled into YAML files.

use std::path::PathBuf;
use tideway_controller::render;

pub const LONG_ABOUT: &str = "\
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

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// The TrafficPolicy (YAML or JSON).
    #[arg(short = 'f', long = "filename", value_name = "POLICY")]
    pub policy: PathBuf,
    /// The Fleet the policy spans (YAML or JSON).
    #[arg(long, value_name = "FLEET")]
    pub fleet: PathBuf,
    /// The filter image, pinned by manifest digest: host/repo[:tag]@sha256:<hex>
    /// (what `tideway image push` prints). Overrides spec.plugin.image.
    #[arg(long, value_name = "REF@sha256:…")]
    pub image: Option<String>,
    /// Output directory (created).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Write the Karmada form (resources once + PropagationPolicy/OverridePolicy).
    #[arg(long)]
    pub karmada: bool,
}

pub fn run(args: RenderArgs) -> anyhow::Result<()> {
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
