//! `tideway`: the command-line face of the controller.

use clap::{Parser, Subcommand};

mod image_cmd;

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
    /// Check a filter plugin configuration (JSON) the way the filter will parse it.
    CheckConfig {
        /// Path to the plugin configuration JSON.
        path: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line; no backtrace noise.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Image(args) => image_cmd::run(args),
        Command::CheckConfig { path } => {
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let config = tideway_filter::config::PluginConfig::from_json(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            println!("ok: {} service(s)", config.services.len());
            Ok(())
        }
    }
}
