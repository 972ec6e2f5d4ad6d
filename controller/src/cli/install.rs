//! `tideway install`: the manifests to install Tideway, as YAML.

use clap::Args;

pub const LONG_ABOUT: &str = "\
Print what installs Tideway, as YAML, for `kubectl apply -f -` (or review):

  tideway install --image registry.example.com/tideway/controller@sha256:<digest> | kubectl apply -f -
      the hub cluster (where TrafficPolicies live): the TrafficPolicy and Fleet
      CRDs, the tideway-system Namespace, the controller's ServiceAccount and
      RBAC, its Deployment (two replicas, one leader) running that image, its
      Service and PodDisruptionBudget

  tideway install --member | kubectl --context <member> apply -f -
      a member cluster: the tideway-member ServiceAccount and what the
      controller may do there (the kinds it renders, no Secrets)

The image must be pinned by digest: `cargo xtask image` builds it and
`tideway image push` prints the pinned reference. The objects are the files
under manifests/ (`kubectl apply -k manifests/controller/` applies the same).";

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The controller's image, pinned by digest: REPOSITORY@sha256:<64 hex>.
    #[arg(long, required_unless_present = "member", value_name = "REF@sha256:…")]
    image: Option<String>,
    /// Print a member cluster's RBAC instead of the hub's install.
    #[arg(long, conflicts_with = "image")]
    member: bool,
}

pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    let objects = match (&args.image, args.member) {
        (_, true) => tideway_controller::install::member_objects()?,
        (Some(image), false) => tideway_controller::install::hub_objects(image)?,
        (None, false) => {
            anyhow::bail!("--image: missing; expected the controller's image pinned by digest")
        }
    };
    print!("{}", tideway_controller::install::to_yaml(&objects)?);
    Ok(())
}
