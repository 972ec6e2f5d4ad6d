//! `tideway serve-weights`, `tideway drain`, `tideway weight set` and
//! `tideway weights get|overrides`: the CLI over
//! [`tideway_controller::weights`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tideway_controller::weights::client::{Client, WriteReply};
use tideway_controller::weights::local;
use tideway_controller::weights::server::{self, ServerOptions, WeightsApi};
use tideway_controller::weights::state::{
    dashboard_configs, services_from_policies, Overrides, WeightsState,
};
use tideway_controller::weights::store::OverridesFile;
use tideway_controller::weights::token::Token;

pub const SERVE_LONG_ABOUT: &str = "\
Serve the run-time scheduler weights of the given TrafficPolicies over HTTP:

  GET  /v1/weights[?service=a,b][&wait=30s]   the weights document (ETag: \"<version>\");
       with If-None-Match: \"<version>\" and wait=, held until the version
       changes (200) or the wait ends (304), at most --max-wait
  POST /v1/drain   {\"cluster\": C, \"service\": S?, \"drained\": true|false}
  POST /v1/weight  {\"service\": S, \"destination\": D, \"weight\": W?, \"cost\": C?, \"reset\": bool?}
  GET  /v1/overrides   the operator overrides in force
  GET  /healthz

The base weights, costs and factor weights come from the policies (validated
as `tideway render` does, against --fleet or the clusters each policy names).
`tideway drain` and `tideway weight set` change them at run time; every change
bumps the version and answers every held poll at once.

Writes need the bearer token of --token-file (or $TIDEWAY_TOKEN); without a
token the server is read-only. Reads are open unless --protect-reads: the
pollers are sidecars, guarded by the mesh (mTLS, AuthorizationPolicy). With
--tls-cert and --tls-key the server speaks HTTPS. With --state-file the
operator's drains and weight settings survive a restart.

The bound address is printed on stdout (`listening on http://ADDR`), so
--listen 127.0.0.1:0 picks a free port.";

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TrafficPolicy files or directories (searched recursively for .yaml/.yml/.json).
    #[arg(long = "policy", short = 'f', value_name = "FILE|DIR", required = true)]
    policies: Vec<PathBuf>,
    /// The Fleet to validate the policies against (default: the clusters each policy names).
    #[arg(long, value_name = "FLEET")]
    fleet: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// File holding the bearer token writes need (default: $TIDEWAY_TOKEN; neither: read-only).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Reads need the token too (for a server reachable from outside the mesh).
    #[arg(long)]
    protect_reads: bool,
    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Keep the operator overrides (drains, weight settings) in this JSON
    /// file: loaded at start, rewritten atomically on every change.
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,
    /// Serve the fleet dashboard at /ui: live traffic, latency, ejections and
    /// weights versions; a what-if on the filter's own scheduler; apply
    /// through this API (with the token).
    #[arg(long)]
    ui: bool,
    /// The dashboard's scheduler module: the output of `cargo xtask build-ui`
    /// (target/tideway/ui). Without it the what-if is unavailable. Ignored
    /// without --ui (so a $TIDEWAY_UI_DIR set for every command is harmless).
    #[arg(long, value_name = "DIR", env = "TIDEWAY_UI_DIR")]
    ui_dir: Option<PathBuf>,
    /// An Envoy admin endpoint whose stats the dashboard shows, as NAME=URL
    /// (repeatable), e.g. hangzhou=http://127.0.0.1:15000; or NAME=file:PATH,
    /// the file Envoy's --admin-address-path writes (read at every scrape).
    #[arg(long = "envoy-admin", value_name = "NAME=URL", requires = "ui")]
    envoy_admin: Vec<tideway_controller::ui::ProxyTarget>,
    /// The longest wait= a poller may ask for, in seconds (1..=300).
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=300))]
    max_wait: u64,
}

/// How to reach a running weights server.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The weights server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL", env = "TIDEWAY_SERVER")]
    server: String,
    /// File holding the bearer token (default: $TIDEWAY_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A PEM CA certificate to trust for an https:// server with its own certificate.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The member cluster to drain (a destination's `cluster`).
    cluster: String,
    /// Only for this service (default: every service with a destination there).
    #[arg(long, value_name = "SERVICE")]
    service: Option<String>,
    /// Undrain instead (without --service, also lifts the cluster's per-service drains).
    #[arg(long)]
    undo: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum WeightCommand {
    /// Set a destination's base weight and/or cost at run time (or --reset it to the policy's).
    Set(WeightSetArgs),
}

#[derive(Debug, clap::Args)]
// `--weight -1` must reach the check below (and say which field and value)
// rather than be taken for an unknown flag.
#[command(allow_negative_numbers = true)]
pub struct WeightSetArgs {
    /// The service (a policy's spec.service.name).
    service: String,
    /// The destination (its subset name; by default the cluster name).
    destination: String,
    /// Base weight (≥ 0).
    #[arg(long, value_name = "W", value_parser = non_negative("weight"))]
    weight: Option<f64>,
    /// Relative cost (≥ 0).
    #[arg(long, value_name = "C", value_parser = non_negative("cost"))]
    cost: Option<f64>,
    /// Drop the override first: back to the policy's values (unless --weight/--cost are given too).
    #[arg(long)]
    reset: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// A parser for a finite number ≥ 0 whose error names `field` and the value
/// as typed (the same check the weights API makes, before any request).
fn non_negative(field: &'static str) -> impl Fn(&str) -> Result<f64, String> + Clone {
    move |text| {
        let expected = "a finite number ≥ 0";
        let error = || tideway_controller::field_error::FieldError::new(field, text, expected);
        match text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(error().to_string()),
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum WeightsCommand {
    /// Print the weights the server publishes now.
    Get {
        /// Only these services (repeatable, or comma-separated).
        #[arg(long = "service", value_name = "SERVICE", value_delimiter = ',')]
        services: Vec<String>,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print the operator overrides in force (drains and weight settings), as JSON.
    Overrides {
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn runtime(multi_thread: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (policies, fleet) = local::read_inputs(&args.policies, args.fleet.as_deref())?;
    let services =
        services_from_policies(&policies, fleet.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ui = if args.ui {
        let configs =
            dashboard_configs(&policies, fleet.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
        Some(Arc::new(tideway_controller::ui::Dashboard::new(
            configs,
            args.envoy_admin.clone(),
            args.ui_dir.clone(),
        )?))
    } else {
        None
    };
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    let store = args
        .state_file
        .as_ref()
        .map(|p| Arc::new(OverridesFile::new(p)));
    let overrides = match &store {
        Some(s) => s.load()?,
        None => Overrides::default(),
    };
    let state =
        Arc::new(WeightsState::new(services, overrides).map_err(|e| anyhow::anyhow!("{e}"))?);
    let token = Token::from_file_or_env(args.token_file.as_deref())?;
    if args.protect_reads && token.is_none() {
        anyhow::bail!("--protect-reads needs a token: --token-file FILE or $TIDEWAY_TOKEN");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_config(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let writes = if token.is_some() {
        "token required"
    } else {
        "disabled (no token)"
    };
    let options = ServerOptions {
        token,
        protect_reads: args.protect_reads,
        tls,
        max_wait: Duration::from_secs(args.max_wait),
        store,
        ui,
    };
    server::raise_open_file_limit();
    runtime(true)?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listening on {}: {e}", args.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            %addr, services = %names.join(","), writes, version = state.snapshot().version(),
            "serving weights"
        );
        // The one line scripts and tests wait for.
        println!("listening on {scheme}://{addr}");
        let api = WeightsApi::new(state, options);
        api.serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| anyhow::anyhow!("serving on {addr}: {e}"))
    })
}

fn client(args: &ServerArgs) -> anyhow::Result<Client> {
    let token = Token::from_file_or_env(args.token_file.as_deref())?;
    Client::new(&args.server, token, args.ca_file.as_deref())
}

pub fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let client = client(&args.server)?;
    let reply = runtime(false)?.block_on(client.drain(
        &args.cluster,
        args.service.as_deref(),
        !args.undo,
    ))?;
    print_reply(&reply);
    Ok(())
}

pub fn weight(command: WeightCommand) -> anyhow::Result<()> {
    let WeightCommand::Set(args) = command;
    if args.weight.is_none() && args.cost.is_none() && !args.reset {
        anyhow::bail!("nothing to set: give --weight, --cost, or --reset");
    }
    let client = client(&args.server)?;
    let reply = runtime(false)?.block_on(client.set_weight(
        &args.service,
        &args.destination,
        args.weight,
        args.cost,
        args.reset,
    ))?;
    print_reply(&reply);
    Ok(())
}

pub fn weights(command: WeightsCommand) -> anyhow::Result<()> {
    match command {
        WeightsCommand::Get {
            services,
            json,
            server,
        } => {
            let client = client(&server)?;
            let doc = runtime(false)?.block_on(client.get(&services))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!("version {}", doc.version);
                print_table(&doc.services);
            }
        }
        WeightsCommand::Overrides { server } => {
            let client = client(&server)?;
            let overrides = runtime(false)?.block_on(client.overrides())?;
            println!("{}", serde_json::to_string_pretty(&overrides)?);
        }
    }
    Ok(())
}

/// `version N (changed|unchanged)` and the affected services as they are now.
fn print_reply(reply: &WriteReply) {
    println!(
        "version {} ({})",
        reply.version,
        if reply.changed {
            "changed"
        } else {
            "unchanged: already so"
        }
    );
    print_table(&reply.services);
}

fn print_table(services: &[tideway_filter::weights::ServiceWeights]) {
    println!(
        "{:<24} {:<24} {:>8} {:>8}  DRAINED",
        "SERVICE", "DESTINATION", "WEIGHT", "COST"
    );
    for s in services {
        for d in &s.destinations {
            println!(
                "{:<24} {:<24} {:>8} {:>8}  {}",
                s.name,
                d.name,
                d.weight,
                d.cost,
                if d.drained { "yes" } else { "no" }
            );
        }
    }
}
