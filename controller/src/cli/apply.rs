//! `tideway apply`: the CLI over [`tideway_controller::apply`].

use anyhow::Context;
use std::path::PathBuf;
use tideway_controller::apply::{self, ObjectAction, Options};

pub const LONG_ABOUT: &str = "\
Render a TrafficPolicy for its Fleet and roll it out to every member cluster:
server-side apply (field manager `tideway`) of each object a member does not
already have as rendered, wave by wave (the Fleet's `wave`, lowest first),
with a health gate between waves (every reachable member of the wave
accepted every object, stored with Tideway's labels). A wave that fails its
gate stops the rollout (later waves are reported as skipped) and is rolled
back: each of its members gets back exactly what it had before this
rollout; a member that already had the revision is left alone. Only a wave
that passed its gate is pruned and has the revision recorded in each member
(ConfigMap tideway-system/tideway-revisions-<namespace>-<policy>).

Each member is reached through its Fleet entry's `api`: `kubeconfigContext`
(a context of --kubeconfig), `secretRef` (a kubeconfig in a Secret of the hub
cluster, read with --hub-context), or, with neither, the context named like
the member. An unreachable member is reported and does not stop the rollout
(unless --require-all). A field owned by another manager is reported with the
field and the manager, never forced. Objects Tideway applied for this policy
that the render no longer has are deleted (--no-prune keeps them).

--dry-run asks each member's API server what it would make of the render
(dryRun=All) and prints the diff against the live objects; nothing changes.

Exit status: 0 when every member has the render, 1 otherwise.";

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The TrafficPolicy (YAML or JSON).
    #[arg(short = 'f', long = "filename", value_name = "POLICY")]
    policy: PathBuf,
    /// The Fleet the policy spans (YAML or JSON).
    #[arg(long, value_name = "FLEET")]
    fleet: PathBuf,
    /// The filter image, pinned by manifest digest (overrides spec.plugin.image).
    #[arg(long, value_name = "REF@sha256:…")]
    image: Option<String>,
    /// The kubeconfig with the members' contexts (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The hub cluster's context, for members whose `api` is a secretRef.
    #[arg(long, value_name = "CONTEXT")]
    hub_context: Option<String>,
    /// Show what would change (server-side dry run and diff); change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep objects of this policy that the render no longer has.
    #[arg(long)]
    no_prune: bool,
    /// An unreachable member fails its wave (default: reported, the rollout goes on).
    #[arg(long)]
    require_all: bool,
}

pub fn run(args: ApplyArgs) -> anyhow::Result<std::process::ExitCode> {
    let loaded =
        tideway_controller::load_and_compile(&args.policy, &args.fleet, args.image.as_deref())?;
    let policy_ref = loaded.policy_ref();
    let tideway_controller::Loaded {
        fleet, compiled, ..
    } = loaded;
    let kubeconfig = apply::connect::read_kubeconfig(args.kubeconfig.as_deref())?;
    let options = Options {
        dry_run: args.dry_run,
        prune: !args.no_prune,
        require_all: args.require_all,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let hub = match &args.hub_context {
            Some(context) => {
                let kubeconfig = kubeconfig
                    .as_ref()
                    .context("--hub-context needs a kubeconfig")?;
                Some(
                    apply::connect::client_for_context(kubeconfig, context)
                        .await
                        .map_err(|e| anyhow::anyhow!("hub: {e}"))?,
                )
            }
            None => None,
        };
        let targets = apply::targets(&compiled, &fleet, kubeconfig.as_ref(), hub.as_ref()).await;
        let mut show = |event: &apply::Progress| eprintln!("{}", apply::progress_line(event));
        anyhow::Ok(apply::apply(targets, &policy_ref, &options, &mut show).await)
    })?;
    if args.dry_run {
        for member in &report.members {
            for object in &member.objects {
                if let ObjectAction::WouldCreate { diff } | ObjectAction::WouldChange { diff } =
                    &object.action
                {
                    println!("# {}: {}\n{diff}", member.member, object.object);
                }
            }
            for object in &member.pruned {
                println!("# {}: {} would be deleted", member.member, object.object);
            }
        }
    }
    let done = report
        .members
        .iter()
        .filter(|m| matches!(m.status, apply::MemberStatus::Applied))
        .count();
    eprintln!(
        "{done} of {} member(s) {}",
        report.members.len(),
        if args.dry_run { "checked" } else { "applied" }
    );
    Ok(if report.all_applied() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
