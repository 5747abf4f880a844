//! Configuration: built-in defaults, then a TOML file, then the environment.
//!
//! Every key can be set in the environment as `CLAWDFORGE_<KEY>`; the old Python service's
//! variable names (`DB_PATH`, `ACPX_BIN`, …) keep working as aliases. A bad value stops startup
//! with a message naming the variable (or the file) it came from.
//!
//! - `env`: the variables that set each key, the aliases, secrets from `<NAME>_FILE`;
//! - `sources`: the layers figment merges, and where each value came from;
//! - `validate`: what a well-typed value must also be;
//! - the agents' vocabulary lives in [`crate::agent::def`] and is re-exported here.

mod env;
mod error;
mod sources;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::agent::def::{
    default_agent_name, AgentAuth, AgentCommand, AgentDef, AgentDefError, AgentEntry, AuthEntry,
    BackendKind, ConfinementMode, PermissionPolicy, GATEWAY_METHOD, INTERACTIVE_AUTH_METHODS,
};
pub use env::{env_keys, env_names, secret_env_names, ENV_ALIASES, SECRET_KEYS};
pub use error::{setting_name, ConfigError};
pub use sources::{mask_url_passwords, Shown, Source};

use sources::Layers;

/// The default config file, read when it exists and no other file is named.
pub const DEFAULT_CONFIG_FILE: &str = "config/clawdforge.toml";

/// The service's settings, one flat table of keys; [`Config::load`] reads and checks them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A token that is always an admin (a root override for bootstrapping).
    pub admin_bootstrap_token: Option<String>,

    pub nats_url: String,
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    pub nats_token: Option<String>,
    pub nats_creds_file: Option<PathBuf>,

    pub db_path: PathBuf,
    /// Keep prompt and output text in the ledger; when false only sizes and SHA-256 hashes.
    pub ledger_keep_text: bool,

    pub acpx_bin: String,
    /// Root of the sessions' working directories: `<acpx_sessions_cwd>/<session_id>`.
    pub acpx_sessions_cwd: PathBuf,
    /// The default agent: a bare word names an acpx built-in agent, anything else is the command
    /// line of a custom ACP agent.
    pub acpx_agent: String,
    /// Seconds an idle agent process is kept warm by acpx (`--ttl`; 0 keeps it forever).
    pub acpx_ttl_secs: u64,
    /// Further agents a request may name: name → built-in name or command line (acpx), or a
    /// table with `command`, `backend` and `permissions`. A table named like the default agent
    /// sets the default agent's backend and permissions.
    pub agents: BTreeMap<String, AgentEntry>,
    /// Seconds a native (`acp`) agent process is kept without a turn before it is stopped.
    pub agent_idle_secs: u64,
    /// Seconds a permission request left to the caller (`permissions = "ask"`) waits for an
    /// answer before it is rejected.
    pub permission_timeout_secs: u64,

    pub max_live_sessions: u64,
    pub session_ttl_secs: u64,
    pub session_hard_ttl_secs: u64,
    pub sweep_interval_secs: u64,
    /// How often a worker writes its heartbeat to the ledger; one silent for three times this
    /// is dead, and the turns and runs it left running are recorded as interrupted.
    pub worker_heartbeat_secs: u64,
    /// While a streamed reply has nothing else to send, a heartbeat goes out this often.
    pub stream_heartbeat_secs: u64,
    /// On SIGTERM/SIGINT, how long in-flight turns and runs may take before they are cancelled.
    pub shutdown_grace_secs: u64,
    /// Whether workers also serve the Synadia Agent Protocol (v0.3): one `agents` micro
    /// service per app, agent and session (subjects.md, "Agent protocol").
    pub agent_protocol: bool,
    /// How often each of those services publishes its heartbeat on `agents.hb.…`.
    pub agent_protocol_heartbeat_secs: u64,
    /// Turns this worker runs at once; more wait in a queue of `max_queued_turns`.
    pub max_concurrent_turns: usize,
    pub max_queued_turns: usize,

    pub claude_bin: String,
    pub runs_dir: PathBuf,
    pub default_model: String,
    pub default_timeout_secs: u64,
    pub max_timeout_secs: u64,
    /// `--permission-mode` for one-shot runs (e.g. `acceptEdits`, `bypassPermissions`).
    pub claude_permission_mode: Option<String>,
    /// `--allowedTools` for one-shot runs, comma-separated.
    pub claude_allowed_tools: Option<String>,
    /// `--max-turns` for one-shot runs.
    pub claude_max_turns: Option<u32>,
    /// Runs this worker runs at once; more wait in a queue of `max_queued_runs`.
    pub max_concurrent_runs: usize,
    pub max_queued_runs: usize,
    /// Seconds a run's staging directory is kept after the run.
    pub runs_retention_secs: u64,

    pub max_prompt_bytes: usize,
    pub max_files: usize,
    pub max_files_bytes: usize,

    pub bind_host: String,
    pub bind_port: u16,
    /// Comma-separated CIDRs the sidecar answers (loopback always).
    pub allow_cidrs: String,
    /// Comma-separated CIDRs of proxies whose X-Forwarded-For the sidecar believes.
    pub trusted_proxies: String,
    /// Largest HTTP request body the sidecar accepts.
    pub max_request_bytes: usize,
    /// Seconds an HTTP connection may take to send a request's headers (also while a kept-alive
    /// connection waits for its next request).
    pub http_header_timeout_secs: u64,
    /// Seconds an HTTP connection with no request in flight is kept open.
    pub http_idle_timeout_secs: u64,
    /// HTTP connections open at once; more are closed as they come.
    pub http_max_connections: usize,
    /// Seconds an operator's console login lasts, from the login.
    pub console_session_secs: u64,
    /// Marks the console's cookie `Secure` on every answer (a sidecar reached over HTTPS through
    /// a proxy that does not send `X-Forwarded-Proto: https`).
    pub console_secure_cookie: bool,

    /// `text` (colours only on a terminal) or `json` (one object per line, span fields
    /// included, for log collectors).
    pub log_format: LogFormat,
    /// `host:port` where a worker serves its Prometheus metrics at `/metrics`; unset: no
    /// metrics server (the sidecar serves its own at its `/metrics` always).
    pub metrics_addr: Option<String>,

    /// Root of the apps' agent homes: `<agent_homes_dir>/<app>` is HOME (with
    /// CLAUDE_CONFIG_DIR and TMPDIR inside it) of every agent process of that app.
    pub agent_homes_dir: PathBuf,
    /// Whether agent processes run under Landlock.
    pub agent_confinement: ConfinementMode,
    /// Variables of the worker's environment that agents get (beside PATH, HOME, LANG, TMPDIR
    /// and CLAUDE_CONFIG_DIR).
    pub agent_env: Vec<String>,
    /// Directories agents may read and execute: the system's and the tools'.
    pub agent_read_dirs: Vec<PathBuf>,
    /// TCP ports agents may connect to (with Landlock ABI 4 and up).
    pub agent_connect_ports: Vec<u16>,
    /// A Claude credentials file given read-only to every app's home.
    pub agent_credentials_file: Option<PathBuf>,
    /// The largest file an agent process may write (RLIMIT_FSIZE).
    pub agent_max_file_bytes: u64,

    /// The policy of apps that have none of their own, field by field (`[app_defaults]`;
    /// nothing set: no limit).
    pub app_defaults: crate::wire::PolicyFields,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_bootstrap_token: None,
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_creds_file: None,
            db_path: "data/clawdforge.db".into(),
            ledger_keep_text: true,
            acpx_bin: "acpx".into(),
            acpx_sessions_cwd: "data/acpx-cwds".into(),
            acpx_agent: "claude".into(),
            acpx_ttl_secs: 300,
            agents: BTreeMap::new(),
            agent_idle_secs: 600,
            permission_timeout_secs: 60,
            max_live_sessions: 32,
            session_ttl_secs: 3600,
            session_hard_ttl_secs: 86400,
            sweep_interval_secs: 60,
            worker_heartbeat_secs: 10,
            stream_heartbeat_secs: 10,
            shutdown_grace_secs: 30,
            agent_protocol: false,
            agent_protocol_heartbeat_secs: 30,
            max_concurrent_turns: 8,
            max_queued_turns: 64,
            claude_bin: "claude".into(),
            runs_dir: "data/runs".into(),
            default_model: "sonnet".into(),
            default_timeout_secs: 120,
            max_timeout_secs: 1800,
            claude_permission_mode: None,
            claude_allowed_tools: None,
            claude_max_turns: None,
            max_concurrent_runs: 4,
            max_queued_runs: 16,
            runs_retention_secs: 86400,
            max_prompt_bytes: 256 * 1024,
            max_files: 32,
            max_files_bytes: 512 * 1024,
            bind_host: "0.0.0.0".into(),
            bind_port: 8800,
            allow_cidrs: String::new(),
            trusted_proxies: String::new(),
            max_request_bytes: 1024 * 1024,
            http_header_timeout_secs: 10,
            http_idle_timeout_secs: 60,
            http_max_connections: 512,
            console_session_secs: 8 * 3600,
            console_secure_cookie: false,
            log_format: LogFormat::Text,
            metrics_addr: None,
            agent_homes_dir: "data/homes".into(),
            agent_confinement: ConfinementMode::Auto,
            agent_env: [
                "ANTHROPIC_API_KEY",
                "CLAUDE_CODE_OAUTH_TOKEN",
                "DISABLE_AUTOUPDATER",
            ]
            .map(String::from)
            .to_vec(),
            agent_read_dirs: DEFAULT_READ_DIRS.iter().map(PathBuf::from).collect(),
            agent_connect_ports: vec![443],
            agent_credentials_file: None,
            agent_max_file_bytes: 1024 * 1024 * 1024,
            app_defaults: Default::default(),
        }
    }
}

/// What agents may read and execute by default: Debian's system directories, the image's
/// tools (/opt/clawdforge) and a checkout's `.tools/` (relative to the working directory).
pub const DEFAULT_READ_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt", ".tools",
];

impl Config {
    /// Loads defaults → `file` (or `CLAWDFORGE_CONFIG`, or `config/clawdforge.toml` when it
    /// exists) → environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        Self::load_layers(&Layers::read(file, env)?)
    }

    fn load_layers(layers: &Layers) -> Result<Config, ConfigError> {
        let config: Config = layers.extract()?;
        config.validate(layers)?;
        Ok(config)
    }

    /// As [`Config::load_from`], and every key with its value (secrets masked) and its source.
    pub fn explain(
        file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<(Config, Vec<Shown>), ConfigError> {
        let layers = Layers::read(file, env)?;
        let config = Self::load_layers(&layers)?;
        let shown = layers.explain(&config);
        Ok((config, shown))
    }

    /// The NATS servers of `nats_url`: one URL, or several separated by commas.
    pub fn nats_servers(&self) -> Result<Vec<async_nats::ServerAddr>, String> {
        let urls: Vec<&str> = self
            .nats_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err("is empty".into());
        }
        urls.into_iter()
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| format!("{u:?} is not a NATS URL: {e}"))
            })
            .collect()
    }

    /// The default agent and every configured named agent. A table named like the default
    /// agent gives it its backend and permissions (and its command, when it names one).
    pub fn agent_table(&self) -> (String, BTreeMap<String, AgentDef>) {
        let default = AgentCommand::parse(&self.acpx_agent).expect("validated at load");
        let default_name = default_agent_name(&default);
        let mut table: BTreeMap<String, AgentDef> = self
            .agents
            .iter()
            .map(|(name, entry)| (name.clone(), entry.def(name).expect("validated at load")))
            .collect();
        table.entry(default_name.clone()).or_insert(AgentDef {
            command: default,
            backend: BackendKind::Acpx,
            permissions: PermissionPolicy::AllowAll,
            auth: None,
        });
        (default_name, table)
    }
}
