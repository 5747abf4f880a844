use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clawdforge::config::Config;

#[derive(Parser)]
#[command(
    name = "clawdforge",
    version,
    about = "Coding agents for the apps on your server, over NATS"
)]
struct Cli {
    /// Config file (default: config/clawdforge.toml when it exists).
    #[arg(long, global = true, env = "CLAWDFORGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the NATS subjects: run agents and keep the ledger.
    Worker,
    /// Serve the HTTP endpoints (BIND_HOST:BIND_PORT), forwarding each request to the workers
    /// over NATS.
    Sidecar,
    /// Worker and sidecar in one process (still talking over NATS).
    Serve,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("clawdforge: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Worker => {
                clawdforge::app::run_worker(config, clawdforge::app::shutdown_signal()).await
            }
            Command::Sidecar => {
                clawdforge::app::run_sidecar(config, clawdforge::app::shutdown_signal()).await
            }
            Command::Serve => {
                clawdforge::app::run_serve(config, clawdforge::app::shutdown_signal()).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clawdforge: {e:#}");
            ExitCode::FAILURE
        }
    }
}
