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
    /// Mint, list and revoke app tokens on the ledger (DB_PATH) directly, without NATS.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Exit 0 when this host's worker answers on NATS (with --http: when the sidecar on
    /// BIND_PORT answers GET /healthz with 200); for container health checks.
    Healthcheck {
        /// Check the HTTP sidecar instead of the worker.
        #[arg(long)]
        http: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token for an app; it is printed once, the ledger keeps only its hash.
    Create {
        /// The app the token belongs to: 1-64 letters, digits, '-', '_' or '.'.
        #[arg(long)]
        app: String,
        /// An admin token (may mint, list and revoke tokens over NATS and HTTP).
        #[arg(long)]
        admin: bool,
        /// Print the answer of forge.admin.token.create (JSON) instead.
        #[arg(long)]
        json: bool,
    },
    /// List every token, revoked ones included, oldest first (never the tokens themselves).
    List {
        /// Print the answer of forge.admin.token.list (JSON) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id; every worker refuses it from its next request on.
    Revoke {
        /// The token's id, as `token list` shows it.
        token_id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The operator's one-shot commands log only what goes wrong; their answer is on stdout.
    let default_filter = match cli.command {
        Command::Token(_) | Command::Healthcheck { .. } => "warn",
        _ => "info,async_nats=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
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
    // The agents this process starts inherit its environment and run with --approve-all: the
    // secrets the config has read must not be there for them to find.
    for name in clawdforge::config::secret_env_names() {
        std::env::remove_var(name);
    }
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
            Command::Token(command) => token(&config, command).await,
            Command::Healthcheck { http } => {
                let line = clawdforge::app::healthcheck(&config, http).await?;
                println!("{line}");
                Ok(())
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

async fn token(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { app, admin, json } => {
            let created = clawdforge::app::token_create(config, &app, admin).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("token_id    {}", created.token_id);
                println!("app         {}", created.app);
                println!("admin       {}", yes_no(created.admin));
                println!("created_at  {}", created.created_at);
                println!("token       {}", created.token);
            }
            eprintln!(
                "clawdforge: the token is shown only now; the ledger {} keeps its SHA-256 hash",
                config.db_path.display()
            );
        }
        TokenCommand::List { json } => {
            let list = clawdforge::app::token_list(config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", token_table(&list.tokens));
            }
        }
        TokenCommand::Revoke { token_id } => {
            let revoked = clawdforge::app::token_revoke(config, &token_id).await?;
            println!("revoked {}", revoked.token_id);
        }
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The tokens as a table with a header and aligned columns.
fn token_table(tokens: &[clawdforge::wire::TokenInfo]) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "TOKEN_ID".into(),
        "APP".into(),
        "ADMIN".into(),
        "CREATED_AT".into(),
        "REVOKED_AT".into(),
    ]];
    rows.extend(tokens.iter().map(|t| {
        [
            t.token_id.clone(),
            t.app.clone(),
            yes_no(t.admin).into(),
            t.created_at.clone(),
            t.revoked_at.clone().unwrap_or_else(|| "-".into()),
        ]
    }));
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
