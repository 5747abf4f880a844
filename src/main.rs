use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clawdforge::config::{Config, ConfigError, LogFormat};
use clawdforge::telemetry::genai;
use clawdforge::telemetry::trace::{TraceSettings, Tracing};

/// Where every command's help sends the reader for its settings.
const CONFIG_HELP: &str = "Settings come from the environment and a config file: every key and \
variable is in the configuration table of docs/configuration.md, and \
config/clawdforge.toml lists them with their defaults. `clawdforge config` prints the effective \
values and where each came from. A configuration error exits with status 2.";

#[derive(Parser)]
#[command(
    name = "clawdforge",
    version,
    about = "Coding agents for the apps on your server, over NATS",
    after_help = CONFIG_HELP
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
    #[command(after_help = CONFIG_HELP)]
    Worker,
    /// Serve the HTTP endpoints (BIND_HOST:BIND_PORT), forwarding each request to the workers
    /// over NATS.
    #[command(after_help = CONFIG_HELP)]
    Sidecar,
    /// Worker and sidecar in one process (still talking over NATS).
    #[command(after_help = CONFIG_HELP)]
    Serve,
    /// Mint, list and revoke app tokens on the ledger (DB_PATH) directly, without NATS.
    #[command(subcommand, after_help = CONFIG_HELP)]
    Token(TokenCommand),
    /// Set, show and list apps' policies (their limits) on the ledger (DB_PATH) directly; every
    /// worker applies a change within a second.
    #[command(subcommand, after_help = CONFIG_HELP)]
    App(AppCommand),
    /// What apps did per UTC day (sessions, turns, runs, cost, refusals), from the ledger.
    #[command(after_help = CONFIG_HELP)]
    Usage {
        /// Only this app (default: every app).
        #[arg(long)]
        app: Option<String>,
        /// First UTC day, YYYY-MM-DD (default: today).
        #[arg(long)]
        from: Option<String>,
        /// Last UTC day, YYYY-MM-DD (default: today).
        #[arg(long)]
        to: Option<String>,
        /// Print the answer of forge.admin.usage (JSON) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check the configured agents without calling a model.
    #[command(subcommand, after_help = CONFIG_HELP)]
    Agents(AgentsCommand),
    /// Print the effective configuration: every key, its value (secrets masked) and where it
    /// came from (default, file or environment variable).
    #[command(after_help = CONFIG_HELP)]
    Config,
    /// Exit 0 when this host's worker answers on NATS (with --http: when the sidecar on
    /// BIND_PORT answers GET /healthz with 200); for container health checks.
    #[command(after_help = CONFIG_HELP)]
    Healthcheck {
        /// Check the HTTP sidecar instead of the worker.
        #[arg(long)]
        http: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token for an app; it is printed once, the ledger keeps only its hash.
    #[command(after_help = CONFIG_HELP)]
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
    #[command(after_help = CONFIG_HELP)]
    List {
        /// Print the answer of forge.admin.token.list (JSON) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id; every worker refuses it from its next request on.
    #[command(after_help = CONFIG_HELP)]
    Revoke {
        /// The token's id, as `token list` shows it.
        token_id: String,
    },
}

#[derive(Subcommand)]
enum AppCommand {
    /// Change an app's policy: each option given sets its field; --clear FIELD (repeatable)
    /// clears one, so that [app_defaults] applies to it again.
    #[command(after_help = CONFIG_HELP)]
    Set {
        /// The app: 1-64 letters, digits, '-', '_' or '.'.
        app: String,
        #[command(flatten)]
        policy: Box<PolicyArgs>,
        /// Fields to clear (e.g. --clear turns_per_day).
        #[arg(long, value_name = "FIELD")]
        clear: Vec<String>,
        /// Print the answer of forge.admin.app.set (JSON) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show an app's policy as it applies: each field, and whether the app or the defaults set it.
    #[command(after_help = CONFIG_HELP)]
    Show {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// List every app with a token or a policy, and what its own policy sets.
    #[command(after_help = CONFIG_HELP)]
    List {
        #[arg(long)]
        json: bool,
    },
}

/// The fields of a policy, as `app set` options (serialized, the options given are the
/// fields of forge.admin.app.set's body).
#[derive(clap::Args, serde::Serialize)]
struct PolicyArgs {
    /// The agents its sessions may use, comma-separated.
    #[arg(long, value_delimiter = ',')]
    agents: Option<Vec<String>>,
    /// The models its runs may use, comma-separated.
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// The most permissive permission policy its sessions get: allow_all, allow_reads, ask or
    /// deny_all.
    #[arg(long)]
    max_permissions: Option<String>,
    #[arg(long)]
    max_open_sessions: Option<u64>,
    /// Turns running or queued at once, over all its sessions.
    #[arg(long)]
    max_concurrent_turns: Option<u64>,
    #[arg(long)]
    max_concurrent_runs: Option<u64>,
    #[arg(long)]
    max_timeout_secs: Option<u64>,
    #[arg(long)]
    requests_per_minute: Option<u64>,
    /// Turns per UTC day.
    #[arg(long)]
    turns_per_day: Option<u64>,
    /// USD of one-shot runs per UTC day.
    #[arg(long)]
    runs_usd_per_day: Option<f64>,
    /// USD of one-shot runs per UTC month.
    #[arg(long)]
    runs_usd_per_month: Option<f64>,
    /// USD its agents report (usage events) per UTC month.
    #[arg(long)]
    agent_usd_per_month: Option<f64>,
}

impl PolicyArgs {
    /// The change these options and `clear` make to `app`'s policy, as forge.admin.app.set's
    /// body: built as JSON, so that a field is named once, by the contract.
    fn change(self, app: String, clear: &[String]) -> anyhow::Result<clawdforge::wire::PolicySet> {
        use serde_json::{json, Value};
        let Value::Object(mut body) = serde_json::to_value(&self)? else {
            unreachable!("a struct serializes as an object")
        };
        body.retain(|_, value| !value.is_null());
        body.insert("app".into(), json!(app));
        for field in clear {
            if clawdforge::quota::Limit::from_name(field).is_none() {
                anyhow::bail!("--clear {field}: not a policy field");
            }
            body.insert(field.clone(), Value::Null);
        }
        serde_json::from_value(Value::Object(body)).map_err(|e| anyhow::anyhow!("{e}"))
    }
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// Start each configured agent (ACPX_AGENT and every [agents.*]) as a worker would, under
    /// the same confinement (as the pseudo app `_check`), ask it `initialize` and `session/new`
    /// over ACP (an acpx agent through the ACP command acpx runs for it), never a prompt, and
    /// print what it said: the executable found, its version, protocol version and
    /// authentication methods, and `ready` or why not. Exits 1 when an agent is not ready.
    #[command(after_help = CONFIG_HELP)]
    Check {
        /// Print a JSON array, each agent as forge.health shows it plus `command` and `found`.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // First, while this is the only thread: secrets leave the environment (and the kernel's
    // copy of it) before anything else runs, the agents this process starts included.
    let secrets =
        clawdforge::secrets::take_from_environment(&clawdforge::config::secret_env_names());
    let env: Vec<(String, String)> = std::env::vars().chain(secrets).collect();
    let cli = Cli::parse();
    if let Command::Config = cli.command {
        return print_config(&cli, &env);
    }
    let config = match Config::load_from(cli.config.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => return config_failure(&e),
    };
    let tracing = match init_logging(&cli.command, config.log_format, &env) {
        Ok(tracing) => tracing,
        Err(e) => {
            eprintln!("clawdforge: starting the OTLP trace exporter: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let ran = runtime.block_on(run(cli.command, config));
    if let Some(tracing) = tracing {
        tracing.shutdown();
    }
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(config_error) => config_failure(config_error),
            None => {
                eprintln!("clawdforge: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    use clawdforge::app;
    match command {
        Command::Worker => app::run_worker(config, app::shutdown_signal()).await,
        Command::Sidecar => app::run_sidecar(config, app::shutdown_signal()).await,
        Command::Serve => app::run_serve(config, app::shutdown_signal()).await,
        Command::Token(command) => token(&config, command).await,
        Command::App(command) => app_command(&config, command).await,
        Command::Usage {
            app,
            from,
            to,
            json,
        } => {
            let asked = clawdforge::wire::UsageAsked { app, from, to };
            let days = clawdforge::operator::usage(&config, asked).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&days)?);
            } else {
                print!("{}", clawdforge::operator::usage_table(&days.days));
            }
            Ok(())
        }
        Command::Agents(AgentsCommand::Check { json }) => agents_check(&config, json).await,
        Command::Healthcheck { http } => {
            println!("{}", app::healthcheck(&config, http).await?);
            Ok(())
        }
        Command::Config => unreachable!("answered before the runtime starts"),
    }
}

/// Every configuration error ends the same way, whichever command met it.
fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("clawdforge: {e}");
    ExitCode::from(ConfigError::EXIT_CODE)
}

/// Logs go to stderr: coloured only on a terminal, or as JSON lines for log collectors. Spans
/// also go to an OTLP endpoint when the environment names one (`OTEL_EXPORTER_OTLP_ENDPOINT`):
/// the pipeline that sends them is returned, to be shut down (and its last spans sent) at exit.
fn init_logging(
    command: &Command,
    format: LogFormat,
    env: &[(String, String)],
) -> anyhow::Result<Option<Tracing>> {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{filter_fn, FilterExt, Targets};
    use tracing_subscriber::prelude::*;
    // The operator's one-shot commands log only what goes wrong; their answer is on stdout.
    let (default_filter, service) = match command {
        Command::Token(_)
        | Command::App(_)
        | Command::Usage { .. }
        | Command::Agents(_)
        | Command::Healthcheck { .. } => ("warn", None),
        Command::Worker => ("info,async_nats=warn", Some("clawdforge-worker")),
        Command::Sidecar => ("info,async_nats=warn", Some("clawdforge-sidecar")),
        _ => ("info,async_nats=warn", Some("clawdforge")),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into())
        .and(filter_fn(|m| m.target() != genai::TARGET));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
    };
    let settings = TraceSettings::from_env(env);
    let (tracing, otel) = match service {
        Some(service) => match Tracing::start(&settings, service)? {
            Some((tracing, layer)) => (Some(tracing), Some(layer)),
            None => (None, None),
        },
        None => (None, None),
    };
    // Only the service's own spans, at info: a library's (the exporter's HTTP client among
    // them) would trace the sending of traces. Of its log lines, only warnings and errors
    // become span events: the rest are in the logs, and each would be built again for the span.
    let spans = Targets::new()
        .with_target("clawdforge", tracing::Level::INFO)
        .and(filter_fn(|m| {
            m.is_span() || *m.level() <= tracing::Level::WARN
        }));
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel.map(|layer| layer.with_filter(spans)))
        .init();
    Ok(tracing)
}

/// `clawdforge config`: the effective configuration as an aligned table.
fn print_config(cli: &Cli, env: &[(String, String)]) -> ExitCode {
    let shown = match Config::explain(cli.config.as_deref(), env) {
        Ok((_, shown)) => shown,
        Err(e) => return config_failure(&e),
    };
    let key_width = shown.iter().map(|s| s.key.len()).max().unwrap_or(0);
    let value_width = shown
        .iter()
        .map(|s| s.value.len())
        .max()
        .unwrap_or(0)
        .min(48);
    println!("{:<key_width$}  {:<value_width$}  SOURCE", "KEY", "VALUE");
    for line in &shown {
        println!(
            "{:<key_width$}  {:<value_width$}  {}",
            line.key, line.value, line.source
        );
    }
    ExitCode::SUCCESS
}

async fn token(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { app, admin, json } => {
            let created = clawdforge::operator::token_create(config, &app, admin).await?;
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
            let list = clawdforge::operator::token_list(config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", token_table(&list.tokens));
            }
        }
        TokenCommand::Revoke { token_id } => {
            let revoked = clawdforge::operator::token_revoke(config, &token_id).await?;
            println!("revoked {}", revoked.token_id);
        }
    }
    Ok(())
}

/// `clawdforge app set|show|list`.
async fn app_command(config: &Config, command: AppCommand) -> anyhow::Result<()> {
    use clawdforge::operator;
    let (policy, json) = match command {
        AppCommand::Set {
            app,
            policy,
            clear,
            json,
        } => (
            operator::app_set(config, policy.change(app, &clear)?).await?,
            json,
        ),
        AppCommand::Show { app, json } => (operator::app_show(config, &app).await?, json),
        AppCommand::List { json } => {
            let list = operator::app_list(config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", operator::policies_table(&list.apps));
            }
            return Ok(());
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&policy)?);
    } else {
        print!("{}", operator::policy_table(&policy));
    }
    Ok(())
}

/// `clawdforge agents check`: each agent's facts, and a failure when one is not ready.
async fn agents_check(config: &Config, json: bool) -> anyhow::Result<()> {
    let reports = clawdforge::app::agents_check(config).await?;
    if json {
        let all: Vec<_> = reports.iter().map(|r| r.json()).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        let texts: Vec<String> = reports.iter().map(|r| r.text()).collect();
        print!("{}", texts.join("\n"));
    }
    let not_ready: Vec<&str> = reports
        .iter()
        .filter(|r| !r.ready())
        .map(|r| r.name.as_str())
        .collect();
    if !not_ready.is_empty() {
        anyhow::bail!(
            "{} of {} agents not ready: {}",
            not_ready.len(),
            reports.len(),
            not_ready.join(", ")
        );
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
    let header = ["TOKEN_ID", "APP", "ADMIN", "CREATED_AT", "REVOKED_AT"];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    rows.extend(tokens.iter().map(|t| {
        vec![
            t.token_id.clone(),
            t.app.clone(),
            yes_no(t.admin).into(),
            t.created_at.clone(),
            t.revoked_at.clone().unwrap_or_else(|| "-".into()),
        ]
    }));
    clawdforge::operator::table(&rows)
}
