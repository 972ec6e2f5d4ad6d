//! `tideway install`: the manifests to install Tideway, as YAML.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use tideway_controller::apply::connect;
use tideway_controller::install;

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

With --apply the objects are applied through the kubeconfig (server-side
apply, field manager tideway-install, never forced). `tideway uninstall`
removes them; it refuses while TrafficPolicies still carry the controller's
cleanup finalizer (their member objects would stay behind), unless --force.

The image must be pinned by digest: `cargo xtask image` builds it and
`tideway image push` prints the pinned reference. The objects are the files
under manifests/ (`kubectl apply -k manifests/controller/` applies the same).";

/// Where `--apply` and `uninstall` send their requests.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The kubeconfig (default: $KUBECONFIG, else ~/.kube/config; in a pod, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    context: Option<String>,
}

impl ClusterArgs {
    async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = connect::read_kubeconfig(self.kubeconfig.as_deref())?;
        let context = self
            .context
            .clone()
            .or_else(|| kubeconfig.as_ref().and_then(|k| k.current_context.clone()));
        match (kubeconfig, context) {
            (Some(kubeconfig), Some(context)) => connect::client_for_context(&kubeconfig, &context)
                .await
                .map_err(|e| anyhow::anyhow!(e)),
            _ => kube::Client::try_default()
                .await
                .context("no kubeconfig context and no in-cluster config"),
        }
    }
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The controller's image, pinned by digest: REPOSITORY@sha256:<64 hex>.
    #[arg(long, required_unless_present = "member", value_name = "REF@sha256:…")]
    image: Option<String>,
    /// Print a member cluster's RBAC instead of the hub's install.
    #[arg(long, conflicts_with = "image")]
    member: bool,
    /// Apply the objects (server-side apply, field manager tideway-install) instead of printing them.
    #[arg(long)]
    apply: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Remove a member cluster's RBAC instead of the hub's install.
    #[arg(long)]
    member: bool,
    /// Uninstall even while TrafficPolicies carry the controller's cleanup
    /// finalizer (the finalizers are removed; their member objects stay).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

pub fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let objects = if args.member {
        install::member_objects()?
    } else {
        install::hub_objects_as_in_manifests()?
    };
    let done = tideway_controller::image::runtime()?.block_on(async {
        let client = args.cluster.client().await?;
        install::uninstall(&client, &objects, args.force).await
    })?;
    for line in done {
        println!("{line}");
    }
    Ok(())
}

pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    let objects = match (&args.image, args.member) {
        (_, true) => install::member_objects()?,
        (Some(image), false) => install::hub_objects(image)?,
        (None, false) => {
            anyhow::bail!("--image: missing; expected the controller's image pinned by digest")
        }
    };
    if !args.apply {
        print!("{}", install::to_yaml(&objects)?);
        return Ok(());
    }
    let done = tideway_controller::image::runtime()?.block_on(async {
        let client = args.cluster.client().await?;
        install::apply(&client, &objects).await
    })?;
    for line in done {
        println!("{line}");
    }
    Ok(())
}
