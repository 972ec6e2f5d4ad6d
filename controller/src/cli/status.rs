//! `tideway status`: the CLI over [`tideway_controller::status`].

use anyhow::Context;
use std::path::PathBuf;
use tideway_controller::apply::connect;
use tideway_controller::status::{self, PolicySource};

pub const LONG_ABOUT: &str = "\
Look at one TrafficPolicy across its Fleet and say what is wrong, member by
member (read-only):

  API         the member's API server answers (and its Kubernetes version)
  ISTIO       the Istio kinds the render needs are served (and the release
              the Istio CRDs are labelled with, when they are)
  OBJECTS     every object of the render is there (n/total), at the expected
  REVISION    revision (traffic.tideway.dev/revision); the WasmPlugins'
              image and digest are listed below the table
  DRIFT       an object changed by another field manager since Tideway last
              applied it (its managedFields), or a field of the render with
              another value
  ENDPOINTS   ready (+ not ready) endpoints of the policy's service there
  WEIGHTS     the static weights the member's filter configuration has, its
              schemaVersion, and the weights API it polls (or `static`)
  CONTROLLER  what `tideway run` last wrote for the member (hub status)

The policy is read from the hub (NAME, -n NAMESPACE; the hub through
--hub-context, else the kubeconfig's current context, else in-cluster) or
from files (-f POLICY --fleet FLEET, as for `tideway apply`; with
--hub-context the controller's status is read too, when the hub has the
policy). The expected revision is the controller's (status.revision) when
the hub has one, else the render's. Members are reached as `tideway apply`
reaches them (their Fleet entry's `api`).

-o json prints the whole report for scripts (`healthy`, `problems`, and per
member `api`, `istio`, `objects[].drift`, `endpoints`, `weights`,
`conditions`). Nothing it prints holds a credential.

Exit status: 0 when nothing is degraded; 1 when anything is (a member
unreachable, a CRD or object missing, an old revision, drift, no ready
endpoints, the controller reporting Degraded or not Ready, or not caught up
with the policy's generation), or when the policy cannot be read.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A summary, one row per member, each member's objects, the problems.
    Table,
    /// The whole report as JSON.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The TrafficPolicy's name in the hub (or use -f/--fleet).
    #[arg(
        value_name = "NAME",
        required_unless_present = "policy",
        conflicts_with = "policy"
    )]
    name: Option<String>,
    /// The TrafficPolicy's namespace in the hub.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The TrafficPolicy from a file (YAML or JSON) instead of the hub.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "POLICY",
        requires = "fleet"
    )]
    policy: Option<PathBuf>,
    /// The Fleet from a file (with -f).
    #[arg(long, value_name = "FLEET", requires = "policy")]
    fleet: Option<PathBuf>,
    /// The filter image the files were applied with (`tideway apply --image`).
    #[arg(long, value_name = "REF@sha256:…", requires = "policy")]
    image: Option<String>,
    /// The kubeconfig with the hub's and members' contexts (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The hub cluster's context (the controller's status, members' secretRefs).
    #[arg(long, value_name = "CONTEXT")]
    hub_context: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub fn run(args: StatusArgs) -> anyhow::Result<std::process::ExitCode> {
    let kubeconfig = connect::read_kubeconfig(args.kubeconfig.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let hub = hub_client(&args, kubeconfig.as_ref()).await?;
        let source = match (&args.policy, &args.fleet) {
            (Some(policy), Some(fleet)) => PolicySource::Files {
                policy: policy.clone(),
                fleet: fleet.clone(),
            },
            _ => PolicySource::Hub {
                namespace: args.namespace.clone(),
                name: args.name.clone().unwrap_or_default(),
            },
        };
        status::report(hub, kubeconfig, source, args.image.as_deref()).await
    })?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", status::table(&report)),
    }
    Ok(if report.healthy {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

async fn hub_client(
    args: &StatusArgs,
    kubeconfig: Option<&kube::config::Kubeconfig>,
) -> anyhow::Result<Option<kube::Client>> {
    if let Some(context) = &args.hub_context {
        let kubeconfig = kubeconfig.context("--hub-context needs a kubeconfig")?;
        return connect::client_for_context(kubeconfig, context)
            .await
            .map(Some)
            .map_err(|e| anyhow::anyhow!("hub: {e}"));
    }
    if args.policy.is_some() {
        // From files without --hub-context: the `tideway apply` workflow.
        return Ok(None);
    }
    match kubeconfig.and_then(|k| k.current_context.clone()) {
        Some(context) => connect::client_for_context(kubeconfig.context("kubeconfig")?, &context)
            .await
            .map(Some)
            .map_err(|e| anyhow::anyhow!("hub (context {context:?}): {e}")),
        None => kube::Client::try_default().await.map(Some).context(
            "hub: no --hub-context, no kubeconfig current-context and no in-cluster config",
        ),
    }
}
