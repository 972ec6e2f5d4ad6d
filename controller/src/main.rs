//! `tideway`: the command-line face of the controller.

use clap::Parser;
use cli::{Cli, Command};

mod cli;

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
        Command::Apply(args) => cli::apply::run(args),
        Command::Status(args) => cli::status::run(args),
        other => done(cli::run_other(other)),
    }
}
